//! Byte layout of segment files (format version 1), all integers little-endian.
//!
//! ```text
//! segment header (24 bytes):
//!   magic b"WEIRSEG1" | version u32 | base offset u64 | crc32c(previous 20 bytes) u32
//! record frame (12 bytes + payload):
//!   len u32 | crc32c(len bytes) u32 | crc32c(payload) u32 | payload (len bytes)
//! ```
//!
//! The length has its own checksum, so a flipped length byte is reported as
//! corruption instead of looking like a record that extends past the end of
//! the file (a torn write). The frame is [`crate::storage::frame`]'s, shared
//! with the checkpoint commit stream. Segment files are `<base offset as 20
//! digits>.seg`.

use std::path::{Path, PathBuf};

pub use crate::storage::frame::{
    check_payload, decode_frame_header, encode_frame_header, FrameHeader, FRAME_HEADER_LEN_BYTES,
    MAX_RECORD_SIZE_BYTES,
};

use super::LogError;

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"WEIRSEG1";
/// Version of the segment format written by this code.
pub const SEGMENT_FORMAT_VERSION: u32 = 1;
/// Size of the segment header.
pub const SEGMENT_HEADER_LEN_BYTES: usize = 24;

/// Encodes the header of a segment whose first record has offset `base_offset`.
pub fn encode_segment_header(base_offset: u64) -> [u8; SEGMENT_HEADER_LEN_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_LEN_BYTES];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&base_offset.to_le_bytes());
    let crc = crc32c::crc32c(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Decodes a segment header and returns its base offset, or why it is invalid.
pub fn decode_segment_header(h: &[u8]) -> Result<u64, String> {
    if h.len() < SEGMENT_HEADER_LEN_BYTES {
        return Err(format!("segment header has only {} bytes", h.len()));
    }
    let stored = u32_at(h, 20);
    let computed = crc32c::crc32c(&h[..20]);
    if stored != computed {
        return Err(format!(
            "segment header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    if &h[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".to_owned());
    }
    let version = u32_at(h, 8);
    if version != SEGMENT_FORMAT_VERSION {
        return Err(format!(
            "log segment version {version}, written by {} weir: this binary (weir {}) reads version {SEGMENT_FORMAT_VERSION}",
            if version > SEGMENT_FORMAT_VERSION { "a newer" } else { "an older" },
            env!("CARGO_PKG_VERSION"),
        ));
    }
    Ok(u64::from_le_bytes(h[12..20].try_into().expect("8 bytes")))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// `<base offset as 20 digits>.seg`.
pub fn segment_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.seg")
}

/// `<base offset as 20 digits>.idx`.
pub fn index_file_name(base_offset: u64) -> String {
    format!("{base_offset:020}.idx")
}

/// The path of the segment with `base_offset` in partition directory `dir`.
pub fn segment_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(segment_file_name(base_offset))
}

/// The path of the index of the segment with `base_offset` in `dir`.
pub fn index_path(dir: &Path, base_offset: u64) -> PathBuf {
    dir.join(index_file_name(base_offset))
}

/// Parses a segment file name; other names give `None`.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The base offsets of the segments in partition directory `dir`, sorted.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, LogError> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(LogError::io(dir))? {
        let entry = entry.map_err(LogError::io(dir))?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_header_round_trip_and_every_flip_detected() {
        let h = encode_segment_header(123_456_789);
        assert_eq!(decode_segment_header(&h), Ok(123_456_789));
        for i in 0..h.len() {
            for bit in 0..8 {
                let mut bad = h;
                bad[i] ^= 1 << bit;
                assert!(decode_segment_header(&bad).is_err(), "byte {i} bit {bit}");
            }
        }
        assert!(decode_segment_header(&h[..23]).is_err());
    }

    #[test]
    fn frame_header_round_trip_and_flips() {
        let payload = b"hello world";
        let h = encode_frame_header(payload);
        let d = decode_frame_header(&h).unwrap();
        assert_eq!(d.len_bytes, payload.len());
        assert!(check_payload(d, payload).is_ok());
        for i in 0..h.len() {
            let mut bad = h;
            bad[i] ^= 0x40;
            let ok = decode_frame_header(&bad).and_then(|d| {
                if d.len_bytes == payload.len() {
                    check_payload(d, payload)
                } else {
                    Err("length".into())
                }
            });
            assert!(ok.is_err(), "flip at {i} undetected");
        }
        let mut p = *payload;
        p[3] ^= 1;
        assert!(check_payload(d, &p).is_err());
    }

    #[test]
    fn oversized_length_rejected_even_with_valid_crc() {
        let len = ((MAX_RECORD_SIZE_BYTES + 1) as u32).to_le_bytes();
        let mut h = [0u8; 12];
        h[..4].copy_from_slice(&len);
        h[4..8].copy_from_slice(&crc32c::crc32c(&len).to_le_bytes());
        assert!(decode_frame_header(&h).unwrap_err().contains("exceeds"));
    }

    #[test]
    fn file_names() {
        assert_eq!(segment_file_name(42), "00000000000000000042.seg");
        assert_eq!(parse_segment_file_name(&segment_file_name(42)), Some(42));
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        for bad in [
            "42.seg",
            "00000000000000000042.idx",
            "0000000000000000004x.seg",
        ] {
            assert_eq!(parse_segment_file_name(bad), None);
        }
    }
}
