//! Anomaly detection on replayed real logs (see `replay/mod.rs`): over two simulated
//! days of eight real systems, the agent's detector must find at least 95% of the
//! injected incidents with a median delay of at most two windows, and raise at most one
//! false alarm per source per day; the baseline's figures are printed beside.

mod loghub;
mod replay;
mod sim;

fn show(name: &str, s: &replay::Score) {
    eprintln!(
        "{name:<9} recall {:.3} ({}/{})  precision {:.3}  median delay {} windows  false alarms {:.2}/source/day ({} in {:.1} source-days)",
        s.recall(),
        s.found,
        s.incidents,
        s.precision(),
        s.median_delay(),
        s.false_alarms_per_source_day(),
        s.false_alarms,
        s.source_days,
    );
    for (k, f, a) in &s.by_kind {
        eprintln!("          {k:?}: {f}/{a}");
    }
    eprintln!("          false alarms per source: {:?}", s.per_source);
}

#[test]
fn replayed_real_logs_incidents_are_found_and_normal_days_stay_quiet() {
    let Some(dir) = replay::data_dir() else {
        eprintln!("\n*** SKIPPED: no Loghub data (set HEIMDALL_LOGHUB_DIR or provide ../shared/data/loghub) ***\n");
        return;
    };
    let (ours, baseline) = replay::run(&dir, 2, 0x5EED);
    show("heimdall", &ours);
    show("baseline", &baseline);
    assert!(ours.recall() >= 0.95, "recall {:.3}", ours.recall());
    assert!(
        ours.false_alarms_per_source_day() <= 1.0,
        "{:.2} false alarms per source per day",
        ours.false_alarms_per_source_day()
    );
    assert!(
        ours.median_delay() <= 2.0,
        "median delay {} windows",
        ours.median_delay()
    );
}
