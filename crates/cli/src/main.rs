//! `heimdall`: the command-line client (see `heimdall_cli`).

fn main() {
    let cli = <heimdall_cli::Cli as clap::Parser>::parse();
    std::process::exit(heimdall_cli::main(cli));
}
