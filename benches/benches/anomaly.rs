//! Anomaly detection on replayed real logs: the eight Loghub-2k systems replayed as
//! background traffic for a simulated week, incidents made of their own lines injected
//! on the second day (error bursts, a new template, silence, a slow ramp), the agent's
//! detector next to a simple baseline (new templates plus a count z-score) in the same
//! run. The scenario is the one `agent/tests/anomaly_replay.rs` holds to its targets
//! over two days; see `agent/tests/replay/mod.rs`.
//!
//! `cargo bench -p heimdall-benches --bench anomaly` (`HEIMDALL_BENCH_REPLAY_DAYS`,
//! default 7).

#[path = "../../agent/tests/loghub/mod.rs"]
mod loghub;
#[path = "../../agent/tests/replay/mod.rs"]
mod replay;
#[path = "../../agent/tests/sim/mod.rs"]
mod sim;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("anomaly: benchmark");
        return;
    }
    let Some(dir) = replay::data_dir() else {
        eprintln!("no Loghub data: set HEIMDALL_LOGHUB_DIR");
        return;
    };
    let days: u64 = std::env::var("HEIMDALL_BENCH_REPLAY_DAYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    let t = std::time::Instant::now();
    let (ours, base) = replay::run(&dir, days, 0x5EED);
    println!(
        "== anomaly detection on replayed Loghub-2k traffic: {} systems, {days} days, {} incidents ({:.1}s)",
        replay::DATASETS.len(),
        ours.incidents,
        t.elapsed().as_secs_f64()
    );
    println!(
        "{:<10} {:>7} {:>9} {:>13} {:>22}",
        "detector", "recall", "precision", "median delay", "false alarms/source/day"
    );
    for (name, s) in [("heimdall", &ours), ("baseline", &base)] {
        println!(
            "{name:<10} {:>7.3} {:>9.3} {:>10} w {:>22.2}",
            s.recall(),
            s.precision(),
            s.median_delay(),
            s.false_alarms_per_source_day()
        );
        for (k, f, a) in &s.by_kind {
            println!("           {k:?}: {f}/{a}");
        }
    }
    println!(
        "targets (heimdall): recall >= 0.95 {}, <= 1 false alarm/source/day {}, median delay <= 2 windows {}",
        if ours.recall() >= 0.95 { "met" } else { "MISSED" },
        if ours.false_alarms_per_source_day() <= 1.0 { "met" } else { "MISSED" },
        if ours.median_delay() <= 2.0 { "met" } else { "MISSED" },
    );
}
