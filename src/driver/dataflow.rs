//! The dataflow phase: the state the workers of this process share (and the
//! metrics endpoint that reads it), and, on each worker, its partitions,
//! output files, restored state and query dataflow.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use timely::dataflow::ProbeHandle;
use timely::worker::Worker;

use super::checkpointing::backlog_probe;
use super::inputs::{InputPartition, Inputs};
use super::metrics::{self, EngineMetrics, MetricsSources};
use super::overlap::OverlappedIngest;
use super::restore::{open_worker_state, RestoreSinks, Restored};
use super::sidecar::Sidecar;
use super::Place;
use crate::checkpoint::cadence::{Cadence, MAX_UNCOMMITTED_CHECKPOINTS};
use crate::checkpoint::client::{CutSender, SidecarClient};
use crate::checkpoint::cut::CutAssembler;
use crate::checkpoint::format::CommitRecord;
use crate::checkpoint::pressure::{PressureLimits, SidecarPressure, SourceGate};
use crate::job::{
    build_window_query, max_ahead_ms, track_arrangements, ArrangementGauge, RestoredState,
    WindowQuery, WorkerCheckpointing,
};
use crate::run::{LogRetention, RunError, RunGauges, RunHooks, RunOptions, STATE_DIR_NAME};
use crate::sink::{output_file_names, WorkerOutputs};
use crate::source::{ErrorSlot, PartitionInput, SourceConfig, SourceCounters, IDLE_POLL_MAX_MS};
use weir_dataflows::pane_store::SpillConfig;

/// What the workers of this process share, and the figures the driver
/// reads once they are done.
pub(super) struct Process {
    query: WindowQuery,
    partitions: Vec<InputPartition>,
    pub(super) log_dir: PathBuf,
    /// Log partitions are read on threads of their own (see [`read_ahead`]).
    read_ahead: bool,
    /// Per partition: the offset to resume at and the largest time before it.
    resumes: HashMap<u32, (u64, Option<u64>)>,
    restored: Option<CommitRecord>,
    /// Whether the workers delete the log segments checkpoints no longer need.
    pub(super) log_retention: bool,
    /// `(id, cut)`: checkpoints number on from `id`, the sources skip
    /// events before `cut`.
    restored_point: Option<(u64, u64)>,
    pub(super) retention_ms: u64,
    pub(super) checkpoint_dir: PathBuf,
    pub(super) out_dir: PathBuf,
    pub(super) until_end: bool,
    pub(super) hooks: RunHooks,
    cadence: Cadence,
    pub(super) step_ms: u64,
    pub(super) sender: Option<CutSender>,
    pub(super) pressure: Option<Arc<SidecarPressure>>,
    source_config: SourceConfig,
    /// Where sliding windows spill cold panes under `--memory-budget`,
    /// with each worker's share of the budget.
    window_spill: Option<SpillConfig>,
    pub(super) first_worker: usize,
    /// A sidecar silent this long while owed an ack is reported stalled.
    pub(super) stall_after: Duration,
    pub(super) errors: ErrorSlot,
    pub(super) failure: Arc<Mutex<Option<RunError>>>,
    pub(super) counters: Arc<SourceCounters>,
    pub(super) arrangements: Arc<Mutex<Vec<Arc<ArrangementGauge>>>>,
    /// Window rows and late rows written, over the workers.
    pub(super) written: Arc<Mutex<(u64, u64)>>,
    /// The id of the final checkpoint (a finite run).
    pub(super) final_id: Arc<Mutex<Option<u64>>>,
    /// Restored updates over all workers, and the slowest worker's load time.
    pub(super) restore_stats: Arc<Mutex<(u64, Duration)>>,
    pub(super) run_gauges: Arc<RunGauges>,
    pub(super) engine_metrics: Arc<EngineMetrics>,
    pub(super) metrics_stop: Arc<AtomicBool>,
    /// The ingest of the input files, going on beside the run.
    pub(super) overlapped: Option<OverlappedIngest>,
}

impl Process {
    /// The input partitions worker `index` of `peers` reads.
    pub(super) fn worker_partitions(
        &self,
        index: usize,
        peers: usize,
    ) -> impl Iterator<Item = &InputPartition> {
        self.partitions
            .iter()
            .filter(move |i| i.id() as usize % peers == index)
    }

    /// The shared state of a run over `inputs` resuming from `restored`;
    /// starts the metrics endpoint (`--metrics-addr`).
    pub(super) fn new(
        options: &RunOptions,
        inputs: Inputs,
        restored: &Restored,
        sidecar: &Sidecar,
        place: Place,
    ) -> Result<Self, RunError> {
        let query = options.query;
        let checkpoint = options.checkpoint.as_ref();
        let restored = restored.record.clone();
        let client = sidecar.client.as_ref();
        let resumes: HashMap<u32, (u64, Option<u64>)> = restored
            .as_ref()
            .map(|r| {
                r.partitions
                    .iter()
                    .map(|p| (p.partition, (p.resume_offset, p.max_ts_before)))
                    .collect()
            })
            .unwrap_or_default();
        // New checkpoints number on from the newest commit, which is newer
        // than the restored one when the newest was unusable.
        let newest_id = client
            .and_then(|c| c.last_committed_at_hello())
            .map_or(0, |(id, _)| id);
        let restored_point = restored
            .as_ref()
            .map(|r| (r.checkpoint_id.max(newest_id), r.cut_time));
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
        let counters = Arc::new(SourceCounters::default());
        let arrangements: Arc<Mutex<Vec<Arc<ArrangementGauge>>>> = Arc::default();
        let run_gauges = options.hooks.gauges.clone().unwrap_or_default();
        let metrics_stop = Arc::new(AtomicBool::new(false));
        let engine_metrics = Arc::new(EngineMetrics::new(
            &options.data_dir,
            options.workers,
            query.spec.slide_ms(),
            restored_point,
            options.metrics_addr.is_some(),
        ));
        if let Some(addr) = options.metrics_addr {
            let sources = MetricsSources {
                counters: Arc::clone(&counters),
                gauges: Arc::clone(&run_gauges),
                arrangements: Arc::clone(&arrangements),
                engine: Arc::clone(&engine_metrics),
                client: client.map(|c| c.stats()),
                pressure: pressure.clone(),
                extra: options.hooks.extra_metrics.clone(),
            };
            let bound = metrics::serve(addr, sources, Arc::clone(&metrics_stop))
                .map_err(|e| RunError::Usage(format!("--metrics-addr {addr}: {e}")))?;
            tracing::info!(%bound, "metrics endpoint");
        }
        let step_ms = query.cut_step_ms();
        let sender = client.map(|c| c.sender());
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
        let window_spill = options.memory_budget_bytes.map(|budget| SpillConfig {
            dir: options.data_dir.join(STATE_DIR_NAME),
            budget_bytes: usize::try_from(budget / options.workers.max(1) as u64)
                .unwrap_or(usize::MAX),
        });
        Ok(Process {
            query,
            read_ahead: read_ahead(options.workers, inputs.partitions.len()),
            partitions: inputs.partitions,
            log_dir: inputs.log_dir,
            resumes,
            restored,
            log_retention: checkpoint
                .is_some_and(|c| c.log_retention == LogRetention::Checkpointed),
            restored_point,
            retention_ms: query.retention_ms(),
            checkpoint_dir: options.data_dir.join("checkpoints"),
            out_dir: options.out_dir.clone(),
            until_end: options.until_end,
            hooks: options.hooks.clone(),
            cadence: Cadence {
                interval_ms: checkpoint.map_or(0, |c| c.interval_ms),
                adaptive: checkpoint.is_some_and(|c| c.adaptive),
            },
            step_ms,
            sender,
            pressure,
            source_config,
            window_spill,
            first_worker: place.first_worker,
            stall_after: Duration::from_millis(checkpoint.map_or(0, |c| c.interval_ms).max(1)),
            errors: ErrorSlot::default(),
            failure: Arc::default(),
            counters,
            arrangements,
            written: Arc::default(),
            final_id: Arc::default(),
            restore_stats: Arc::default(),
            run_gauges,
            engine_metrics,
            metrics_stop,
            overlapped: inputs.overlapped,
        })
    }

    /// The number of source partitions.
    pub(super) fn partition_count(&self) -> usize {
        self.partitions.len()
    }

    /// Records the run's first failure (later ones are dropped).
    pub(super) fn fail(&self, e: RunError) {
        self.failure.lock().expect("poisoned").get_or_insert(e);
    }
}

/// A worker's built dataflow and the handles the drive phase steps it with.
pub(super) struct WorkerDataflow {
    pub(super) probe: ProbeHandle<u64>,
    pub(super) outputs: Rc<RefCell<WorkerOutputs>>,
    pub(super) assembler: Rc<RefCell<CutAssembler>>,
    pub(super) gate: Option<SourceGate>,
}

/// The most partitions a process reads ahead on threads of their own.
const READ_AHEAD_MAX_PARTITIONS: usize = 64;

/// Whether a process with `workers` reading `partitions` reads its log
/// partitions ahead on threads of their own (decision 66): when its workers
/// leave a core free, and for at most [`READ_AHEAD_MAX_PARTITIONS`] (a
/// thread and at most four chunks of 8,192 decoded records each, about
/// 1.5 MiB plus the heap of keys over 24 bytes, decision 69).
fn read_ahead(workers: usize, partitions: usize) -> bool {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    workers < cores && partitions <= READ_AHEAD_MAX_PARTITIONS
}

/// Builds this worker's dataflow: opens its partitions (resuming at the
/// restored offsets) and output files, loads its share of the checkpoint,
/// builds the query. `None` after a failure (recorded in `process`).
pub(super) fn build(
    process: &Process,
    client: Option<&Arc<SidecarClient>>,
    worker: &mut Worker,
) -> Option<WorkerDataflow> {
    let p = process;
    let (index, peers) = (worker.index(), worker.peers());
    let gauge = Arc::new(ArrangementGauge::default());
    p.arrangements
        .lock()
        .expect("poisoned")
        .push(Arc::clone(&gauge));
    track_arrangements(worker, gauge);

    let mut feeds = Vec::new();
    for input in p.worker_partitions(index, peers) {
        let partition = input.id();
        let (start_offset, max_ts_before) = p.resumes.get(&partition).copied().unwrap_or((0, None));
        let fed = p.overlapped.as_ref().and_then(|o| o.take_feed(partition));
        if let Some(fed) = fed {
            feeds.push(PartitionInput {
                partition,
                feed: input.open_fed(fed, &p.query, (start_offset, max_ts_before)),
                start_offset,
                max_ts_before,
            });
            continue;
        }
        match input.open(
            (&p.log_dir, &p.query),
            (start_offset, max_ts_before),
            (p.until_end, p.read_ahead),
            p.hooks.stop.clone(),
        ) {
            Ok(feed) => feeds.push(PartitionInput {
                partition,
                feed,
                start_offset,
                max_ts_before,
            }),
            Err(e) => {
                p.fail(RunError::Source(e));
                return None;
            }
        }
    }
    let header = p.query.result_header();
    let outputs = match WorkerOutputs::open_with_header(&p.out_dir, index, false, &header) {
        Ok(o) => Rc::new(RefCell::new(
            o.with_observer(p.engine_metrics.observer(p.hooks.observer.clone()))
                .with_counts(Some(p.engine_metrics.output_counts())),
        )),
        Err(e) => {
            p.fail(RunError::Output {
                path: p.out_dir.join(output_file_names(index).0),
                source: e,
            });
            return None;
        }
    };
    let assembler: Rc<RefCell<CutAssembler>> = Rc::default();
    let gate = p.pressure.as_ref().map(|g| SourceGate::new(Arc::clone(g)));
    let checkpointing = match (&p.sender, p.restored_point) {
        (None, _) => None,
        (Some(_), point) => {
            let restored_state = match &p.restored {
                None => RestoredState::empty(&p.query),
                Some(record) => match open_worker_state(
                    (&p.query, &p.checkpoint_dir, p.retention_ms),
                    (index, peers),
                    record,
                    &RestoreSinks {
                        metrics: &p.engine_metrics,
                        stats: &p.restore_stats,
                        failure: &p.failure,
                    },
                ) {
                    Ok(state) => state,
                    Err(e) => {
                        p.fail(e);
                        return None;
                    }
                },
            };
            let restored = point.unwrap_or((0, 0));
            Some(WorkerCheckpointing {
                assembler: Rc::clone(&assembler),
                leader: index == 0,
                step_ms: p.step_ms,
                cadence: p.cadence,
                backlog: backlog_probe(
                    (client, p.sender.as_ref()),
                    restored.0,
                    p.overlapped.as_ref().map(OverlappedIngest::committed),
                ),
                restored,
                restored_state,
                gate: gate.clone().expect("a gate with checkpoints"),
            })
        }
    };
    let probe = build_window_query(
        worker,
        feeds,
        p.query,
        p.source_config,
        Rc::clone(&outputs),
        Arc::clone(&p.errors),
        Arc::clone(&p.counters),
        checkpointing,
        p.window_spill.clone(),
    );
    Some(WorkerDataflow {
        probe,
        outputs,
        assembler,
        gate,
    })
}
