//! Shipping: sends spooled batches to an aggregator over QUIC with mutual TLS.
//!
//! Owns connection management: endpoints tried in order, exponential backoff with full
//! jitter between attempts, and the client certificate, re-read from disk at every
//! connection attempt so renewed certificates take effect without a restart. A batch
//! leaves the spool only after the aggregator's `Ack` (or is dead-lettered after a
//! `Reject`); anything unacknowledged when a connection drops is sent again on the
//! next one, and the aggregator's batch identity makes the resend harmless.

pub mod conn;
pub mod resend;

use crate::spool::Spool;
use heimdall_common::tls::{self, TlsFiles};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How to ship.
#[derive(Clone, Debug)]
pub struct ShipConfig {
    pub endpoints: Vec<String>,
    pub server_name: String,
    pub tls: TlsFiles,
    pub window: usize,
    pub max_backoff: Duration,
    pub heartbeat: Duration,
    pub host: String,
}

/// The shipper task.
pub struct Shipper {
    pub cfg: ShipConfig,
    pub spool: Arc<Spool>,
    /// Files being tailed, reported in heartbeats.
    pub gauges: Arc<crate::sources::Gauges>,
    /// Anomaly events to send ahead of the batches (which carry them too).
    pub events:
        Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Vec<heimdall_common::record::Anomaly>>>>,
}

/// Backoff before attempt `attempt` (0-based): 200 ms doubling up to `max`, with full jitter.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(200).saturating_mul(1u32 << attempt.min(16));
    let cap = base.min(max);
    cap.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// The first address `endpoint` (`host:port`) resolves to, asked of the system's
/// resolver without blocking the runtime.
async fn resolve(endpoint: &str) -> Option<SocketAddr> {
    tokio::net::lookup_host(endpoint).await.ok()?.next()
}

impl Shipper {
    /// Runs until `stop` is cancelled. Unsent batches stay in the spool. New output
    /// settings on `updates` (a reload) end the running connection once its batches in
    /// flight are answered, and the next one is made at once with the certificate files
    /// read again; resent batches are harmless (batch identity).
    pub async fn run(
        mut self,
        stop: CancellationToken,
        mut updates: tokio::sync::watch::Receiver<ShipConfig>,
    ) {
        let endpoint = match client_endpoint() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot open a UDP socket for shipping");
                return;
            }
        };
        let mut attempt = 0u32;
        let mut idx = 0usize;
        let mut updates_open = true;
        let mut take_update = false;
        while !stop.is_cancelled() {
            if take_update || (updates_open && updates.has_changed().unwrap_or(false)) {
                take_update = false;
                self.cfg = updates.borrow_and_update().clone();
                idx = 0;
            }
            let ep_name = self.cfg.endpoints[idx % self.cfg.endpoints.len()].clone();
            let conn_stop = stop.child_token();
            let mut reloaded = false;
            let outcome = match self.connect(&endpoint, &ep_name).await {
                Ok(c) => {
                    tracing::info!(endpoint = %ep_name, "connected to aggregator");
                    metrics::gauge!("heimdall_agent_connected").set(1.0);
                    self.gauges
                        .connected
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    let run = conn::Conn::new(c, &self, conn_stop.clone()).run();
                    tokio::pin!(run);
                    let r = loop {
                        tokio::select! {
                            r = &mut run => break r,
                            changed = updates.changed(), if updates_open && !reloaded => {
                                if changed.is_err() {
                                    updates_open = false;
                                } else {
                                    tracing::info!(endpoint = %ep_name, "output settings reloaded: reconnecting after the batches in flight");
                                    reloaded = true;
                                    conn_stop.cancel();
                                }
                            }
                        }
                    };
                    metrics::gauge!("heimdall_agent_connected").set(0.0);
                    self.gauges
                        .connected
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    r
                }
                Err(e) => Err(e),
            };
            if reloaded && !stop.is_cancelled() {
                // `changed()` marked the value seen; take it now.
                self.cfg = updates.borrow_and_update().clone();
                idx = 0;
                attempt = 0;
                continue;
            }
            match outcome {
                Ok(delivered) => {
                    if delivered {
                        attempt = 0;
                    }
                    if stop.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    metrics::counter!("heimdall_agent_ship_errors_total").increment(1);
                    tracing::warn!(endpoint = %ep_name, error = %e, "shipping failed");
                    idx += 1;
                }
            }
            let wait = backoff(attempt, self.cfg.max_backoff);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = stop.cancelled() => break,
                // A reload during the backoff is tried at once.
                changed = updates.changed(), if updates_open => {
                    if changed.is_err() {
                        updates_open = false;
                    } else {
                        take_update = true;
                        attempt = 0;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
        endpoint.close(0u32.into(), b"agent shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    }

    async fn connect(
        &self,
        endpoint: &quinn::Endpoint,
        name: &str,
    ) -> Result<quinn::Connection, conn::Error> {
        connect(endpoint, &self.cfg, name).await
    }
}

/// A QUIC connection to the aggregator at `name` with the certificate files read now.
pub(crate) async fn connect(
    endpoint: &quinn::Endpoint,
    cfg: &ShipConfig,
    name: &str,
) -> Result<quinn::Connection, conn::Error> {
    let client = tls::client_config(&cfg.tls).map_err(conn::Error::Tls)?;
    let addr = resolve(name)
        .await
        .ok_or_else(|| conn::Error::Resolve(name.to_owned()))?;
    let connecting = endpoint
        .connect_with(client, addr, &cfg.server_name)
        .map_err(|e| conn::Error::Connect(e.to_string()))?;
    match tokio::time::timeout(Duration::from_secs(10), connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(conn::Error::Connection(e)),
        Err(_) => Err(conn::Error::Connect("handshake timed out after 10s".into())),
    }
}

/// A client endpoint on any local address (IPv6 if the host has it).
pub(crate) fn client_endpoint() -> std::io::Result<quinn::Endpoint> {
    let bind: SocketAddr = "[::]:0".parse().expect("valid literal");
    quinn::Endpoint::client(bind)
        .or_else(|_| quinn::Endpoint::client("0.0.0.0:0".parse().expect("valid literal")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let max = Duration::from_secs(30);
        for a in 0..40 {
            let b = backoff(a, max);
            assert!(b <= max);
            let base = Duration::from_millis(200)
                .saturating_mul(1u32 << a.min(16))
                .min(max);
            assert!(b >= base / 2, "attempt {a}: {b:?}");
        }
    }
}
