//! Committing a complete checkpoint: its delta files, a finished
//! compaction taken in, the commit record; and starting the next
//! compaction when one is due.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::coordinator::{PendingCheckpoint, COMPACT_ABOVE_FILES, COMPACT_EVERY_CHECKPOINTS};
use super::metrics::SidecarMetrics;
use crate::checkpoint::format::{
    CommitRecord, CommitTiming, FileMeta, OutputLength, PartitionResume, PersistedUpdate,
};
use crate::checkpoint::store::{CheckpointStore, StoreError};
use crate::checkpoint::transport::WorkerCut;

/// The most delta files a commit sorts, encodes and writes at once.
const DELTA_WRITERS: usize = 4;

/// Writes the delta files of `checkpoint` (one per worker with updates;
/// part = worker index) and commits; a finished background compaction's
/// base file replaces the files it merged in this record, and when one is
/// due (every [`COMPACT_EVERY_CHECKPOINTS`]th checkpoint, or above
/// [`COMPACT_ABOVE_FILES`] files) and none runs, the committed checkpoint's
/// compaction starts in the background with `compaction_budget_bytes`
/// (decision 34): a commit never waits for a compaction. Blocking.
pub fn commit_checkpoint(
    store: &mut CheckpointStore,
    previous: Option<&CommitRecord>,
    checkpoint: PendingCheckpoint,
    (query_fingerprint, workers_total): (u64, u32),
    metrics: &SidecarMetrics,
    compaction_budget_bytes: u64,
) -> Result<CommitRecord, StoreError> {
    let id = checkpoint.checkpoint_id;
    let span = tracing::debug_span!(
        "commit",
        checkpoint_id = id,
        cut_time = checkpoint.cut_time,
        delta_bytes = tracing::field::Empty,
        elapsed_ms = tracing::field::Empty,
    );
    let _entered = span.enter();
    let started = Instant::now();

    let mut new_files: Vec<FileMeta> = Vec::new();
    // Start from the previous commit: output files of workers that this run
    // does not have (it restored onto fewer workers) keep their committed
    // lengths, or a later restore would drop their rows.
    let mut partitions: BTreeMap<u32, PartitionResume> = previous
        .map(|r| {
            r.partitions
                .iter()
                .map(|p| (p.partition, p.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut outputs: BTreeMap<String, OutputLength> = previous
        .map(|r| {
            r.outputs
                .iter()
                .map(|o| (o.file_name.clone(), o.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut cuts = checkpoint.cuts;
    let update_count: usize = cuts.values().map(|c| c.updates.len()).sum();
    new_files.extend(write_deltas(store, id, &mut cuts)?);
    for cut in cuts.into_values() {
        for p in cut.partitions {
            partitions.insert(p.partition, p);
        }
        for o in cut.outputs {
            outputs.insert(o.file_name.clone(), o);
        }
    }
    let deltas_us = started.elapsed().as_micros() as u64;
    let delta_bytes: u64 = new_files.iter().map(|f| f.size_bytes).sum();
    span.record("delta_bytes", delta_bytes);

    let mut files: Vec<FileMeta> = previous.map(|r| r.files.clone()).unwrap_or_default();
    if let Some(finished) = store.finished_compaction() {
        let compacted = finished?;
        metrics.compactions.fetch_add(1, Ordering::Relaxed);
        let base_bytes = compacted.base.size_bytes;
        metrics
            .written_bytes
            .fetch_add(base_bytes, Ordering::Relaxed);
        if let Some(replaced) = compacted.apply(&files) {
            tracing::debug!(
                compacted_checkpoint = compacted.compacted_id,
                base_bytes,
                merged_files = compacted.replaces.len(),
                "compaction enters this commit"
            );
            files = replaced;
        } else {
            // This record does not build on the compacted checkpoint (a
            // restore fell back past it): garbage collection drops the file.
            tracing::warn!(
                compacted_checkpoint = compacted.compacted_id,
                "compaction result no longer applies; dropped"
            );
        }
    }
    files.extend(new_files);
    let compaction_due =
        id.is_multiple_of(COMPACT_EVERY_CHECKPOINTS) || files.len() > COMPACT_ABOVE_FILES;

    let record = CommitRecord {
        checkpoint_id: id,
        cut_time: checkpoint.cut_time,
        query_fingerprint,
        workers_total,
        files,
        partitions: partitions.into_values().collect(),
        outputs: outputs.into_values().collect(),
        timing: Some(CommitTiming {
            committed_at_unix_ms: crate::metrics::now_ms(),
            commit_latency_us: checkpoint.first_cut_at.elapsed().as_micros() as u64,
        }),
    };
    let t = Instant::now();
    store.commit(record.clone())?;
    let commit_took = t.elapsed();
    let commit_us = commit_took.as_micros() as u64;
    metrics.commit_fsync_seconds.observe(commit_took);
    metrics.commits.fetch_add(1, Ordering::Relaxed);
    metrics
        .last_delta_bytes
        .store(delta_bytes, Ordering::Relaxed);
    metrics
        .written_bytes
        .fetch_add(delta_bytes, Ordering::Relaxed);
    metrics.committed_bytes.store(
        record.files.iter().map(|f| f.size_bytes).sum(),
        Ordering::Relaxed,
    );
    metrics
        .gc_files
        .store(store.garbage_collected_files(), Ordering::Relaxed);
    metrics.last_checkpoint_id.store(id, Ordering::Relaxed);
    metrics
        .last_cut_ms
        .store(record.cut_time, Ordering::Relaxed);
    span.record("elapsed_ms", crate::metrics::millis(started.elapsed()));
    if compaction_due && !store.compaction_running() {
        let horizon = checkpoint.cut_time.saturating_sub(checkpoint.retention_ms);
        // An unbounded retention marks persisted state (open sessions):
        // only its value as of the cut matters.
        let state_as_of_cut = checkpoint.retention_ms == u64::MAX;
        let started =
            store.start_compaction(&record, (horizon, state_as_of_cut), compaction_budget_bytes);
        tracing::debug!(horizon_time = horizon, started, "compaction due");
    }
    tracing::debug!(
        updates = update_count,
        files = record.files.len(),
        deltas_us,
        commit_us,
        total_us = started.elapsed().as_micros() as u64,
        "checkpoint committed"
    );
    Ok(record)
}

/// Writes the delta file of each worker cut with updates, in worker order;
/// up to [`DELTA_WRITERS`] at once. Sorting and encoding a share is most
/// of a commit's time (1.5 s for two 1M-update shares, one after the
/// other), and while the sidecar is behind, the engine's sources wait.
fn write_deltas(
    store: &CheckpointStore,
    id: u64,
    cuts: &mut BTreeMap<u32, WorkerCut>,
) -> Result<Vec<FileMeta>, StoreError> {
    let mut parts: Vec<(u32, &mut Vec<PersistedUpdate>)> = cuts
        .iter_mut()
        .filter(|(_, cut)| !cut.updates.is_empty())
        .map(|(worker, cut)| (*worker, &mut cut.updates))
        .collect();
    let writers = std::thread::available_parallelism().map_or(1, |n| n.get().min(DELTA_WRITERS));
    let mut files = Vec::with_capacity(parts.len());
    for group in parts.chunks_mut(writers) {
        if let [(worker, updates)] = group {
            files.push(store.write_delta(id, *worker, updates)?);
            continue;
        }
        let written: Vec<Result<FileMeta, StoreError>> = std::thread::scope(|scope| {
            let writers: Vec<_> = group
                .iter_mut()
                .map(|(worker, updates)| {
                    let worker = *worker;
                    std::thread::Builder::new()
                        .name("weir-delta".into())
                        .spawn_scoped(scope, move || store.write_delta(id, worker, updates))
                        .map_err(StoreError::io(store.dir()))
                })
                .collect();
            writers
                .into_iter()
                .map(|writer| {
                    // A writer's panic is this thread's, as if it had written.
                    writer.and_then(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                })
                .collect()
        });
        for file in written {
            files.push(file?);
        }
    }
    Ok(files)
}
