//! The QUIC accept loop. Handshake failures (wrong CA, expired or missing client
//! certificate, not QUIC at all) are logged with their reason and counted; they never
//! affect other connections.

use super::conn::Handler;
use super::Registry;
use heimdall_common::wire::Limits;
use heimdall_store::hot::HotStore;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Settings shared by every connection.
#[derive(Clone, Debug)]
pub struct IngestSettings {
    pub server_id: String,
    pub limits: Limits,
    pub max_streams_per_connection: usize,
    pub max_connections_per_agent: usize,
    /// Global budget, in KiB, for frames and decoded batches being processed.
    pub memory: Arc<tokio::sync::Semaphore>,
    /// The budget's size in KiB.
    pub memory_kib: u32,
    /// Labels `service_name` is discovered from (`[push] discover_service_name`).
    pub service_name_from: Arc<[String]>,
}

/// Accepts agent connections until `shutdown`.
pub struct Listener {
    pub endpoint: quinn::Endpoint,
    pub store: Arc<HotStore>,
    pub registry: Arc<Registry>,
    pub settings: IngestSettings,
    /// One permit per connection allowed at once.
    pub connections: Arc<tokio::sync::Semaphore>,
}

impl Listener {
    /// Runs the accept loop; on shutdown stops accepting, lets in-flight batches finish
    /// within `grace`, and closes connections.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let tracker = TaskTracker::new();
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let remote = incoming.remote_address();
            let Ok(slot) = self.connections.clone().try_acquire_owned() else {
                metrics::counter!("heimdall_aggregator_connections_refused_total", "reason" => "global_limit").increment(1);
                tracing::warn!(%remote, "refused connection: connection limit reached");
                incoming.refuse();
                continue;
            };
            let handler = Handler {
                store: self.store.clone(),
                registry: self.registry.clone(),
                settings: self.settings.clone(),
                shutdown: shutdown.child_token(),
            };
            tracker.spawn(async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        metrics::counter!("heimdall_aggregator_handshake_failures_total").increment(1);
                        tracing::warn!(%remote, error = %e, "refused connection: TLS handshake failed");
                        return;
                    }
                };
                handler.run(conn).await;
                drop(slot);
            });
        }
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("connections did not finish within the grace period");
        }
        self.endpoint
            .close(0u32.into(), b"aggregator shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}
