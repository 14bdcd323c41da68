//! The Heimdall wire protocol: versioned, length-prefixed frames.
//!
//! This module is a pure codec: it takes and returns bytes and knows nothing of sockets,
//! clocks or tasks, so it is deterministic, property-tested and fuzzed. Every decoder
//! enforces the [`Limits`] it is given and returns an [`Error`] on any malformed input;
//! it never panics and never allocates more than the limits allow.
//!
//! The format is specified in `common/PROTOCOL.md`. In short, a frame is
//! `u32 length (big-endian) | u8 type | body`, where `length` counts the type byte and
//! the body. A `Batch` body carries an lz4-compressed payload with a CRC32C of the
//! uncompressed bytes; the payload is a sequence of tagged sections so that newer
//! agents can add sections that older aggregators skip.

use crate::limits;
use crate::record::{
    flags, Aggregate, Anomaly, AnomalyEnd, AnomalyKind, Labels, Level, LogRecord, Template,
    TemplateAlias,
};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Protocol version spoken by this build. Bumped on incompatible changes only;
/// compatible additions use new payload sections or capability bits.
pub const PROTOCOL_VERSION: u16 = 1;

/// ALPN identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"heimdall/1";

/// Bytes in a frame header: the length prefix and the type byte.
pub const HEADER_LEN: usize = 5;

/// Frame type bytes.
pub mod frame_type {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const REFUSE: u8 = 0x03;
    pub const BATCH: u8 = 0x10;
    pub const ACK: u8 = 0x11;
    pub const REJECT: u8 = 0x12;
    pub const HEARTBEAT: u8 = 0x20;
    pub const ANOMALIES: u8 = 0x21;
}

/// Payload section tags inside a batch.
pub mod section {
    /// The batch's stream table: label sets referred to by index.
    pub const STREAMS: u8 = 1;
    /// The log records.
    pub const RECORDS: u8 = 2;
    /// Template texts for ids the records use.
    pub const TEMPLATES: u8 = 3;
    /// Pre-aggregated counts.
    pub const AGGREGATES: u8 = 4;
    /// Anomaly events (also sent ahead on their own stream).
    pub const ANOMALIES: u8 = 5;
    /// Structured metadata of the records that have some: `(record index, pairs)`.
    pub const METADATA: u8 = 6;
    /// Templates that generalised: `(former id, id now)` pairs.
    pub const ALIASES: u8 = 7;
    /// Ends of anomalies: `(event id, time, observed)`.
    pub const ANOMALY_ENDS: u8 = 8;
}

/// Most templates, samples and label pairs one anomaly event carries.
pub const MAX_ANOMALY_ITEMS: u32 = 32;
/// Most anomaly events in one frame or batch.
pub const MAX_ANOMALIES: u32 = 4096;

/// Payload compression codecs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Codec {
    /// Stored as is.
    None = 0,
    /// lz4 block format (`lz4_flex::block`).
    Lz4 = 1,
}

/// Reasons carried by `Refuse` and `Reject`; the text next to them is for humans.
pub mod reason {
    /// The peer speaks a protocol version we do not.
    pub const UNSUPPORTED_VERSION: u16 = 1;
    /// The frame could not be decoded or broke a limit.
    pub const MALFORMED: u16 = 2;
    /// The payload's checksum did not match.
    pub const CHECKSUM: u16 = 3;
    /// The batch is well-formed but breaks a limit of the receiver.
    pub const TOO_LARGE: u16 = 4;
    /// A frame arrived that is not allowed at this point of the conversation.
    pub const UNEXPECTED: u16 = 5;
    /// The receiver cannot take the batch now; the sender should retry later.
    pub const UNAVAILABLE: u16 = 6;
    /// Authentication or identity problem.
    pub const IDENTITY: u16 = 7;
}

/// The structural limits a decoder enforces: they bound what it may allocate, and input
/// over one cannot be decoded safely. Defaults come from [`crate::limits`], which the
/// agent's batching stays within; tests and fuzzing use smaller values.
///
/// Per-value limits (line, label, template text, sample) are not here: they are fixed in
/// [`crate::limits`], and a value over one is cut, never a reason to refuse a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame, header included.
    pub max_frame_bytes: u32,
    /// Largest uncompressed batch payload.
    pub max_payload_bytes: u32,
    /// Most records in one batch.
    pub max_records: u32,
    /// Most streams in one batch.
    pub max_streams: u32,
    /// Most labels on one stream.
    pub max_labels: u32,
}

impl Default for Limits {
    fn default() -> Self {
        use crate::limits;
        Limits {
            max_frame_bytes: limits::MAX_FRAME_BYTES as u32,
            max_payload_bytes: limits::MAX_PAYLOAD_BYTES as u32,
            max_records: limits::MAX_RECORDS as u32,
            max_streams: limits::MAX_STREAMS as u32,
            max_labels: limits::MAX_LABELS as u32,
        }
    }
}

/// Everything that can be wrong with bytes handed to the decoder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The length prefix announces a frame larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u64, max: u32 },
    /// The length prefix is zero: there is not even a type byte.
    #[error("empty frame (length 0)")]
    EmptyFrame,
    /// The type byte names no known frame.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    /// A field runs past the end of its frame or section.
    #[error("truncated {what}")]
    Truncated { what: &'static str },
    /// Bytes are left over after a complete frame body or section.
    #[error("{count} unexpected trailing bytes after {what}")]
    TrailingBytes { what: &'static str, count: usize },
    /// A variable-length integer is longer than 10 bytes or overflows 64 bits.
    #[error("malformed varint in {what}")]
    BadVarint { what: &'static str },
    /// A count or length breaks a configured limit.
    #[error("{what} is {value}, above the limit of {max}")]
    LimitExceeded {
        what: &'static str,
        value: u64,
        max: u64,
    },
    /// The payload codec byte is unknown.
    #[error("unknown payload codec {0}")]
    UnknownCodec(u8),
    /// The compressed payload could not be decompressed to the announced size.
    #[error("payload does not decompress: {0}")]
    Decompress(String),
    /// The payload's CRC32C differs from the one in the header.
    #[error("payload checksum mismatch: header says {expected:08x}, payload has {actual:08x}")]
    ChecksumMismatch { expected: u32, actual: u32 },
    /// A record refers to a stream index outside the batch's stream table.
    #[error("record refers to stream {index} but the batch has {streams} streams")]
    BadStreamIndex { index: u64, streams: usize },
    /// A required section is missing or repeated.
    #[error("batch payload {0}")]
    BadSections(&'static str),
}

/// Result of [`check`]: whether a whole frame is present at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// A whole frame of this many bytes (header included) is present.
    Complete(usize),
    /// More bytes are needed; at least this many in total.
    Incomplete(usize),
}

/// `Hello`: the first frame an agent sends on a new connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    /// The agent's idea of its id; the aggregator trusts the client certificate instead.
    pub agent_id: String,
    pub host: String,
    pub agent_version: String,
    /// Capability bits (none defined yet).
    pub capabilities: u64,
}

/// `Welcome`: the aggregator accepts the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    pub version: u16,
    /// The identity the aggregator took from the client certificate.
    pub agent_id: String,
    pub server_id: String,
    /// Largest frame the aggregator accepts.
    pub max_frame_bytes: u32,
    pub capabilities: u64,
}

/// `Refuse`: the aggregator will not talk to this agent; the connection closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refuse {
    pub code: u16,
    pub reason: String,
}

/// `Batch`: records (and later aggregates and anomaly events) from one agent.
///
/// Identity is `(agent, epoch, seq)`: `epoch` is chosen at random when the agent's spool
/// is created, `seq` grows by one per batch. `floor` is the lowest `seq` the agent may
/// still send, so the aggregator can forget older ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub epoch: u64,
    pub seq: u64,
    pub floor: u64,
    pub codec: Codec,
    /// Size of the payload once decompressed.
    pub raw_len: u32,
    /// CRC32C of the uncompressed payload.
    pub crc: u32,
    /// The payload as sent (compressed per `codec`).
    pub payload: Bytes,
}

/// `Ack`: the batch is durable at the aggregator (or was already).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub epoch: u64,
    pub seq: u64,
}

/// `Reject`: the batch can never be accepted; the agent dead-letters it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reject {
    pub epoch: u64,
    pub seq: u64,
    pub code: u16,
    pub reason: String,
}

/// `Heartbeat`: agent health, sent on the control stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Heartbeat {
    /// Agent clock, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// Bytes waiting in the spool.
    pub spool_bytes: u64,
    /// Batches waiting in the spool.
    pub spool_batches: u64,
    /// Age of the oldest unacknowledged batch, nanoseconds.
    pub lag_ns: u64,
    /// Files being tailed.
    pub files: u64,
    /// Read lag: bytes written to tailed files and not read yet. Optional on the wire
    /// (absent in heartbeats from agents before it existed: 0).
    pub unread_bytes: u64,
    /// Batches in the agent's dead-letter directory (rejected, waiting to be re-sent
    /// with `heimdall-agent dead-letter resend`). Optional on the wire, like
    /// `unread_bytes`.
    pub dead_letters: u64,
}

/// Any frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Refuse(Refuse),
    Batch(Batch),
    Ack(Ack),
    Reject(Reject),
    Heartbeat(Heartbeat),
    /// Anomaly events sent ahead of the batches that also carry them.
    Anomalies(Vec<Anomaly>),
}

impl Frame {
    /// The frame's type byte.
    pub fn type_byte(&self) -> u8 {
        match self {
            Frame::Hello(_) => frame_type::HELLO,
            Frame::Welcome(_) => frame_type::WELCOME,
            Frame::Refuse(_) => frame_type::REFUSE,
            Frame::Batch(_) => frame_type::BATCH,
            Frame::Ack(_) => frame_type::ACK,
            Frame::Reject(_) => frame_type::REJECT,
            Frame::Heartbeat(_) => frame_type::HEARTBEAT,
            Frame::Anomalies(_) => frame_type::ANOMALIES,
        }
    }

    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Welcome(_) => "welcome",
            Frame::Refuse(_) => "refuse",
            Frame::Batch(_) => "batch",
            Frame::Ack(_) => "ack",
            Frame::Reject(_) => "reject",
            Frame::Heartbeat(_) => "heartbeat",
            Frame::Anomalies(_) => "anomalies",
        }
    }

    /// Appends the encoded frame to `dst`.
    ///
    /// # Panics
    /// If a string field is longer than `u32::MAX` bytes or the frame exceeds 4 GiB;
    /// senders keep far below [`Limits`].
    pub fn encode(&self, dst: &mut BytesMut) {
        let start = dst.len();
        dst.put_u32(0);
        dst.put_u8(self.type_byte());
        match self {
            Frame::Hello(h) => {
                dst.put_u16(h.version);
                put_str(dst, &h.agent_id);
                put_str(dst, &h.host);
                put_str(dst, &h.agent_version);
                dst.put_u64(h.capabilities);
            }
            Frame::Welcome(w) => {
                dst.put_u16(w.version);
                put_str(dst, &w.agent_id);
                put_str(dst, &w.server_id);
                dst.put_u32(w.max_frame_bytes);
                dst.put_u64(w.capabilities);
            }
            Frame::Refuse(r) => {
                dst.put_u16(r.code);
                put_str(dst, &r.reason);
            }
            Frame::Batch(b) => {
                dst.put_u64(b.epoch);
                dst.put_u64(b.seq);
                dst.put_u64(b.floor);
                dst.put_u8(b.codec as u8);
                dst.put_u32(b.raw_len);
                dst.put_u32(b.crc);
                dst.put_slice(&b.payload);
            }
            Frame::Ack(a) => {
                dst.put_u64(a.epoch);
                dst.put_u64(a.seq);
            }
            Frame::Reject(r) => {
                dst.put_u64(r.epoch);
                dst.put_u64(r.seq);
                dst.put_u16(r.code);
                put_str(dst, &r.reason);
            }
            Frame::Heartbeat(h) => {
                dst.put_i64(h.time_ns);
                dst.put_u64(h.spool_bytes);
                dst.put_u64(h.spool_batches);
                dst.put_u64(h.lag_ns);
                dst.put_u64(h.files);
                dst.put_u64(h.unread_bytes);
                dst.put_u64(h.dead_letters);
            }
            Frame::Anomalies(v) => put_anomalies(dst, v),
        }
        let len = u32::try_from(dst.len() - start - 4).expect("frame larger than 4 GiB");
        dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// The encoded frame as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }
}

/// Says whether `src` begins with a whole frame, without decoding it.
///
/// # Errors
/// [`Error::FrameTooLarge`] or [`Error::EmptyFrame`] when the length prefix is impossible;
/// the caller should drop the connection or stream, since framing is lost.
pub fn check(src: &[u8], limits: &Limits) -> Result<Status, Error> {
    if src.len() < 4 {
        return Ok(Status::Incomplete(HEADER_LEN));
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as u64;
    if len == 0 {
        return Err(Error::EmptyFrame);
    }
    let total = len + 4;
    if total > limits.max_frame_bytes as u64 {
        return Err(Error::FrameTooLarge {
            len: total,
            max: limits.max_frame_bytes,
        });
    }
    let total = total as usize;
    if src.len() < total {
        Ok(Status::Incomplete(total))
    } else {
        Ok(Status::Complete(total))
    }
}

/// Decodes exactly one frame occupying all of `src`.
///
/// # Errors
/// Any [`Error`] when `src` is not exactly one well-formed frame within `limits`.
pub fn parse(src: Bytes, limits: &Limits) -> Result<Frame, Error> {
    match check(&src, limits)? {
        Status::Incomplete(_) => return Err(Error::Truncated { what: "frame" }),
        Status::Complete(n) if n != src.len() => {
            return Err(Error::TrailingBytes {
                what: "frame",
                count: src.len() - n,
            })
        }
        Status::Complete(_) => {}
    }
    let mut r = Reader::new(src.slice(4..));
    let ty = r.u8("frame type")?;
    let frame = match ty {
        frame_type::HELLO => Frame::Hello(Hello {
            version: r.u16("hello.version")?,
            agent_id: r.string("hello.agent_id")?,
            host: r.string("hello.host")?,
            agent_version: r.string("hello.agent_version")?,
            capabilities: r.u64("hello.capabilities")?,
        }),
        frame_type::WELCOME => Frame::Welcome(Welcome {
            version: r.u16("welcome.version")?,
            agent_id: r.string("welcome.agent_id")?,
            server_id: r.string("welcome.server_id")?,
            max_frame_bytes: r.u32("welcome.max_frame_bytes")?,
            capabilities: r.u64("welcome.capabilities")?,
        }),
        frame_type::REFUSE => Frame::Refuse(Refuse {
            code: r.u16("refuse.code")?,
            reason: r.string("refuse.reason")?,
        }),
        frame_type::BATCH => {
            let epoch = r.u64("batch.epoch")?;
            let seq = r.u64("batch.seq")?;
            let floor = r.u64("batch.floor")?;
            let codec = match r.u8("batch.codec")? {
                0 => Codec::None,
                1 => Codec::Lz4,
                c => return Err(Error::UnknownCodec(c)),
            };
            let raw_len = r.u32("batch.raw_len")?;
            if raw_len > limits.max_payload_bytes {
                return Err(Error::LimitExceeded {
                    what: "batch payload size",
                    value: raw_len as u64,
                    max: limits.max_payload_bytes as u64,
                });
            }
            let crc = r.u32("batch.crc")?;
            let payload = r.rest();
            if codec == Codec::None && payload.len() != raw_len as usize {
                return Err(Error::Decompress(format!(
                    "uncompressed payload is {} bytes, header says {raw_len}",
                    payload.len()
                )));
            }
            Frame::Batch(Batch {
                epoch,
                seq,
                floor,
                codec,
                raw_len,
                crc,
                payload,
            })
        }
        frame_type::ACK => Frame::Ack(Ack {
            epoch: r.u64("ack.epoch")?,
            seq: r.u64("ack.seq")?,
        }),
        frame_type::REJECT => Frame::Reject(Reject {
            epoch: r.u64("reject.epoch")?,
            seq: r.u64("reject.seq")?,
            code: r.u16("reject.code")?,
            reason: r.string("reject.reason")?,
        }),
        frame_type::HEARTBEAT => Frame::Heartbeat(Heartbeat {
            time_ns: r.i64("heartbeat.time_ns")?,
            spool_bytes: r.u64("heartbeat.spool_bytes")?,
            spool_batches: r.u64("heartbeat.spool_batches")?,
            lag_ns: r.u64("heartbeat.lag_ns")?,
            files: r.u64("heartbeat.files")?,
            unread_bytes: if r.remaining() >= 8 {
                r.u64("heartbeat.unread_bytes")?
            } else {
                0
            },
            dead_letters: if r.remaining() >= 8 {
                r.u64("heartbeat.dead_letters")?
            } else {
                0
            },
        }),
        frame_type::ANOMALIES => Frame::Anomalies(r.anomalies(limits, &mut Repairs::default())?),
        other => return Err(Error::UnknownFrameType(other)),
    };
    r.finish("frame body")?;
    Ok(frame)
}

/// Takes one frame off the front of `buf` if a whole one is there.
///
/// # Errors
/// As [`check`] and [`parse`]. After an error the buffer's framing cannot be trusted.
pub fn decode(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Frame>, Error> {
    match check(buf, limits)? {
        Status::Incomplete(_) => Ok(None),
        Status::Complete(n) => parse(buf.split_to(n).freeze(), limits).map(Some),
    }
}

/// The decoded content of a batch payload.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BatchContent {
    /// The stream table; records refer to it by index.
    pub streams: Vec<Labels>,
    /// The records, in the order the agent read them.
    pub records: Vec<LogRecord>,
    /// Texts of templates the records (or aggregates) use, sent at least once per
    /// agent run.
    pub templates: Vec<Template>,
    /// Exact counts of what the agent read (shipped or not) for this batch.
    pub aggregates: Vec<Aggregate>,
    /// Anomaly events detected while this batch was open.
    pub anomalies: Vec<Anomaly>,
    /// Templates that generalised while this batch was open: their former ids are
    /// aliases of the new ones.
    pub aliases: Vec<TemplateAlias>,
    /// Anomalies that ended while this batch was open.
    pub anomaly_ends: Vec<AnomalyEnd>,
    /// What the decoder cut or skipped to accept the payload (never encoded; all zero
    /// for a payload within the limits).
    pub repairs: Repairs,
}

/// What [`BatchContent::decode_payload`] had to change to accept a payload. A batch is
/// never refused for what one of its values holds: a value over its limit is cut (a
/// line is flagged `TRUNCATED`), a field this version does not know is ignored, and an
/// item that cannot be used is skipped, while its neighbours are kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    /// Lines longer than [`limits::MAX_LINE_BYTES`], cut and flagged `TRUNCATED`.
    pub lines_cut: u64,
    /// Label names and values, template texts, samples cut at their limits, or with
    /// invalid UTF-8 replaced.
    pub values_cut: u64,
    /// Record levels and flag bits this version does not know (from a newer sender),
    /// read as `unknown` and ignored.
    pub unknown_fields: u64,
    /// Aggregates and anomaly events that cannot be used (a zero window, an unknown
    /// kind, a figure that is not a number), skipped.
    pub items_skipped: u64,
}

impl Repairs {
    /// Whether anything was changed.
    pub fn any(&self) -> bool {
        *self != Repairs::default()
    }
}

impl BatchContent {
    /// Encodes the payload sections (uncompressed).
    pub fn encode_payload(&self, dst: &mut BytesMut) {
        let mut body = BytesMut::new();
        put_varint(&mut body, self.streams.len() as u64);
        for s in &self.streams {
            put_labels(&mut body, s);
        }
        put_section(dst, section::STREAMS, &body);

        body.clear();
        put_varint(&mut body, self.records.len() as u64);
        let mut prev_time = 0i64;
        for rec in &self.records {
            put_varint(&mut body, rec.stream as u64);
            put_varint(&mut body, zigzag(rec.time_ns.wrapping_sub(prev_time)));
            put_varint(&mut body, zigzag(rec.observed_ns.wrapping_sub(rec.time_ns)));
            prev_time = rec.time_ns;
            body.put_u8(rec.level as u8);
            body.put_u8(rec.flags);
            put_varint(&mut body, rec.redacted as u64);
            body.put_u64_le(rec.template_id);
            put_varint(&mut body, rec.line.len() as u64);
            body.put_slice(&rec.line);
        }
        put_section(dst, section::RECORDS, &body);

        if !self.templates.is_empty() {
            body.clear();
            put_varint(&mut body, self.templates.len() as u64);
            for t in &self.templates {
                body.put_u64_le(t.id);
                put_str(&mut body, &t.text);
            }
            put_section(dst, section::TEMPLATES, &body);
        }
        if !self.aggregates.is_empty() {
            body.clear();
            put_varint(&mut body, self.aggregates.len() as u64);
            for a in &self.aggregates {
                put_varint(&mut body, a.stream as u64);
                put_varint(&mut body, zigzag(a.start_ns));
                put_varint(&mut body, a.window_secs as u64);
                body.put_u8(a.level as u8);
                body.put_u64_le(a.template_id);
                put_varint(&mut body, a.count);
                put_varint(&mut body, a.bytes);
                put_varint(&mut body, a.shipped);
            }
            put_section(dst, section::AGGREGATES, &body);
        }
        if !self.anomalies.is_empty() {
            body.clear();
            put_anomalies(&mut body, &self.anomalies);
            put_section(dst, section::ANOMALIES, &body);
        }
        let with_meta = self
            .records
            .iter()
            .filter(|r| !r.metadata.is_empty())
            .count();
        if with_meta > 0 {
            body.clear();
            put_varint(&mut body, with_meta as u64);
            for (i, r) in self.records.iter().enumerate() {
                if !r.metadata.is_empty() {
                    put_varint(&mut body, i as u64);
                    put_labels(&mut body, &r.metadata);
                }
            }
            put_section(dst, section::METADATA, &body);
        }
        if !self.aliases.is_empty() {
            body.clear();
            put_varint(&mut body, self.aliases.len() as u64);
            for a in &self.aliases {
                body.put_u64_le(a.from);
                body.put_u64_le(a.to);
            }
            put_section(dst, section::ALIASES, &body);
        }
        if !self.anomaly_ends.is_empty() {
            body.clear();
            put_varint(&mut body, self.anomaly_ends.len() as u64);
            for e in &self.anomaly_ends {
                body.put_u64_le(e.id);
                put_varint(&mut body, zigzag(e.time_ns));
                body.put_f64_le(e.observed);
            }
            put_section(dst, section::ANOMALY_ENDS, &body);
        }
    }

    /// Decodes payload sections, skipping sections this version does not know.
    ///
    /// # Errors
    /// Any [`Error`] on malformed input or broken limits.
    pub fn decode_payload(payload: Bytes, limits: &Limits) -> Result<BatchContent, Error> {
        let mut r = Reader::new(payload);
        let mut streams: Option<Vec<Labels>> = None;
        let mut records: Option<Vec<LogRecord>> = None;
        let mut templates: Option<Vec<Template>> = None;
        let mut aggregates: Option<Vec<Aggregate>> = None;
        let mut anomalies: Option<Vec<Anomaly>> = None;
        let mut metadata: Option<Vec<(u64, Labels)>> = None;
        let mut aliases: Option<Vec<TemplateAlias>> = None;
        let mut ends: Option<Vec<AnomalyEnd>> = None;
        let mut fix = Repairs::default();
        while r.remaining() > 0 {
            let tag = r.u8("section tag")?;
            let len = r.varint("section length")?;
            let body = r.take(len, "section body")?;
            let mut s = Reader::new(body);
            match tag {
                section::STREAMS => {
                    if streams.is_some() {
                        return Err(Error::BadSections("has two stream tables"));
                    }
                    let n = s.count("stream count", limits.max_streams, 1)?;
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        v.push(s.labels(limits, &mut fix)?);
                    }
                    s.finish("stream table")?;
                    streams = Some(v);
                }
                section::RECORDS => {
                    if records.is_some() {
                        return Err(Error::BadSections("has two record sections"));
                    }
                    let nstreams = streams
                        .as_ref()
                        .ok_or(Error::BadSections("has records before its stream table"))?
                        .len();
                    let n = s.count("record count", limits.max_records, 13)?;
                    let mut v = Vec::with_capacity(n);
                    let mut prev_time = 0i64;
                    for _ in 0..n {
                        let stream = s.varint("record stream")?;
                        if stream >= nstreams as u64 {
                            return Err(Error::BadStreamIndex {
                                index: stream,
                                streams: nstreams,
                            });
                        }
                        let time_ns = prev_time.wrapping_add(unzigzag(s.varint("record time")?));
                        let observed_ns =
                            time_ns.wrapping_add(unzigzag(s.varint("record observed time")?));
                        prev_time = time_ns;
                        let lv = s.u8("record level")?;
                        let level = Level::from_u8(lv).unwrap_or_else(|| {
                            fix.unknown_fields += 1;
                            Level::Unknown
                        });
                        let mut fl = s.u8("record flags")?;
                        if fl & !flags::KNOWN != 0 {
                            fix.unknown_fields += 1;
                            fl &= flags::KNOWN;
                        }
                        let redacted = s.varint("record redaction count")?;
                        let redacted = u32::try_from(redacted).unwrap_or(u32::MAX);
                        let template_id = s.u64_le("record template id")?;
                        let line_len = s.varint("line length")?;
                        let mut line = s.take(line_len, "line")?;
                        if line.len() > limits::MAX_LINE_BYTES {
                            line.truncate(limits::MAX_LINE_BYTES);
                            fl |= flags::TRUNCATED;
                            fix.lines_cut += 1;
                        }
                        v.push(LogRecord {
                            stream: stream as u32,
                            time_ns,
                            observed_ns,
                            level,
                            template_id,
                            flags: fl,
                            redacted,
                            line,
                            metadata: Labels::default(),
                        });
                    }
                    s.finish("record section")?;
                    records = Some(v);
                }
                section::TEMPLATES => {
                    if templates.is_some() {
                        return Err(Error::BadSections("has two template sections"));
                    }
                    let n = s.count("template count", limits.max_streams, 9)?;
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        let id = s.u64_le("template id")?;
                        let text = s.text("template text", limits::MAX_TEMPLATE_BYTES, &mut fix)?;
                        v.push(Template { id, text });
                    }
                    s.finish("template section")?;
                    templates = Some(v);
                }
                section::AGGREGATES => {
                    if aggregates.is_some() {
                        return Err(Error::BadSections("has two aggregate sections"));
                    }
                    let nstreams = streams
                        .as_ref()
                        .ok_or(Error::BadSections("has aggregates before its stream table"))?
                        .len();
                    let n = s.count("aggregate count", limits.max_records, 15)?;
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        let stream = s.varint("aggregate stream")?;
                        if stream >= nstreams as u64 {
                            return Err(Error::BadStreamIndex {
                                index: stream,
                                streams: nstreams,
                            });
                        }
                        let start_ns = unzigzag(s.varint("aggregate start")?);
                        let window = s.varint("aggregate window")?;
                        let lv = s.u8("aggregate level")?;
                        let template_id = s.u64_le("aggregate template id")?;
                        let count = s.varint("aggregate count")?;
                        let bytes = s.varint("aggregate bytes")?;
                        let shipped = s.varint("aggregate shipped")?;
                        // An aggregate that cannot be a count of anything (no window, a
                        // window over a day, more shipped than counted) is skipped; the
                        // records it would describe are stored all the same.
                        let Some(level) = Level::from_u8(lv) else {
                            fix.items_skipped += 1;
                            continue;
                        };
                        if window == 0 || window > 86_400 || shipped > count {
                            fix.items_skipped += 1;
                            continue;
                        }
                        v.push(Aggregate {
                            stream: stream as u32,
                            start_ns,
                            window_secs: window as u32,
                            level,
                            template_id,
                            count,
                            bytes,
                            shipped,
                        });
                    }
                    s.finish("aggregate section")?;
                    aggregates = Some(v);
                }
                section::ANOMALIES => {
                    if anomalies.is_some() {
                        return Err(Error::BadSections("has two anomaly sections"));
                    }
                    let v = s.anomalies(limits, &mut fix)?;
                    s.finish("anomaly section")?;
                    anomalies = Some(v);
                }
                section::METADATA => {
                    if metadata.is_some() {
                        return Err(Error::BadSections("has two metadata sections"));
                    }
                    let n = s.count("metadata count", limits.max_records, 2)?;
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        let i = s.varint("metadata record index")?;
                        v.push((i, s.labels(limits, &mut fix)?));
                    }
                    s.finish("metadata section")?;
                    metadata = Some(v);
                }
                section::ALIASES => {
                    if aliases.is_some() {
                        return Err(Error::BadSections("has two alias sections"));
                    }
                    let n = s.count("alias count", limits.max_records, 16)?;
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        let from = s.u64_le("alias from")?;
                        let to = s.u64_le("alias to")?;
                        v.push(TemplateAlias { from, to });
                    }
                    s.finish("alias section")?;
                    aliases = Some(v);
                }
                section::ANOMALY_ENDS => {
                    if ends.is_some() {
                        return Err(Error::BadSections("has two anomaly end sections"));
                    }
                    let n = s.count("anomaly end count", MAX_ANOMALIES, 18)?;
                    let mut v = Vec::with_capacity(n);
                    for _ in 0..n {
                        let id = s.u64_le("anomaly end id")?;
                        let time_ns = unzigzag(s.varint("anomaly end time")?);
                        // A figure that is not finite says nothing: the end stands.
                        let observed = s.f64_le("anomaly end observed")?.unwrap_or(0.0);
                        v.push(AnomalyEnd {
                            id,
                            time_ns,
                            observed,
                        });
                    }
                    s.finish("anomaly end section")?;
                    ends = Some(v);
                }
                // Sections from newer agents: skipped, so additions stay compatible.
                _ => {}
            }
        }
        let mut records = records.unwrap_or_default();
        for (i, m) in metadata.unwrap_or_default() {
            // Metadata for a record that is not there is skipped, its neighbours kept.
            match records.get_mut(usize::try_from(i).unwrap_or(usize::MAX)) {
                Some(r) => r.metadata = m,
                None => fix.unknown_fields += 1,
            }
        }
        Ok(BatchContent {
            streams: streams.ok_or(Error::BadSections("has no stream table"))?,
            records,
            templates: templates.unwrap_or_default(),
            aggregates: aggregates.unwrap_or_default(),
            anomalies: anomalies.unwrap_or_default(),
            aliases: aliases.unwrap_or_default(),
            anomaly_ends: ends.unwrap_or_default(),
            repairs: fix,
        })
    }
}

impl Batch {
    /// Encodes `content`, compresses it with `codec` and computes the checksum.
    pub fn seal(epoch: u64, seq: u64, floor: u64, codec: Codec, content: &BatchContent) -> Batch {
        let mut raw = BytesMut::new();
        content.encode_payload(&mut raw);
        Batch::seal_payload(epoch, seq, floor, codec, &raw)
    }

    /// Compresses an already-encoded payload and computes the checksum.
    ///
    /// # Panics
    /// If the payload is 4 GiB or larger.
    pub fn seal_payload(epoch: u64, seq: u64, floor: u64, codec: Codec, raw: &[u8]) -> Batch {
        let crc = crc32c::crc32c(raw);
        let raw_len = u32::try_from(raw.len()).expect("batch payload of 4 GiB or more");
        let payload = match codec {
            Codec::None => Bytes::copy_from_slice(raw),
            Codec::Lz4 => Bytes::from(lz4_flex::block::compress(raw)),
        };
        Batch {
            epoch,
            seq,
            floor,
            codec,
            raw_len,
            crc,
            payload,
        }
    }

    /// Decompresses the payload and verifies its checksum.
    ///
    /// # Errors
    /// [`Error::Decompress`] or [`Error::ChecksumMismatch`].
    pub fn raw_payload(&self, limits: &Limits) -> Result<Bytes, Error> {
        if self.raw_len > limits.max_payload_bytes {
            return Err(Error::LimitExceeded {
                what: "batch payload size",
                value: self.raw_len as u64,
                max: limits.max_payload_bytes as u64,
            });
        }
        let raw = match self.codec {
            Codec::None => self.payload.clone(),
            Codec::Lz4 => {
                let mut out = vec![0u8; self.raw_len as usize];
                let n = lz4_flex::block::decompress_into(&self.payload, &mut out)
                    .map_err(|e| Error::Decompress(e.to_string()))?;
                if n != out.len() {
                    return Err(Error::Decompress(format!(
                        "decompressed to {n} bytes, header says {}",
                        self.raw_len
                    )));
                }
                Bytes::from(out)
            }
        };
        let actual = crc32c::crc32c(&raw);
        if actual != self.crc {
            return Err(Error::ChecksumMismatch {
                expected: self.crc,
                actual,
            });
        }
        Ok(raw)
    }

    /// Decompresses, verifies and decodes the payload.
    ///
    /// # Errors
    /// Any [`Error`] from decompression, checksum or decoding.
    pub fn open(&self, limits: &Limits) -> Result<BatchContent, Error> {
        BatchContent::decode_payload(self.raw_payload(limits)?, limits)
    }
}

fn put_section(dst: &mut BytesMut, tag: u8, body: &[u8]) {
    dst.put_u8(tag);
    put_varint(dst, body.len() as u64);
    dst.put_slice(body);
}

fn put_labels(dst: &mut BytesMut, labels: &Labels) {
    put_varint(dst, labels.len() as u64);
    for (k, v) in labels.iter() {
        put_str(dst, k);
        put_str(dst, v);
    }
}

fn put_anomalies(dst: &mut BytesMut, v: &[Anomaly]) {
    put_varint(dst, v.len() as u64);
    for a in v {
        dst.put_u64_le(a.id);
        dst.put_u8(a.kind as u8);
        put_labels(dst, &a.stream);
        put_varint(dst, zigzag(a.time_ns));
        dst.put_f64_le(a.score);
        dst.put_f64_le(a.baseline);
        dst.put_f64_le(a.observed);
        put_varint(dst, a.templates.len() as u64);
        for t in &a.templates {
            dst.put_u64_le(t.id);
            put_str(dst, &t.text);
        }
        put_varint(dst, a.samples.len() as u64);
        for s in &a.samples {
            put_str(dst, s);
        }
    }
}

fn put_str(dst: &mut BytesMut, s: &str) {
    put_varint(dst, s.len() as u64);
    dst.put_slice(s.as_bytes());
}

/// Appends `v` as an unsigned LEB128 varint.
pub fn put_varint(dst: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        dst.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    dst.put_u8(v as u8);
}

/// `b` as a string of at most `max` bytes, and whether it had to be cut or repaired.
fn decode_text(b: &[u8], max: usize) -> (String, bool) {
    let cut = b.len() > max;
    let b = if cut { &b[..max] } else { b };
    match std::str::from_utf8(b) {
        Ok(s) => (s.to_owned(), cut),
        // The cut went through a character: end before it.
        Err(e) if cut && e.error_len().is_none() => (
            String::from_utf8_lossy(&b[..e.valid_up_to()]).into_owned(),
            true,
        ),
        Err(_) => {
            let mut s = String::from_utf8_lossy(b).into_owned();
            limits::cut_string(&mut s, max);
            (s, true)
        }
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A bounds-checked reader over a frame or section body.
struct Reader {
    buf: Bytes,
}

impl Reader {
    fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize, what: &'static str) -> Result<(), Error> {
        if self.buf.len() < n {
            Err(Error::Truncated { what })
        } else {
            Ok(())
        }
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        self.need(1, what)?;
        Ok(self.buf.get_u8())
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        self.need(2, what)?;
        Ok(self.buf.get_u16())
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        self.need(4, what)?;
        Ok(self.buf.get_u32())
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, Error> {
        self.need(8, what)?;
        Ok(self.buf.get_u64())
    }

    fn u64_le(&mut self, what: &'static str) -> Result<u64, Error> {
        self.need(8, what)?;
        Ok(self.buf.get_u64_le())
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, Error> {
        self.need(8, what)?;
        Ok(self.buf.get_i64())
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, Error> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.u8(what)?;
            let low = (b & 0x7f) as u64;
            if i == 9 && b > 1 {
                return Err(Error::BadVarint { what });
            }
            v |= low << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(Error::BadVarint { what })
    }

    /// Reads a count bounded by `max` and by what the remaining bytes could hold at
    /// `min_item_bytes` each, so a forged count cannot make us allocate.
    fn count(
        &mut self,
        what: &'static str,
        max: u32,
        min_item_bytes: usize,
    ) -> Result<usize, Error> {
        let n = self.varint(what)?;
        if n > max as u64 {
            return Err(Error::LimitExceeded {
                what,
                value: n,
                max: max as u64,
            });
        }
        if n.saturating_mul(min_item_bytes as u64) > self.remaining() as u64 {
            return Err(Error::Truncated { what });
        }
        Ok(n as usize)
    }

    fn take(&mut self, n: u64, what: &'static str) -> Result<Bytes, Error> {
        if n > self.buf.len() as u64 {
            return Err(Error::Truncated { what });
        }
        Ok(self.buf.split_to(n as usize))
    }

    /// A free-text field of a control frame, cut at [`limits::MAX_TEXT_BYTES`].
    fn string(&mut self, what: &'static str) -> Result<String, Error> {
        self.text(what, limits::MAX_TEXT_BYTES, &mut Repairs::default())
    }

    /// A string of at most `max` bytes: a longer one is cut at a character boundary,
    /// invalid UTF-8 is replaced, and either is counted in `fix`.
    fn text(&mut self, what: &'static str, max: usize, fix: &mut Repairs) -> Result<String, Error> {
        let n = self.varint(what)?;
        let b = self.take(n, what)?;
        let (s, changed) = decode_text(&b, max);
        if changed {
            fix.values_cut += 1;
        }
        Ok(s)
    }

    /// A finite figure; anything else is `None`.
    fn f64_le(&mut self, what: &'static str) -> Result<Option<f64>, Error> {
        let v = f64::from_bits(self.u64_le(what)?);
        Ok(v.is_finite().then_some(v))
    }

    fn labels(&mut self, limits: &Limits, fix: &mut Repairs) -> Result<Labels, Error> {
        let n = self.count("label count", limits.max_labels, 2)?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            let k = self.text("label name", limits::MAX_LABEL_NAME_BYTES, fix)?;
            let v = self.text("label value", limits::MAX_LABEL_VALUE_BYTES, fix)?;
            pairs.push((k, v));
        }
        Ok(Labels::new(pairs))
    }

    fn anomalies(&mut self, limits: &Limits, fix: &mut Repairs) -> Result<Vec<Anomaly>, Error> {
        let n = self.count("anomaly count", MAX_ANOMALIES, 36)?;
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.u64_le("anomaly id")?;
            let k = self.u8("anomaly kind")?;
            let stream = self.labels(limits, fix)?;
            let time_ns = unzigzag(self.varint("anomaly time")?);
            let score = self.f64_le("anomaly score")?;
            let baseline = self.f64_le("anomaly baseline")?;
            let observed = self.f64_le("anomaly observed")?;
            let nt = self.count("anomaly template count", MAX_ANOMALY_ITEMS, 9)?;
            let mut templates = Vec::with_capacity(nt);
            for _ in 0..nt {
                let id = self.u64_le("anomaly template id")?;
                let text = self.text("anomaly template text", limits::MAX_TEMPLATE_BYTES, fix)?;
                templates.push(Template { id, text });
            }
            let ns = self.count("anomaly sample count", MAX_ANOMALY_ITEMS, 1)?;
            let mut samples = Vec::with_capacity(ns);
            for _ in 0..ns {
                samples.push(self.text("anomaly sample", limits::MAX_TEXT_BYTES, fix)?);
            }
            // An event of a kind this version does not know, or with a figure that is
            // not a number, cannot be shown or correlated: skipped, the rest kept.
            let (Some(kind), Some(score), Some(baseline), Some(observed)) =
                (AnomalyKind::from_u8(k), score, baseline, observed)
            else {
                fix.items_skipped += 1;
                continue;
            };
            v.push(Anomaly {
                id,
                kind,
                stream,
                time_ns,
                score,
                baseline,
                observed,
                templates,
                samples,
            });
        }
        Ok(v)
    }

    fn rest(&mut self) -> Bytes {
        self.buf.split_off(0)
    }

    fn finish(&self, what: &'static str) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::TrailingBytes {
                what,
                count: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_content() -> BatchContent {
        BatchContent {
            streams: vec![
                Labels::new([("host", "web1"), ("source", "/var/log/app.log")]),
                Labels::new([("host", "web1"), ("source", "/var/log/other.log")]),
            ],
            records: vec![
                LogRecord {
                    stream: 0,
                    time_ns: 1_700_000_000_000_000_000,
                    observed_ns: 1_700_000_000_000_000_100,
                    level: Level::Error,
                    template_id: 42,
                    flags: flags::TRUNCATED,
                    redacted: 2,
                    line: Bytes::from_static(b"error: disk full"),
                    metadata: Default::default(),
                },
                LogRecord {
                    stream: 1,
                    time_ns: 1_699_999_999_000_000_000,
                    observed_ns: 1_700_000_000_000_000_000,
                    level: Level::Info,
                    template_id: 0,
                    flags: flags::INVALID_UTF8,
                    redacted: 0,
                    line: Bytes::from_static(b"\xff\xfe bytes"),
                    metadata: Default::default(),
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn batch_round_trip_lz4() {
        let content = sample_content();
        let b = Batch::seal(7, 9, 3, Codec::Lz4, &content);
        let bytes = Frame::Batch(b.clone()).to_bytes();
        let limits = Limits::default();
        let Frame::Batch(back) = parse(bytes, &limits).unwrap() else {
            panic!("not a batch")
        };
        assert_eq!(back, b);
        assert_eq!(back.open(&limits).unwrap(), content);
    }

    #[test]
    fn corrupt_payload_fails_checksum() {
        let b = Batch::seal(1, 1, 1, Codec::None, &sample_content());
        let mut payload = b.payload.to_vec();
        let last = payload.len() - 1;
        payload[last] ^= 0x55;
        let bad = Batch {
            payload: Bytes::from(payload),
            ..b
        };
        assert!(matches!(
            bad.open(&Limits::default()),
            Err(Error::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn oversized_frame_is_refused_before_buffering() {
        let limits = Limits {
            max_frame_bytes: 1024,
            ..Limits::default()
        };
        let mut buf = BytesMut::new();
        buf.put_u32(1_000_000);
        buf.put_u8(frame_type::BATCH);
        assert!(matches!(
            decode(&mut buf, &limits),
            Err(Error::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn incomplete_is_not_an_error() {
        let bytes = Frame::Ack(Ack { epoch: 1, seq: 2 }).to_bytes();
        let limits = Limits::default();
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(decode(&mut buf, &limits).unwrap(), None);
        }
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            decode(&mut buf, &limits).unwrap(),
            Some(Frame::Ack(Ack { epoch: 1, seq: 2 }))
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn templates_aggregates_and_anomalies_round_trip() {
        use crate::record::{Aggregate, Anomaly, AnomalyKind, Template};
        let mut c = sample_content();
        c.templates = vec![Template {
            id: 42,
            text: "user <*> logged in".into(),
        }];
        c.aggregates = vec![Aggregate {
            stream: 0,
            start_ns: 1_700_000_000_000_000_000,
            window_secs: 10,
            level: Level::Error,
            template_id: 42,
            count: 1000,
            bytes: 64_000,
            shipped: 0,
        }];
        let ev = Anomaly {
            id: 7,
            kind: AnomalyKind::Silence,
            stream: Labels::new([("host", "db1")]),
            time_ns: -5,
            score: 1.5,
            baseline: 40.0,
            observed: 0.0,
            templates: c.templates.clone(),
            samples: vec!["ERROR db down".into()],
        };
        c.anomalies = vec![ev.clone()];
        c.aliases = vec![crate::record::TemplateAlias { from: 41, to: 42 }];
        let b = Batch::seal(1, 1, 1, Codec::Lz4, &c);
        assert_eq!(b.open(&Limits::default()).unwrap(), c);
        let f = Frame::Anomalies(vec![ev]);
        assert_eq!(parse(f.to_bytes(), &Limits::default()).unwrap(), f);

        // An aggregate claiming more shipped records than it counts is skipped; the
        // records and the other sections are kept.
        c.aggregates[0].shipped = 1001;
        let b = Batch::seal(1, 1, 1, Codec::Lz4, &c);
        let back = b.open(&Limits::default()).unwrap();
        assert!(back.aggregates.is_empty());
        assert_eq!(back.repairs.items_skipped, 1);
        assert_eq!(back.records, c.records);
        assert_eq!(back.anomalies, c.anomalies);
    }

    /// A long line lost its whole batch: the decoder refused any batch holding a value
    /// over a limit, so one record cost its neighbours. Values over a limit are now cut
    /// (a line is flagged `TRUNCATED`) and every record is kept.
    #[test]
    fn a_value_over_its_limit_is_cut_not_a_reason_to_refuse_the_batch() {
        use crate::record::Template;
        let mut c = sample_content();
        let long_line = vec![b'x'; limits::MAX_LINE_BYTES + 10];
        c.records[1].line = Bytes::from(long_line);
        c.records[1].flags = 0;
        // A template text of plain words far over its limit, ending in a two-byte
        // character cut in half.
        let mut text = "word ".repeat(2000);
        text.push('é');
        c.templates = vec![Template { id: 9, text }];
        c.streams[0].insert("source", "é".repeat(limits::MAX_LABEL_VALUE_BYTES));
        let b = Batch::seal(1, 1, 1, Codec::Lz4, &c);
        let back = b.open(&Limits::default()).unwrap();
        assert_eq!(back.records.len(), 2);
        assert_eq!(back.records[0], c.records[0]);
        assert_eq!(back.records[1].line.len(), limits::MAX_LINE_BYTES);
        assert_eq!(back.records[1].flags, flags::TRUNCATED);
        assert!(back.templates[0].text.len() <= limits::MAX_TEMPLATE_BYTES);
        assert!(c.templates[0].text.starts_with(&back.templates[0].text));
        let src = back.streams[0].get("source").unwrap();
        assert_eq!(src.len(), limits::MAX_LABEL_VALUE_BYTES);
        assert_eq!(back.repairs.lines_cut, 1);
        assert_eq!(back.repairs.values_cut, 2);
    }

    #[test]
    fn unknown_levels_and_flags_from_a_newer_sender_are_ignored() {
        let c = sample_content();
        let mut raw = BytesMut::new();
        c.encode_payload(&mut raw);
        // The first record's level and flags bytes follow its stream (1 byte) and its
        // two time varints; find them by re-encoding with marker values instead.
        let mut marked = c.clone();
        marked.records[0].level = Level::Fatal;
        marked.records[0].flags = flags::KNOWN;
        let mut m = BytesMut::new();
        marked.encode_payload(&mut m);
        let pos = raw
            .iter()
            .zip(m.iter())
            .position(|(a, b)| a != b)
            .expect("the encodings differ at the level byte");
        m[pos] = 200; // a level this version does not know
        m[pos + 1] = 0xf0 | flags::TRUNCATED; // unknown flag bits
        let back = BatchContent::decode_payload(m.freeze(), &Limits::default()).unwrap();
        assert_eq!(back.records[0].level, Level::Unknown);
        assert_eq!(back.records[0].flags, flags::TRUNCATED);
        assert_eq!(back.repairs.unknown_fields, 2);
        assert_eq!(back.records[1], c.records[1]);
    }

    #[test]
    fn unknown_sections_are_skipped() {
        let content = sample_content();
        let mut raw = BytesMut::new();
        put_section(&mut raw, 99, b"from the future");
        content.encode_payload(&mut raw);
        put_section(&mut raw, 100, b"");
        let back = BatchContent::decode_payload(raw.freeze(), &Limits::default()).unwrap();
        assert_eq!(back, content);
    }

    #[test]
    fn forged_counts_do_not_allocate() {
        // A stream table announcing 60,000 streams in a 4-byte body.
        let mut body = BytesMut::new();
        put_varint(&mut body, 60_000);
        let mut raw = BytesMut::new();
        put_section(&mut raw, section::STREAMS, &body);
        assert!(matches!(
            BatchContent::decode_payload(raw.freeze(), &Limits::default()),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn varint_overflow_is_an_error() {
        let mut r = Reader::new(Bytes::from_static(&[0xff; 11]));
        assert!(matches!(r.varint("x"), Err(Error::BadVarint { .. })));
        let mut r = Reader::new(Bytes::from_static(&[
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ]));
        assert_eq!(r.varint("x").unwrap(), u64::MAX);
    }

    fn arb_labels() -> impl Strategy<Value = Labels> {
        proptest::collection::vec(("[a-z_]{1,12}", "\\PC{0,24}"), 0..5).prop_map(Labels::new)
    }

    fn arb_content() -> impl Strategy<Value = BatchContent> {
        proptest::collection::vec(arb_labels(), 1..4).prop_flat_map(|streams| {
            let n = streams.len() as u32;
            let rec = (
                0..n,
                any::<i64>(),
                any::<i64>(),
                0u8..7,
                any::<u64>(),
                0u8..=flags::KNOWN,
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..300),
                arb_labels(),
            )
                .prop_map(|(stream, t, o, lv, tid, fl, red, line, meta)| LogRecord {
                    stream,
                    time_ns: t,
                    observed_ns: o,
                    level: Level::from_u8(lv).unwrap(),
                    template_id: tid,
                    flags: fl,
                    redacted: red,
                    line: Bytes::from(line),
                    metadata: meta,
                });
            (Just(streams), proptest::collection::vec(rec, 0..40)).prop_map(|(streams, records)| {
                BatchContent {
                    streams,
                    records,
                    ..Default::default()
                }
            })
        })
    }

    proptest! {
        #[test]
        fn prop_batch_round_trip(content in arb_content(), epoch: u64, seq: u64, lz4: bool) {
            let codec = if lz4 { Codec::Lz4 } else { Codec::None };
            let b = Batch::seal(epoch, seq, seq / 2, codec, &content);
            let limits = Limits::default();
            let mut buf = BytesMut::new();
            Frame::Batch(b.clone()).encode(&mut buf);
            Frame::Ack(Ack { epoch, seq }).encode(&mut buf);
            let f1 = decode(&mut buf, &limits).unwrap().unwrap();
            let f2 = decode(&mut buf, &limits).unwrap().unwrap();
            prop_assert!(buf.is_empty());
            prop_assert_eq!(f2, Frame::Ack(Ack { epoch, seq }));
            let Frame::Batch(back) = f1 else { panic!("not a batch") };
            prop_assert_eq!(back.open(&limits).unwrap(), content);
        }

        #[test]
        fn prop_control_frames_round_trip(
            id in "\\PC{0,40}", host in "\\PC{0,40}", caps: u64, v: u16,
            n1: u64, n2: u64, t: i64,
        ) {
            let limits = Limits::default();
            let frames = [
                Frame::Hello(Hello { version: v, agent_id: id.clone(), host: host.clone(), agent_version: "1".into(), capabilities: caps }),
                Frame::Welcome(Welcome { version: v, agent_id: id.clone(), server_id: host.clone(), max_frame_bytes: n1 as u32, capabilities: caps }),
                Frame::Refuse(Refuse { code: v, reason: id.clone() }),
                Frame::Reject(Reject { epoch: n1, seq: n2, code: v, reason: host.clone() }),
                Frame::Heartbeat(Heartbeat { time_ns: t, spool_bytes: n1, spool_batches: n2, lag_ns: n1 ^ n2, files: caps, unread_bytes: n1.rotate_left(3), dead_letters: n2.rotate_left(5) }),
            ];
            for f in frames {
                prop_assert_eq!(parse(f.to_bytes(), &limits).unwrap(), f);
            }
        }

        /// The decoder returns errors, never panics, on arbitrary bytes.
        #[test]
        fn prop_decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let limits = Limits { max_frame_bytes: 4096, ..Limits::default() };
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(f)) = decode(&mut buf, &limits) {
                if let Frame::Batch(b) = f {
                    let _ = b.open(&limits);
                }
            }
            let _ = BatchContent::decode_payload(Bytes::from(data), &limits);
        }

        /// Flipping any byte of a valid frame gives an error or a different valid frame, never a panic.
        #[test]
        fn prop_mutated_batches_never_panic(content in arb_content(), pos: usize, byte: u8) {
            let limits = Limits::default();
            let mut raw = BytesMut::new();
            content.encode_payload(&mut raw);
            let mut raw = raw.to_vec();
            if !raw.is_empty() {
                let p = pos % raw.len();
                raw[p] = byte;
            }
            let _ = BatchContent::decode_payload(Bytes::from(raw), &limits);
        }
    }
}
