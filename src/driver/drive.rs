//! The drive phase: start the timely workers and step each one until its
//! dataflow completes (and, with checkpoints, its final cut is shipped),
//! tending the sidecar connection, shipping checkpoint shares and updating
//! the process's figures; then flush its output files.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::worker::Worker;

use super::checkpointing::{ship_ready, tend_sidecar};
use super::dataflow::{build, Process, WorkerDataflow};
use super::overlap::OverlappedIngest;
use super::retention::WorkerRetention;
use super::timely_config;
use crate::checkpoint::client::{DurableFile, SidecarClient};
use crate::checkpoint::store::failpoint_armed;
use crate::checkpoint::transport::WorkerCut;
use crate::run::{ClusterOptions, RunError, RunOptions};

/// The process's shared state after its workers finished, and how long
/// they ran.
pub(super) struct Driven {
    pub(super) process: Arc<Process>,
    pub(super) elapsed: Duration,
}

/// Runs the workers of this process to the end; errors of timely itself
/// (a worker that panicked, a cluster that did not connect) are returned
/// here, the run's own failures are left in `process` for the finish.
pub(super) fn execute(
    options: &RunOptions,
    process: Process,
    client: Option<Arc<SidecarClient>>,
) -> Result<Driven, RunError> {
    let process = Arc::new(process);
    let started = Instant::now();
    let connected = Arc::new(AtomicBool::new(false));
    if let Some(cluster) = options.cluster.as_ref() {
        watch_connect(cluster, Arc::clone(&connected));
    }
    let guards = {
        let process = Arc::clone(&process);
        timely::execute(
            timely_config(options.workers, options.cluster.as_ref()),
            move |worker| {
                // Timely starts the workers once every process connected.
                connected.store(true, Relaxed);
                let index = worker.index();
                // A worker that panics must not leave the others of its
                // process waiting for it forever: its failure is recorded,
                // and they abandon their dataflows when they see it.
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if let Some(dataflow) = build(&process, client.as_ref(), worker) {
                        drive_worker(&process, client.as_ref(), worker, &dataflow);
                    }
                }));
                if let Err(panic) = outcome {
                    let reason = crate::panic_message::panic_message(panic.as_ref())
                        .unwrap_or("(no message)");
                    process.fail(RunError::Dataflow(format!(
                        "worker {index} panicked: {reason}"
                    )));
                    // Timely steps a worker until its dataflows are gone.
                    abandon_dataflows(worker);
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
    Ok(Driven { process, elapsed })
}

/// Ends this process, with an error naming the cluster's addresses, if
/// the cluster has not connected within its `connect_timeout_ms`: timely
/// waits for its peers without a bound (a process that never started, a
/// wrong hostfile), and nothing of this run has been written yet.
fn watch_connect(cluster: &ClusterOptions, connected: Arc<AtomicBool>) {
    let timeout = Duration::from_millis(cluster.connect_timeout_ms);
    let message = format!(
        "process {} of {}: the cluster did not connect within {} s (its hostfile: {}); \
         is every process started, with the same hostfile? (--connect-timeout)",
        cluster.process,
        cluster.processes,
        timeout.as_secs_f64(),
        cluster.addresses.join(", ")
    );
    let spawned = std::thread::Builder::new()
        .name("weir-connect-watch".into())
        .spawn(move || {
            let deadline = Instant::now() + timeout;
            while !connected.load(Relaxed) {
                if Instant::now() >= deadline {
                    tracing::error!("{message}");
                    eprintln!("error: {message}");
                    std::process::exit(1);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no watch on the cluster's connection: it may wait without a bound");
    }
}

/// Steps one worker until its dataflow completes (or the run fails), then
/// flushes its outputs and waits for the other workers' dataflows.
fn drive_worker(
    p: &Process,
    client: Option<&Arc<SidecarClient>>,
    worker: &mut Worker,
    dataflow: &WorkerDataflow,
) {
    let index = worker.index();
    let WorkerDataflow {
        probe,
        outputs,
        assembler,
        gate,
    } = dataflow;
    let sender = p.sender.as_ref();
    let mut backlog: VecDeque<(WorkerCut, Vec<DurableFile>)> = VecDeque::new();
    // This run has failed: a source error, another worker's failure, its
    // ingest, or (recorded here) a lost sidecar.
    let failed = || {
        if let Some(e) = client.and_then(|c| c.error()) {
            p.fail(RunError::Sidecar(e));
        }
        if let Some(reason) = window_state_failure(p) {
            p.fail(RunError::WindowState(reason));
        }
        p.errors.lock().expect("poisoned").is_some()
            || p.failure.lock().expect("poisoned").is_some()
            || p.overlapped.as_ref().is_some_and(OverlappedIngest::failed)
    };
    let mut last_flush = Instant::now();
    let mut retention = p.log_retention.then(|| {
        let dirs = p
            .worker_partitions(index, worker.peers())
            .filter_map(|i| Some((i.id(), i.log_partition_dir(&p.log_dir)?)))
            .collect();
        WorkerRetention::new(dirs, p.checkpoint_dir.clone())
    });
    loop {
        let done = probe.done()
            && (sender.is_none() || (assembler.borrow().final_done() && backlog.is_empty()));
        if done {
            break;
        }
        if failed() {
            return abandon_dataflows(worker);
        }
        worker.step_or_park(Some(Duration::from_millis(20)));
        assert!(
            index + 1 != worker.peers() || !failpoint_armed(WORKER_PANIC_FAILPOINT),
            "failpoint {WORKER_PANIC_FAILPOINT} reached"
        );
        if let Some(client) = client {
            tend_sidecar(
                client,
                gate.as_ref(),
                index == p.first_worker,
                p.stall_after,
            );
            if let (Some(r), Some((id, _))) = (retention.as_mut(), client.last_committed()) {
                if let Err(e) = r.committed(id, &p.counters) {
                    tracing::warn!(
                        worker = index,
                        error = %e,
                        "log retention failed: this worker keeps its log segments from now on"
                    );
                    retention = None;
                }
            }
        }
        if let Some(sender) = sender {
            ship_ready(
                assembler,
                &mut backlog,
                sender,
                (index, p.retention_ms),
                &p.final_id,
            );
        }
        if index == p.first_worker {
            // The figures are per process: its first worker updates them.
            let gauges = &p.run_gauges;
            let frontier = probe
                .with_frontier(|f| f.first().copied())
                .unwrap_or(u64::MAX);
            gauges.output_frontier_ms.store(frontier, Relaxed);
            p.engine_metrics.first_worker_tick(frontier, &p.counters);
            if let (Some(client), Some(sender)) = (client, sender) {
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
                return p.fail(RunError::Output {
                    path: p.out_dir.clone(),
                    source: e,
                });
            }
            last_flush = Instant::now();
        }
    }
    let mut outputs = outputs.borrow_mut();
    if let Err(e) = outputs.flush() {
        return p.fail(RunError::Output {
            path: outputs.windows_path().to_owned(),
            source: e,
        });
    }
    let mut w = p.written.lock().expect("poisoned");
    w.0 += outputs.window_rows_written();
    w.1 += outputs.late_rows_written();
    drop((w, outputs));
    // Finish here rather than in timely's own loop after this closure: a
    // worker that fails drops its dataflows, and then the others' never
    // complete; they must drop theirs too.
    while worker.has_dataflows() {
        if failed() {
            return abandon_dataflows(worker);
        }
        worker.step_or_park(Some(Duration::from_millis(20)));
    }
}

/// Drops this worker's dataflows so a failed run ends. Timely keeps stepping
/// a worker's dataflows after its closure returns until they complete, and a
/// failed run's never do: its sources keep their capabilities (nothing may
/// treat the input as complete) and a tailing source waits for more input.
fn abandon_dataflows(worker: &mut Worker) {
    for dataflow in worker.installed_dataflows() {
        worker.drop_dataflow(dataflow);
    }
}

/// Armed in `WEIR_FAILPOINT`, makes the last worker panic after its first
/// step: the path of a worker that fails by panicking, for tests.
pub const WORKER_PANIC_FAILPOINT: &str = "worker-panic";

/// The first failure a window operator of this process reported (a spill
/// file that could not be written or read back).
fn window_state_failure(p: &Process) -> Option<String> {
    p.counters
        .window_state
        .lock()
        .expect("poisoned")
        .iter()
        .find_map(|(_, gauge)| gauge.failure())
}
