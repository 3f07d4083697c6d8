//! `--log-retention checkpointed` on each worker: once a checkpoint
//! commits, delete the log segments of the worker's partitions that no
//! retained checkpoint needs.
//!
//! The checkpoint store keeps the files of the newest
//! [`RETAINED_CHECKPOINTS`] commits (a restore falls back from a damaged
//! newest one to the one before), so a partition's log must keep every
//! offset from the least offset those checkpoints resume it at. The worker
//! knows the resume offsets of its own partitions in every checkpoint it
//! shipped (and in the one it restored), and learns from the sidecar which
//! ones committed; it keeps the newest [`RETAINED_CHECKPOINTS`] committed
//! ones and deletes whole segments below their least offset (see
//! [`crate::log::retention`]). A partition absent from one of them keeps
//! everything.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;

use crate::checkpoint::format::PartitionResume;
use crate::checkpoint::store::RETAINED_CHECKPOINTS;
use crate::log::retention::delete_segments_before;
use crate::log::LogError;
use crate::source::SourceCounters;

/// Resume offsets by partition, of one checkpoint.
type Resumes = HashMap<u32, u64>;

/// One worker's log retention (see the module doc).
pub(super) struct WorkerRetention {
    /// The worker's log partitions and their directories.
    dirs: Vec<(u32, PathBuf)>,
    /// Shipped, not known to be committed yet: `(checkpoint id, resumes)`.
    shipped: VecDeque<(u64, Resumes)>,
    /// The newest committed ones, oldest first.
    committed: VecDeque<(u64, Resumes)>,
    /// The offset each partition was last cut at.
    deleted_below: HashMap<u32, u64>,
}

impl WorkerRetention {
    /// A worker reading the log partitions `dirs`, resuming from the
    /// checkpoint `restored` (`(id, its resume offsets)`) if any.
    pub(super) fn new(
        dirs: Vec<(u32, PathBuf)>,
        restored: Option<(u64, &[PartitionResume])>,
    ) -> Self {
        let mut committed = VecDeque::new();
        if let Some((id, partitions)) = restored {
            committed.push_back((id, resumes(partitions)));
        }
        WorkerRetention {
            dirs,
            shipped: VecDeque::new(),
            committed,
            deleted_below: HashMap::new(),
        }
    }

    /// The worker handed checkpoint `id`'s share to the sidecar client.
    pub(super) fn shipped(&mut self, id: u64, partitions: &[PartitionResume]) {
        self.shipped.push_back((id, resumes(partitions)));
    }

    /// The sidecar committed every checkpoint up to `newest_id`: deletes
    /// what the newest retained checkpoints no longer need.
    pub(super) fn committed_through(
        &mut self,
        newest_id: u64,
        counters: &SourceCounters,
    ) -> Result<(), LogError> {
        let mut changed = false;
        while self.shipped.front().is_some_and(|(id, _)| *id <= newest_id) {
            let entry = self.shipped.pop_front().expect("checked above");
            self.committed.push_back(entry);
            changed = true;
        }
        while self.committed.len() > RETAINED_CHECKPOINTS {
            self.committed.pop_front();
        }
        if !changed || self.committed.len() < RETAINED_CHECKPOINTS {
            return Ok(());
        }
        for (partition, dir) in &self.dirs {
            let keep_from = self
                .committed
                .iter()
                .map(|(_, resumes)| resumes.get(partition).copied().unwrap_or(0))
                .min()
                .unwrap_or(0);
            if self
                .deleted_below
                .get(partition)
                .is_some_and(|&d| d >= keep_from)
            {
                continue;
            }
            let deleted = delete_segments_before(dir, keep_from)?;
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
                    "log retention: deleted segments no retained checkpoint needs"
                );
            }
        }
        Ok(())
    }
}

fn resumes(partitions: &[PartitionResume]) -> Resumes {
    partitions
        .iter()
        .map(|p| (p.partition, p.resume_offset))
        .collect()
}
