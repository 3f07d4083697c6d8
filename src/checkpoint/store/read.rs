//! Reading the checkpoint store without a lock: the commit stream, the
//! newest usable checkpoint, and a checkpoint's updates.
//!
//! A restore checksums every file of the checkpoint it picks once, in
//! [`newest_usable`] (streamed in bounded chunks, files in parallel); each
//! worker then reads only its own key groups' byte ranges with
//! [`visit_checkpoint_groups`] (decision 17).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{StoreError, UsageError, MAX_REASONS};
use crate::checkpoint::format::{
    check_data_file_crc, check_data_file_length, consolidate_sorted_runs, decode_data_file,
    decode_layout, decode_trailer, scan_commits, verify_data_file, visit_group, CommitRecord,
    CommitScan, DataFileId, FileMeta, GroupExtent, PersistedUpdate, VisitUpdate, COMMITS_FILE_NAME,
    DATA_FILE_HEADER_LEN_BYTES, DATA_FILE_TRAILER_LEN_BYTES,
};

/// Bytes read at a time when checksumming a data file.
const VERIFY_CHUNK_BYTES: usize = 8 << 20;

/// Reads the commit stream of `dir` without modifying it (no lock needed):
/// the complete records, oldest first. A torn last frame ends the stream;
/// other damage is [`StoreError::Corrupt`]. No stream: no records.
pub fn read_commits(dir: &Path) -> Result<Vec<CommitRecord>, StoreError> {
    Ok(read_commit_stream(dir)?.map_or_else(Vec::new, |scan| scan.records))
}

/// The whole commit stream of the store in `dir`, with its version and
/// writer; `None` if there is none yet.
pub fn read_commit_stream(dir: &Path) -> Result<Option<CommitScan>, StoreError> {
    let path = dir.join(COMMITS_FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(&path)(e)),
    };
    scan_commits(&bytes)
        .map(Some)
        .map_err(StoreError::corrupt(&path))
}

/// Reads one data file and checks its size and CRC32C against `meta`.
fn read_verified(dir: &Path, meta: &FileMeta) -> Result<(PathBuf, Vec<u8>), StoreError> {
    let (path, mut file) = open_data_file(dir, meta)?;
    let mut bytes = Vec::with_capacity(meta.size_bytes as usize);
    file.read_to_end(&mut bytes)
        .map_err(StoreError::io(&path))?;
    verify_data_file(&bytes, meta).map_err(StoreError::corrupt(&path))?;
    Ok((path, bytes))
}

/// Loads checkpoint `record` from `dir`: the updates of the key groups
/// `key_groups` accepts with time `>= horizon_time`, consolidated across its
/// files. Every file is checked against the record's size and CRC32C before
/// it is decoded; a mismatch is [`StoreError::Corrupt`] naming the file.
pub fn load_checkpoint(
    dir: &Path,
    record: &CommitRecord,
    key_groups: impl Fn(u16) -> bool,
    horizon_time: u64,
) -> Result<Vec<PersistedUpdate>, StoreError> {
    let mut out = Vec::new();
    for meta in &record.files {
        let (path, bytes) = read_verified(dir, meta)?;
        decode_data_file(&bytes, meta, &key_groups, horizon_time, &mut out)
            .map_err(StoreError::corrupt(&path))?;
    }
    // Each file is sorted: the updates are one sorted run per file.
    consolidate_sorted_runs(&mut out);
    Ok(out)
}

/// The newest committed checkpoint of `dir` whose files all verify (size and
/// CRC32C), with a warning for each newer one skipped (naming the file and
/// the reason; also logged). `Ok(None)` if nothing was ever committed.
/// Errors: a damaged commit stream; a checkpoint of a query with another
/// fingerprint ([`StoreError::FingerprintMismatch`]); commits exist but none
/// is usable ([`StoreError::NoUsableCheckpoint`]). Reads every file of the
/// checkpoint it returns.
pub fn newest_usable(
    dir: &Path,
    fingerprint: u64,
) -> Result<Option<(CommitRecord, Vec<String>)>, StoreError> {
    let commits = read_commits(dir)?;
    if commits.is_empty() {
        return Ok(None);
    }
    let mut reasons = Vec::new();
    let mut unlisted = 0usize;
    for record in commits.iter().rev() {
        if record.query_fingerprint != fingerprint {
            return Err(StoreError::FingerprintMismatch {
                dir: dir.to_owned(),
                checkpoint_id: record.checkpoint_id,
                expected: fingerprint,
                found: record.query_fingerprint,
            });
        }
        let verified = verify_files(dir, &record.files);
        match verified {
            Ok(()) => {
                if unlisted > 0 {
                    reasons.push(format!("{unlisted} more checkpoints skipped"));
                }
                for reason in &reasons {
                    tracing::warn!(dir = %dir.display(), "{reason}");
                }
                return Ok(Some((record.clone(), reasons)));
            }
            Err(e) if reasons.len() < MAX_REASONS => reasons.push(format!(
                "checkpoint {} (cut time {}) skipped: {e}",
                record.checkpoint_id, record.cut_time
            )),
            Err(_) => unlisted += 1,
        }
    }
    if unlisted > 0 {
        reasons.push(format!("{unlisted} older checkpoints are unusable too"));
    }
    Err(StoreError::NoUsableCheckpoint {
        dir: dir.to_owned(),
        reasons,
    })
}

/// Opens a data file named in a commit record (refusing names that are
/// not data file names) and checks its length against `meta`.
fn open_data_file(dir: &Path, meta: &FileMeta) -> Result<(PathBuf, File), StoreError> {
    if DataFileId::parse(&meta.name).is_none() {
        return Err(UsageError::InvalidRecord {
            reason: format!("`{}` is not a data file name", meta.name),
        }
        .into());
    }
    let path = dir.join(&meta.name);
    let file = File::open(&path).map_err(StoreError::io(&path))?;
    let len = file.metadata().map_err(StoreError::io(&path))?.len();
    check_data_file_length(len, meta).map_err(StoreError::corrupt(&path))?;
    Ok((path, file))
}

/// Checks one data file's size and CRC32C against `meta`, reading it in
/// chunks of [`VERIFY_CHUNK_BYTES`].
/// Checks the data file `meta` names in `dir`: its length and CRC32C.
pub fn verify_file(dir: &Path, meta: &FileMeta) -> Result<(), StoreError> {
    let (path, mut file) = open_data_file(dir, meta)?;
    let crc_at = meta.size_bytes - 4;
    let mut buffer = vec![0u8; VERIFY_CHUNK_BYTES.min(crc_at as usize)];
    let (mut crc, mut done) = (0u32, 0u64);
    while done < crc_at {
        let n = buffer.len().min((crc_at - done) as usize);
        file.read_exact(&mut buffer[..n])
            .map_err(StoreError::io(&path))?;
        crc = crc32c::crc32c_append(crc, &buffer[..n]);
        done += n as u64;
    }
    let mut stored = [0u8; 4];
    file.read_exact(&mut stored)
        .map_err(StoreError::io(&path))?;
    check_data_file_crc(crc_at, crc, u32::from_le_bytes(stored), meta)
        .map_err(StoreError::corrupt(&path))
}

/// Verifies `files` ([`verify_file`]) on up to as many threads as the
/// machine has cores; the first failure in file order is returned.
pub(super) fn verify_files(dir: &Path, files: &[FileMeta]) -> Result<(), StoreError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(files.len());
    if threads <= 1 {
        return files.iter().try_for_each(|meta| verify_file(dir, meta));
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut results: Vec<Option<Result<(), StoreError>>> = Vec::new();
    results.resize_with(files.len(), || None);
    let results = std::sync::Mutex::new(results);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(meta) = files.get(i) else { break };
                let result = verify_file(dir, meta);
                results.lock().expect("verify results poisoned")[i] = Some(result);
            });
        }
    });
    results
        .into_inner()
        .expect("verify results poisoned")
        .into_iter()
        .try_for_each(|r| r.expect("every file was verified"))
}

/// A worker's share of a checkpoint, opened for reading: each file's
/// header, index and trailer are read and checked before any record is
/// decoded. Only for a checkpoint [`newest_usable`] returned in this
/// process: the files' checksums are not checked again.
#[derive(Debug)]
pub struct CheckpointGroups {
    files: Vec<(PathBuf, File, FileMeta, Vec<GroupExtent>)>,
    /// The next (file, extent) to visit.
    next: (usize, usize),
    buffer: Vec<u8>,
}

impl CheckpointGroups {
    /// Opens every file of `record` and keeps the extents of the key groups
    /// `key_groups` accepts.
    pub fn open(
        dir: &Path,
        record: &CommitRecord,
        key_groups: impl Fn(u16) -> bool,
    ) -> Result<Self, StoreError> {
        let mut files = Vec::with_capacity(record.files.len());
        let mut buffer = Vec::new();
        for meta in &record.files {
            let (path, file) = open_data_file(dir, meta)?;
            let len = meta.size_bytes;
            let trailer_len = DATA_FILE_TRAILER_LEN_BYTES as u64;
            let mut header = Vec::new();
            read_range(
                &file,
                &path,
                &mut header,
                0,
                DATA_FILE_HEADER_LEN_BYTES as u64,
            )?;
            read_range(&file, &path, &mut buffer, len - trailer_len, trailer_len)?;
            let trailer = decode_trailer(len, &buffer).map_err(StoreError::corrupt(&path))?;
            read_range(
                &file,
                &path,
                &mut buffer,
                trailer.0,
                len - trailer_len - trailer.0,
            )?;
            let mut extents = decode_layout(&header, &buffer, trailer, meta)
                .map_err(StoreError::corrupt(&path))?;
            extents.retain(|e| key_groups(e.key_group));
            files.push((path, file, meta.clone(), extents));
        }
        Ok(CheckpointGroups {
            files,
            next: (0, 0),
            buffer,
        })
    }

    /// Visits the records of the accepted key groups with time
    /// `>= horizon_time`, file by file, each file's in key group order,
    /// reading only those groups' byte ranges. Every record still gets the
    /// structural checks (sorted, consolidated, times within the file's
    /// range).
    pub fn visit(
        mut self,
        horizon_time: u64,
        visit: &mut VisitUpdate<'_>,
    ) -> Result<(), StoreError> {
        while self.visit_some(horizon_time, u64::MAX, visit)? {}
        Ok(())
    }

    /// As [`CheckpointGroups::visit`], in steps: visits whole key groups
    /// until at least `min_records` records were read (or none are left);
    /// returns whether any are left.
    pub fn visit_some(
        &mut self,
        horizon_time: u64,
        min_records: u64,
        visit: &mut VisitUpdate<'_>,
    ) -> Result<bool, StoreError> {
        let mut records = 0u64;
        while records < min_records {
            let Some((path, file, meta, extents)) = self.files.get(self.next.0) else {
                return Ok(false);
            };
            let Some(extent) = extents.get(self.next.1) else {
                self.next = (self.next.0 + 1, 0);
                continue;
            };
            let len = extent.end - extent.offset;
            read_range(file, path, &mut self.buffer, extent.offset, len)?;
            visit_group(&self.buffer, extent, meta, horizon_time, visit)
                .map_err(StoreError::corrupt(path))?;
            records += extent.records;
            self.next.1 += 1;
        }
        while self
            .files
            .get(self.next.0)
            .is_some_and(|f| self.next.1 >= f.3.len())
        {
            self.next = (self.next.0 + 1, 0);
        }
        Ok(self.next.0 < self.files.len())
    }
}

impl CheckpointGroups {
    /// Visits the records of key group `key_group` with time `>=
    /// horizon_time` in every file, file by file (each file's records of a
    /// group are one sorted run); returns how many were read. For a
    /// reader going through the groups in order (a compaction).
    pub fn visit_key_group(
        &mut self,
        key_group: u16,
        horizon_time: u64,
        visit: &mut VisitUpdate<'_>,
    ) -> Result<u64, StoreError> {
        let mut records = 0;
        for (path, file, meta, extents) in &self.files {
            let Ok(at) = extents.binary_search_by_key(&key_group, |e| e.key_group) else {
                continue;
            };
            let extent = &extents[at];
            read_range(
                file,
                path,
                &mut self.buffer,
                extent.offset,
                extent.end - extent.offset,
            )?;
            visit_group(&self.buffer, extent, meta, horizon_time, visit)
                .map_err(StoreError::corrupt(path))?;
            records += extent.records;
        }
        Ok(records)
    }
}

/// Reads `len` bytes at `offset` of `file` into `buffer` (resized to fit).
fn read_range(
    file: &File,
    path: &Path,
    buffer: &mut Vec<u8>,
    offset: u64,
    len: u64,
) -> Result<(), StoreError> {
    buffer.resize(len as usize, 0);
    file.read_exact_at(buffer, offset)
        .map_err(StoreError::io(path))
}

/// [`CheckpointGroups::open`] then [`CheckpointGroups::visit`].
pub fn visit_checkpoint_groups(
    dir: &Path,
    record: &CommitRecord,
    key_groups: impl Fn(u16) -> bool,
    horizon_time: u64,
    visit: &mut VisitUpdate<'_>,
) -> Result<(), StoreError> {
    CheckpointGroups::open(dir, record, key_groups)?.visit(horizon_time, visit)
}
