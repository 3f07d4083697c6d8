//! Errors of the checkpoint store: [`StoreError`] for storage problems
//! (naming the file and, for damaged data, the byte offset) and
//! [`UsageError`] for misuse of the API.

use std::path::{Path, PathBuf};

use crate::checkpoint::format::{FormatError, KEY_GROUPS, MAX_UPDATE_DATA_BYTES};
use crate::storage::frame::MAX_RECORD_SIZE_BYTES;
use crate::storage::IoError;

/// Errors of the checkpoint store: storage errors name the file (and, for
/// damaged data, the byte offset); misuse by the caller is [`UsageError`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An I/O operation on `path` failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stored data is damaged: a checksum, size or structure mismatch.
    #[error("{}: corrupt at byte {byte_offset}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the bad header, frame or field starts (0 for a whole-file
        /// checksum mismatch).
        byte_offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The cold tier could not be read.
    #[error("cold tier {url}: {reason}")]
    Cold {
        /// The cold store's URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Another writer holds the store's lock.
    #[error("{}: the checkpoint store is locked by another writer (is another sidecar running?)", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The newest checkpoint was written by a different query.
    #[error(
        "{}: checkpoint {checkpoint_id} was written by a query with fingerprint {found:#018x}, \
         but this query's fingerprint is {expected:#018x}; restore it with the query that wrote \
         it, or use a fresh data directory", dir.display()
    )]
    FingerprintMismatch {
        /// The store directory.
        dir: PathBuf,
        /// The checkpoint.
        checkpoint_id: u64,
        /// The running query's fingerprint.
        expected: u64,
        /// The checkpoint's fingerprint.
        found: u64,
    },
    /// Checkpoints were committed but none of them can be loaded.
    #[error("{}: no usable checkpoint: {}", dir.display(), reasons.join("; "))]
    NoUsableCheckpoint {
        /// The store directory.
        dir: PathBuf,
        /// Why each checkpoint was refused, newest first.
        reasons: Vec<String>,
    },
    /// An earlier append to the commit stream failed part way; the store
    /// must be reopened (which repairs the tail).
    #[error("{}: an earlier commit failed; reopen the checkpoint store", path.display())]
    Failed {
        /// The commit stream.
        path: PathBuf,
    },
    /// A compaction met a key group whose updates need more memory than
    /// its budget (`weir sidecar --memory-budget`).
    #[error(
        "{}: compacting checkpoint {checkpoint_id}: key group {key_group} holds {needed_bytes} \
         bytes of updates, above the compaction's memory budget of {budget_bytes} bytes; \
         give the sidecar a larger --memory-budget", dir.display()
    )]
    CompactionOverBudget {
        /// The store directory.
        dir: PathBuf,
        /// The checkpoint being compacted.
        checkpoint_id: u64,
        /// The key group.
        key_group: u16,
        /// Bytes its updates take in memory.
        needed_bytes: u64,
        /// The budget.
        budget_bytes: u64,
    },
    /// A background compaction was stopped (the store was closed).
    #[error("{}: compaction cancelled", dir.display())]
    CompactionCancelled {
        /// The store directory.
        dir: PathBuf,
    },
    /// The caller asked for something the store does not allow.
    #[error(transparent)]
    Usage(#[from] UsageError),
}

/// Misuse of the store's API (nothing on disk is wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// A commit whose id is not above the last committed one.
    #[error("checkpoint id {given} is not above the last committed id {last}")]
    IdNotIncreasing {
        /// The id given.
        given: u64,
        /// The newest committed id.
        last: u64,
    },
    /// Files may only be written for checkpoints not committed yet.
    #[error("checkpoint {given} is already committed (newest: {last}); its files are immutable")]
    AlreadyCommitted {
        /// The id given.
        given: u64,
        /// The newest committed id.
        last: u64,
    },
    /// An update with a key group of [`KEY_GROUPS`] or more.
    #[error("key group {key_group} is out of range (there are {KEY_GROUPS})")]
    KeyGroupOutOfRange {
        /// The key group.
        key_group: u16,
    },
    /// An update whose data exceeds [`MAX_UPDATE_DATA_BYTES`].
    #[error("update data of {size_bytes} bytes exceeds the maximum of {MAX_UPDATE_DATA_BYTES}")]
    UpdateTooLarge {
        /// The size.
        size_bytes: usize,
    },
    /// A commit record that breaks a rule of the format.
    #[error("invalid commit record: {reason}")]
    InvalidRecord {
        /// Which rule.
        reason: String,
    },
    /// A commit record whose encoding exceeds the frame size limit.
    #[error("commit record of {size_bytes} bytes exceeds the maximum of {MAX_RECORD_SIZE_BYTES}")]
    RecordTooLarge {
        /// Its size.
        size_bytes: usize,
    },
    /// A commit record naming a file the store does not hold.
    #[error("commit record names {name}, which does not exist")]
    MissingFile {
        /// The file name.
        name: String,
    },
    /// `compact` before any commit.
    #[error("nothing to compact: no checkpoint is committed")]
    NothingToCompact,
}

impl StoreError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }

    pub(super) fn corrupt(path: &Path) -> impl FnOnce(FormatError) -> Self + '_ {
        move |e| Self::Corrupt {
            path: path.to_owned(),
            byte_offset: e.byte_offset,
            reason: e.reason,
        }
    }
}

impl From<IoError> for StoreError {
    fn from(e: IoError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}
