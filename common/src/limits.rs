//! The limits the agent and the aggregator share: one definition, checked on both sides.
//!
//! The agent keeps everything it produces within these limits (its configuration is
//! validated against them, and what it reads is cut to them), and the aggregator's
//! decoder enforces them. Because both take them from here, a batch the agent can
//! produce is always one the aggregator accepts.
//!
//! Two kinds of limit:
//! - **Per value** (a line, a template text, a label, an anomaly sample): the decoder
//!   *cuts* a value over its limit and flags the record; it never refuses a batch for
//!   what one record contains. The agent cuts first, so this only matters for other
//!   senders and for agents of another version.
//! - **Structural** (frame and payload size, counts of records, streams, labels): these
//!   bound the memory a decoder may allocate. A batch over one cannot be decoded safely
//!   and is rejected; the agent's batching keeps far below them by construction.

/// Longest line a record keeps. The agent's `max_line_bytes` may not exceed it; the
/// decoder cuts a longer line here and sets `TRUNCATED`.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// Longest template text kept; longer texts are cut at a character boundary.
pub const MAX_TEMPLATE_BYTES: usize = 4096;

/// Longest label name.
pub const MAX_LABEL_NAME_BYTES: usize = 1024;

/// Longest label value; longer values (a very long file path) are cut.
pub const MAX_LABEL_VALUE_BYTES: usize = 4096;

/// Most labels on one stream.
pub const MAX_LABELS: usize = 64;

/// Longest anomaly sample line and longest free-text field of control frames (host
/// names, versions, reasons).
pub const MAX_TEXT_BYTES: usize = 4096;

/// Largest uncompressed batch payload a decoder accepts.
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;

/// Largest frame, header included: a payload of [`MAX_PAYLOAD_BYTES`] that lz4 could
/// not compress (lz4 adds at most 1/255 of the input plus 16 bytes) with the batch
/// header around it.
pub const MAX_FRAME_BYTES: usize = MAX_PAYLOAD_BYTES + MAX_PAYLOAD_BYTES / 255 + 16 + 64;

/// Most records in one batch.
pub const MAX_RECORDS: usize = 1_000_000;

/// Most streams in one batch.
pub const MAX_STREAMS: usize = 65_536;

/// Largest `batch.max_bytes` an agent may be configured with. A batch closes when its
/// estimated encoded size reaches it, and may pass it by one chunk of at most
/// [`MAX_CHUNK_BYTES`]; both together stay well under [`MAX_PAYLOAD_BYTES`].
pub const MAX_BATCH_BYTES: usize = 32 << 20;

/// Most records an agent may put in one batch (`batch.max_records`).
pub const MAX_BATCH_RECORDS: usize = 500_000;

/// Upper bound of the encoded size one chunk (the lines a source hands on at once) adds
/// to a batch: sources cap their chunks at this estimate.
pub const MAX_CHUNK_BYTES: usize = 16 << 20;

/// Upper bound of the bytes a record adds to a batch besides its line: the varints,
/// level, flags and template id of its wire encoding.
pub const RECORD_OVERHEAD_BYTES: usize = 48;

/// The longest prefix of `s` of at most `max` bytes that ends at a character boundary.
pub fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Cuts `s` in place to at most `max` bytes at a character boundary; returns whether it
/// was cut.
pub fn cut_string(s: &mut String, max: usize) -> bool {
    let n = cut_str(s, max).len();
    if n < s.len() {
        s.truncate(n);
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_str_ends_at_a_character_boundary() {
        assert_eq!(cut_str("abc", 10), "abc");
        assert_eq!(cut_str("abc", 2), "ab");
        // 'é' is two bytes: a cut inside it goes back before it.
        assert_eq!(cut_str("aé", 2), "a");
        assert_eq!(cut_str("€€", 4), "€");
        assert_eq!(cut_str("", 0), "");
        let mut s = String::from("ééé");
        assert!(cut_string(&mut s, 5));
        assert_eq!(s, "éé");
        assert!(!cut_string(&mut s, 5));
    }

    #[test]
    fn a_full_batch_fits_the_payload_limit() {
        // Everything a batch can hold besides its records is counted in its estimate,
        // so the worst case is a full batch plus one chunk.
        const { assert!(MAX_BATCH_BYTES + MAX_CHUNK_BYTES < MAX_PAYLOAD_BYTES) };
        const { assert!(MAX_FRAME_BYTES <= u32::MAX as usize) };
        const { assert!(MAX_BATCH_RECORDS <= MAX_RECORDS) };
    }
}
