//! `heimdall`: the command-line client (see `heimdall_aggregator::cli`).

fn main() {
    let cli = <heimdall_aggregator::cli::Cli as clap::Parser>::parse();
    std::process::exit(heimdall_aggregator::cli::main(cli));
}
