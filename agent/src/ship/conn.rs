//! One connection to an aggregator: the `Hello`/`Welcome` handshake and heartbeats on
//! the control stream, and a window of batches in flight, one stream each.

use super::Shipper;
use crate::spool::Spool;
use bytes::BytesMut;
use heimdall_common::quic;
use heimdall_common::wire::{self, Frame, Heartbeat, Hello, Limits};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Our certificate or key could not be loaded.
    #[error("TLS set-up: {0}")]
    Tls(heimdall_common::tls::Error),
    /// The endpoint name does not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The connection could not be started.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The connection failed or was closed (handshake refusals included).
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// A stream failed or carried a bad frame.
    #[error("stream: {0}")]
    Stream(#[from] quic::Error),
    /// The aggregator refused us.
    #[error("refused by aggregator (code {code}): {reason}")]
    Refused { code: u16, reason: String },
    /// The aggregator answered with something unexpected.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The aggregator did not answer in time.
    #[error("no answer from aggregator within {0:?}")]
    Timeout(Duration),
    /// The spool failed.
    #[error("spool: {0}")]
    Spool(#[from] crate::spool::Error),
}

const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// The aggregator's answer to one batch.
pub(crate) enum Outcome {
    Acked,
    Rejected(String),
}

/// Opens the control stream and says `Hello`; returns the control stream once the
/// aggregator has answered `Welcome`.
pub(crate) async fn handshake(
    conn: &quinn::Connection,
    host: &str,
    limits: &Limits,
) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
    let (mut ctl_send, mut ctl_recv) = conn.open_bi().await?;
    let hello = Frame::Hello(Hello {
        version: wire::PROTOCOL_VERSION,
        agent_id: host.to_owned(),
        host: host.to_owned(),
        agent_version: heimdall_common::VERSION.to_owned(),
        capabilities: 0,
    });
    quic::write_frame(&mut ctl_send, &hello).await?;
    let mut buf = BytesMut::new();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        quic::read_frame(&mut ctl_recv, &mut buf, limits),
    )
    .await
    .map_err(|_| Error::Timeout(Duration::from_secs(10)))??;
    match reply {
        Some(Frame::Welcome(w)) => {
            tracing::debug!(agent_id = %w.agent_id, server = %w.server_id, "welcomed by aggregator");
            Ok((ctl_send, ctl_recv))
        }
        Some(Frame::Refuse(r)) => Err(Error::Refused {
            code: r.code,
            reason: r.reason,
        }),
        Some(other) => Err(Error::Protocol(format!(
            "expected welcome, got {}",
            other.name()
        ))),
        None => Err(Error::Protocol(
            "control stream closed during handshake".into(),
        )),
    }
}

pub struct Conn<'a> {
    conn: quinn::Connection,
    shipper: &'a Shipper,
    stop: CancellationToken,
    limits: Limits,
}

impl<'a> Conn<'a> {
    pub fn new(conn: quinn::Connection, shipper: &'a Shipper, stop: CancellationToken) -> Conn<'a> {
        Conn {
            conn,
            shipper,
            stop,
            limits: Limits::default(),
        }
    }

    /// Handshakes and ships until the connection fails or `stop` is cancelled.
    /// Returns whether any batch was delivered.
    pub async fn run(self) -> Result<bool, Error> {
        let (ctl_send, _ctl_recv) =
            handshake(&self.conn, &self.shipper.cfg.host, &self.limits).await?;

        let hb = tokio::spawn(heartbeats(
            ctl_send,
            self.shipper.spool.clone(),
            self.shipper.gauges.clone(),
            self.shipper.cfg.heartbeat,
        ));
        let fast = tokio::spawn(fast_events(self.conn.clone(), self.shipper.events.clone()));
        let res = self.ship().await;
        hb.abort();
        fast.abort();
        if self.stop.is_cancelled() {
            self.conn
                .close(0u32.into(), b"agent closing the connection");
        }
        res
    }

    async fn ship(&self) -> Result<bool, Error> {
        let spool = &self.shipper.spool;
        let window = self.shipper.cfg.window;
        let mut cursor = 0u64;
        let mut delivered = false;
        let mut inflight: JoinSet<(u64, Result<Outcome, Error>)> = JoinSet::new();
        loop {
            let notified = spool.data.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            while inflight.len() < window && !self.stop.is_cancelled() {
                let Some(seq) = spool.next_unacked(cursor) else {
                    break;
                };
                cursor = seq;
                let s = spool.clone();
                let Some(frame) = tokio::task::spawn_blocking(move || s.frame(seq))
                    .await
                    .map_err(|e| Error::Protocol(e.to_string()))??
                else {
                    continue;
                };
                let conn = self.conn.clone();
                let limits = self.limits;
                metrics::counter!("heimdall_agent_batches_sent_total").increment(1);
                metrics::counter!("heimdall_agent_sent_bytes_total").increment(frame.len() as u64);
                inflight.spawn(async move { (seq, send_batch(conn, frame, seq, limits).await) });
            }
            if inflight.is_empty() && self.stop.is_cancelled() {
                return Ok(delivered);
            }
            tokio::select! {
                Some(joined) = inflight.join_next() => {
                    let (seq, res) = joined.map_err(|e| Error::Protocol(e.to_string()))?;
                    let s = spool.clone();
                    match res? {
                        Outcome::Acked => {
                            metrics::counter!("heimdall_agent_batches_acked_total").increment(1);
                            tokio::task::spawn_blocking(move || s.ack(seq)).await.map_err(|e| Error::Protocol(e.to_string()))??;
                            delivered = true;
                        }
                        Outcome::Rejected(reason) => {
                            metrics::counter!("heimdall_agent_batches_rejected_total").increment(1);
                            tracing::error!(seq, reason, "aggregator rejected a batch; moved to the dead-letter directory");
                            tokio::task::spawn_blocking(move || s.dead_letter(seq, &reason)).await.map_err(|e| Error::Protocol(e.to_string()))??;
                        }
                    }
                }
                _ = &mut notified => {}
                _ = self.stop.cancelled(), if !self.stop.is_cancelled() => {}
                e = self.conn.closed() => return Err(Error::Connection(e)),
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

pub(crate) async fn send_batch(
    conn: quinn::Connection,
    frame: bytes::Bytes,
    seq: u64,
    limits: Limits,
) -> Result<Outcome, Error> {
    let started = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&frame).await.map_err(quic::Error::from)?;
    send.finish().map_err(quic::Error::from)?;
    let reply = tokio::time::timeout(RESPONSE_TIMEOUT, quic::read_single(&mut recv, &limits))
        .await
        .map_err(|_| Error::Timeout(RESPONSE_TIMEOUT))??;
    metrics::histogram!("heimdall_agent_batch_rtt_seconds").record(started.elapsed().as_secs_f64());
    match reply {
        Frame::Ack(a) if a.seq == seq => Ok(Outcome::Acked),
        Frame::Reject(r) if r.seq == seq => {
            Ok(Outcome::Rejected(format!("code {}: {}", r.code, r.reason)))
        }
        other => Err(Error::Protocol(format!(
            "unexpected {} in answer to batch {seq}",
            other.name()
        ))),
    }
}

/// Sends anomaly events as they come, each group on its own unidirectional stream at
/// the highest priority, so they never wait behind bulk batches. Best effort: the
/// spooled batches carry the same events, and the aggregator keeps each once.
async fn fast_events(
    conn: quinn::Connection,
    events: Arc<
        tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Vec<heimdall_common::record::Anomaly>>>,
    >,
) {
    let mut rx = events.lock().await;
    while let Some(ev) = rx.recv().await {
        let n = ev.len() as u64;
        let frame = Frame::Anomalies(ev);
        let sent = async {
            let mut send = conn.open_uni().await.ok()?;
            let _ = send.set_priority(i32::MAX);
            quic::write_frame(&mut send, &frame).await.ok()?;
            send.finish().ok()
        }
        .await;
        if sent.is_some() {
            metrics::counter!("heimdall_agent_anomalies_sent_total").increment(n);
        }
    }
}

async fn heartbeats(
    mut send: quinn::SendStream,
    spool: Arc<Spool>,
    gauges: Arc<crate::sources::Gauges>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let st = spool.stats();
        let hb = Frame::Heartbeat(Heartbeat {
            time_ns: crate::sources::now_ns(),
            spool_bytes: st.bytes,
            spool_batches: st.batches,
            lag_ns: st.oldest_age_ns,
            files: gauges.files.load(Ordering::Relaxed),
            unread_bytes: gauges.unread_bytes.load(Ordering::Relaxed),
            dead_letters: st.dead_letters,
        });
        if quic::write_frame(&mut send, &hb).await.is_err() {
            return;
        }
    }
}
