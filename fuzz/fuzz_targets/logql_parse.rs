//! Any text: the parser answers without panicking, and whatever it accepts prints to
//! text that parses back to the same syntax tree (and prints the same again).
#![no_main]

use heimdall_logql::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(q) = parse(src) else {
        return;
    };
    let text = q.to_string();
    let back = parse(&text)
        .unwrap_or_else(|e| panic!("{src:?} printed as {text:?}, which does not parse: {e}"));
    if q.prints_back() {
        assert_eq!(q, back, "{src:?} printed as {text:?}");
        assert_eq!(back.to_string(), text, "printing is not a fixed point");
    }
});
