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

/// CRC32C (Castagnoli, reflected polynomial `0x82F63B78`) tables for a
/// 4-byte input: `LENGTH_CRC_TABLES[k][b]` is the CRC register after byte
/// `b` followed by `k` zero bytes.
const LENGTH_CRC_TABLES: [[u32; 256]; 4] = length_crc_tables();

const fn length_crc_tables() -> [[u32; 256]; 4] {
    let mut t = [[0u32; 256]; 4];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            bit += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 4 {
        let mut i = 0;
        while i < 256 {
            t[k][i] = (t[k - 1][i] >> 8) ^ t[0][(t[k - 1][i] & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

/// CRC32C of the 4 bytes of a frame's length, by four table lookups: the
/// same value as `crc32c::crc32c(&bytes)`, which for 4 bytes cost ~5 ns a
/// call against ~0.5 ns (`crc32c` 0.6, this machine), twice per record (once
/// to write it, once to read it).
#[inline]
pub fn length_crc32c(bytes: [u8; 4]) -> u32 {
    let t = &LENGTH_CRC_TABLES;
    let x = !u32::from_le_bytes(bytes);
    !(t[3][(x & 0xff) as usize]
        ^ t[2][((x >> 8) & 0xff) as usize]
        ^ t[1][((x >> 16) & 0xff) as usize]
        ^ t[0][(x >> 24) as usize])
}

/// Encodes the frame header of `payload` (whose length must be at most
/// [`MAX_RECORD_SIZE_BYTES`]).
pub fn encode_frame_header(payload: &[u8]) -> [u8; FRAME_HEADER_LEN_BYTES] {
    debug_assert!(payload.len() <= MAX_RECORD_SIZE_BYTES);
    let len = (payload.len() as u32).to_le_bytes();
    let mut h = [0u8; FRAME_HEADER_LEN_BYTES];
    h[..4].copy_from_slice(&len);
    h[4..8].copy_from_slice(&length_crc32c(len).to_le_bytes());
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
    let computed = length_crc32c(h[..4].try_into().expect("4 bytes"));
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

#[cfg(test)]
mod tests {
    use super::length_crc32c;
    use proptest::prelude::*;

    #[test]
    fn the_length_crc_is_crc32c_for_small_and_edge_lengths() {
        for len in (0..70_000u32).chain([1 << 24, (1 << 24) + 1, u32::MAX - 1, u32::MAX]) {
            let bytes = len.to_le_bytes();
            assert_eq!(length_crc32c(bytes), crc32c::crc32c(&bytes), "length {len}");
        }
    }

    proptest! {
        #[test]
        fn the_length_crc_is_crc32c(bytes in any::<[u8; 4]>()) {
            prop_assert_eq!(length_crc32c(bytes), crc32c::crc32c(&bytes));
        }
    }
}
