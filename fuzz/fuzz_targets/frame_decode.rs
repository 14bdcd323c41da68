//! Feeds arbitrary bytes to the frame decoder and, for batches, to the payload decoder.
//! Any panic, overflow or over-allocation is a bug: the decoders must return errors.
#![no_main]

use bytes::BytesMut;
use heimdall_common::wire::{self, BatchContent, Frame, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_frame_bytes: 1 << 20,
        max_payload_bytes: 4 << 20,
        ..Limits::default()
    };
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = wire::decode(&mut buf, &limits) {
        if let Frame::Batch(b) = frame {
            let _ = b.open(&limits);
        }
    }
    let _ = BatchContent::decode_payload(bytes::Bytes::copy_from_slice(data), &limits);
});
