//! The record frame shared by the input log's segments and the checkpoint
//! commit stream (all integers little-endian):
//!
//! ```text
//! record frame (12 bytes + payload):
//!   len u32 | crc32c(len bytes) u32 | crc32c(payload) u32 | payload (len bytes)
//! ```
//!
//! The length has its own checksum, so a flipped length byte is reported as
//! corruption instead of looking like a record that extends past the end of
//! the file (a torn write). The layout is versioned by the files that use it
//! (`docs/formats.md`); changing it changes both.

/// Size of a record frame header (before the payload).
pub const FRAME_HEADER_LEN_BYTES: usize = 12;
/// The largest payload a record may have (16 MiB).
pub const MAX_RECORD_SIZE_BYTES: usize = 16 << 20;

/// Encodes the frame header of `payload` (whose length must be at most
/// [`MAX_RECORD_SIZE_BYTES`]).
pub fn encode_frame_header(payload: &[u8]) -> [u8; FRAME_HEADER_LEN_BYTES] {
    debug_assert!(payload.len() <= MAX_RECORD_SIZE_BYTES);
    let len = (payload.len() as u32).to_le_bytes();
    let mut h = [0u8; FRAME_HEADER_LEN_BYTES];
    h[..4].copy_from_slice(&len);
    h[4..8].copy_from_slice(&crc32c::crc32c(&len).to_le_bytes());
    h[8..12].copy_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    h
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length.
    pub len_bytes: usize,
    /// Expected CRC32C of the payload.
    pub payload_crc32c: u32,
}

/// Decodes the first [`FRAME_HEADER_LEN_BYTES`] of `h`, checking the length
/// checksum and the size limit.
pub fn decode_frame_header(h: &[u8]) -> Result<FrameHeader, String> {
    let len = u32_at(h, 0);
    let stored = u32_at(h, 4);
    let computed = crc32c::crc32c(&h[..4]);
    if stored != computed {
        return Err(format!(
            "record length checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let len_bytes = len as usize;
    if len_bytes > MAX_RECORD_SIZE_BYTES {
        return Err(format!(
            "record length {len_bytes} exceeds the maximum of {MAX_RECORD_SIZE_BYTES}"
        ));
    }
    Ok(FrameHeader {
        len_bytes,
        payload_crc32c: u32_at(h, 8),
    })
}

/// Checks a payload against the CRC from its frame header.
pub fn check_payload(header: FrameHeader, payload: &[u8]) -> Result<(), String> {
    let computed = crc32c::crc32c(payload);
    if computed == header.payload_crc32c {
        Ok(())
    } else {
        Err(format!(
            "record payload checksum mismatch (stored {:#010x}, computed {computed:#010x})",
            header.payload_crc32c
        ))
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
