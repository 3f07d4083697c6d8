//! `--log-retention checkpointed` on each worker: when the sidecar reports
//! a new commit, delete the log segments of the worker's partitions below
//! the offsets any restorable checkpoint resumes them at.
//!
//! Which checkpoints a restore may still use, and so how far back each
//! partition must reach, is read from the commit stream
//! ([`ResumeFloors`]: every checkpoint whose files are all still on disk,
//! as many as the sidecar's `--keep-local` keeps, or more). Each worker deletes its own partitions'
//! segments, so the processes of a cluster need no coordination; a process
//! that cannot read the commit stream (it is on another machine than the
//! sidecar) deletes nothing.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

use crate::checkpoint::store::{read_commits, ResumeFloors};
use crate::log::retention::delete_segments_before;
use crate::source::SourceCounters;

/// One worker's log retention (see the module doc).
pub(super) struct WorkerRetention {
    /// The worker's log partitions and their directories.
    dirs: Vec<(u32, PathBuf)>,
    checkpoint_dir: PathBuf,
    /// The newest commit acted on.
    acted_on: u64,
    /// Per partition, the offset segments were last deleted below.
    deleted_below: HashMap<u32, u64>,
}

impl WorkerRetention {
    /// A worker reading the log partitions `dirs`, whose checkpoints are
    /// committed to `checkpoint_dir`.
    pub(super) fn new(dirs: Vec<(u32, PathBuf)>, checkpoint_dir: PathBuf) -> Self {
        WorkerRetention {
            dirs,
            checkpoint_dir,
            acted_on: 0,
            deleted_below: HashMap::new(),
        }
    }

    /// The sidecar reported `newest_id` committed: deletes what no
    /// restorable checkpoint needs any more. An error stops retention on
    /// this worker (after a warning); the log is only kept longer.
    pub(super) fn committed(
        &mut self,
        newest_id: u64,
        counters: &SourceCounters,
    ) -> Result<(), String> {
        if newest_id <= self.acted_on {
            return Ok(());
        }
        self.acted_on = newest_id;
        let records = read_commits(&self.checkpoint_dir).map_err(|e| e.to_string())?;
        let present = data_file_names(&self.checkpoint_dir)?;
        let Some(floors) = ResumeFloors::of(&records, &present) else {
            return Ok(());
        };
        for (partition, dir) in &self.dirs {
            let keep_from = floors.floor(*partition);
            if self
                .deleted_below
                .get(partition)
                .is_some_and(|&d| d >= keep_from)
            {
                continue;
            }
            let deleted = delete_segments_before(dir, keep_from).map_err(|e| e.to_string())?;
            self.deleted_below.insert(*partition, keep_from);
            if deleted.segments > 0 {
                counters
                    .log_segments_deleted
                    .fetch_add(deleted.segments, Relaxed);
                counters.log_bytes_deleted.fetch_add(deleted.bytes, Relaxed);
                tracing::debug!(
                    partition,
                    dir = %dir.display(),
                    segments = deleted.segments,
                    bytes = deleted.bytes,
                    first_offset = deleted.first_offset,
                    "log retention: deleted segments no restorable checkpoint needs"
                );
            }
        }
        Ok(())
    }
}

/// The names of the files in `dir` (a checkpoint store's data files among
/// them).
fn data_file_names(dir: &std::path::Path) -> Result<HashSet<String>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut names = HashSet::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(name) = entry.file_name().to_str() {
            names.insert(name.to_owned());
        }
    }
    Ok(names)
}
