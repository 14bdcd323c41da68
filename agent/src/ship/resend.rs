//! Re-sending dead-lettered batches (`heimdall-agent dead-letter resend`), once the
//! cause of their rejection is fixed.
//!
//! Runs beside a running agent on a connection of its own (the aggregator allows an
//! agent several). Each batch goes under the identity
//! [`dead_letter::resend_identity`] derives from its original one, so a batch re-sent
//! twice is stored once. A batch the aggregator accepts moves to `dead-letter/resent/`;
//! one it rejects again stays where it is, and the new reason is reported.

use super::conn::{self, send_batch, Outcome};
use super::ShipConfig;
use crate::spool::dead_letter::{self, DeadLetter};
use heimdall_common::wire::{self, Frame, Limits};

/// What became of one dead-lettered batch.
#[derive(Debug)]
pub struct Resent {
    pub dead: DeadLetter,
    /// The records it held, when the file could be decoded here.
    pub records: Option<usize>,
    /// `Ok` when the aggregator stored it; why not otherwise.
    pub result: Result<(), NotResent>,
}

/// Why a dead-lettered batch was not re-sent (it stays in the dead-letter directory,
/// except for [`NotResent::Moving`]).
#[derive(Debug, thiserror::Error)]
pub enum NotResent {
    /// The dead-letter file cannot be read.
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    /// The file does not hold a whole frame.
    #[error("the file is not a whole batch frame: {0}")]
    NotAFrame(#[source] wire::Error),
    /// The frame is not a batch.
    #[error("the file holds another kind of frame")]
    NotABatch,
    /// The aggregator rejected it again, saying why.
    #[error("the aggregator rejected it again: {0}")]
    Rejected(String),
    /// Stored, but the file could not be moved to `resent/`.
    #[error("stored, but cannot move it to resent/: {0}")]
    Moving(#[source] std::io::Error),
}

/// Sends `items` to the first endpoint of `cfg` that answers, one after the other.
///
/// # Errors
/// [`conn::Error`] when no endpoint can be reached or the connection fails midway (the
/// batches not yet answered stay in the dead-letter directory).
pub async fn resend(cfg: &ShipConfig, items: Vec<DeadLetter>) -> Result<Vec<Resent>, conn::Error> {
    let endpoint = super::client_endpoint().map_err(|e| conn::Error::Connect(e.to_string()))?;
    let limits = Limits::default();
    let mut last_err = None;
    let mut connection = None;
    for name in &cfg.endpoints {
        match super::connect(&endpoint, cfg, name).await {
            Ok(c) => match conn::handshake(&c, &cfg.host, &limits).await {
                Ok(ctl) => {
                    connection = Some((c, ctl));
                    break;
                }
                Err(e) => last_err = Some(e),
            },
            Err(e) => last_err = Some(e),
        }
    }
    let Some((c, _ctl)) = connection else {
        return Err(last_err.unwrap_or_else(|| conn::Error::Connect("no endpoint".into())));
    };
    let mut out = Vec::with_capacity(items.len());
    for dead in items {
        let (frame, records) = match std::fs::read(&dead.path) {
            Ok(bytes) => match reidentify(bytes.into(), &limits, &dead) {
                Ok(f) => f,
                Err(why) => {
                    out.push(Resent {
                        dead,
                        records: None,
                        result: Err(why),
                    });
                    continue;
                }
            },
            Err(e) => {
                out.push(Resent {
                    dead,
                    records: None,
                    result: Err(NotResent::Read(e)),
                });
                continue;
            }
        };
        let result = match send_batch(c.clone(), frame, 1, limits).await? {
            Outcome::Acked => dead_letter::mark_resent(&dead).map_err(NotResent::Moving),
            Outcome::Rejected(why) => Err(NotResent::Rejected(why)),
        };
        out.push(Resent {
            dead,
            records,
            result,
        });
    }
    c.close(0u32.into(), b"resend done");
    endpoint.wait_idle().await;
    Ok(out)
}

/// The dead-lettered frame under its re-send identity, and its record count when it
/// decodes here.
fn reidentify(
    bytes: bytes::Bytes,
    limits: &Limits,
    dead: &DeadLetter,
) -> Result<(bytes::Bytes, Option<usize>), NotResent> {
    let Frame::Batch(mut b) = wire::parse(bytes, limits).map_err(NotResent::NotAFrame)? else {
        return Err(NotResent::NotABatch);
    };
    let records = b.open(limits).ok().map(|c| c.records.len());
    b.epoch = dead_letter::resend_identity(dead.epoch, dead.seq);
    b.seq = 1;
    b.floor = 1;
    Ok((Frame::Batch(b).to_bytes(), records))
}
