//! [`PartitionWriter`]: appends records to one partition, rolls segments,
//! keeps the sparse index, applies the fsync policy, and repairs a torn tail
//! when it opens.
//!
//! Invariants kept on disk (under `Always` and `Interval`): a segment is
//! fsynced before the next one is created, so after a crash only the last
//! segment can be incomplete, and the writer's recovery scan (of the last
//! segment only) suffices. Segment data is written before the index entries
//! that point into it. One writer per partition at a time (not enforced).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::format::{
    encode_frame_header, encode_segment_header, index_path, list_segments, segment_path,
    FRAME_HEADER_LEN_BYTES, MAX_RECORD_SIZE_BYTES, SEGMENT_FORMAT_VERSION,
    SEGMENT_HEADER_LEN_BYTES,
};
use super::index::{is_sealed, read_index, IndexEntry, IndexWriter};
use super::segment::scan_segment;
use super::{FsyncPolicy, LogConfig, LogError};
use crate::storage::durable::{create_dir_all_durably, sync_dir, sync_file};

const WRITE_BUFFER_LEN_BYTES: usize = 256 << 10;

/// Appends records to one partition directory.
pub struct PartitionWriter {
    dir: PathBuf,
    config: LogConfig,
    seg_base: u64,
    seg_path: PathBuf,
    seg: BufWriter<File>,
    /// Length of the segment including buffered bytes.
    seg_len_bytes: u64,
    seg_records: u64,
    last_indexed_pos: u64,
    index: IndexWriter,
    next_offset: u64,
    /// Appended data not yet fsynced.
    unsynced: bool,
    dir_sync_pending: bool,
    /// Sealed segments with data not yet fsynced (policy `Never`).
    sealed_unsynced: Vec<PathBuf>,
    last_sync: Instant,
    failed: bool,
}

impl PartitionWriter {
    /// Opens (creating if needed) the partition in `dir`. The last segment
    /// is scanned and a torn tail (an incomplete last frame or segment
    /// header) is truncated with a warning; any checksum mismatch is
    /// [`LogError::Corrupt`]. The indexes of sealed segments are checked and
    /// rebuilt if missing, damaged or incomplete, and the last segment's
    /// index is rebuilt from the scan.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Self, LogError> {
        config.validate()?;
        create_dir_all_durably(dir)?;
        let bases = list_segments(dir)?;
        let Some((&last_base, sealed)) = bases.split_last() else {
            return Self::create_fresh(dir, config, 0);
        };
        for (i, &base) in sealed.iter().enumerate() {
            let records = Self::check_sealed(dir, base, &config)?;
            let end = base + records;
            if end != bases[i + 1] {
                return Err(LogError::Corrupt {
                    path: segment_path(dir, base),
                    byte_offset: 0,
                    reason: format!(
                        "segment holds offsets {base}..{end} but the next segment starts at {}",
                        bases[i + 1]
                    ),
                });
            }
        }

        let path = segment_path(dir, last_base);
        let scan = scan_segment(&path, last_base, config.index_interval_bytes)?;
        if !scan.header_ok {
            tracing::warn!(
                path = %path.display(), byte_offset = 0u64, partial_bytes = scan.partial_bytes,
                "torn segment header: recreating the segment"
            );
            std::fs::remove_file(&path).map_err(LogError::io(&path))?;
            return Self::create_fresh(dir, config, last_base);
        }
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(LogError::io(&path))?;
        if scan.partial_bytes > 0 {
            tracing::warn!(
                path = %path.display(), byte_offset = scan.valid_len_bytes,
                partial_bytes = scan.partial_bytes,
                "torn record at the end of the log: truncating it"
            );
            file.set_len(scan.valid_len_bytes)
                .and_then(|()| file.sync_all())
                .map_err(LogError::io(&path))?;
        }
        let last_indexed_pos = scan
            .index
            .last()
            .map_or(scan.header_len_bytes, |e| u64::from(e.byte_pos));
        // The segment keeps its version (a version 1 segment is appended to
        // as such), and its index has the same.
        let index = IndexWriter::create(
            &index_path(dir, last_base),
            last_base,
            scan.version,
            &scan.index,
        )?;
        Ok(Self {
            dir: dir.to_owned(),
            config,
            seg_base: last_base,
            seg_path: path,
            seg: BufWriter::with_capacity(WRITE_BUFFER_LEN_BYTES, file),
            seg_len_bytes: scan.valid_len_bytes,
            seg_records: scan.records,
            last_indexed_pos,
            index,
            next_offset: last_base + scan.records,
            unsynced: false,
            dir_sync_pending: false,
            sealed_unsynced: Vec::new(),
            last_sync: Instant::now(),
            failed: false,
        })
    }

    /// Returns the record count of a sealed segment, from its index if that
    /// is complete, else by scanning it (and rewriting the index).
    fn check_sealed(dir: &Path, base: u64, config: &LogConfig) -> Result<u64, LogError> {
        let path = segment_path(dir, base);
        let len = std::fs::metadata(&path).map_err(LogError::io(&path))?.len();
        let idx_path = index_path(dir, base);
        let entries = read_index(&idx_path, base, len);
        if is_sealed(&entries, len) {
            return Ok(u64::from(entries.last().expect("sealed").relative_offset));
        }
        tracing::info!(path = %idx_path.display(), "index missing, damaged or incomplete: rebuilding it");
        let scan = scan_segment(&path, base, config.index_interval_bytes)?;
        if !scan.header_ok || scan.partial_bytes > 0 {
            return Err(LogError::Corrupt {
                path,
                byte_offset: scan.valid_len_bytes,
                reason: format!(
                    "a sealed (not last) segment ends with {} bytes of an incomplete {}",
                    scan.partial_bytes,
                    if scan.header_ok {
                        "record"
                    } else {
                        "segment header"
                    }
                ),
            });
        }
        let mut entries = scan.index;
        entries.push(IndexEntry {
            relative_offset: scan.records as u32,
            byte_pos: scan.valid_len_bytes as u32,
        });
        IndexWriter::create(&idx_path, base, scan.version, &entries)?;
        Ok(scan.records)
    }

    /// Creates the segment `base` (and its index) as the current one.
    fn create_fresh(dir: &Path, config: LogConfig, base: u64) -> Result<Self, LogError> {
        let (seg, index) = Self::create_segment(dir, &config, base)?;
        Ok(Self {
            dir: dir.to_owned(),
            config,
            seg_base: base,
            seg_path: segment_path(dir, base),
            seg,
            seg_len_bytes: SEGMENT_HEADER_LEN_BYTES as u64,
            seg_records: 0,
            last_indexed_pos: SEGMENT_HEADER_LEN_BYTES as u64,
            index,
            next_offset: base,
            unsynced: false,
            dir_sync_pending: config.fsync == FsyncPolicy::Never,
            sealed_unsynced: Vec::new(),
            last_sync: Instant::now(),
            failed: false,
        })
    }

    /// Creates a segment file with its header, and its index. Unless the
    /// policy is `Never`, the header and the directory entry are fsynced.
    fn create_segment(
        dir: &Path,
        config: &LogConfig,
        base: u64,
    ) -> Result<(BufWriter<File>, IndexWriter), LogError> {
        let path = segment_path(dir, base);
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(LogError::io(&path))?;
        file.write_all(&encode_segment_header(base))
            .map_err(LogError::io(&path))?;
        if config.fsync != FsyncPolicy::Never {
            file.sync_data().map_err(LogError::io(&path))?;
            sync_dir(dir)?;
        }
        let index = IndexWriter::create(&index_path(dir, base), base, SEGMENT_FORMAT_VERSION, &[])?;
        Ok((
            BufWriter::with_capacity(WRITE_BUFFER_LEN_BYTES, file),
            index,
        ))
    }

    /// The offset the next appended record will get.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one record and returns its offset. The record is visible to
    /// readers after the next flush (a full write buffer, a roll,
    /// [`Self::flush`], [`Self::sync`] or drop), durable after the next sync.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, LogError> {
        if self.failed {
            return Err(LogError::WriterFailed {
                path: self.seg_path.clone(),
            });
        }
        if payload.len() > MAX_RECORD_SIZE_BYTES {
            return Err(LogError::RecordTooLarge {
                size_bytes: payload.len(),
                max_bytes: MAX_RECORD_SIZE_BYTES,
            });
        }
        let frame_len = (FRAME_HEADER_LEN_BYTES + payload.len()) as u64;
        if self.seg_records > 0 && self.seg_len_bytes + frame_len > self.config.segment_size_bytes {
            self.guard(Self::roll)?;
        }
        let pos = self.seg_len_bytes;
        if pos > self.last_indexed_pos
            && pos - self.last_indexed_pos >= self.config.index_interval_bytes
        {
            self.index.push(IndexEntry {
                relative_offset: self.seg_records as u32,
                byte_pos: pos as u32,
            });
            self.last_indexed_pos = pos;
        }
        let header = encode_frame_header(payload);
        let written = self
            .seg
            .write_all(&header)
            .and_then(|()| self.seg.write_all(payload));
        if let Err(e) = written {
            self.failed = true;
            return Err(LogError::io(&self.seg_path)(e));
        }
        self.seg_len_bytes += frame_len;
        self.seg_records += 1;
        let offset = self.next_offset;
        self.next_offset += 1;
        self.unsynced = true;
        match self.config.fsync {
            FsyncPolicy::Always => self.sync()?,
            FsyncPolicy::Interval { interval_ms } => {
                if self.last_sync.elapsed() >= Duration::from_millis(interval_ms) {
                    self.sync()?;
                }
            }
            FsyncPolicy::Never => {}
        }
        Ok(offset)
    }

    /// Runs `op`, marking the writer failed if it fails.
    fn guard(&mut self, op: fn(&mut Self) -> Result<(), LogError>) -> Result<(), LogError> {
        let r = op(self);
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// Seals the current segment and starts a new one at `next_offset`.
    fn roll(&mut self) -> Result<(), LogError> {
        self.seg.flush().map_err(LogError::io(&self.seg_path))?;
        self.index.push(IndexEntry {
            relative_offset: self.seg_records as u32,
            byte_pos: self.seg_len_bytes as u32,
        });
        self.index.flush()?;
        if self.unsynced {
            if self.config.fsync == FsyncPolicy::Never {
                self.sealed_unsynced.push(self.seg_path.clone());
            } else {
                self.seg
                    .get_ref()
                    .sync_data()
                    .map_err(LogError::io(&self.seg_path))?;
            }
        }
        let base = self.next_offset;
        let (seg, index) = Self::create_segment(&self.dir, &self.config, base)?;
        self.seg = seg;
        self.index = index;
        self.seg_base = base;
        self.seg_path = segment_path(&self.dir, base);
        self.seg_len_bytes = SEGMENT_HEADER_LEN_BYTES as u64;
        self.seg_records = 0;
        self.last_indexed_pos = SEGMENT_HEADER_LEN_BYTES as u64;
        self.unsynced = false;
        self.dir_sync_pending |= self.config.fsync == FsyncPolicy::Never;
        Ok(())
    }

    /// Another handle to the current segment's file: `sync_data` on it from
    /// another thread starts writing what was appended so far to the disk
    /// early. Only [`PartitionWriter::sync`] makes the records durable.
    pub fn segment_file(&self) -> std::io::Result<File> {
        self.seg.get_ref().try_clone()
    }

    /// Writes buffered records and index entries to the files (visible to
    /// readers, not yet durable).
    pub fn flush(&mut self) -> Result<(), LogError> {
        if self.failed {
            return Err(LogError::WriterFailed {
                path: self.seg_path.clone(),
            });
        }
        if let Err(e) = self.seg.flush() {
            self.failed = true;
            return Err(LogError::io(&self.seg_path)(e));
        }
        self.index.flush()
    }

    /// Flushes and fsyncs everything appended so far (and the directory if
    /// a segment was created since the last sync).
    pub fn sync(&mut self) -> Result<(), LogError> {
        self.flush()?;
        self.guard(|w| {
            for path in w.sealed_unsynced.drain(..) {
                match sync_file(&path) {
                    // Deleted by log retention (`super::retention`) before
                    // this sync: nothing of it is needed any more.
                    Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => {}
                    other => other?,
                }
            }
            if w.unsynced {
                w.seg
                    .get_ref()
                    .sync_data()
                    .map_err(LogError::io(&w.seg_path))?;
                w.unsynced = false;
            }
            if w.dir_sync_pending {
                sync_dir(&w.dir)?;
                w.dir_sync_pending = false;
            }
            w.last_sync = Instant::now();
            Ok(())
        })
    }

    /// The base offset of the segment being written.
    pub fn segment_base_offset(&self) -> u64 {
        self.seg_base
    }
}

impl Drop for PartitionWriter {
    fn drop(&mut self) {
        if self.failed {
            return;
        }
        let r = if self.config.fsync == FsyncPolicy::Never {
            self.flush()
        } else {
            self.sync()
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "closing the partition writer failed");
        }
    }
}
