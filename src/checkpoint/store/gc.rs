//! Garbage collection of a checkpoint store: after each commit, the data
//! files no longer named by the newest `--keep-local` commit records go,
//! with temp files a crash left behind. At open only the files no retained
//! record names go (the setting comes after the open).

use std::collections::HashSet;

use super::{CheckpointStore, StoreError, COMMITS_FILE_NAME, TEMP_SUFFIX};
use crate::checkpoint::format::DataFileId;
use crate::storage::durable::sync_dir;

/// The fewest newest checkpoints whose files a store keeps, and the
/// default: the checkpoint before the newest is the local fallback when
/// the newest is damaged.
pub const RETAINED_CHECKPOINTS: usize = 2;
/// The most `--keep-local` may ask for: the commit stream is trimmed to
/// this many records.
pub const MAX_KEEP_LOCAL: usize = super::RETAINED_COMMIT_RECORDS;

impl CheckpointStore {
    /// Keeps the files of the newest `checkpoints` commits from the next
    /// commit on (`--keep-local`; [`RETAINED_CHECKPOINTS`] until called).
    /// Older checkpoints' files are deleted then whether or not a cold tier
    /// holds them: a copier copies the newest checkpoint, not each one.
    ///
    /// # Panics
    /// Outside `RETAINED_CHECKPOINTS..=MAX_KEEP_LOCAL` (the CLI checks).
    pub fn keep_local(&mut self, checkpoints: usize) {
        assert!(
            (RETAINED_CHECKPOINTS..=MAX_KEEP_LOCAL).contains(&checkpoints),
            "keep_local {checkpoints} out of range"
        );
        self.keep_local = checkpoints;
    }

    /// Files deleted by garbage collection since the store was opened.
    pub fn garbage_collected_files(&self) -> u64 {
        self.garbage_collected
    }

    pub(super) fn collect_garbage_logged(&mut self, keep_checkpoints: usize) {
        match self.collect_garbage(keep_checkpoints) {
            Ok(0) => {}
            Ok(deleted) => {
                self.garbage_collected += deleted as u64;
                tracing::debug!(dir = %self.dir.display(), deleted, "checkpoint garbage collected");
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "checkpoint garbage collection failed; retrying after the next commit"
                );
            }
        }
    }

    /// Deletes leftover temp files, and the data files of committed
    /// checkpoints that the newest `keep_checkpoints` commits do not
    /// reference. Returns how many files it deleted.
    fn collect_garbage(&self, keep_checkpoints: usize) -> Result<usize, StoreError> {
        let last = self.last_committed_id();
        let keep: HashSet<&str> = self
            .commits
            .iter()
            .rev()
            .take(keep_checkpoints)
            .flat_map(|c| c.files.iter().map(|f| f.name.as_str()))
            .collect();
        let mut deleted = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(StoreError::io(&self.dir))? {
            let entry = entry.map_err(StoreError::io(&self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let in_flight = self
                .compaction
                .as_ref()
                .is_some_and(|c| name.strip_suffix(TEMP_SUFFIX).unwrap_or(name) == c.output_name);
            if in_flight {
                continue;
            }
            let garbage = match name.strip_suffix(TEMP_SUFFIX) {
                Some(base) => base == COMMITS_FILE_NAME || DataFileId::parse(base).is_some(),
                None => DataFileId::parse(name)
                    .is_some_and(|id| id.checkpoint_id <= last && !keep.contains(name)),
            };
            if garbage {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(StoreError::io(&path))?;
                deleted += 1;
            }
        }
        if deleted > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(deleted)
    }
}
