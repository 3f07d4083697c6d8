//! Compaction in bounded memory: the files of a committed checkpoint merged
//! into one base file, one key group at a time.
//!
//! Every file of the checkpoint is checksummed first (in chunks), then for
//! each key group the group's records of every file are read (`pread` of
//! the group's extent), consolidated, trimmed to the horizon and appended to
//! the base file's encoder, whose bytes go to the temp file as they come.
//! Memory is one key group's updates plus the write buffer: a checkpoint
//! of N bytes needs about N / 256 (there are [`KEY_GROUPS`] groups), and a
//! group larger than the budget stops the compaction with
//! [`StoreError::CompactionOverBudget`] instead of growing without bound.
//! Nothing here touches the commit stream: the caller decides which commit
//! record names the base file (decision 34).

use std::fs::File;
use std::io::Write;
use std::mem::size_of;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::read::{verify_files, CheckpointGroups};
use super::{failpoint_armed, publish_data_file, CheckpointStore, StoreError, DISK_FULL_FAILPOINT};
use crate::checkpoint::format::{
    consolidate_as_of_cut, consolidate_sorted_runs, CommitRecord, DataFileEncoder, DataFileId,
    FileMeta, PersistedUpdate, KEY_GROUPS, TEMP_SUFFIX,
};

/// The default memory budget of a compaction (`weir sidecar
/// --memory-budget`).
pub const DEFAULT_COMPACTION_BUDGET_BYTES: u64 = 1 << 30;

/// Encoded bytes gathered before they are written to the temp file.
const WRITE_CHUNK_BYTES: usize = 4 << 20;

/// Memory an update held while its key group is merged.
fn held_bytes(update: &PersistedUpdate) -> u64 {
    (size_of::<PersistedUpdate>() + update.data.capacity()) as u64
}

/// Merges every file of `base` (in `dir`) into the base file `out`,
/// dropping updates with time `< horizon_time` and consolidating (with
/// `state_as_of_cut`, every time is advanced to 0 first: see
/// [`consolidate_as_of_cut`]); written durably (temp file, fsync, rename,
/// directory fsync) and returns its [`FileMeta`]. Holds at most one key
/// group's updates in memory, refusing a group over `budget_bytes`.
pub fn compact_files(
    dir: &Path,
    base: &CommitRecord,
    out: DataFileId,
    (horizon_time, state_as_of_cut): (u64, bool),
    budget_bytes: u64,
) -> Result<FileMeta, StoreError> {
    compact_files_cancellable(
        dir,
        base,
        out,
        (horizon_time, state_as_of_cut),
        budget_bytes,
        &AtomicBool::new(false),
    )
}

/// [`compact_files`], stopping with [`StoreError::CompactionCancelled`]
/// between key groups once `cancel` is set (the temp file stays behind for
/// garbage collection).
pub(super) fn compact_files_cancellable(
    dir: &Path,
    base: &CommitRecord,
    out: DataFileId,
    (horizon_time, state_as_of_cut): (u64, bool),
    budget_bytes: u64,
    cancel: &AtomicBool,
) -> Result<FileMeta, StoreError> {
    verify_files(dir, &base.files)?;
    let mut groups = CheckpointGroups::open(dir, base, |_| true)?;
    let name = out.file_name();
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let mut file = File::create(&tmp).map_err(StoreError::io(&tmp))?;
    if failpoint_armed(DISK_FULL_FAILPOINT) {
        // As a full disk would: the write fails and the temp file stays behind.
        return Err(StoreError::io(&tmp)(std::io::Error::from_raw_os_error(28)));
    }
    let mut encoder = DataFileEncoder::new(out);
    let mut updates: Vec<PersistedUpdate> = Vec::new();
    for key_group in 0..KEY_GROUPS {
        if cancel.load(Ordering::Relaxed) {
            return Err(StoreError::CompactionCancelled {
                dir: dir.to_owned(),
            });
        }
        updates.clear();
        let mut held = 0u64;
        groups.visit_key_group(
            key_group,
            horizon_time,
            &mut |key_group, data, time, diff| {
                let update = PersistedUpdate {
                    key_group,
                    data: data.to_vec(),
                    time,
                    diff,
                };
                held += held_bytes(&update);
                updates.push(update);
                Ok(())
            },
        )?;
        if held > budget_bytes {
            return Err(StoreError::CompactionOverBudget {
                dir: dir.to_owned(),
                checkpoint_id: base.checkpoint_id,
                key_group,
                needed_bytes: held,
                budget_bytes,
            });
        }
        // Each file's records of the group are one sorted run.
        consolidate_sorted_runs(&mut updates);
        if state_as_of_cut {
            consolidate_as_of_cut(&mut updates);
        }
        encoder.push_sorted(&updates);
        if encoder.pending_bytes() >= WRITE_CHUNK_BYTES {
            file.write_all(&encoder.take_bytes())
                .map_err(StoreError::io(&tmp))?;
        }
        if updates.capacity() > 2 * updates.len().max(1024) {
            // One large group must not keep its memory for the rest.
            updates = Vec::new();
        }
    }
    file.write_all(&encoder.take_bytes())
        .map_err(StoreError::io(&tmp))?;
    let (tail, meta) = encoder.finish();
    file.write_all(&tail).map_err(StoreError::io(&tmp))?;
    publish_data_file(file, &tmp, &path)?;
    Ok(meta)
}

/// A compaction running on a thread of its own (see
/// [`super::CheckpointStore::start_compaction`]).
#[derive(Debug)]
pub(super) struct BackgroundCompaction {
    /// The base file it writes (garbage collection leaves it and its temp
    /// file alone while the thread runs).
    pub(super) output_name: String,
    /// The files of the compacted checkpoint, which the base file replaces.
    pub(super) replaces: Vec<String>,
    pub(super) compacted_id: u64,
    pub(super) cancel: std::sync::Arc<AtomicBool>,
    pub(super) thread: std::thread::JoinHandle<Result<FileMeta, StoreError>>,
}

/// A finished background compaction: the base file and the files it
/// replaces in the next commit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Compacted {
    /// The checkpoint whose files were merged.
    pub compacted_id: u64,
    /// The base file (durable, not yet named by any commit record).
    pub base: FileMeta,
    /// The names of the merged files.
    pub replaces: Vec<String>,
}

impl Compacted {
    /// The files of a commit record made of `files` with the merged ones
    /// replaced by the base file (first), or `None` if `files` does not hold
    /// every merged file (the next record does not build on the compacted
    /// checkpoint; the base file is then garbage).
    pub fn apply(&self, files: &[FileMeta]) -> Option<Vec<FileMeta>> {
        let all_there = self
            .replaces
            .iter()
            .all(|name| files.iter().any(|f| &f.name == name));
        all_there.then(|| {
            std::iter::once(self.base.clone())
                .chain(
                    files
                        .iter()
                        .filter(|f| !self.replaces.contains(&f.name))
                        .cloned(),
                )
                .collect()
        })
    }
}

impl CheckpointStore {
    /// Starts merging the files of committed checkpoint `base` into
    /// `base-<id>` on a thread of its own, in bounded memory
    /// ([`compact_files`] with `horizon_time`, `state_as_of_cut` and
    /// `budget_bytes`); [`CheckpointStore::finished_compaction`] gives the
    /// result. Returns `false` (and starts nothing) while another runs, or
    /// if that file exists already (a compaction of an older binary).
    pub fn start_compaction(
        &mut self,
        base: &CommitRecord,
        (horizon_time, state_as_of_cut): (u64, bool),
        budget_bytes: u64,
    ) -> bool {
        let id = DataFileId::base(base.checkpoint_id);
        let output_name = id.file_name();
        if self.compaction.is_some()
            || base.files.iter().any(|f| f.name == output_name)
            || self.dir.join(&output_name).exists()
        {
            return false;
        }
        let cancel = std::sync::Arc::new(AtomicBool::new(false));
        let (dir, record, stop) = (self.dir.clone(), base.clone(), cancel.clone());
        let spawned = std::thread::Builder::new()
            .name("weir-compaction".into())
            .spawn(move || {
                compact_files_cancellable(
                    &dir,
                    &record,
                    id,
                    (horizon_time, state_as_of_cut),
                    budget_bytes,
                    &stop,
                )
            });
        let Ok(thread) = spawned else {
            tracing::warn!("cannot start a compaction thread; compacting later");
            return false;
        };
        self.compaction = Some(BackgroundCompaction {
            output_name,
            replaces: base.files.iter().map(|f| f.name.clone()).collect(),
            compacted_id: base.checkpoint_id,
            cancel,
            thread,
        });
        true
    }

    /// Whether a background compaction is running (or finished and not
    /// taken yet).
    pub fn compaction_running(&self) -> bool {
        self.compaction.is_some()
    }

    /// The result of the background compaction if it has finished (its
    /// base file renamed into place counts: only the directory's fsync is
    /// left, which this waits for). The base file survives garbage
    /// collection only if the next commit record names it.
    pub fn finished_compaction(&mut self) -> Option<Result<Compacted, StoreError>> {
        let running = self.compaction.as_ref()?;
        let renamed = self.dir.join(&running.output_name).exists();
        if !running.thread.is_finished() && !renamed {
            return None;
        }
        let done = self.compaction.take().expect("checked above");
        let result = done
            .thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Some(result.map(|base| Compacted {
            compacted_id: done.compacted_id,
            base,
            replaces: done.replaces,
        }))
    }
}

impl Drop for CheckpointStore {
    /// Stops a running compaction at its next key group and waits for it
    /// (its temp file is garbage for the next open).
    fn drop(&mut self) {
        if let Some(running) = self.compaction.take() {
            running.cancel.store(true, Ordering::Relaxed);
            let _ = running.thread.join();
        }
    }
}
