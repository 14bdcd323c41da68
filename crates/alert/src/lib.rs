//! `heimdall-alert`: alerting. Rules over LogQL metric queries, agents' anomaly events
//! and absence of heartbeats or lines; alert states persisted; incidents from
//! correlated signals; notifications to receivers through a persisted outbox. Depends
//! on query, store and the rule files (`heimdall-rules`, which the CLI checks without
//! linking any of this); never on HTTP or ingest.
//!
//! - [`config`]: `[alerting]` in the aggregator's configuration.
//! - [`state`]: the alert database (instances, groups, outbox, silences, incidents).
//! - [`eval`]: the rule engine thread.
//! - [`incremental`]: range functions of rules kept up to date from new lines.
//! - [`notify`]: routing, grouping, silences, the outbox and its dispatchers.
//! - [`receivers`]: the wire formats of Alertmanager, webhooks, Slack, PagerDuty, email.
//! - [`correlate`]: incidents and their root-cause candidates.

pub mod config;
pub mod correlate;
pub mod eval;
pub mod incremental;
pub mod notify;
pub mod receivers;
pub mod state;
