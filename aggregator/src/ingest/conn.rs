//! One agent connection: identity from the client certificate, `Hello`/`Welcome` on the
//! control stream, heartbeats, and one task per batch stream.
//!
//! Every batch gets exactly one answer: `Ack` after its commit (or when it is a
//! duplicate), `Reject` when it can never be accepted (malformed, checksum, limits).
//! When the store cannot commit, the stream is reset without an answer and the agent
//! resends. A bad batch never closes the connection.

use super::listener::IngestSettings;
use super::Registry;
use bytes::BytesMut;
use heimdall_common::quic;
use heimdall_common::tls;
use heimdall_common::wire::{self, reason, Ack, Frame, Refuse, Reject, Welcome};
use heimdall_store::hot::{BatchId, HotStore, Outcome};
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Handles one connection.
pub struct Handler {
    pub store: Arc<HotStore>,
    pub registry: Arc<Registry>,
    pub settings: IngestSettings,
    pub shutdown: CancellationToken,
}

/// Why a connection has no agent identity.
#[derive(Debug, thiserror::Error)]
enum NoIdentity {
    /// The client sent no certificate.
    #[error("no client certificate")]
    NoCertificate,
    /// quinn gave an identity that is not a certificate chain.
    #[error("unexpected peer identity type")]
    UnexpectedType,
    /// The chain holds no certificate.
    #[error("empty certificate chain")]
    EmptyChain,
    /// The certificate has no usable common name.
    #[error(transparent)]
    Certificate(#[from] tls::Error),
}

/// The agent's name (its certificate's common name) and when its certificate expires
/// (Unix seconds).
fn identity(conn: &quinn::Connection) -> Result<(String, i64), NoIdentity> {
    let any = conn.peer_identity().ok_or(NoIdentity::NoCertificate)?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| NoIdentity::UnexpectedType)?;
    let first = certs.first().ok_or(NoIdentity::EmptyChain)?;
    let info = tls::cert_info(first)?;
    let name = info.common_name.ok_or(tls::Error::NoCommonName)?;
    Ok((name, info.not_after))
}

/// How a connection ended normally.
#[derive(Debug)]
enum Closed {
    Shutdown,
    ByAgent(String),
    StreamLimitGone,
}

impl std::fmt::Display for Closed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shutdown => f.write_str("aggregator shutting down"),
            Self::ByAgent(why) => write!(f, "closed by agent: {why}"),
            Self::StreamLimitGone => f.write_str("stream limit closed"),
        }
    }
}

/// How a connection failed.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    /// The agent opened no control stream in time.
    #[error("no control stream within 10s")]
    NoControlStream,
    /// The connection failed.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// The first frame was not a hello.
    #[error("expected hello, got {0}")]
    NotHello(&'static str),
    /// The control stream ended before a hello.
    #[error("control stream closed before hello")]
    NoHello,
    /// The hello could not be read.
    #[error("bad hello: {0}")]
    BadHello(quic::Error),
    /// No hello in time.
    #[error("no hello within 10s")]
    HelloTimeout,
    /// The agent speaks another protocol version.
    #[error("refused: protocol version {0}")]
    Version(u16),
    /// Writing to the control stream failed.
    #[error("control stream: {0}")]
    Control(quic::Error),
}

impl Handler {
    pub async fn run(self, conn: quinn::Connection) {
        let remote = conn.remote_address();
        let (agent, not_after): (Arc<str>, i64) = match identity(&conn) {
            Ok((id, not_after)) => (id.into(), not_after),
            Err(e) => {
                tracing::warn!(%remote, error = %e, "refused connection: no usable identity in client certificate");
                conn.close(1u32.into(), b"no identity");
                return;
            }
        };
        let mut over = false;
        self.registry.update(&agent, |a| {
            over = a.connections >= self.settings.max_connections_per_agent;
            if !over {
                a.connections += 1;
                a.cert_not_after = not_after;
            }
        });
        if over {
            tracing::warn!(%remote, agent = %agent, "refused connection: too many connections for this agent");
            metrics::counter!("heimdall_aggregator_connections_refused_total", "reason" => "per_agent_limit").increment(1);
            conn.close(3u32.into(), b"too many connections for this agent");
            return;
        }
        metrics::gauge!("heimdall_aggregator_connections").increment(1.0);
        let res = self.serve(&conn, agent.clone()).await;
        metrics::gauge!("heimdall_aggregator_connections").decrement(1.0);
        // A connection that ended (often by timing out after the agent died) is not a
        // sign of life: the agent's last-seen time stays its last heartbeat's.
        self.registry.update_unseen(&agent, |a| {
            a.connections = a.connections.saturating_sub(1);
            a.connected = a.connections > 0;
        });
        match res {
            Ok(why) => tracing::info!(%remote, agent = %agent, reason = %why, "agent disconnected"),
            Err(e) => {
                tracing::info!(%remote, agent = %agent, reason = %e, "agent connection ended")
            }
        }
    }

    async fn serve(&self, conn: &quinn::Connection, agent: Arc<str>) -> Result<Closed, ConnError> {
        let limits = self.settings.limits;
        let (mut ctl_send, mut ctl_recv) =
            tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
                .await
                .map_err(|_| ConnError::NoControlStream)??;
        let mut buf = BytesMut::new();
        let hello = match tokio::time::timeout(
            Duration::from_secs(10),
            quic::read_frame(&mut ctl_recv, &mut buf, &limits),
        )
        .await
        {
            Ok(Ok(Some(Frame::Hello(h)))) => h,
            Ok(Ok(Some(other))) => return Err(ConnError::NotHello(other.name())),
            Ok(Ok(None)) => return Err(ConnError::NoHello),
            Ok(Err(e)) => return Err(ConnError::BadHello(e)),
            Err(_) => return Err(ConnError::HelloTimeout),
        };
        if hello.version != wire::PROTOCOL_VERSION {
            let r = Frame::Refuse(Refuse {
                code: reason::UNSUPPORTED_VERSION,
                reason: format!(
                    "protocol version {} is not supported; this aggregator speaks {}",
                    hello.version,
                    wire::PROTOCOL_VERSION
                ),
            });
            let _ = quic::write_frame(&mut ctl_send, &r).await;
            let _ = ctl_send.finish();
            tokio::time::sleep(Duration::from_millis(100)).await;
            conn.close(2u32.into(), b"unsupported version");
            return Err(ConnError::Version(hello.version));
        }
        if hello.agent_id != *agent {
            tracing::debug!(certificate = %agent, claimed = %hello.agent_id, "agent claims another id; using the certificate's");
        }
        let welcome = Frame::Welcome(Welcome {
            version: wire::PROTOCOL_VERSION,
            agent_id: agent.to_string(),
            server_id: self.settings.server_id.clone(),
            max_frame_bytes: limits.max_frame_bytes,
            capabilities: 0,
        });
        quic::write_frame(&mut ctl_send, &welcome)
            .await
            .map_err(ConnError::Control)?;
        let remote = conn.remote_address().to_string();
        self.registry.update(&agent, |a| {
            a.host = hello.host.clone();
            a.version = hello.agent_version.clone();
            a.remote_addr = remote.clone();
            a.connected = true;
        });
        tracing::info!(agent = %agent, host = %hello.host, version = %hello.agent_version, remote = %remote, "agent connected");

        let registry = self.registry.clone();
        let hb_agent = agent.clone();
        let control = tokio::spawn(async move {
            loop {
                match quic::read_frame(&mut ctl_recv, &mut buf, &limits).await {
                    Ok(Some(Frame::Heartbeat(h))) => registry.update(&hb_agent, |a| {
                        a.spool_bytes = h.spool_bytes;
                        a.spool_batches = h.spool_batches;
                        a.lag_seconds = h.lag_ns as f64 / 1e9;
                        a.files = h.files;
                        a.unread_bytes = h.unread_bytes;
                        a.dead_letter_batches = h.dead_letters;
                    }),
                    Ok(Some(other)) => {
                        tracing::warn!(agent = %hb_agent, frame = other.name(), "unexpected frame on control stream");
                    }
                    Ok(None) | Err(_) => return,
                }
            }
        });

        let sem = Arc::new(Semaphore::new(self.settings.max_streams_per_connection));
        let result = loop {
            let stream = tokio::select! {
                _ = self.shutdown.cancelled() => break Ok(Closed::Shutdown),
                s = conn.accept_bi() => s,
                u = conn.accept_uni() => {
                    if let Ok(recv) = u {
                        tokio::spawn(handle_events(recv, self.store.clone(), agent.clone(), limits, self.settings.service_name_from.clone()));
                    }
                    continue;
                }
            };
            let (send, recv) = match stream {
                Ok(s) => s,
                Err(quinn::ConnectionError::ApplicationClosed(c)) => {
                    break Ok(Closed::ByAgent(
                        String::from_utf8_lossy(&c.reason).into_owned(),
                    ))
                }
                Err(e) => break Err(e.into()),
            };
            let Ok(permit) = sem.clone().acquire_owned().await else {
                break Ok(Closed::StreamLimitGone);
            };
            let ctx = BatchCtx {
                store: self.store.clone(),
                registry: self.registry.clone(),
                agent: agent.clone(),
                limits,
                memory: self.settings.memory.clone(),
                budget: self.settings.memory_kib,
                service_name_from: self.settings.service_name_from.clone(),
            };
            tokio::spawn(async move {
                handle_batch(send, recv, ctx).await;
                drop(permit);
            });
        };
        // Let batches already being committed get their answers.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            sem.acquire_many(self.settings.max_streams_per_connection as u32),
        )
        .await;
        control.abort();
        if self.shutdown.is_cancelled() {
            conn.close(0u32.into(), b"aggregator shutting down");
        }
        result
    }
}

/// How long a batch stream may take to arrive whole.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Memory taken from the ingest budget (`ingest.max_memory`); given back on drop.
/// `heimdall_aggregator_ingest_memory_bytes` is what is taken,
/// `heimdall_aggregator_ingest_memory_waits_total` counts the batches (and HTTP pushes)
/// that waited for it (backpressure: their stream is not read meanwhile, so QUIC's or
/// TCP's flow control slows the sender).
pub(crate) struct Reserved {
    permit: tokio::sync::OwnedSemaphorePermit,
    memory: Arc<Semaphore>,
    budget: u32,
}

impl Reserved {
    /// Takes `kib` KiB (at most the whole budget of `budget` KiB), waiting while the
    /// budget is spent; `None` when the budget is closed (shutdown).
    pub(crate) async fn take(memory: &Arc<Semaphore>, kib: u32, budget: u32) -> Option<Reserved> {
        let kib = kib.min(budget);
        if memory.available_permits() < kib as usize {
            metrics::counter!("heimdall_aggregator_ingest_memory_waits_total").increment(1);
        }
        let permit = memory.clone().acquire_many_owned(kib).await.ok()?;
        let r = Reserved {
            permit,
            memory: memory.clone(),
            budget,
        };
        r.report(0);
        Some(r)
    }

    fn report(&self, leaving: usize) {
        let used = (self.budget as usize)
            .saturating_sub(self.memory.available_permits())
            .saturating_sub(leaving);
        metrics::gauge!("heimdall_aggregator_ingest_memory_bytes").set(used as f64 * 1024.0);
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.report(self.permit.num_permits());
    }
}

/// Reads one frame from a batch stream: the header first, so the memory it needs is
/// reserved from the global budget before the body is buffered.
async fn read_batch_frame(
    recv: &mut quinn::RecvStream,
    limits: &wire::Limits,
    memory: &Arc<Semaphore>,
    budget: u32,
) -> Result<(Frame, Reserved), (u16, String)> {
    let mut header = [0u8; wire::HEADER_LEN];
    match tokio::time::timeout(READ_TIMEOUT, recv.read_exact(&mut header)).await {
        Err(_) => return Err((0, "no frame header within 30s".into())),
        Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => {
            return Err((
                reason::MALFORMED,
                "stream ended before a whole frame header".into(),
            ))
        }
        Ok(Err(quinn::ReadExactError::ReadError(e))) => return Err((0, e.to_string())),
        Ok(Ok(())) => {}
    }
    let len = match wire::check(&header, limits) {
        Ok(wire::Status::Incomplete(n)) | Ok(wire::Status::Complete(n)) => n,
        Err(e @ wire::Error::FrameTooLarge { .. }) => {
            return Err((reason::TOO_LARGE, e.to_string()))
        }
        Err(e) => return Err((reason::MALFORMED, e.to_string())),
    };
    let permit = Reserved::take(memory, kib(len), budget)
        .await
        .ok_or_else(|| (0u16, "shutting down".to_owned()))?;
    let rest =
        match tokio::time::timeout(READ_TIMEOUT, recv.read_to_end(len - wire::HEADER_LEN)).await {
            Err(_) => return Err((0, "frame body not received within 30s".into())),
            Ok(Err(quinn::ReadToEndError::TooLong)) => {
                return Err((reason::MALFORMED, "bytes after the end of the frame".into()))
            }
            Ok(Err(quinn::ReadToEndError::Read(e))) => return Err((0, e.to_string())),
            Ok(Ok(r)) => r,
        };
    let mut buf = bytes::BytesMut::with_capacity(len);
    buf.extend_from_slice(&header);
    buf.extend_from_slice(&rest);
    match wire::parse(buf.freeze(), limits) {
        Ok(f) => Ok((f, permit)),
        Err(e) => Err((reason::MALFORMED, e.to_string())),
    }
}

/// Checks a batch's identity and decodes it: what the aggregator accepts. A batch that
/// fails here can never be accepted (`Reject` with the code and reason returned); one
/// that passes is stored whole, with any value over a limit cut
/// ([`wire::BatchContent::repairs`]).
///
/// # Errors
/// `(reason code, reason)` for a batch that cannot be decoded.
pub fn validate(
    batch: &wire::Batch,
    limits: &wire::Limits,
) -> Result<wire::BatchContent, (u16, String)> {
    let (seq, floor) = (batch.seq, batch.floor);
    if seq == 0 || seq > i64::MAX as u64 || floor == 0 || floor > seq {
        return Err((
            reason::MALFORMED,
            format!(
                "invalid batch identity: seq {seq}, floor {floor} (need 1 <= floor <= seq < 2^63)"
            ),
        ));
    }
    batch.open(limits).map_err(|e| {
        let code = match e {
            wire::Error::ChecksumMismatch { .. } => reason::CHECKSUM,
            wire::Error::LimitExceeded { .. } | wire::Error::FrameTooLarge { .. } => {
                reason::TOO_LARGE
            }
            _ => reason::MALFORMED,
        };
        (code, e.to_string())
    })
}

/// Budget units: KiB, rounded up, at least one.
pub(crate) fn kib(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(1024).max(1)).unwrap_or(u32::MAX)
}

async fn handle_batch(mut send: quinn::SendStream, mut recv: quinn::RecvStream, ctx: BatchCtx) {
    let BatchCtx {
        store,
        registry,
        agent,
        limits,
        memory,
        budget,
        service_name_from,
    } = ctx;
    let reject = |seq: u64, epoch: u64, code: u16, why: String| {
        Frame::Reject(Reject {
            epoch,
            seq,
            code,
            reason: why,
        })
    };
    let (frame, _frame_permit) = match read_batch_frame(&mut recv, &limits, &memory, budget).await {
        Ok(f) => f,
        Err((0, why)) => {
            tracing::debug!(agent = %agent, error = %why, "batch stream failed");
            let _ = send.reset(1u32.into());
            return;
        }
        Err((code, why)) => {
            count_reject(code);
            tracing::warn!(agent = %agent, error = %why, "rejected malformed frame");
            registry.update(&agent, |a| {
                a.rejected_batches += 1;
                a.last_reject = why.clone();
            });
            let _ = quic::write_frame(&mut send, &reject(0, 0, code, why)).await;
            let _ = send.finish();
            let _ = recv.stop(0u32.into());
            return;
        }
    };
    let Frame::Batch(batch) = frame else {
        count_reject(reason::UNEXPECTED);
        let why = format!("expected a batch on a batch stream, got {}", frame.name());
        tracing::warn!(agent = %agent, "{why}");
        registry.update(&agent, |a| {
            a.rejected_batches += 1;
            a.last_reject = why.clone();
        });
        let _ = quic::write_frame(&mut send, &reject(0, 0, reason::UNEXPECTED, why)).await;
        let _ = send.finish();
        return;
    };
    let (epoch, seq, floor) = (batch.epoch, batch.seq, batch.floor);
    // Decoded records share the decompressed buffer; reserve it, and as much again for
    // the record structures, from the global budget.
    let Some(_payload_permit) =
        Reserved::take(&memory, kib(batch.raw_len as usize * 2), budget).await
    else {
        return;
    };
    let content = match tokio::task::spawn_blocking(move || validate(&batch, &limits)).await {
        Ok(Ok(c)) => c,
        Ok(Err((code, why))) => {
            count_reject(code);
            tracing::warn!(agent = %agent, epoch, seq, code, reason = %why, "rejected batch: it can never be decoded; the agent keeps it in its dead-letter directory");
            registry.update(&agent, |a| {
                a.rejected_batches += 1;
                a.last_reject = why.clone();
            });
            let _ = quic::write_frame(&mut send, &reject(seq, epoch, code, why)).await;
            let _ = send.finish();
            return;
        }
        Err(_) => return,
    };
    let mut content = content;
    if content.repairs.any() {
        let r = content.repairs;
        metrics::counter!("heimdall_aggregator_ingest_repairs_total", "kind" => "line_cut")
            .increment(r.lines_cut);
        metrics::counter!("heimdall_aggregator_ingest_repairs_total", "kind" => "value_cut")
            .increment(r.values_cut);
        metrics::counter!("heimdall_aggregator_ingest_repairs_total", "kind" => "unknown_field")
            .increment(r.unknown_fields);
        metrics::counter!("heimdall_aggregator_ingest_repairs_total", "kind" => "item_skipped")
            .increment(r.items_skipped);
        tracing::info!(agent = %agent, seq, lines_cut = r.lines_cut, values_cut = r.values_cut, unknown_fields = r.unknown_fields, items_skipped = r.items_skipped, "stored a batch with values over the protocol's limits cut");
    }
    // Provenance no agent can forge: the certificate's identity on every stream.
    for s in &mut content.streams {
        super::stamp_stream(s, &agent, &service_name_from);
    }
    for a in &mut content.anomalies {
        super::stamp_stream(&mut a.stream, &agent, &service_name_from);
    }
    let rows = content.records.len();
    let id = BatchId {
        agent: agent.clone(),
        epoch,
        seq,
        floor,
    };
    match store.write(id, content).await {
        Ok(outcome) => {
            let result = match outcome {
                Outcome::Stored(_) => "stored",
                Outcome::Duplicate => "duplicate",
            };
            metrics::counter!("heimdall_aggregator_ingest_batches_total", "result" => result)
                .increment(1);
            if outcome != Outcome::Duplicate {
                registry.update(&agent, |a| {
                    a.batches += 1;
                    a.rows += rows as u64;
                });
            }
            let _ = quic::write_frame(&mut send, &Frame::Ack(Ack { epoch, seq })).await;
            let _ = send.finish();
        }
        Err(e) => {
            // Not stored: no answer, so the agent resends later.
            metrics::counter!("heimdall_aggregator_ingest_batches_total", "result" => "failed")
                .increment(1);
            tracing::error!(agent = %agent, seq, error = %e, "cannot store batch");
            let _ = send.reset(1u32.into());
        }
    }
}

/// Anomaly events sent ahead of their batch on a unidirectional stream: stored at once
/// (the batch that carries them too is kept once per event id).
async fn handle_events(
    mut recv: quinn::RecvStream,
    store: Arc<HotStore>,
    agent: Arc<str>,
    limits: wire::Limits,
    service_name_from: Arc<[String]>,
) {
    let frame = match tokio::time::timeout(
        Duration::from_secs(30),
        quic::read_single(&mut recv, &limits),
    )
    .await
    {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            tracing::warn!(agent = %agent, error = %e, "bad frame on an event stream");
            return;
        }
        Err(_) => return,
    };
    let Frame::Anomalies(mut events) = frame else {
        tracing::warn!(agent = %agent, frame = frame.name(), "unexpected frame on an event stream");
        return;
    };
    for a in &mut events {
        super::stamp_stream(&mut a.stream, &agent, &service_name_from);
    }
    let n = events.len();
    match store.write_anomalies(events).await {
        Ok(_) => tracing::debug!(agent = %agent, events = n, "anomaly events stored"),
        Err(e) => {
            tracing::warn!(agent = %agent, error = %e, "cannot store anomaly events; their batch carries them")
        }
    }
}

struct BatchCtx {
    store: Arc<HotStore>,
    registry: Arc<Registry>,
    agent: Arc<str>,
    limits: wire::Limits,
    memory: Arc<Semaphore>,
    /// Size of the whole budget in KiB: no reservation may ask for more.
    budget: u32,
    /// Labels `service_name` is discovered from.
    service_name_from: Arc<[String]>,
}

fn count_reject(code: u16) {
    let reason = match code {
        reason::TOO_LARGE => "too_large",
        reason::CHECKSUM => "checksum",
        reason::UNEXPECTED => "unexpected",
        _ => "malformed",
    };
    metrics::counter!("heimdall_aggregator_ingest_batches_total", "result" => "rejected", "reason" => reason).increment(1);
}
