//! The finish phase: report the run's first failure, or wait for the final
//! checkpoint to commit (a sidecar silent for too long ends the run with an
//! error), close the sidecar connection, wait for a sidecar this process
//! started, stop the metrics endpoint and sum up.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::drive::Driven;
use super::sidecar::Sidecar;
use super::{Place, SIDECAR_TIMEOUT};
use crate::run::{CheckpointSummary, RunError, RunOptions, RunSummary};

/// This process's summary of the run, once its final checkpoint committed.
pub(super) fn finish(
    options: &RunOptions,
    driven: Driven,
    sidecar: Sidecar,
    mut summary_checkpoints: Option<CheckpointSummary>,
    place: Place,
) -> Result<RunSummary, RunError> {
    let Driven { process, elapsed } = driven;
    // A failed ingest is the cause of whatever its feeds reported.
    if let Some(ingest) = process.overlapped.as_ref() {
        ingest.finish()?;
    }
    if let Some(e) = process.errors.lock().expect("poisoned").take() {
        return Err(RunError::Source(e));
    }
    if let Some(e) = process.failure.lock().expect("poisoned").take() {
        return Err(e);
    }
    let partition_count = process.partition_count();
    let stall_after = process.stall_after;
    let (final_id, restore_stats, written, counters, arrangements, metrics_stop) = (
        Arc::clone(&process.final_id),
        Arc::clone(&process.restore_stats),
        Arc::clone(&process.written),
        Arc::clone(&process.counters),
        Arc::clone(&process.arrangements),
        Arc::clone(&process.metrics_stop),
    );
    // The workers' closure held the rest (the cut sender among it) and is
    // gone: the connection can be closed.
    drop(process);
    let Sidecar { client, child } = sidecar;
    if let (Some(client), Some(summary)) = (client, summary_checkpoints.as_mut()) {
        let target = *final_id.lock().expect("poisoned");
        // A sidecar that makes progress is waited for; one silent for
        // SIDECAR_TIMEOUT (stopped, hung) ends the run with an error.
        while let Some(id) =
            target.filter(|&id| client.last_committed().is_none_or(|(c, _)| c < id))
        {
            if let Some(e) = client.error() {
                return Err(RunError::Sidecar(e));
            }
            client.stall().check_and_log(stall_after);
            let silent = client
                .stall()
                .clock
                .waiting(Instant::now())
                .unwrap_or_default();
            if silent > SIDECAR_TIMEOUT {
                return Err(RunError::Restore(format!(
                    "the final checkpoint {id} was not committed: the sidecar has acknowledged \
                     nothing for {} s (stopped or hung?); rerun the same command to finish \
                     (it restores the newest committed checkpoint: the output stays exactly once)",
                    SIDECAR_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        summary.last_committed = client.last_committed();
        let (updates, took) = *restore_stats.lock().expect("poisoned");
        summary.restored_updates = updates;
        summary.restore_load = took;
        summary.last_commit_latency_us = client.last_commit_latency_us();
        if let Ok(client) = Arc::try_unwrap(client) {
            client.close()?;
        }
    }
    if let Some(mut child) = child {
        let _ = child.wait();
    }
    let (window_rows, late_rows) = *written.lock().expect("poisoned");
    metrics_stop.store(true, Ordering::Release);
    let peak_arranged_records = arrangements
        .lock()
        .expect("poisoned")
        .iter()
        .map(|g| g.peak_records.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let window_state = counters.window_state.lock().expect("poisoned");
    let peak_window_partials = window_state.iter().map(|(_, g)| g.peak_partials()).sum();
    let peak_window_bytes = window_state.iter().map(|(_, g)| g.peak_bytes()).sum();
    let window_disk = window_state
        .iter()
        .fold((0, [0; 6]), |(peak, mut counts), (_, g)| {
            for (total, count) in counts.iter_mut().zip(g.spill_counts()) {
                *total += count;
            }
            (peak + g.peak_disk_bytes(), counts)
        });
    drop(window_state);
    Ok(RunSummary {
        peak_window_partials,
        peak_window_bytes,
        window_disk,
        partitions: partition_count,
        total_workers: place.workers_total,
        events_read: counters.events_read.load(Ordering::Relaxed),
        events_late: counters.events_late.load(Ordering::Relaxed),
        window_rows,
        late_rows,
        elapsed,
        peak_arranged_records,
        out_dir: options.out_dir.clone(),
        checkpoints: summary_checkpoints,
    })
}
