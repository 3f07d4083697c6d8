//! The sparse offset index of a segment, `<base>.idx`: a *hint* that lets a
//! reader seek near an offset instead of scanning the whole segment.
//!
//! ```text
//! header, version 2 (32 bytes): magic b"WEIRIDX1" | version u32 | base offset u64
//!                               | writer release (8 bytes) | crc32c(previous 28) u32
//! header, version 1 (24 bytes): magic b"WEIRIDX1" | version u32 | base offset u64
//!                               | crc32c(previous 20) u32
//! entry  (12 bytes): relative offset u32 | byte position u32 | crc32c(previous 8) u32
//! ```
//!
//! An index has the version of its segment (a version 1 segment, still
//! appended to as such, keeps a version 1 index, so rebuilding it gives the
//! same bytes).
//!
//! An entry says "the record with offset `base + relative offset` starts at
//! `byte position` in the segment". Entries are strictly increasing in both
//! fields. When a segment is sealed (rolled), a final *seal entry* is written
//! whose relative offset is the segment's record count and whose position is
//! its length: so an index is known to be complete iff its last entry points
//! at the end of the segment file.
//!
//! The index is never trusted over the data: [`read_index`] keeps only the
//! longest valid prefix (checksums, monotonicity, positions inside the
//! segment), and the writer rebuilds an index that is missing, damaged or
//! behind from the segment itself.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::format::{SEGMENT_HEADER_LEN_BYTES, SEGMENT_V1_HEADER_LEN_BYTES};
use super::LogError;
use crate::release::{Release, RELEASE_LEN_BYTES, THIS_RELEASE};

/// Magic bytes at the start of every index file.
pub const INDEX_MAGIC: &[u8; 8] = b"WEIRIDX1";
/// Version of the index format written for a new segment.
pub const INDEX_FORMAT_VERSION: u32 = 2;
const HEADER_LEN_BYTES: usize = 32;
const V1_HEADER_LEN_BYTES: usize = 24;
const ENTRY_LEN_BYTES: usize = 12;

/// One index entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Offset of the record relative to the segment's base offset.
    pub relative_offset: u32,
    /// Byte position of the record's frame in the segment file.
    pub byte_pos: u32,
}

/// The header of the index of a segment of format `segment_version` (1 or
/// 2): an index has its segment's version.
fn encode_header(base_offset: u64, segment_version: u32) -> Vec<u8> {
    assert!(
        (1..=INDEX_FORMAT_VERSION).contains(&segment_version),
        "no index format for segment version {segment_version}"
    );
    let mut h = Vec::with_capacity(HEADER_LEN_BYTES);
    h.extend_from_slice(INDEX_MAGIC);
    h.extend_from_slice(&segment_version.to_le_bytes());
    h.extend_from_slice(&base_offset.to_le_bytes());
    if segment_version >= 2 {
        h.extend_from_slice(&THIS_RELEASE.encode());
    }
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// The length of a valid index header for `base_offset` at the start of
/// `bytes` and the segment header length it implies, or `None`.
fn decode_header(bytes: &[u8], base_offset: u64) -> Option<(usize, usize)> {
    if bytes.len() < 12 || &bytes[..8] != INDEX_MAGIC {
        return None;
    }
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let (len, segment_header_len) = match word(8) {
        1 => (V1_HEADER_LEN_BYTES, SEGMENT_V1_HEADER_LEN_BYTES),
        2 => (HEADER_LEN_BYTES, SEGMENT_HEADER_LEN_BYTES),
        _ => return None,
    };
    let valid = bytes.len() >= len
        && crc32c::crc32c(&bytes[..len - 4]) == word(len - 4)
        && bytes[12..20] == base_offset.to_le_bytes()
        && (len == V1_HEADER_LEN_BYTES || {
            let release: &[u8; RELEASE_LEN_BYTES] = bytes[20..28].try_into().expect("8 bytes");
            Release::decode(release).is_some()
        });
    valid.then_some((len, segment_header_len))
}

/// Appends the encoding of `e` to `out`.
pub fn encode_entry(e: IndexEntry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&e.relative_offset.to_le_bytes());
    out.extend_from_slice(&e.byte_pos.to_le_bytes());
    let crc = crc32c::crc32c(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Reads the valid prefix of the index at `path` for the segment with
/// `base_offset` whose file is `segment_len_bytes` long. A missing or
/// damaged index gives fewer (possibly no) entries, never an error: the
/// caller falls back to scanning the segment.
pub fn read_index(path: &Path, base_offset: u64, segment_len_bytes: u64) -> Vec<IndexEntry> {
    let mut bytes = Vec::new();
    match File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %path.display(), error = %e, "cannot read index; scanning the segment instead");
            }
            return Vec::new();
        }
    }
    let Some((header_len, segment_header_len)) = decode_header(&bytes, base_offset) else {
        return Vec::new();
    };
    let mut entries = Vec::with_capacity((bytes.len() - header_len) / ENTRY_LEN_BYTES);
    let mut prev: Option<IndexEntry> = None;
    for chunk in bytes[header_len..].chunks_exact(ENTRY_LEN_BYTES) {
        let word = |at: usize| u32::from_le_bytes(chunk[at..at + 4].try_into().expect("4 bytes"));
        if crc32c::crc32c(&chunk[..8]) != word(8) {
            break;
        }
        let e = IndexEntry {
            relative_offset: word(0),
            byte_pos: word(4),
        };
        let in_segment = (e.byte_pos as usize) >= segment_header_len
            && u64::from(e.byte_pos) <= segment_len_bytes;
        let increasing =
            prev.is_none_or(|p| e.relative_offset > p.relative_offset && e.byte_pos > p.byte_pos);
        if !in_segment || !increasing {
            break;
        }
        entries.push(e);
        prev = Some(e);
    }
    entries
}

/// Whether `entries` end with a seal entry for a segment `segment_len_bytes` long.
pub fn is_sealed(entries: &[IndexEntry], segment_len_bytes: u64) -> bool {
    entries
        .last()
        .is_some_and(|e| u64::from(e.byte_pos) == segment_len_bytes)
}

/// Appends entries to the index of the segment being written. Entries are
/// buffered and written by [`IndexWriter::flush`], which the partition writer
/// calls only after the segment data they point to was written.
pub struct IndexWriter {
    path: PathBuf,
    file: File,
    pending: Vec<u8>,
}

impl IndexWriter {
    /// Creates (or truncates) the index of the segment with `base_offset`,
    /// of format `segment_version`, and writes its header followed by
    /// `entries`.
    pub fn create(
        path: &Path,
        base_offset: u64,
        segment_version: u32,
        entries: &[IndexEntry],
    ) -> Result<Self, LogError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(LogError::io(path))?;
        let mut pending = Vec::with_capacity(HEADER_LEN_BYTES + entries.len() * ENTRY_LEN_BYTES);
        pending.extend_from_slice(&encode_header(base_offset, segment_version));
        for &e in entries {
            encode_entry(e, &mut pending);
        }
        let mut w = Self {
            path: path.to_owned(),
            file,
            pending,
        };
        w.flush()?;
        Ok(w)
    }

    /// Buffers one entry.
    pub fn push(&mut self, e: IndexEntry) {
        encode_entry(e, &mut self.pending);
    }

    /// Writes the buffered entries (no fsync: the index is only a hint).
    pub fn flush(&mut self) -> Result<(), LogError> {
        if !self.pending.is_empty() {
            self.file
                .write_all(&self.pending)
                .map_err(LogError::io(&self.path))?;
            self.pending.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u32) -> Vec<IndexEntry> {
        (1..=n)
            .map(|i| IndexEntry {
                relative_offset: i * 10,
                byte_pos: 32 + i * 100,
            })
            .collect()
    }

    #[test]
    fn round_trip_seal_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.idx");
        assert!(read_index(&path, 5, 10_000).is_empty());
        let es = entries(20);
        IndexWriter::create(&path, 5, 2, &es).unwrap();
        assert_eq!(read_index(&path, 5, 10_000), es);
        assert!(!is_sealed(&es, 10_000));
        assert!(is_sealed(&es, 32 + 2000));
        // Wrong base offset: header mismatch, nothing trusted.
        assert!(read_index(&path, 6, 10_000).is_empty());
        // Entries beyond the segment's end are dropped.
        assert_eq!(read_index(&path, 5, 32 + 1000), es[..10]);

        let good = std::fs::read(&path).unwrap();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            let got = read_index(&path, 5, 10_000);
            let expect_prefix = if i < HEADER_LEN_BYTES {
                0
            } else {
                (i - HEADER_LEN_BYTES) / ENTRY_LEN_BYTES
            };
            assert_eq!(got, es[..expect_prefix], "flip at {i}");
        }
        // A torn last entry is ignored.
        std::fs::write(&path, &good[..good.len() - 5]).unwrap();
        assert_eq!(read_index(&path, 5, 10_000), es[..19]);
    }

    #[test]
    fn non_monotonic_entries_cut_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.idx");
        let mut es = entries(5);
        es[3].byte_pos = es[2].byte_pos;
        let mut w = IndexWriter::create(&path, 0, 2, &es[..2]).unwrap();
        for &e in &es[2..] {
            w.push(e);
        }
        w.flush().unwrap();
        assert_eq!(read_index(&path, 0, 10_000), es[..3]);
    }

    #[test]
    fn a_version_1_index_reads_and_is_written_for_a_version_1_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.idx");
        let mut es = entries(3);
        es[0].byte_pos = 24; // a version 1 segment's first frame
        IndexWriter::create(&path, 9, 1, &es).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 24 + 3 * 12);
        assert_eq!(&bytes[..8], INDEX_MAGIC);
        assert_eq!(bytes[8..12], 1u32.to_le_bytes());
        assert_eq!(bytes[20..24], crc32c::crc32c(&bytes[..20]).to_le_bytes());
        assert_eq!(read_index(&path, 9, 10_000), es);
        // A version 2 index cannot point into a version 2 segment's header.
        IndexWriter::create(&path, 9, 2, &es).unwrap();
        assert!(read_index(&path, 9, 10_000).is_empty());
        // An unknown version is not trusted, even with a valid checksum.
        IndexWriter::create(&path, 9, 2, &entries(3)).unwrap();
        let mut newer = std::fs::read(&path).unwrap();
        assert_eq!(read_index(&path, 9, 10_000), entries(3));
        newer[8] = 3;
        let crc = crc32c::crc32c(&newer[..28]);
        newer[28..32].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, &newer).unwrap();
        assert!(read_index(&path, 9, 10_000).is_empty());
    }
}
