//! The ingest manifest `<log_dir>/<topic>/MANIFEST`: which input files
//! (by canonical path, with the size and CRC32C of their content) were
//! ingested into which partition, with how many records.
//!
//! Format version 2, little-endian:
//!
//! ```text
//! header: magic b"WEIRMFST" | version u32 | entry count u32
//!         | writer release (8 bytes, `crate::release`) | crc32c(previous 24 bytes) u32
//! entry:  partition u32 | records u64 | size_bytes u64 | content crc32c u32
//!         | path length u32 | path (UTF-8) | crc32c(entry bytes before it) u32
//! ```
//!
//! Version 1 (still read) has no release: its header is the first 16 bytes
//! and their checksum (20 bytes). Every later version keeps the 28 header
//! bytes of version 2, so this binary names the release that wrote a
//! manifest it cannot read. A manifest is rewritten whole, in the current
//! version, by an ingest that adds (or adopts) a partition; an ingest that
//! skips every file leaves it as it is.
//!
//! The same encoding with a single entry is the `INGEST` marker written into
//! a partition directory before it is renamed into place, so a partition
//! renamed just before a crash can be adopted without its source file.
//!
//! The path identifies the file (decision 23). This code writes the
//! canonical path; earlier versions wrote the path as given to ingest (maybe
//! relative), in the same layout, so the version stayed 1 and their
//! manifests read as before.

use std::path::Path;

use crate::release::{Release, RELEASE_LEN_BYTES, THIS_RELEASE};

/// Magic bytes of a manifest (and of a partition's ingest marker).
pub const MANIFEST_MAGIC: &[u8; 8] = b"WEIRMFST";
/// Version of the manifest format written by this code.
pub const MANIFEST_FORMAT_VERSION: u32 = 2;
const HEADER_LEN_BYTES: usize = 28;
const V1_HEADER_LEN_BYTES: usize = 20;
/// The longest path an entry records.
pub const MAX_PATH_LEN_BYTES: usize = 64 << 10;

/// The content of an input file: its size and CRC32C. Not what identifies
/// the file (its path does); it tells whether the file changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// Size of the file.
    pub size_bytes: u64,
    /// CRC32C of the whole content.
    pub content_crc32c: u32,
}

/// One ingested file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The partition holding its records.
    pub partition: u32,
    /// Number of records (rows).
    pub records: u64,
    /// Its content's size and CRC32C.
    pub identity: FileIdentity,
    /// The path it was ingested from: what identifies it. Canonical when
    /// written by this code; as given to ingest by earlier versions.
    pub source_path: String,
}

/// All ingested files of a topic, in ingest order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The entries.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// The entry of `partition`.
    pub fn partition(&self, partition: u32) -> Option<&ManifestEntry> {
        self.entries.iter().find(|e| e.partition == partition)
    }

    /// The partition number a new file gets: one more than the largest used.
    pub fn next_partition(&self) -> Option<u32> {
        match self.entries.iter().map(|e| e.partition).max() {
            None => Some(0),
            Some(p) => p.checked_add(1),
        }
    }

    /// Encodes the manifest.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN_BYTES + self.entries.len() * 64);
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&MANIFEST_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        out.extend_from_slice(&THIS_RELEASE.encode());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        for e in &self.entries {
            let start = out.len();
            out.extend_from_slice(&e.partition.to_le_bytes());
            out.extend_from_slice(&e.records.to_le_bytes());
            out.extend_from_slice(&e.identity.size_bytes.to_le_bytes());
            out.extend_from_slice(&e.identity.content_crc32c.to_le_bytes());
            let path = &e.source_path.as_bytes()[..e.source_path.len().min(MAX_PATH_LEN_BYTES)];
            out.extend_from_slice(&(path.len() as u32).to_le_bytes());
            out.extend_from_slice(path);
            let crc = crc32c::crc32c(&out[start..]);
            out.extend_from_slice(&crc.to_le_bytes());
        }
        out
    }

    /// Whether `bytes` start as a manifest (or marker) of a version this
    /// binary cannot read, written by a later weir.
    pub fn is_newer_format(bytes: &[u8]) -> bool {
        bytes.len() >= 12
            && &bytes[..8] == MANIFEST_MAGIC
            && le_u32(&bytes[8..]) > MANIFEST_FORMAT_VERSION
    }

    /// Decodes a manifest, or returns the byte offset and reason of the
    /// first problem.
    pub fn decode(bytes: &[u8]) -> Result<Self, (u64, String)> {
        let mut r = Cursor { bytes, pos: 0 };
        let prefix = bytes.get(..12).ok_or((0, "truncated header".to_owned()))?;
        if &prefix[..8] != MANIFEST_MAGIC {
            return Err((0, "bad magic".to_owned()));
        }
        let version = le_u32(&prefix[8..]);
        let header_len = if version == 1 {
            V1_HEADER_LEN_BYTES
        } else {
            HEADER_LEN_BYTES
        };
        let header = r
            .take(header_len)
            .ok_or((0, "truncated header".to_owned()))?;
        if crc32c::crc32c(&header[..header_len - 4]) != le_u32(&header[header_len - 4..]) {
            return Err((0, "header checksum mismatch".to_owned()));
        }
        if version > MANIFEST_FORMAT_VERSION || version == 0 {
            let release: &[u8; RELEASE_LEN_BYTES] = header[16..24].try_into().expect("8 bytes");
            let reason = Release::refusal("manifest", version, MANIFEST_FORMAT_VERSION, release);
            return Err((0, reason));
        }
        if version == 2 && Release::decode(header[16..24].try_into().expect("8 bytes")).is_none() {
            return Err((0, "reserved release bytes are not zero".to_owned()));
        }
        let count = le_u32(&header[12..]) as usize;
        let mut entries = Vec::with_capacity(count.min(1 << 16));
        for i in 0..count {
            let start = r.pos;
            let at = start as u64;
            let truncated = || (at, format!("entry {i} is truncated"));
            let fixed = r.take(28).ok_or_else(truncated)?;
            let path_len = le_u32(&fixed[24..]) as usize;
            if path_len > MAX_PATH_LEN_BYTES {
                return Err((at, format!("entry {i} has a path of {path_len} bytes")));
            }
            let path = r.take(path_len).ok_or_else(truncated)?;
            let crc = r.take(4).ok_or_else(truncated)?;
            if crc32c::crc32c(&bytes[start..r.pos - 4]) != le_u32(crc) {
                return Err((at, format!("entry {i} checksum mismatch")));
            }
            entries.push(ManifestEntry {
                partition: le_u32(fixed),
                records: le_u64(&fixed[4..]),
                identity: FileIdentity {
                    size_bytes: le_u64(&fixed[12..]),
                    content_crc32c: le_u32(&fixed[20..]),
                },
                source_path: String::from_utf8_lossy(path).into_owned(),
            });
        }
        if r.pos != bytes.len() {
            return Err((
                r.pos as u64,
                "trailing bytes after the last entry".to_owned(),
            ));
        }
        Ok(Self { entries })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

/// Computes the identity of the file at `path` (one streaming pass).
pub fn file_identity(path: &Path) -> std::io::Result<FileIdentity> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut id = FileIdentity {
        size_bytes: 0,
        content_crc32c: 0,
    };
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => return Ok(id),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        id.size_bytes += n as u64;
        id.content_crc32c = crc32c::crc32c_append(id.content_crc32c, &buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            entries: (0..3)
                .map(|i| ManifestEntry {
                    partition: i * 2,
                    records: u64::from(i) * 1000,
                    identity: FileIdentity {
                        size_bytes: u64::from(i) + 7,
                        content_crc32c: 0xDEAD_0000 + i,
                    },
                    source_path: format!("/in/file-{i}.csv"),
                })
                .collect(),
        }
    }

    #[test]
    fn round_trip_and_next_partition() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.next_partition(), Some(5));
        assert_eq!(Manifest::default().next_partition(), Some(0));
        assert_eq!(
            Manifest::decode(&Manifest::default().encode()).unwrap(),
            Manifest::default()
        );
        assert_eq!(m.partition(4), Some(&m.entries[2]));
    }

    #[test]
    fn every_flip_and_truncation_is_detected() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(Manifest::decode(&bad).is_err(), "flip at {i}");
            assert!(Manifest::decode(&bytes[..i]).is_err(), "cut at {i}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Manifest::decode(&longer).is_err());
    }

    /// Rewrites a version 2 encoding's header as `version` with `release`.
    fn with_header(bytes: &[u8], version: u32, release: Option<Release>) -> Vec<u8> {
        let mut header = bytes[..16].to_vec();
        header[8..12].copy_from_slice(&version.to_le_bytes());
        if let Some(r) = release {
            header.extend_from_slice(&r.encode());
        }
        let crc = crc32c::crc32c(&header);
        header.extend_from_slice(&crc.to_le_bytes());
        header.extend_from_slice(&bytes[HEADER_LEN_BYTES..]);
        header
    }

    #[test]
    fn version_1_reads_and_a_newer_version_names_its_writer() {
        let m = sample();
        let v1 = with_header(&m.encode(), 1, None);
        assert_eq!(Manifest::decode(&v1).unwrap(), m);
        let newer = with_header(&m.encode(), 3, Some(Release::parse("4.5.6")));
        assert!(Manifest::is_newer_format(&newer) && !Manifest::is_newer_format(&v1));
        let (at, reason) = Manifest::decode(&newer).unwrap_err();
        assert_eq!(at, 0);
        assert!(
            reason.starts_with("manifest version 3, written by weir 4.5.6 (a newer weir)"),
            "{reason}"
        );
    }

    #[test]
    fn identity_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let content = vec![7u8; 3 << 20];
        std::fs::write(&p, &content).unwrap();
        let id = file_identity(&p).unwrap();
        assert_eq!(id.size_bytes, content.len() as u64);
        assert_eq!(id.content_crc32c, crc32c::crc32c(&content));
    }
}
