//! The checkpoint store, `data/checkpoints/`: delta and base files plus the
//! commit stream `commits.log` (byte layout in [`super::format`]).
//!
//! The sidecar writes through one [`CheckpointStore`] (an exclusive lock on
//! `<dir>/LOCK` fences off a second writer): [`CheckpointStore::write_delta`]
//! for each part of a checkpoint, optionally [`CheckpointStore::compact`],
//! then [`CheckpointStore::commit`]. A checkpoint exists only once its
//! commit record is durable. The engine reads without a lock:
//! [`newest_usable`] picks the newest checkpoint whose files all verify and
//! [`load_checkpoint`] loads the key groups a worker owns.
//!
//! Durability: a data file is written as `<name>.tmp`, fsynced, renamed to
//! `<name>` and the directory fsynced; a commit frame is appended and the
//! stream fsynced. Garbage collection (after each commit) deletes leftover
//! `*.tmp` files of the store and the data files of checkpoints up to the
//! newest committed one that none of the newest `--keep-local` commit
//! records (default 2) references; at open, before the caller can say how
//! many it keeps, only files no retained commit record names go. Files of
//! a checkpoint not committed yet are kept. A reader loading an older
//! checkpoint may find its files gone (an I/O error, never wrong data).
//!
//! # Failpoints
//! For crash tests, `WEIR_FAILPOINT=<name>` (read once per process) makes the
//! store call `std::process::abort()` when it reaches the named point:
//! - `after-delta-write`: a data file's temp file is written, not fsynced;
//! - `after-delta-fsync`: the temp file is fsynced, not renamed;
//! - `after-delta-rename`: renamed, the directory not fsynced;
//! - `mid-commit-record`: the first half of a commit frame is written (and
//!   flushed to the OS), the rest is not;
//! - `after-commit`: the commit record is durable, garbage not yet collected.
//!
//! The three delta points apply to base files written by `compact` too.

mod compact;
mod error;
mod floors;
mod gc;
mod read;

use compact::BackgroundCompaction;
pub use compact::{compact_files, Compacted, DEFAULT_COMPACTION_BUDGET_BYTES};
pub use error::{StoreError, UsageError};
pub use floors::ResumeFloors;
pub use gc::{MAX_KEEP_LOCAL, RETAINED_CHECKPOINTS};
pub use read::{
    load_checkpoint, newest_usable, read_commit_stream, read_commits, verify_file,
    visit_checkpoint_groups, CheckpointGroups,
};

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use super::format::{
    check_commit_record, consolidate, encode_commit_frame, encode_commits_header, encode_data_file,
    scan_commits, CommitRecord, DataFileId, FileMeta, PersistedUpdate, COMMITS_FILE_NAME,
    COMMITS_FORMAT_VERSION, KEY_GROUPS, MAX_UPDATE_DATA_BYTES, TEMP_SUFFIX,
};
use crate::storage::durable::{
    create_dir_all_durably, lock_file_within, sync_dir, write_file_atomically,
};
use crate::storage::frame::MAX_RECORD_SIZE_BYTES;

/// The lock file a writer holds.
pub const LOCK_FILE_NAME: &str = "LOCK";
/// The lock file ordering the cold tier's epoch checks, claims and repairs
/// among the processes sharing a data dir (`tier::epoch::lock_tier`).
pub const TIER_LOCK_FILE_NAME: &str = "TIER_LOCK";

/// A checkpoint store's temp files and locks, left out of its usage figures.
pub fn is_temp_or_lock(name: &str) -> bool {
    name == LOCK_FILE_NAME
        || name == TIER_LOCK_FILE_NAME
        || Path::new(name)
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("tmp"))
}
/// Once the commit stream holds this many records it is rewritten with only
/// the newest [`RETAINED_COMMIT_RECORDS`], so it stays bounded on a long run.
pub const TRIM_COMMITS_AT_RECORDS: usize = 1_024;
/// Commit records kept when the commit stream is rewritten (older ones name
/// files that garbage collection has long deleted).
pub const RETAINED_COMMIT_RECORDS: usize = 64;
/// The environment variable naming the armed failpoint.
pub const FAILPOINT_ENV: &str = "WEIR_FAILPOINT";
/// The failpoint names, in the order a checkpoint reaches them.
pub const FAILPOINTS: [&str; 5] = [
    "after-delta-write",
    "after-delta-fsync",
    "after-delta-rename",
    "mid-commit-record",
    "after-commit",
];
/// At most this many reasons are kept in warnings and errors about unusable
/// checkpoints (older ones are summarized).
const MAX_REASONS: usize = 8;

/// How often [`CheckpointStore::open_waiting`] retries a held lock.
const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Aborts the process if `name` is the armed failpoint.
/// Armed like a failpoint, makes the next data file write fail with ENOSPC
/// ("No space left on device") instead of crashing: the disk-full path.
pub const DISK_FULL_FAILPOINT: &str = "disk-full";

fn failpoint(name: &str) {
    if failpoint_armed(name) {
        eprintln!("weir: failpoint `{name}` reached, aborting");
        std::process::abort();
    }
}

/// Whether `name` is the failpoint armed in [`FAILPOINT_ENV`] (read once
/// per process).
pub fn failpoint_armed(name: &str) -> bool {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| std::env::var(FAILPOINT_ENV).ok())
        .as_deref()
        == Some(name)
}

/// The single writer of a checkpoint directory.
#[derive(Debug)]
pub struct CheckpointStore {
    dir: PathBuf,
    commits_path: PathBuf,
    /// Held for the store's lifetime; dropping it releases the lock.
    _lock: File,
    /// The commit stream, opened for appending.
    stream: File,
    commits: Vec<CommitRecord>,
    failed: bool,
    /// Files deleted by garbage collection since the store was opened.
    garbage_collected: u64,
    /// The compaction running in the background, if any.
    compaction: Option<BackgroundCompaction>,
    written: WrittenFileHook,
    /// How many of the newest commits keep their files ([`gc`]).
    keep_local: usize,
}

/// Called with each delta file the store wrote and its bytes, once it is
/// durable (a sidecar's copiers take the bytes instead of reading the
/// file back).
#[derive(Default)]
pub struct WrittenFileHook(Option<Box<WrittenFileFn>>);

type WrittenFileFn = dyn Fn(&FileMeta, Vec<u8>) + Send + Sync;

impl WrittenFileHook {
    /// A hook that calls `hook`.
    pub fn new(hook: impl Fn(&FileMeta, Vec<u8>) + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(hook)))
    }
}

impl std::fmt::Debug for WrittenFileHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Some(..)" } else { "None" })
    }
}

impl CheckpointStore {
    /// Opens (creating if needed) the store in `dir` and takes its lock
    /// ([`StoreError::Locked`] if another writer holds it). Reads the commit
    /// stream: a torn last frame is truncated away with a warning; any other
    /// damage is [`StoreError::Corrupt`]. Then collects garbage.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_waiting(dir, Duration::ZERO)
    }

    /// As [`open`](Self::open), but waits up to `lock_wait` for a lock held
    /// by another writer to be released: a sidecar killed with `kill -9`
    /// holds it until its pending write or fsync returns, and a restart
    /// right after the kill must not fail on that.
    pub fn open_waiting(dir: &Path, lock_wait: Duration) -> Result<Self, StoreError> {
        create_dir_all_durably(dir)?;
        let lock_path = dir.join(LOCK_FILE_NAME);
        let lock = lock_file_within(&lock_path, (lock_wait, LOCK_POLL_INTERVAL), || {
            tracing::info!(
                path = %lock_path.display(),
                lock_wait_ms = lock_wait.as_millis(),
                "the checkpoint store is locked by another writer: waiting for it \
                 to let go (a killed sidecar does once its last write returns)"
            );
        })
        .map_err(StoreError::io(&lock_path))?
        .ok_or_else(|| StoreError::Locked {
            path: lock_path.clone(),
        })?;

        let commits_path = dir.join(COMMITS_FILE_NAME);
        let bytes = match std::fs::read(&commits_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let header = encode_commits_header();
                write_file_atomically(&commits_path, &header)?;
                header
            }
            Err(e) => return Err(StoreError::io(&commits_path)(e)),
        };
        let scan = scan_commits(&bytes).map_err(StoreError::corrupt(&commits_path))?;
        let stream = OpenOptions::new()
            .append(true)
            .open(&commits_path)
            .map_err(StoreError::io(&commits_path))?;
        if let Some(reason) = &scan.torn {
            tracing::warn!(
                path = %commits_path.display(),
                valid_len_bytes = scan.valid_len_bytes,
                len_bytes = bytes.len(),
                reason = %reason,
                "torn commit record at the end of the commit stream: truncating it"
            );
            stream
                .set_len(scan.valid_len_bytes)
                .and_then(|()| stream.sync_all())
                .map_err(StoreError::io(&commits_path))?;
        }
        let mut store = Self {
            dir: dir.to_owned(),
            commits_path,
            _lock: lock,
            stream,
            commits: scan.records,
            failed: false,
            garbage_collected: 0,
            compaction: None,
            written: WrittenFileHook::default(),
            keep_local: RETAINED_CHECKPOINTS,
        };
        if scan.version < COMMITS_FORMAT_VERSION {
            // New records are written in the current version only.
            store.rewrite_commits(0)?;
            tracing::info!(
                path = %store.commits_path.display(),
                from_version = scan.version,
                to_version = COMMITS_FORMAT_VERSION,
                "commit stream upgraded"
            );
        }
        // What `keep_local` will be set to is not known yet, and a restore
        // may be about to read an older checkpoint's files (`--keep-local
        // 4`, the newest two damaged): only what no record names goes.
        store.collect_garbage_logged(MAX_KEEP_LOCAL);
        Ok(store)
    }

    /// The store directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The committed checkpoints, oldest first.
    pub fn commits(&self) -> &[CommitRecord] {
        &self.commits
    }

    fn last_committed_id(&self) -> u64 {
        self.commits.last().map_or(0, |c| c.checkpoint_id)
    }

    fn check_pending(&self, checkpoint_id: u64) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Failed {
                path: self.commits_path.clone(),
            });
        }
        let last = self.last_committed_id();
        if checkpoint_id <= last {
            return Err(UsageError::AlreadyCommitted {
                given: checkpoint_id,
                last,
            }
            .into());
        }
        Ok(())
    }

    /// Writes a data file that a commit record names, brought back from a
    /// copy (the cold tier), after checking `bytes` against `meta`;
    /// replaces a damaged local file. Durable on return. A large file goes
    /// around the page cache (decision 71): a buffered write cost more CPU
    /// than reading the file back from disk for the verify and the load.
    pub fn restore_data_file(&self, meta: &FileMeta, bytes: &[u8]) -> Result<(), StoreError> {
        if DataFileId::parse(&meta.name).is_none() {
            return Err(UsageError::InvalidRecord {
                reason: format!("`{}` is not a data file name", meta.name),
            }
            .into());
        }
        let path = self.dir.join(&meta.name);
        crate::checkpoint::format::verify_data_file(bytes, meta)
            .map_err(StoreError::corrupt(&path))?;
        crate::storage::durable::write_cold_file_atomically(&path, bytes)?;
        Ok(())
    }

    /// Calls `hook` with each delta file written from now on.
    pub fn on_file_written(&mut self, hook: WrittenFileHook) {
        self.written = hook;
    }

    /// Writes part `part` of checkpoint `checkpoint_id` (not committed yet)
    /// durably. `updates` is consolidated in place first (sorted by
    /// `(key_group, data, time)`, equal triples summed, zeros dropped);
    /// the returned [`FileMeta`] goes into the commit record. Writing the
    /// same part again replaces the file. Parts of one checkpoint may be
    /// written from several threads at once.
    pub fn write_delta(
        &self,
        checkpoint_id: u64,
        part: u32,
        updates: &mut Vec<PersistedUpdate>,
    ) -> Result<FileMeta, StoreError> {
        self.check_pending(checkpoint_id)?;
        for u in updates.iter() {
            if u.key_group >= KEY_GROUPS {
                return Err(UsageError::KeyGroupOutOfRange {
                    key_group: u.key_group,
                }
                .into());
            }
            if u.data.len() > MAX_UPDATE_DATA_BYTES {
                return Err(UsageError::UpdateTooLarge {
                    size_bytes: u.data.len(),
                }
                .into());
            }
        }
        consolidate(updates);
        self.write_data_file(DataFileId::delta(checkpoint_id, part), updates)
    }

    fn write_data_file(
        &self,
        id: DataFileId,
        updates: &[PersistedUpdate],
    ) -> Result<FileMeta, StoreError> {
        let (bytes, meta) = encode_data_file(id, updates);
        let path = self.dir.join(&meta.name);
        let tmp = self.dir.join(format!("{}{TEMP_SUFFIX}", meta.name));
        let f = File::create(&tmp).map_err(StoreError::io(&tmp))?;
        if failpoint_armed(DISK_FULL_FAILPOINT) {
            // As a full disk would: the write fails and the temp file stays behind.
            return Err(StoreError::io(&tmp)(std::io::Error::from_raw_os_error(28)));
        }
        crate::storage::durable::write_new_file(&f, &tmp, &bytes).map_err(StoreError::io(&tmp))?;
        publish_data_file(f, &tmp, &path)?;
        if let Some(hook) = &self.written.0 {
            hook(&meta, bytes);
        }
        Ok(meta)
    }

    /// Appends `record` to the commit stream and fsyncs it; the checkpoint
    /// exists from then on. Then collects garbage (failures to delete are
    /// only warnings). Refused ([`UsageError`]) unless the id is above the
    /// last committed one, the record passes
    /// [`check_commit_record`] and
    /// every file it names exists; a file whose size differs from the record
    /// is [`StoreError::Corrupt`].
    pub fn commit(&mut self, record: CommitRecord) -> Result<(), StoreError> {
        if self.failed {
            return Err(StoreError::Failed {
                path: self.commits_path.clone(),
            });
        }
        let last = self.last_committed_id();
        if record.checkpoint_id <= last {
            return Err(UsageError::IdNotIncreasing {
                given: record.checkpoint_id,
                last,
            }
            .into());
        }
        check_commit_record(&record).map_err(|reason| UsageError::InvalidRecord { reason })?;
        for f in &record.files {
            let path = self.dir.join(&f.name);
            let len = match std::fs::metadata(&path) {
                Ok(m) => m.len(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(UsageError::MissingFile {
                        name: f.name.clone(),
                    }
                    .into())
                }
                Err(e) => return Err(StoreError::io(&path)(e)),
            };
            if len != f.size_bytes {
                return Err(StoreError::Corrupt {
                    path,
                    byte_offset: len.min(f.size_bytes),
                    reason: format!(
                        "file has {len} bytes, the record to commit says {}",
                        f.size_bytes
                    ),
                });
            }
        }
        let frame = encode_commit_frame(&record);
        let payload_len = frame.len() - crate::storage::frame::FRAME_HEADER_LEN_BYTES;
        if payload_len > MAX_RECORD_SIZE_BYTES {
            return Err(UsageError::RecordTooLarge {
                size_bytes: payload_len,
            }
            .into());
        }
        if failpoint_armed("mid-commit-record") {
            let _ = self
                .stream
                .write_all(&frame[..frame.len() / 2])
                .and_then(|()| self.stream.flush());
            failpoint("mid-commit-record");
        }
        if let Err(e) = self
            .stream
            .write_all(&frame)
            .and_then(|()| self.stream.sync_data())
        {
            // The stream may now end with part of a frame; reopening
            // truncates it.
            self.failed = true;
            return Err(StoreError::io(&self.commits_path)(e));
        }
        self.commits.push(record);
        failpoint("after-commit");
        if self.commits.len() >= TRIM_COMMITS_AT_RECORDS {
            self.trim_commits()?;
        }
        self.collect_garbage_logged(self.keep_local);
        Ok(())
    }

    /// Rewrites the commit stream with only the newest
    /// [`RETAINED_COMMIT_RECORDS`] records (temp -> fsync -> rename -> fsync
    /// dir: a crash leaves the old stream or the new one, both valid).
    fn trim_commits(&mut self) -> Result<(), StoreError> {
        let drop_count = self.commits.len().saturating_sub(RETAINED_COMMIT_RECORDS);
        self.rewrite_commits(drop_count)?;
        tracing::info!(
            path = %self.commits_path.display(),
            dropped = drop_count,
            kept = self.commits.len(),
            "commit stream trimmed"
        );
        Ok(())
    }

    /// Rewrites the commit stream in the current version without its
    /// oldest `drop_count` records (temp -> fsync -> rename -> fsync dir).
    fn rewrite_commits(&mut self, drop_count: usize) -> Result<(), StoreError> {
        let mut bytes = encode_commits_header();
        for record in &self.commits[drop_count..] {
            bytes.extend_from_slice(&encode_commit_frame(record));
        }
        write_file_atomically(&self.commits_path, &bytes)?;
        // The old handle points at the replaced file.
        match OpenOptions::new().append(true).open(&self.commits_path) {
            Ok(stream) => self.stream = stream,
            Err(e) => {
                self.failed = true;
                return Err(StoreError::io(&self.commits_path)(e));
            }
        }
        self.commits.drain(..drop_count);
        Ok(())
    }

    /// Merges every file of the newest commit into `base-<checkpoint_id>`,
    /// dropping updates with time `< horizon_time` and consolidating, and
    /// returns the files that replace the newest commit's in the next commit
    /// record (`checkpoint_id`, not committed yet; add its own delta files).
    /// One key group at a time ([`compact_files`], with the default
    /// budget); the sidecar runs [`compact_files`] off the commit path
    /// ([`CheckpointStore::start_compaction`]).
    ///
    /// With `state_as_of_cut` (queries whose persisted updates describe a
    /// state, not a history: sessions), every time is advanced to 0 first,
    /// so an insertion and its later retraction cancel.
    pub fn compact(
        &mut self,
        checkpoint_id: u64,
        horizon_time: u64,
        state_as_of_cut: bool,
    ) -> Result<Vec<FileMeta>, StoreError> {
        let latest = self.commits.last().ok_or(UsageError::NothingToCompact)?;
        let base = latest.clone();
        self.compact_onto(checkpoint_id, &base, horizon_time, state_as_of_cut)
    }

    /// As [`compact`](Self::compact), but merges the files of `base`, the
    /// checkpoint the next one builds on: after a restore fell back from an
    /// unusable newest commit, that is the restored one, not the newest.
    pub fn compact_onto(
        &mut self,
        checkpoint_id: u64,
        base: &CommitRecord,
        horizon_time: u64,
        state_as_of_cut: bool,
    ) -> Result<Vec<FileMeta>, StoreError> {
        self.check_pending(checkpoint_id)?;
        let meta = compact_files(
            &self.dir,
            base,
            DataFileId::base(checkpoint_id),
            (horizon_time, state_as_of_cut),
            DEFAULT_COMPACTION_BUDGET_BYTES,
        )?;
        Ok(vec![meta])
    }
}

/// Makes the fully written temp file `tmp` the data file `path`: fsync,
/// rename, fsync of the directory (with the failpoints between the steps).
fn publish_data_file(file: File, tmp: &Path, path: &Path) -> Result<(), StoreError> {
    failpoint("after-delta-write");
    file.sync_all().map_err(StoreError::io(tmp))?;
    drop(file);
    failpoint("after-delta-fsync");
    std::fs::rename(tmp, path).map_err(StoreError::io(tmp))?;
    failpoint("after-delta-rename");
    sync_dir(
        path.parent()
            .expect("a data file is in the store directory"),
    )?;
    Ok(())
}
