//! The body of `weir run`: restore, outputs, sidecar, timely workers.
//!
//! Order of a run: ingest (idempotent) -> find the newest usable checkpoint
//! -> truncate this process's output files to their committed lengths ->
//! start (or reach) the sidecar -> start the workers, each loading its own key
//! groups of the checkpoint in parallel and resuming its partitions at the
//! recorded offsets -> run -> wait for the final checkpoint to commit.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checkpoint::cadence::{Cadence, MAX_UNCOMMITTED_CHECKPOINTS};
use crate::checkpoint::client::{DurableFile, SidecarAddress, SidecarClient};
use crate::checkpoint::cut::CutAssembler;
use crate::checkpoint::format::CommitRecord;
use crate::checkpoint::pressure::{PressureLimits, SidecarPressure, SourceGate};
use crate::checkpoint::store::newest_usable;
use crate::checkpoint::transport::{Hello, WorkerCut};
use crate::job::{
    build_window_query, max_ahead_ms, open_restore, track_arrangements, ArrangementGauge,
    RestoreReport, RestoredState, WorkerCheckpointing,
};
use crate::run::{
    expand_inputs, ingest_topics_locked, timely_config, CheckpointSummary, RunError, RunOptions,
    RunSummary,
};
use crate::sink::{output_file_names, WorkerOutputs};
use crate::source::{ErrorSlot, PartitionInput, SourceConfig, SourceCounters, IDLE_POLL_MAX_MS};

mod checkpointing;
mod inputs;
mod outputs;

use checkpointing::{backlog_probe, ship_ready, tend_sidecar};
use outputs::prepare_outputs;

/// How long to wait for the sidecar to listen, and for the final commit.
const SIDECAR_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the window query as configured; returns this process's summary.
pub fn run(options: &RunOptions) -> Result<RunSummary, RunError> {
    let query = options.query;
    query
        .spec
        .check_granularity(query.granularity_ms)
        .map_err(|e| RunError::Usage(e.to_string()))?;
    if options.workers == 0 {
        return Err(RunError::Usage("--workers must be at least 1".into()));
    }
    let files = expand_inputs(&options.inputs)?;
    if !files.is_empty() {
        let plan = inputs::ingest_plan(&query, &files)?;
        ingest_topics_locked(&options.data_dir, &plan, &options.log_config)?;
    }
    let log_dir = options.data_dir.join("log");
    let partitions = inputs::input_partitions(&query, &log_dir, options.generated)?;
    let partition_count = partitions.len();
    let (processes, process) = options
        .cluster
        .as_ref()
        .map_or((1, 0), |c| (c.processes, c.process));
    let workers_total = options.workers * processes;
    let first_worker = process * options.workers;
    let checkpoint = options.checkpoint.as_ref();

    // Restore.
    let checkpoint_dir = options.data_dir.join("checkpoints");
    let mut summary_checkpoints = checkpoint.map(|_| CheckpointSummary::default());
    let restored: Option<CommitRecord> = match (checkpoint, summary_checkpoints.as_mut()) {
        (Some(_), Some(summary)) if checkpoint_dir.join("commits.log").exists() => {
            let verify_started = Instant::now();
            let usable = newest_usable(&checkpoint_dir, query.fingerprint())?;
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
    std::fs::create_dir_all(&options.out_dir).map_err(|e| RunError::Output {
        path: options.out_dir.clone(),
        source: e,
    })?;
    prepare_outputs(
        &options.out_dir,
        restored.as_ref(),
        first_worker..first_worker + options.workers,
        process == 0,
        workers_total,
    )?;

    // Sidecar.
    let mut sidecar_child: Option<Child> = None;
    let client = if let Some(c) = checkpoint {
        {
            let address = if let Some(spec) = &c.sidecar {
                SidecarAddress::parse(spec, &options.data_dir)?
            } else {
                if process == 0 {
                    sidecar_child = Some(spawn_sidecar(&options.data_dir)?);
                }
                SidecarAddress::Unix(options.data_dir.join("sidecar.sock"))
            };
            let hello = Hello {
                token: Vec::new(),
                process: process as u32,
                workers_total: workers_total as u32,
                query_fingerprint: query.fingerprint(),
                // The same in every process of a run (they restore the same
                // checkpoint) and newer than any earlier run that committed.
                epoch: restored.as_ref().map_or(1, |r| r.checkpoint_id + 1),
                restored_from: restored.as_ref().map(|r| r.checkpoint_id),
            };
            // A sidecar started here that exits before it listens (killed,
            // or it refused the data dir) ends the wait at once.
            let child_gone = || {
                let status = sidecar_child.as_mut()?.try_wait();
                match status {
                    Ok(Some(status)) => Some(format!(
                        "the sidecar it started exited ({status}) before listening"
                    )),
                    Ok(None) => None,
                    Err(e) => Some(format!("cannot check on the sidecar it started: {e}")),
                }
            };
            Some(Arc::new(SidecarClient::connect_while(
                &address,
                &hello,
                SIDECAR_TIMEOUT,
                child_gone,
            )?))
        }
    } else {
        None
    };

    let resumes: HashMap<u32, (u64, Option<u64>)> = restored
        .as_ref()
        .map(|r| {
            r.partitions
                .iter()
                .map(|p| (p.partition, (p.resume_offset, p.max_ts_before)))
                .collect()
        })
        .unwrap_or_default();
    // New checkpoints number on from the newest commit, which is newer than
    // the restored one when the newest was unusable.
    let newest_id = client
        .as_ref()
        .and_then(|c| c.last_committed_at_hello())
        .map_or(0, |(id, _)| id);
    let restored_point = restored
        .as_ref()
        .map(|r| (r.checkpoint_id.max(newest_id), r.cut_time));
    let retention_ms = query.retention_ms();
    // The sources of this process stop reading while the sidecar is behind.
    let pressure = checkpoint.map(|c| {
        Arc::new(SidecarPressure::new(
            PressureLimits {
                max_uncommitted: MAX_UNCOMMITTED_CHECKPOINTS,
                max_tap_buffer_bytes: c.max_tap_buffer_bytes,
            },
            restored_point.map_or(0, |(id, _)| id),
        ))
    });
    // A sidecar silent this long while owed an ack is reported stalled.
    let stall_after = Duration::from_millis(checkpoint.map_or(0, |c| c.interval_ms).max(1));
    let errors = ErrorSlot::default();
    let failure: Arc<Mutex<Option<RunError>>> = Arc::default();
    let counters = Arc::new(SourceCounters::default());
    let gauges_list: Arc<Mutex<Vec<Arc<ArrangementGauge>>>> = Arc::default();
    let written: Arc<Mutex<(u64, u64)>> = Arc::default();
    let final_id: Arc<Mutex<Option<u64>>> = Arc::default();
    // Restored updates over all workers, and the slowest worker's load time.
    let restore_stats: Arc<Mutex<(u64, Duration)>> = Arc::default();
    let gauges = options.hooks.gauges.clone().unwrap_or_default();
    let metrics_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let engine_metrics = Arc::new(crate::metrics::EngineMetrics::new(
        &options.data_dir,
        options.workers,
        query.spec.slide_ms(),
        restored_point,
        options.metrics_addr.is_some(),
    ));
    if let Some(addr) = options.metrics_addr {
        let sources = crate::metrics::MetricsSources {
            counters: Arc::clone(&counters),
            gauges: Arc::clone(&gauges),
            arrangements: Arc::clone(&gauges_list),
            engine: Arc::clone(&engine_metrics),
            client: client.as_ref().map(|c| c.stats()),
            pressure: pressure.clone(),
        };
        let bound = crate::metrics::serve(addr, sources, Arc::clone(&metrics_stop))
            .map_err(|e| RunError::Usage(format!("--metrics-addr {addr}: {e}")))?;
        tracing::info!(%bound, "metrics endpoint");
    }
    let started = Instant::now();
    let guards = {
        let restore_stats = Arc::clone(&restore_stats);
        let run_gauges = Arc::clone(&gauges);
        let engine_metrics = Arc::clone(&engine_metrics);
        let (errors, failure, counters, gauges, written, final_id) = (
            Arc::clone(&errors),
            Arc::clone(&failure),
            Arc::clone(&counters),
            Arc::clone(&gauges_list),
            Arc::clone(&written),
            Arc::clone(&final_id),
        );
        let out_dir = options.out_dir.clone();
        let until_end = options.until_end;
        let hooks = options.hooks.clone();
        let cadence = Cadence {
            interval_ms: checkpoint.map_or(0, |c| c.interval_ms),
            adaptive: checkpoint.is_some_and(|c| c.adaptive),
        };
        let step_ms = query.cut_step_ms();
        let sender = client.as_ref().map(|c| c.sender());
        let client = client.clone();
        let pressure = pressure.clone();
        let restored = restored.clone();
        let checkpoint_dir = checkpoint_dir.clone();
        let source_config = SourceConfig {
            granularity_ms: query.granularity_ms,
            lateness_ms: query.lateness_ms,
            batch_records: options.batch_records,
            idle_poll_ms: 1,
            idle_poll_max_ms: IDLE_POLL_MAX_MS,
            max_ahead_ms: max_ahead_ms(&query),
            cut_step_ms: if sender.is_some() { step_ms } else { 0 },
            restored_cut_ms: restored_point.map(|(_, cut)| cut),
        };
        timely::execute(
            timely_config(options.workers, options.cluster.as_ref()),
            move |worker| {
                let (index, peers) = (worker.index(), worker.peers());
                let fail = |e: RunError| {
                    failure.lock().expect("poisoned").get_or_insert(e);
                };
                let gauge = Arc::new(ArrangementGauge::default());
                gauges.lock().expect("poisoned").push(Arc::clone(&gauge));
                track_arrangements(worker, gauge);

                let mut feeds = Vec::new();
                for input in partitions
                    .iter()
                    .filter(|p| p.id() as usize % peers == index)
                {
                    let p = input.id();
                    let (start_offset, max_ts_before) =
                        resumes.get(&p).copied().unwrap_or((0, None));
                    match input.open(
                        (&log_dir, &query),
                        (start_offset, max_ts_before),
                        until_end,
                        hooks.stop.clone(),
                    ) {
                        Ok(feed) => feeds.push(PartitionInput {
                            partition: p,
                            feed,
                            start_offset,
                            max_ts_before,
                        }),
                        Err(e) => return fail(RunError::Source(e)),
                    }
                }
                let header = query.result_header();
                let outputs = match WorkerOutputs::open_with_header(&out_dir, index, false, &header)
                {
                    Ok(o) => Rc::new(RefCell::new(
                        o.with_observer(engine_metrics.observer(hooks.observer.clone()))
                            .with_counts(Some(engine_metrics.output_counts())),
                    )),
                    Err(e) => {
                        return fail(RunError::Output {
                            path: out_dir.join(output_file_names(index).0),
                            source: e,
                        })
                    }
                };
                let assembler: Rc<RefCell<CutAssembler>> = Rc::default();
                let gate = pressure.as_ref().map(|p| SourceGate::new(Arc::clone(p)));
                let mut backlog: VecDeque<(WorkerCut, Vec<DurableFile>)> = VecDeque::new();
                let checkpointing = match (&sender, restored_point) {
                    (None, _) => None,
                    (Some(_), point) => {
                        let restored_state = match &restored {
                            None => RestoredState::empty(&query),
                            Some(record) => {
                                let horizon = record.cut_time.saturating_sub(retention_ms);
                                let mine = |group: u16| usize::from(group) % peers == index;
                                let report = RestoreReport::for_worker(
                                    index,
                                    record,
                                    Arc::clone(&engine_metrics),
                                    Arc::clone(&restore_stats),
                                    Arc::clone(&failure),
                                );
                                match open_restore(
                                    &query,
                                    &checkpoint_dir,
                                    record,
                                    mine,
                                    horizon,
                                    report,
                                ) {
                                    Ok(state) => state,
                                    Err(e) => return fail(e),
                                }
                            }
                        };
                        let restored = point.unwrap_or((0, 0));
                        Some(WorkerCheckpointing {
                            assembler: Rc::clone(&assembler),
                            leader: index == 0,
                            step_ms,
                            cadence,
                            backlog: backlog_probe(client.as_ref(), sender.as_ref(), restored.0),
                            restored,
                            restored_state,
                            gate: gate.clone().expect("a gate with checkpoints"),
                        })
                    }
                };
                let probe = build_window_query(
                    worker,
                    feeds,
                    query,
                    source_config,
                    Rc::clone(&outputs),
                    Arc::clone(&errors),
                    Arc::clone(&counters),
                    checkpointing,
                );
                // This run has failed: a source error, another worker's
                // failure, or (recorded here) a lost sidecar.
                let failed = || {
                    if let Some(e) = client.as_ref().and_then(|c| c.error()) {
                        fail(RunError::Sidecar(e));
                    }
                    errors.lock().expect("poisoned").is_some()
                        || failure.lock().expect("poisoned").is_some()
                };
                let mut last_flush = Instant::now();
                loop {
                    let done = probe.done()
                        && (sender.is_none()
                            || (assembler.borrow().final_done() && backlog.is_empty()));
                    if done {
                        break;
                    }
                    if failed() {
                        return abandon_dataflows(worker);
                    }
                    worker.step_or_park(Some(Duration::from_millis(20)));
                    if let Some(client) = &client {
                        tend_sidecar(client, gate.as_ref(), index == first_worker, stall_after);
                    }
                    if let Some(sender) = &sender {
                        ship_ready(
                            &assembler,
                            &mut backlog,
                            sender,
                            (index, retention_ms),
                            &final_id,
                        );
                    }
                    if index == first_worker {
                        // The figures are per process: its first worker updates them.
                        use std::sync::atomic::Ordering::Relaxed;
                        let gauges = &run_gauges;
                        let frontier = probe
                            .with_frontier(|f| f.first().copied())
                            .unwrap_or(u64::MAX);
                        gauges.output_frontier_ms.store(frontier, Relaxed);
                        engine_metrics.first_worker_tick(frontier, &counters);
                        if let (Some(client), Some(sender)) = (&client, &sender) {
                            if let Some((_, cut)) = client.last_committed() {
                                gauges.committed_cut_ms.store(cut, Relaxed);
                            }
                            if let Some(us) = client.last_commit_latency_us() {
                                gauges.last_commit_latency_us.store(us, Relaxed);
                            }
                            let fill = sender.fill();
                            gauges.sidecar_queued.store(fill.queued as u64, Relaxed);
                            gauges.sidecar_capacity.store(fill.capacity as u64, Relaxed);
                        }
                    }
                    if sender.is_none() && last_flush.elapsed() >= Duration::from_secs(1) {
                        // Tailing runs never finish; keep the files current.
                        let flushed = outputs.borrow_mut().flush();
                        if let Err(e) = flushed {
                            abandon_dataflows(worker);
                            return fail(RunError::Output {
                                path: out_dir.clone(),
                                source: e,
                            });
                        }
                        last_flush = Instant::now();
                    }
                }
                let mut outputs = outputs.borrow_mut();
                if let Err(e) = outputs.flush() {
                    return fail(RunError::Output {
                        path: outputs.windows_path().to_owned(),
                        source: e,
                    });
                }
                let mut w = written.lock().expect("poisoned");
                w.0 += outputs.window_rows_written();
                w.1 += outputs.late_rows_written();
                drop((w, outputs));
                // Finish here rather than in timely's own loop after this
                // closure: a worker that fails drops its dataflows, and then
                // the others' never complete; they must drop theirs too.
                while worker.has_dataflows() {
                    if failed() {
                        return abandon_dataflows(worker);
                    }
                    worker.step_or_park(Some(Duration::from_millis(20)));
                }
            },
        )
        .map_err(RunError::Dataflow)?
    };
    let worker_results = guards.join();
    let elapsed = started.elapsed();
    for result in worker_results {
        result.map_err(RunError::Dataflow)?;
    }
    if let Some(e) = errors.lock().expect("poisoned").take() {
        return Err(RunError::Source(e));
    }
    if let Some(e) = failure.lock().expect("poisoned").take() {
        return Err(e);
    }
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
    if let Some(mut child) = sidecar_child {
        let _ = child.wait();
    }
    let (window_rows, late_rows) = *written.lock().expect("poisoned");
    metrics_stop.store(true, std::sync::atomic::Ordering::Release);
    let peak_arranged_records = gauges_list
        .lock()
        .expect("poisoned")
        .iter()
        .map(|g| g.peak_records.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let window_state = counters.window_state.lock().expect("poisoned");
    let peak_window_partials = window_state.iter().map(|(_, g)| g.peak_partials()).sum();
    let peak_window_bytes = window_state.iter().map(|(_, g)| g.peak_bytes()).sum();
    drop(window_state);
    Ok(RunSummary {
        peak_window_partials,
        peak_window_bytes,
        partitions: partition_count,
        total_workers: workers_total,
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

/// Starts `weir sidecar` for `data_dir` as a child of this process (same
/// process group, so a kill of the group takes both).
fn spawn_sidecar(data_dir: &Path) -> Result<Child, RunError> {
    let exe = weir_binary().ok_or_else(|| {
        RunError::Usage("cannot find the weir binary to start the sidecar (set WEIR_BIN)".into())
    })?;
    Command::new(&exe)
        .args(["sidecar", "--exit-when-idle", "--data-dir"])
        .arg(data_dir)
        .spawn()
        .map_err(|e| {
            RunError::Usage(format!(
                "cannot start the checkpoint sidecar {}: {e}",
                exe.display()
            ))
        })
}

/// The `weir` binary: `$WEIR_BIN`, this executable if it is `weir`, or a
/// Drops this worker's dataflows so a failed run ends. Timely keeps stepping
/// a worker's dataflows after its closure returns until they complete, and a
/// failed run's never do: its sources keep their capabilities (nothing may
/// treat the input as complete) and a tailing source waits for more input.
fn abandon_dataflows(worker: &mut timely::worker::Worker) {
    for dataflow in worker.installed_dataflows() {
        worker.drop_dataflow(dataflow);
    }
}

/// `weir` next to it or one directory up (the harness and benches live there).
pub fn weir_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("WEIR_BIN") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    if exe.file_stem().is_some_and(|s| s == "weir") {
        return Some(exe);
    }
    let dir = exe.parent()?;
    [dir.join("weir"), dir.parent()?.join("weir")]
        .into_iter()
        .find(|p| p.is_file())
}
