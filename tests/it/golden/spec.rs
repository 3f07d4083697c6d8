//! An independent decoder of the log's files, written from
//! `docs/formats.md` (not from weir's code), for both versions of each
//! header; and the one difference between a version 2 file written today
//! and its golden copy that is not a format change: the writer's release.

use weir::event::Event;
use weir::ingest::manifest::{FileIdentity, Manifest, ManifestEntry};

pub(super) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

pub(super) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Checks a header of `len` bytes whose last four are the CRC32C of the
/// others and, from version 2 on, whose bytes `release_at..release_at + 8`
/// are a writer release (three `u16` and a zero one); returns the length.
fn check_header(b: &[u8], what: &str, v1_len: usize, v2_len: usize, release_at: usize) -> usize {
    let version = le32(b, 8);
    let len = match version {
        1 => v1_len,
        2 => v2_len,
        other => panic!("{what} format version {other}"),
    };
    assert!(b.len() >= len, "{what} header");
    assert_eq!(
        le32(b, len - 4),
        crc32c::crc32c(&b[..len - 4]),
        "{what} header crc"
    );
    if version == 2 {
        assert_eq!(&b[release_at + 6..release_at + 8], [0, 0], "{what} release");
    }
    len
}

/// A complete, undamaged segment file: its format version, base offset and
/// frames as `(byte position, payload)`.
pub(super) fn spec_segment(b: &[u8]) -> (u32, u64, Vec<(u32, &[u8])>) {
    assert_eq!(&b[..8], b"WEIRSEG1");
    let mut pos = check_header(b, "segment", 24, 32, 20);
    let base = le64(b, 12);
    let mut frames = Vec::new();
    while pos < b.len() {
        let len = le32(b, pos) as usize;
        assert_eq!(
            le32(b, pos + 4),
            crc32c::crc32c(&b[pos..pos + 4]),
            "length crc at {pos}"
        );
        assert!(len <= 16 << 20);
        let payload = &b[pos + 12..pos + 12 + len];
        assert_eq!(
            le32(b, pos + 8),
            crc32c::crc32c(payload),
            "payload crc at {pos}"
        );
        frames.push((pos as u32, payload));
        pos += 12 + len;
    }
    assert_eq!(pos, b.len(), "the last frame ends at the end of the file");
    (le32(b, 8), base, frames)
}

/// A complete index file: its format version, base offset and entries.
pub(super) fn spec_index(b: &[u8]) -> (u32, u64, Vec<(u32, u32)>) {
    assert_eq!(&b[..8], b"WEIRIDX1");
    let header_len = check_header(b, "index", 24, 32, 20);
    assert_eq!((b.len() - header_len) % 12, 0, "whole entries");
    let entries = b[header_len..]
        .chunks_exact(12)
        .map(|e| {
            assert_eq!(le32(e, 8), crc32c::crc32c(&e[..8]), "index entry crc");
            (le32(e, 0), le32(e, 4))
        })
        .collect();
    (le32(b, 8), le64(b, 12), entries)
}

/// An event payload.
pub(super) fn spec_event(p: &[u8]) -> Event {
    Event {
        ts: le64(p, 0),
        value: le64(p, 8) as i64,
        key: String::from_utf8(p[16..].to_vec()).unwrap(),
    }
}

/// A manifest (or marker) file: its format version and content.
pub(super) fn spec_manifest(b: &[u8]) -> (u32, Manifest) {
    assert_eq!(&b[..8], b"WEIRMFST");
    let mut pos = check_header(b, "manifest", 20, 28, 16);
    let mut entries = Vec::new();
    for _ in 0..le32(b, 12) {
        let path_len = le32(b, pos + 24) as usize;
        let end = pos + 28 + path_len;
        assert_eq!(le32(b, end), crc32c::crc32c(&b[pos..end]), "entry crc");
        entries.push(ManifestEntry {
            partition: le32(b, pos),
            records: le64(b, pos + 4),
            identity: FileIdentity {
                size_bytes: le64(b, pos + 12),
                content_crc32c: le32(b, pos + 20),
            },
            source_path: String::from_utf8(b[pos + 28..end].to_vec()).unwrap(),
        });
        pos = end + 4;
    }
    assert_eq!(pos, b.len(), "no bytes after the last entry");
    (le32(b, 8), Manifest { entries })
}

/// `bytes` of the log file named `name`, with the writer release of a
/// version 2 header replaced by `release` (and its checksum recomputed):
/// golden files keep the release that blessed them, so files are compared
/// after both are put at the same release. Other files are returned as
/// they are.
pub(super) fn at_release(name: &str, bytes: &[u8], release: [u8; 8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if let Some((release_at, header_len)) = release_field(name, bytes) {
        out[release_at..release_at + 8].copy_from_slice(&release);
        let crc = crc32c::crc32c(&out[..header_len - 4]);
        out[header_len - 4..header_len].copy_from_slice(&crc.to_le_bytes());
    }
    out
}

/// The writer release in the version 2 header of the log file named
/// `name`, or `None` for a file without one.
pub(super) fn release_of(name: &str, bytes: &[u8]) -> Option<[u8; 8]> {
    let (at, _) = release_field(name, bytes)?;
    Some(bytes[at..at + 8].try_into().unwrap())
}

/// Where the release is in a version 2 log file's header, and the header's
/// length.
fn release_field(name: &str, bytes: &[u8]) -> Option<(usize, usize)> {
    let extension = std::path::Path::new(name).extension();
    let (release_at, header_len) = if extension.is_some_and(|e| e == "seg" || e == "idx") {
        (20, 32)
    } else if name == "MANIFEST" || name == "INGEST" {
        (16, 28)
    } else {
        return None;
    };
    (bytes.len() >= header_len && le32(bytes, 8) == 2).then_some((release_at, header_len))
}
