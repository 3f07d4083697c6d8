//! The restore phase: the checkpoint a run resumes from (the newest whose
//! files verify, with warnings about newer unusable ones), and, on each
//! worker, its key groups of that checkpoint with how it reports loading
//! them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::path::Path;

use super::metrics::EngineMetrics;
use crate::checkpoint::format::CommitRecord;
use crate::checkpoint::store::newest_usable;
use crate::checkpoint::tier::{
    await_peer_takeover, epoch, open_cold_store, repair_from_cold, take_over_from_cold,
};
use crate::job::{open_restore, RestoreReport, RestoredState, WindowQuery};
use crate::run::{CheckpointSummary, RunError, RunOptions};

/// What the restore phase hands on.
pub(super) struct Restored {
    /// The checkpoint to resume from.
    pub(super) record: Option<CommitRecord>,
    /// The checkpoints' part of the summary (checkpoints on), filled in so
    /// far with what was verified and restored.
    pub(super) summary: Option<CheckpointSummary>,
}

/// A standby (`--restore-from URL`): the newest usable checkpoint of the
/// cold tier, and the log shipped with it, become this empty data dir's,
/// before the inputs are listed (the run may have no input but that log).
pub(super) fn take_over(options: &RunOptions) -> Result<(), RunError> {
    let Some(url) = options
        .checkpoint
        .as_ref()
        .and_then(|c| c.restore_from.as_deref())
    else {
        return Ok(());
    };
    if let Some(cluster) = options.cluster.as_ref().filter(|c| c.process != 0) {
        // Process 0 takes over into the shared data dir; the others wait
        // for it (a claim per process would fence the cluster off itself).
        return await_takeover(url, &options.data_dir, cluster.process);
    }
    take_over_standby(url, &options.data_dir)
}

/// The takeover of [`take_over`], into `data_dir` from the store at `url`
/// (`weir run --from … --restore-from …` does it before its stream source
/// starts appending: the source continues from the shipped position).
pub fn take_over_standby(url: &str, data_dir: &Path) -> Result<(), RunError> {
    let blob = open_cold_store(url).map_err(|e| RunError::Usage(e.to_string()))?;
    let checkpoint_dir = data_dir.join("checkpoints");
    let log_dir = data_dir.join(crate::log::LOG_DIR_NAME);
    let (taken, notes) = take_over_from_cold(&checkpoint_dir, &log_dir, blob.as_ref())?;
    for note in notes {
        tracing::warn!("{note}");
        eprintln!("WARNING: {note}");
    }
    let Some((id, cut)) = taken else {
        return Err(RunError::Restore(format!(
            "{url} holds no usable checkpoint"
        )));
    };
    let note = format!(
        "standby: took over checkpoint {id} (cut {}) from {url}; this run writes the rows after it",
        cut_text(cut)
    );
    tracing::warn!("{note}");
    eprintln!("WARNING: {note}");
    Ok(())
}

/// A standby cluster's process `process` (not 0): waits for process 0's
/// takeover from `url` into the shared `data_dir`.
fn await_takeover(url: &str, data_dir: &Path, process: usize) -> Result<(), RunError> {
    let blob = open_cold_store(url).map_err(|e| RunError::Usage(e.to_string()))?;
    let note = format!("standby: process {process} waits for process 0 to take over from {url}");
    tracing::info!("{note}");
    let (id, cut) = await_peer_takeover(
        &data_dir.join("checkpoints"),
        blob.as_ref(),
        super::SIDECAR_TIMEOUT,
    )?;
    let note = format!(
        "standby: process 0 took over checkpoint {id} (cut {}) from {url}",
        cut_text(cut)
    );
    tracing::warn!("{note}");
    eprintln!("WARNING: {note}");
    Ok(())
}

fn cut_text(cut: u64) -> String {
    if cut == crate::checkpoint::cut::FINAL_CUT {
        "the end of the input".to_owned()
    } else {
        format!("{cut} ms")
    }
}

/// Finds the newest usable checkpoint of the query (checkpoints on and a
/// commit stream present).
pub(super) fn choose(options: &RunOptions) -> Result<Restored, RunError> {
    let checkpoint = options.checkpoint.as_ref();
    let checkpoint_dir = options.data_dir.join("checkpoints");
    if checkpoint.is_some_and(|c| c.restore_from.is_some()) {
        // Taken over before the inputs ([`take_over`]).
    } else if let Some(url) = checkpoint.and_then(|c| c.cold_store.as_deref()) {
        // In a cluster every process repairs, one after the other under the
        // data dir's tier lock: the first brings files back, the others find
        // them in place (and none reads the commit stream before its own
        // repair returned).
        let blob = open_cold_store(url).map_err(|e| RunError::Usage(e.to_string()))?;
        for note in repair_from_cold(&checkpoint_dir, blob.as_ref())? {
            tracing::warn!("{note}");
            eprintln!("WARNING: {note}");
        }
    }
    if let Some(url) = checkpoint.and_then(|c| c.replica.as_deref()) {
        // Reached (and not fenced off) before anything runs: a bad URL or
        // refused credentials fail the run at its start.
        let blob = open_cold_store(url).map_err(|e| RunError::Usage(e.to_string()))?;
        let cold_error = |reason| crate::checkpoint::store::StoreError::Cold {
            url: url.to_owned(),
            reason,
        };
        // Under the tier lock: not while the sidecar of this cluster's
        // process 0 has claimed an epoch but not yet recorded it here.
        let _tier_lock = epoch::lock_tier(&checkpoint_dir).map_err(cold_error)?;
        epoch::check_not_fenced(&checkpoint_dir, blob.as_ref())
            .map(drop)
            .map_err(cold_error)?;
    }
    let mut summary_checkpoints = checkpoint.map(|_| CheckpointSummary::default());
    let record: Option<CommitRecord> = match (checkpoint, summary_checkpoints.as_mut()) {
        (Some(_), Some(summary)) if checkpoint_dir.join("commits.log").exists() => {
            let verify_started = Instant::now();
            let usable = newest_usable(&checkpoint_dir, options.query.fingerprint())?;
            summary.restore_verify = verify_started.elapsed();
            match usable {
                Some((record, warnings)) => {
                    summary.restored_bytes = record.files.iter().map(|f| f.size_bytes).sum();
                    tracing::info!(
                        checkpoint_id = record.checkpoint_id,
                        files = record.files.len(),
                        bytes = summary.restored_bytes,
                        ms = summary.restore_verify.as_millis() as u64,
                        "verified checkpoint"
                    );
                    for warning in &warnings {
                        tracing::warn!(%warning, "newest checkpoint unusable, falling back");
                        eprintln!("WARNING: {warning}");
                    }
                    summary.restore_warnings = warnings;
                    summary.restored_from = Some((record.checkpoint_id, record.cut_time));
                    Some(record)
                }
                None => None,
            }
        }
        _ => None,
    };
    Ok(Restored {
        record,
        summary: summary_checkpoints,
    })
}

/// Where the workers' restores report.
pub(super) struct RestoreSinks<'a> {
    /// The engine's metrics.
    pub(super) metrics: &'a Arc<EngineMetrics>,
    /// Updates summed over the workers, the slowest worker's time.
    pub(super) stats: &'a Arc<Mutex<(u64, Duration)>>,
    /// The run's first failure.
    pub(super) failure: &'a Arc<Mutex<Option<RunError>>>,
}

/// Worker `index` of `peers`: opens its key groups of `record` in
/// `checkpoint_dir`, updates within `retention_ms` of its cut (the rest of
/// the pane partials stream in as the dataflow runs).
pub(super) fn open_worker_state(
    (query, checkpoint_dir, retention_ms): (&WindowQuery, &Path, u64),
    (index, peers): (usize, usize),
    record: &CommitRecord,
    sinks: &RestoreSinks<'_>,
) -> Result<RestoredState, RunError> {
    let horizon = record.cut_time.saturating_sub(retention_ms);
    let mine = |group: u16| usize::from(group) % peers == index;
    let report = worker_report(
        index,
        record,
        Arc::clone(sinks.metrics),
        Arc::clone(sinks.stats),
        Arc::clone(sinks.failure),
    );
    Ok(open_restore(
        query,
        checkpoint_dir,
        record,
        mine,
        horizon,
        report,
    )?)
}

/// Worker `worker`'s report on restoring `record`: a `restore` span and a
/// log line, the engine's metrics, and `stats` (updates summed over the
/// workers, the slowest worker's time); a failure goes to `failure`.
fn worker_report(
    worker: usize,
    record: &CommitRecord,
    metrics: Arc<EngineMetrics>,
    stats: Arc<Mutex<(u64, Duration)>>,
    failure: Arc<Mutex<Option<RunError>>>,
) -> RestoreReport {
    let span = tracing::info_span!(
        "restore",
        worker,
        checkpoint_id = record.checkpoint_id,
        cut_time = record.cut_time,
        updates = tracing::field::Empty,
        elapsed_ms = tracing::field::Empty,
    );
    RestoreReport {
        done: Box::new(move |updates, took| {
            span.record("updates", updates);
            span.record("elapsed_ms", crate::metrics::millis(took));
            let _entered = span.enter();
            metrics.restored(updates as usize, took);
            tracing::info!(
                worker,
                updates,
                ms = took.as_millis() as u64,
                "restored state"
            );
            let mut s = stats.lock().expect("restore stats poisoned");
            s.0 += updates;
            s.1 = s.1.max(took);
        }),
        failed: Box::new(move |e| {
            failure
                .lock()
                .expect("failure slot poisoned")
                .get_or_insert(e.into());
        }),
    }
}
