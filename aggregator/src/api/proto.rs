//! A reader of the Protocol Buffers wire format, enough for the two messages Heimdall
//! accepts from other senders: Loki's `logproto.PushRequest` and OTLP's
//! `ExportLogsServiceRequest`. Both are decoded field by field from their published
//! `.proto` definitions; unknown fields are skipped, as protobuf requires, so newer
//! senders stay compatible.
//!
//! Hand-written rather than generated: the two messages need a few dozen lines, where a
//! code generator would add a build-time compiler and several crates.

/// Why a message does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The message ends inside a field.
    #[error("protobuf message truncated in {0}")]
    Truncated(&'static str),
    /// A varint longer than ten bytes.
    #[error("protobuf varint too long in {0}")]
    BadVarint(&'static str),
    /// A wire type that does not exist (or the deprecated groups).
    #[error("protobuf wire type {1} is not supported (in {0})")]
    WireType(&'static str, u8),
    /// A field with another wire type than its definition says.
    #[error("protobuf field {1} of {0} has wire type {2}")]
    FieldType(&'static str, u32, u8),
    /// Nested deeper than any message Heimdall reads.
    #[error("protobuf message nested too deep in {0}")]
    TooDeep(&'static str),
}

/// A field's value as the wire carries it.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

impl<'a> Value<'a> {
    /// The value of a length-delimited field (string, bytes, message).
    pub fn bytes(self, msg: &'static str, field: u32) -> Result<&'a [u8], Error> {
        match self {
            Value::Bytes(b) => Ok(b),
            other => Err(Error::FieldType(msg, field, other.wire_type())),
        }
    }

    /// The value of a varint field.
    pub fn varint(self, msg: &'static str, field: u32) -> Result<u64, Error> {
        match self {
            Value::Varint(v) => Ok(v),
            other => Err(Error::FieldType(msg, field, other.wire_type())),
        }
    }

    /// The value of a `fixed64`/`double` field.
    pub fn fixed64(self, msg: &'static str, field: u32) -> Result<u64, Error> {
        match self {
            Value::Fixed64(v) => Ok(v),
            other => Err(Error::FieldType(msg, field, other.wire_type())),
        }
    }

    fn wire_type(self) -> u8 {
        match self {
            Value::Varint(_) => 0,
            Value::Fixed64(_) => 1,
            Value::Bytes(_) => 2,
            Value::Fixed32(_) => 5,
        }
    }
}

/// The fields of one message, in wire order.
pub struct Fields<'a> {
    buf: &'a [u8],
    msg: &'static str,
}

/// Reads the fields of `buf`, a message of type `msg` (named in errors).
pub fn fields<'a>(buf: &'a [u8], msg: &'static str) -> Fields<'a> {
    Fields { buf, msg }
}

fn varint(buf: &mut &[u8], msg: &'static str) -> Result<u64, Error> {
    let mut v = 0u64;
    for i in 0..10 {
        let Some((&b, rest)) = buf.split_first() else {
            return Err(Error::Truncated(msg));
        };
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Error::BadVarint(msg))
}

fn take<'a>(buf: &mut &'a [u8], n: usize, msg: &'static str) -> Result<&'a [u8], Error> {
    if buf.len() < n {
        return Err(Error::Truncated(msg));
    }
    let (a, b) = buf.split_at(n);
    *buf = b;
    Ok(a)
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let msg = self.msg;
        let mut one = || -> Result<(u32, Value<'a>), Error> {
            let key = varint(&mut self.buf, msg)?;
            let field = u32::try_from(key >> 3).unwrap_or(u32::MAX);
            let v = match (key & 7) as u8 {
                0 => Value::Varint(varint(&mut self.buf, msg)?),
                1 => {
                    let b = take(&mut self.buf, 8, msg)?;
                    Value::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
                }
                2 => {
                    let n = varint(&mut self.buf, msg)?;
                    let n = usize::try_from(n).map_err(|_| Error::Truncated(msg))?;
                    Value::Bytes(take(&mut self.buf, n, msg)?)
                }
                5 => {
                    let b = take(&mut self.buf, 4, msg)?;
                    Value::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
                }
                w => return Err(Error::WireType(msg, w)),
            };
            Ok((field, v))
        };
        let r = one();
        if r.is_err() {
            // Nothing after a broken field can be trusted.
            self.buf = &[];
        }
        Some(r)
    }
}

/// Writes protobuf fields: for tests, benchmarks and the OTLP answers.
#[derive(Debug, Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    /// A length-delimited field.
    pub fn bytes(&mut self, field: u32, b: &[u8]) -> &mut Writer {
        self.varint(u64::from(field) << 3 | 2);
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
        self
    }

    /// A varint field.
    pub fn uint(&mut self, field: u32, v: u64) -> &mut Writer {
        self.varint(u64::from(field) << 3);
        self.varint(v);
        self
    }

    /// A `fixed64` field.
    pub fn fixed64(&mut self, field: u32, v: u64) -> &mut Writer {
        self.varint(u64::from(field) << 3 | 1);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A nested message.
    pub fn message(&mut self, field: u32, m: &Writer) -> &mut Writer {
        self.bytes(field, &m.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_and_damage_is_an_error() {
        let mut inner = Writer::default();
        inner.bytes(1, b"name").uint(2, 300);
        let mut w = Writer::default();
        w.fixed64(1, 7).message(2, &inner).uint(99, u64::MAX);
        let got: Vec<_> = fields(&w.buf, "t").collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].1.fixed64("t", 1).unwrap(), 7);
        assert_eq!(got[2].1.varint("t", 99).unwrap(), u64::MAX);
        let nested: Vec<_> = fields(got[1].1.bytes("t", 2).unwrap(), "n")
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(nested[0].1.bytes("n", 1).unwrap(), b"name");
        assert_eq!(nested[1].1.varint("n", 2).unwrap(), 300);
        assert!(matches!(
            got[0].1.bytes("t", 1),
            Err(Error::FieldType("t", 1, 1))
        ));
        // Every cut of the message is an error or a shorter list, never a panic.
        for n in 0..w.buf.len() {
            let _ = fields(&w.buf[..n], "t").collect::<Vec<_>>();
        }
        assert!(matches!(
            fields(&[0x0b], "t").next(),
            Some(Err(Error::WireType("t", 3)))
        ));
        assert!(matches!(fields(&[0x08; 12], "t").next(), Some(Ok(_))));
        assert!(matches!(
            fields(
                &[0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
                "t"
            )
            .next(),
            Some(Err(Error::BadVarint("t")))
        ));
    }
}
