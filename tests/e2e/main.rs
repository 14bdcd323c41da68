//! End-to-end tests: the real binaries, QUIC over loopback, real files and SQLite.
//! One test binary so the binaries are built once (see `heimdall_tests::bins`).

mod alerts;
mod chaos;
mod cli;
mod console;
mod contract;
mod drilldown;
mod ecosystem;
mod exactly_once;
mod frames;
mod intel;
mod journald;
mod loki;
mod operator;
mod overload;
mod push;
mod redact;
mod reload;
mod scale;
mod spool_cap;
mod systemd;
mod templates;
mod tiers;
mod tls;
mod torture;
