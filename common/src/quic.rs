//! Frame I/O over quinn streams: the thin layer between QUIC streams and the pure
//! [`crate::wire`] codec. Buffering is here; parsing stays in `wire`.

use crate::wire::{self, Frame, Limits};
use bytes::BytesMut;

/// Failures reading or writing a frame on a stream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes on the stream are not a valid frame.
    #[error("protocol error: {0}")]
    Wire(#[from] wire::Error),
    /// The stream failed (connection lost, reset by the peer).
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream failed while writing.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame")]
    Truncated,
    /// A whole-stream read exceeded its limit.
    #[error("stream longer than {0} bytes")]
    TooLong(usize),
    /// The stream was closed by us.
    #[error("stream closed: {0}")]
    Closed(#[from] quinn::ClosedStream),
}

/// Reads the next frame from a stream carrying several, using `buf` for what has
/// arrived but is not decoded yet. `Ok(None)` at a clean end of stream.
///
/// # Errors
/// [`Error::Wire`] for bad frames, [`Error::Read`], [`Error::Truncated`].
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    limits: &Limits,
) -> Result<Option<Frame>, Error> {
    loop {
        if let Some(f) = wire::decode(buf, limits)? {
            return Ok(Some(f));
        }
        let mut chunk = [0u8; 8192];
        match recv.read(&mut chunk).await? {
            Some(n) => buf.extend_from_slice(&chunk[..n]),
            None if buf.is_empty() => return Ok(None),
            None => return Err(Error::Truncated),
        }
    }
}

/// Reads a stream that carries exactly one frame, to its end.
///
/// # Errors
/// [`Error::TooLong`] past `limits.max_frame_bytes`, [`Error::Wire`], [`Error::Read`].
pub async fn read_single(recv: &mut quinn::RecvStream, limits: &Limits) -> Result<Frame, Error> {
    let max = limits.max_frame_bytes as usize;
    let data = recv.read_to_end(max).await.map_err(|e| match e {
        quinn::ReadToEndError::TooLong => Error::TooLong(max),
        quinn::ReadToEndError::Read(r) => Error::Read(r),
    })?;
    Ok(wire::parse(data.into(), limits)?)
}

/// Writes one frame.
///
/// # Errors
/// [`Error::Write`].
pub async fn write_frame(send: &mut quinn::SendStream, frame: &Frame) -> Result<(), Error> {
    send.write_all(&frame.to_bytes()).await?;
    Ok(())
}
