//! Byte layout of segment files, all integers little-endian.
//!
//! ```text
//! segment header, version 2 (32 bytes):
//!   magic b"WEIRSEG1" | version u32 | base offset u64 | writer release (8 bytes,
//!   `crate::release`) | crc32c(previous 28 bytes) u32
//! segment header, version 1 (24 bytes, still read):
//!   magic b"WEIRSEG1" | version u32 | base offset u64 | crc32c(previous 20 bytes) u32
//! record frame (12 bytes + payload), the same in both versions:
//!   len u32 | crc32c(len bytes) u32 | crc32c(payload) u32 | payload (len bytes)
//! ```
//!
//! Every later version keeps the first 32 bytes of version 2 as they are
//! (its own header fields follow them), so this binary can verify them and
//! name the release that wrote a segment it cannot read. A segment keeps
//! the version it was created with: a version 1 segment is appended to as
//! version 1, new segments are version 2.
//!
//! The length has its own checksum, so a flipped length byte is reported as
//! corruption instead of looking like a record that extends past the end of
//! the file (a torn write). The frame is [`crate::storage::frame`]'s, shared
//! with the checkpoint commit stream. Segment files are `<base offset as 20
//! digits>.seg`.

use std::path::{Path, PathBuf};

use crate::release::{Release, RELEASE_LEN_BYTES, THIS_RELEASE};
pub use crate::storage::frame::{
    check_payload, decode_frame_header, encode_frame_header, FrameHeader, FRAME_HEADER_LEN_BYTES,
    MAX_RECORD_SIZE_BYTES,
};

use super::LogError;

/// Magic bytes at the start of every segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"WEIRSEG1";
/// Version of the segment format written by this code.
pub const SEGMENT_FORMAT_VERSION: u32 = 2;
/// Size of the segment header this code writes (version 2).
pub const SEGMENT_HEADER_LEN_BYTES: usize = 32;
/// Size of a version 1 segment header (no writer release).
pub const SEGMENT_V1_HEADER_LEN_BYTES: usize = 24;
/// The bytes of a header that say how long it is: magic and version.
pub const SEGMENT_HEADER_PREFIX_LEN_BYTES: usize = 12;

/// A decoded segment header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version (1 or 2).
    pub version: u32,
    /// Offset of the segment's first record.
    pub base_offset: u64,
    /// The release that created the segment (`None` for version 1).
    pub release: Option<Release>,
}

impl SegmentHeader {
    /// Where the segment's first frame starts.
    pub fn len_bytes(&self) -> usize {
        if self.version == 1 {
            SEGMENT_V1_HEADER_LEN_BYTES
        } else {
            SEGMENT_HEADER_LEN_BYTES
        }
    }
}

/// Encodes the header of a segment whose first record has offset
/// `base_offset`, in the current version.
pub fn encode_segment_header(base_offset: u64) -> [u8; SEGMENT_HEADER_LEN_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_LEN_BYTES];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_FORMAT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&base_offset.to_le_bytes());
    h[20..28].copy_from_slice(&THIS_RELEASE.encode());
    let crc = crc32c::crc32c(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// How many header bytes a segment whose header starts with `prefix` (at
/// least [`SEGMENT_HEADER_PREFIX_LEN_BYTES`]) has to be read before
/// [`decode_segment_header`] can decide: 24 for version 1, otherwise 32.
pub fn segment_header_len(prefix: &[u8]) -> Result<usize, String> {
    if prefix.len() < SEGMENT_HEADER_PREFIX_LEN_BYTES {
        return Err(format!("segment header has only {} bytes", prefix.len()));
    }
    if &prefix[..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".to_owned());
    }
    Ok(if u32_at(prefix, 8) == 1 {
        SEGMENT_V1_HEADER_LEN_BYTES
    } else {
        SEGMENT_HEADER_LEN_BYTES
    })
}

/// Decodes a segment header (of [`segment_header_len`] bytes or more), or
/// says why it is invalid; a version this binary cannot read is refused
/// naming the release that wrote it.
pub fn decode_segment_header(h: &[u8]) -> Result<SegmentHeader, String> {
    let len = segment_header_len(h)?;
    if h.len() < len {
        return Err(format!("segment header has only {} bytes", h.len()));
    }
    let stored = u32_at(h, len - 4);
    let computed = crc32c::crc32c(&h[..len - 4]);
    if stored != computed {
        return Err(format!(
            "segment header checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
        ));
    }
    let version = u32_at(h, 8);
    let base_offset = u64::from_le_bytes(h[12..20].try_into().expect("8 bytes"));
    if version == 1 {
        return Ok(SegmentHeader {
            version,
            base_offset,
            release: None,
        });
    }
    let release_bytes: &[u8; RELEASE_LEN_BYTES] = h[20..28].try_into().expect("8 bytes");
    if version != SEGMENT_FORMAT_VERSION {
        return Err(Release::refusal(
            "log segment",
            version,
            SEGMENT_FORMAT_VERSION,
            release_bytes,
        ));
    }
    let release = Release::decode(release_bytes)
        .ok_or("segment header: reserved release bytes are not zero")?;
    Ok(SegmentHeader {
        version,
        base_offset,
        release: Some(release),
    })
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
        let header = decode_segment_header(&h).unwrap();
        assert_eq!(header.base_offset, 123_456_789);
        assert_eq!((header.version, header.len_bytes()), (2, 32));
        assert_eq!(header.release, Some(THIS_RELEASE));
        for i in 0..h.len() {
            for bit in 0..8 {
                let mut bad = h;
                bad[i] ^= 1 << bit;
                assert!(decode_segment_header(&bad).is_err(), "byte {i} bit {bit}");
            }
        }
        assert!(decode_segment_header(&h[..31]).is_err());
    }

    /// A version 1 header as `docs/formats.md` describes it.
    fn v1_header(base_offset: u64) -> [u8; 24] {
        let mut h = [0u8; 24];
        h[..8].copy_from_slice(SEGMENT_MAGIC);
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[12..20].copy_from_slice(&base_offset.to_le_bytes());
        let crc = crc32c::crc32c(&h[..20]);
        h[20..].copy_from_slice(&crc.to_le_bytes());
        h
    }

    #[test]
    fn version_1_headers_still_read_and_every_flip_is_detected() {
        let h = v1_header(77);
        assert_eq!(segment_header_len(&h), Ok(24));
        let header = decode_segment_header(&h).unwrap();
        assert_eq!(
            (header.version, header.base_offset, header.release),
            (1, 77, None)
        );
        assert_eq!(header.len_bytes(), 24);
        // Followed by frame bytes, as in a file: a flipped version must not
        // make them read as a newer header.
        let mut file = h.to_vec();
        file.extend_from_slice(&[0x5a; 16]);
        for i in 0..h.len() {
            for bit in 0..8 {
                let mut bad = file.clone();
                bad[i] ^= 1 << bit;
                let err = decode_segment_header(&bad).unwrap_err();
                assert!(!err.contains("newer"), "byte {i} bit {bit}: {err}");
            }
        }
    }

    #[test]
    fn a_newer_version_is_refused_naming_its_writer() {
        let mut h = encode_segment_header(5).to_vec();
        h[8..12].copy_from_slice(&3u32.to_le_bytes());
        h[20..28].copy_from_slice(&Release::parse("9.8.7").encode());
        h[26] = 1; // a later version may use the reserved bytes
        let crc = crc32c::crc32c(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(&[0; 8]); // its own, longer header
        let err = decode_segment_header(&h).unwrap_err();
        assert!(
            err.starts_with(
                "log segment version 3, written by weir 9.8.7 (a newer weir): this binary (weir "
            ),
            "{err}"
        );
        assert!(err.ends_with("reads versions 1 to 2"), "{err}");
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
