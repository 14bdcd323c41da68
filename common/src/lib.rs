//! `heimdall-common`: what the agent and the aggregator must agree on.
//!
//! - [`record`]: the log record model (labels, levels, flags).
//! - [`wire`]: the versioned frame codec spoken over QUIC (pure: bytes in, bytes out).
//! - [`tls`]: loading certificates and building the mutual-TLS QUIC configurations.
//! - [`limits`]: the limits both sides share (line, label, template, batch sizes).
//! - [`config`]: value types shared by both configuration files (sizes, durations).
//! - [`tasks`]: stages of tasks and threads that stop together (the shutdown mechanism).
//! - [`systemd`]: readiness and watchdog notifications to systemd.
//! - [`certs`]: a private CA and certificates for the aggregator and agents (feature `pki`).
//! - [`fs`]: durable file replacement (temp file, fsync, rename, directory fsync).
//! - [`docs`]: man pages and shell completions from the clap definitions.
//!
//! Nothing else is shared; the agent and the aggregator never depend on each other.
#![forbid(unsafe_code)]

#[cfg(feature = "pki")]
pub mod certs;
pub mod config;
pub mod docs;
pub mod fs;
pub mod limits;
pub mod quic;
pub mod record;
pub mod systemd;
pub mod tasks;
pub mod tls;
pub mod wire;

/// Version of the Heimdall binaries, reported in `Hello` and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
