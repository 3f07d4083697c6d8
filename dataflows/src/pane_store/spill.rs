//! Cold panes on disk: a [`super::PaneStore`] over its memory budget
//! writes the encoded bytes of its newest panes to files and reads them
//! back when they are needed (when the pane leaves the window, and once per
//! window length when the two-stack queue flips; decision 35).
//!
//! A pane in the middle of a window is not touched between the slide it
//! entered and the flip or its eviction, so a sliding window's cold state is
//! by construction the panes, not keys: each key's window aggregate stays
//! in memory and every row is emitted from memory.
//!
//! Runs of staged partials (arrived before their time: a restore stages
//! every restored partial at once) go to files of the same format once
//! every pane is on disk, and are read back when their time is applied.
//!
//! Spill files are scratch, not durable state: a restore rebuilds the
//! windows from a checkpoint, so they are not fsynced and the directory is
//! emptied when a store opens it. Each file is checked when read back; a
//! damaged one is an error naming the file and the byte offset, never a
//! wrong aggregate.
//!
//! Format v1 (`pane-<sequence:020>.bin`): magic `WSPL`, u32 version, u64
//! pane start (ms), u64 payload length, the payload (the pane's encoded
//! entries, or a staged run, [`super::codec`]), u32 CRC32C of everything before it; integers
//! little-endian.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The file format's magic bytes.
const MAGIC: &[u8; 4] = b"WSPL";
/// The file format's version.
pub const SPILL_FORMAT_VERSION: u32 = 1;
/// Header bytes: magic, version, pane start, payload length.
const HEADER_LEN_BYTES: usize = 4 + 4 + 8 + 8;
/// Trailer bytes: the CRC32C.
const TRAILER_LEN_BYTES: usize = 4;

/// Armed in the `WEIR_FAILPOINT` environment variable, makes every spill
/// write fail with ENOSPC ("No space left on device"), as a full disk
/// would: the disk-full path, for tests.
pub const SPILL_DISK_FULL_FAILPOINT: &str = "spill-disk-full";

fn disk_full_armed() -> bool {
    static ARMED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ARMED.get_or_init(|| {
        std::env::var("WEIR_FAILPOINT").is_ok_and(|v| v == SPILL_DISK_FULL_FAILPOINT)
    })
}

/// Where a worker's windows keep cold panes, and how much memory they may
/// hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpillConfig {
    /// This worker's directory of spill files (emptied when opened).
    pub dir: PathBuf,
    /// Bytes of window state kept in memory before panes move to disk.
    pub budget_bytes: usize,
}

/// A spill file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpillError {
    /// Reading, writing or removing the file failed.
    #[error("window state spill file {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not what was written.
    #[error("window state spill file {}: corrupt at byte {byte_offset}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the bad field starts.
        byte_offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// A pane whose bytes are on disk.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct SpilledPane {
    sequence: u64,
    pub(super) payload_bytes: usize,
}

/// The spill files of one store, and what moved through them.
#[derive(Debug)]
pub(super) struct Spill {
    config: SpillConfig,
    next_sequence: u64,
    /// Bytes of the files now on disk.
    pub(super) disk_bytes: usize,
    /// Panes written and bytes written, over the store's life.
    pub(super) spills: u64,
    pub(super) spilled_bytes: u64,
    /// Panes read back and bytes read.
    pub(super) fetches: u64,
    pub(super) fetched_bytes: u64,
    /// Panes needed (entering, flipping, leaving): found in memory, read
    /// from disk.
    pub(super) memory_reads: u64,
    pub(super) disk_reads: u64,
    buffer: Vec<u8>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SpillError + '_ {
    move |source| SpillError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Spill {
    /// Opens `config.dir`, creating it and deleting the spill files a
    /// previous process left.
    pub(super) fn open(config: SpillConfig) -> Result<Self, SpillError> {
        std::fs::create_dir_all(&config.dir).map_err(io_error(&config.dir))?;
        for entry in std::fs::read_dir(&config.dir).map_err(io_error(&config.dir))? {
            let path = entry.map_err(io_error(&config.dir))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let ours = name.starts_with("pane-")
                && Path::new(name).extension().is_some_and(|x| x == "bin");
            if ours {
                std::fs::remove_file(&path).map_err(io_error(&path))?;
            }
        }
        Ok(Spill {
            config,
            next_sequence: 0,
            disk_bytes: 0,
            spills: 0,
            spilled_bytes: 0,
            fetches: 0,
            memory_reads: 0,
            disk_reads: 0,
            fetched_bytes: 0,
            buffer: Vec::new(),
        })
    }

    /// The memory budget.
    pub(super) fn budget_bytes(&self) -> usize {
        self.config.budget_bytes
    }

    fn path(&self, sequence: u64) -> PathBuf {
        self.config.dir.join(format!("pane-{sequence:020}.bin"))
    }

    /// Writes the bytes of the pane starting at `start` to a new file.
    pub(super) fn write(&mut self, start: u64, payload: &[u8]) -> Result<SpilledPane, SpillError> {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let path = self.path(sequence);
        let bytes = &mut self.buffer;
        bytes.clear();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&SPILL_FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&start.to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(payload);
        let crc = crc32c::crc32c(bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        File::create(&path)
            .and_then(|mut f| {
                if disk_full_armed() {
                    return Err(std::io::Error::from_raw_os_error(28));
                }
                f.write_all(bytes)
            })
            .map_err(io_error(&path))?;
        self.disk_bytes += bytes.len();
        self.spills += 1;
        self.spilled_bytes += bytes.len() as u64;
        Ok(SpilledPane {
            sequence,
            payload_bytes: payload.len(),
        })
    }

    /// Reads back and deletes the file of `pane`, which held the pane
    /// starting at `start`; its payload, checked.
    pub(super) fn take(&mut self, start: u64, pane: &SpilledPane) -> Result<Vec<u8>, SpillError> {
        let path = self.path(pane.sequence);
        let mut bytes = Vec::with_capacity(HEADER_LEN_BYTES + pane.payload_bytes + 4);
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_error(&path))?;
        let payload =
            check_file(&bytes, start, pane.payload_bytes).map_err(|(byte_offset, reason)| {
                SpillError::Corrupt {
                    path: path.clone(),
                    byte_offset,
                    reason,
                }
            })?;
        std::fs::remove_file(&path).map_err(io_error(&path))?;
        self.disk_bytes -= bytes.len();
        self.fetches += 1;
        self.fetched_bytes += bytes.len() as u64;
        bytes.truncate(HEADER_LEN_BYTES + payload);
        bytes.drain(..HEADER_LEN_BYTES);
        Ok(bytes)
    }
}

/// Checks a spill file's bytes against what was written for the pane at
/// `start` with `payload_bytes`; the payload's length, or the offset and
/// reason of the first problem.
fn check_file(bytes: &[u8], start: u64, payload_bytes: usize) -> Result<usize, (u64, String)> {
    let want = HEADER_LEN_BYTES + payload_bytes + TRAILER_LEN_BYTES;
    if bytes.len() != want {
        return Err((
            bytes.len().min(want) as u64,
            format!("{} bytes, {want} were written", bytes.len()),
        ));
    }
    let crc_at = want - TRAILER_LEN_BYTES;
    let stored = u32::from_le_bytes(bytes[crc_at..].try_into().expect("4 bytes"));
    let computed = crc32c::crc32c(&bytes[..crc_at]);
    if stored != computed {
        return Err((
            crc_at as u64,
            format!("CRC32C {computed:#010x}, the file says {stored:#010x}"),
        ));
    }
    if &bytes[..4] != MAGIC {
        return Err((0, "not a spill file (magic)".into()));
    }
    let field = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    if version != SPILL_FORMAT_VERSION {
        return Err((
            4,
            format!("version {version}, this binary writes {SPILL_FORMAT_VERSION}"),
        ));
    }
    if field(8) != start {
        return Err((8, format!("pane {}, expected {start}", field(8))));
    }
    if field(16) != payload_bytes as u64 {
        return Err((
            16,
            format!("payload of {} bytes, expected {payload_bytes}", field(16)),
        ));
    }
    Ok(payload_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spill(dir: &Path) -> Spill {
        Spill::open(SpillConfig {
            dir: dir.join("w0"),
            budget_bytes: 0,
        })
        .unwrap()
    }

    #[test]
    fn a_pane_round_trips_and_its_file_goes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spill(dir.path());
        let pane = s.write(60_000, b"entries").unwrap();
        assert!(s.disk_bytes > 0);
        assert_eq!(s.take(60_000, &pane).unwrap(), b"entries");
        assert_eq!(s.disk_bytes, 0);
        assert_eq!((s.spills, s.fetches), (1, 1));
        assert_eq!(std::fs::read_dir(dir.path().join("w0")).unwrap().count(), 0);
    }

    #[test]
    fn golden_bytes_of_a_spill_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spill(dir.path());
        s.write(7, &[1, 2, 3]).unwrap();
        let bytes = std::fs::read(dir.path().join("w0/pane-00000000000000000000.bin")).unwrap();
        let mut want = b"WSPL".to_vec();
        want.extend_from_slice(&1u32.to_le_bytes());
        want.extend_from_slice(&7u64.to_le_bytes());
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&[1, 2, 3]);
        // CRC32C of the 27 bytes above (checked with a bitwise Castagnoli CRC).
        want.extend_from_slice(&0xafba_d47cu32.to_le_bytes());
        assert_eq!(bytes, want);
    }

    #[test]
    fn every_flipped_byte_and_every_truncation_is_refused_with_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spill(dir.path());
        let pane = s.write(5_000, b"some pane bytes").unwrap();
        let path = dir.path().join("w0/pane-00000000000000000000.bin");
        let good = std::fs::read(&path).unwrap();
        let mut damaged = Vec::new();
        for at in 0..good.len() {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            damaged.push(bad);
        }
        for len in 0..good.len() {
            damaged.push(good[..len].to_vec());
        }
        for bad in damaged {
            std::fs::write(&path, &bad).unwrap();
            match s.take(5_000, &pane) {
                Err(SpillError::Corrupt {
                    path: named,
                    reason,
                    ..
                }) => {
                    assert_eq!(named, path);
                    assert!(!reason.is_empty());
                }
                other => panic!("damaged file accepted: {other:?}"),
            }
        }
        std::fs::write(&path, &good).unwrap();
        assert!(s.take(4_000, &pane).is_err(), "another pane's file");
        assert_eq!(s.take(5_000, &pane).unwrap(), b"some pane bytes");
    }

    #[test]
    fn opening_deletes_what_a_previous_process_left() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = spill(dir.path());
        s.write(1, b"x").unwrap();
        std::fs::write(dir.path().join("w0/notes.txt"), b"kept").unwrap();
        drop(s);
        let _again = spill(dir.path());
        let names: Vec<_> = std::fs::read_dir(dir.path().join("w0"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("notes.txt")]);
    }
}
