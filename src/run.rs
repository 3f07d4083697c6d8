//! What `weir run` takes and returns: its options, hooks for a harness in
//! the same process, the summary and the error. The run itself is
//! [`crate::driver::run`] (ingest, restore, sidecar, workers), which reads
//! these types; nothing here calls the driver.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ingest::IngestError;
use crate::job::WindowQuery;
use crate::log::{LogConfig, LogError};
pub use crate::sink::RowObserver;
use crate::source::FeedError;

/// The log topic the generic window query reads.
pub const EVENTS_TOPIC: &str = "events";

/// This process's place in a multi-process cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Number of processes.
    pub processes: usize,
    /// Index of this process, `0..processes`.
    pub process: usize,
    /// `host:port` of every process, in process order.
    pub addresses: Vec<String>,
    /// How long to wait for every process to connect before giving up.
    pub connect_timeout_ms: u64,
}

/// The directory under the data dir where sliding windows keep the panes
/// they spill (`worker-<index>/`; scratch, emptied when a run starts).
pub const STATE_DIR_NAME: &str = "state";

/// The least `--memory-budget` per worker: less would spill every pane as
/// it enters while the keys' columns alone exceed it.
pub const MIN_MEMORY_BUDGET_PER_WORKER_BYTES: u64 = 1 << 20;

/// Everything `weir run` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Holds `log/` (and later checkpoints).
    pub data_dir: PathBuf,
    /// Where output files go.
    pub out_dir: PathBuf,
    /// CSV files ingested (idempotently) by the run; one file = one partition.
    pub inputs: Vec<PathBuf>,
    /// Ingest every input file before the dataflow starts, instead of
    /// running on the files while they are ingested (decision 72).
    pub ingest_first: bool,
    /// The query.
    pub query: WindowQuery,
    /// Read a Nexmark query's input straight from the generator (no files,
    /// no log): this many events in this many partitions.
    pub generated: Option<GeneratedInput>,
    /// Worker threads per process.
    pub workers: usize,
    /// Set for a multi-process run.
    pub cluster: Option<ClusterOptions>,
    /// Stop once every partition has been read to its end and all windows are flushed.
    pub until_end: bool,
    /// Records read from one partition per source activation.
    pub batch_records: usize,
    /// Log settings used by the ingest.
    pub log_config: LogConfig,
    /// Checkpoints (exactly-once output and restore); `None` turns them off.
    pub checkpoint: Option<CheckpointOptions>,
    /// Hooks for a harness driving the run from the same process.
    pub hooks: RunHooks,
    /// Serve Prometheus metrics on this loopback address while running.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Sliding windows keep at most this much state in memory per process
    /// (split evenly over its workers), the rest in `<data-dir>/state/`
    /// (decision 35); `None`: no limit.
    pub memory_budget_bytes: Option<u64>,
}

/// Input made by the Nexmark generator while the run reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GeneratedInput {
    /// Events of all tables and partitions together.
    pub events: u64,
    /// Partitions (the split of `weir gen nexmark`).
    pub partitions: u32,
}

/// Hooks for a harness that runs the engine in its own process.
#[derive(Clone, Default)]
pub struct RunHooks {
    /// Called for every emitted window row.
    pub observer: Option<std::sync::Arc<dyn RowObserver>>,
    /// Once set, partitions end when they are read to their current end (as
    /// with `until_end`), so a tailing run finishes.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Live figures of the run, updated by worker 0 of this process.
    pub gauges: Option<std::sync::Arc<RunGauges>>,
    /// More metrics for the run's endpoint (`--metrics-addr`), in the
    /// Prometheus text format: the stream source's with `weir run --from`.
    pub extra_metrics: Option<ExtraMetrics>,
}

/// Renders metrics of something beside the engine, in the Prometheus text
/// format, each time the endpoint is scraped.
pub type ExtraMetrics = std::sync::Arc<dyn Fn() -> String + Send + Sync>;

/// Live figures of a running engine (event times in ms; `u64::MAX` for
/// "none yet" / "input complete").
#[derive(Debug)]
pub struct RunGauges {
    /// The output frontier: every result for times below it has been emitted.
    pub output_frontier_ms: std::sync::atomic::AtomicU64,
    /// The cut time of the newest committed checkpoint.
    pub committed_cut_ms: std::sync::atomic::AtomicU64,
    /// Cuts queued for the sidecar, not yet taken by the client thread.
    pub sidecar_queued: std::sync::atomic::AtomicU64,
    /// Capacity of that queue.
    pub sidecar_capacity: std::sync::atomic::AtomicU64,
    /// Commit latency of the newest acknowledged checkpoint, µs.
    pub last_commit_latency_us: std::sync::atomic::AtomicU64,
}

impl Default for RunGauges {
    fn default() -> Self {
        use std::sync::atomic::AtomicU64;
        RunGauges {
            output_frontier_ms: AtomicU64::new(u64::MAX),
            committed_cut_ms: AtomicU64::new(u64::MAX),
            sidecar_queued: AtomicU64::new(0),
            sidecar_capacity: AtomicU64::new(0),
            last_commit_latency_us: AtomicU64::new(u64::MAX),
        }
    }
}

impl std::fmt::Debug for RunHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunHooks")
            .field("observer", &self.observer.is_some())
            .field("stop", &self.stop)
            .field("gauges", &self.gauges)
            .field("extra_metrics", &self.extra_metrics.is_some())
            .finish()
    }
}

/// How checkpoints are taken.
#[derive(Clone, Debug)]
pub struct CheckpointOptions {
    /// At most one checkpoint per this much wall clock.
    pub interval_ms: u64,
    /// Whether the interval adapts to the sidecar's backlog (between
    /// `interval_ms` and 8 times it; see [`crate::checkpoint::cadence`]).
    pub adaptive: bool,
    /// A sidecar started separately (`unix:PATH` or `tcp:ADDR`); without it,
    /// process 0 starts one on `<data-dir>/sidecar.sock`.
    pub sidecar: Option<String>,
    /// Bytes the persist taps of a process may buffer, while a checkpoint is
    /// uncommitted, before its sources stop reading (see
    /// [`crate::checkpoint::pressure`]).
    pub max_tap_buffer_bytes: u64,
    /// Whether the workers delete the log segments that no retained
    /// checkpoint needs any more (`--log-retention checkpointed`).
    pub log_retention: LogRetention,
    /// With a sidecar started separately (`sidecar`): how long the engine
    /// keeps reconnecting after losing it (a sidecar restarted by hand
    /// continues the run; 0: a lost sidecar ends the run). A sidecar the
    /// engine started itself is never reconnected to: its loss ends the run.
    pub sidecar_reconnect_ms: u64,
    /// The cold tier (`file:///PATH`): the sidecar this run starts copies
    /// committed checkpoints there, and the restore reads damaged or
    /// missing checkpoint files back from it.
    pub cold_store: Option<String>,
    /// A second store the sidecar this run starts copies checkpoints and
    /// the log to (`--replica URL`).
    pub replica: Option<String>,
    /// How many of the newest checkpoints the sidecar this run starts
    /// keeps the files of in the data dir (`--keep-local`).
    pub keep_local: usize,
    /// A standby taking over (`--restore-from URL`): the newest checkpoint
    /// of this cold tier becomes the run's first, into an empty data dir;
    /// the run writes the output rows after it.
    pub restore_from: Option<String>,
}

/// What happens to the input log's segments once checkpoints cover them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogRetention {
    /// Keep every segment: any query may later read the log from offset 0.
    #[default]
    Keep,
    /// Delete the segments wholly below the offsets any restorable
    /// checkpoint resumes at (see [`crate::log::retention`] and
    /// [`crate::checkpoint::store::ResumeFloors`]): the disk
    /// holds what a restore can still need, and a run without checkpoints
    /// on this log can no longer start from offset 0 (it is refused).
    Checkpointed,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// Partitions of the input topic.
    pub partitions: usize,
    /// Workers in the whole cluster.
    pub total_workers: usize,
    /// Events read by this process.
    pub events_read: u64,
    /// Events refused as late by this process.
    pub events_late: u64,
    /// Window rows written by this process.
    pub window_rows: u64,
    /// Wall time of the dataflow, from worker start to the last row.
    pub elapsed: Duration,
    /// Largest number of records held in arrangements by one worker.
    pub peak_arranged_records: i64,
    /// Live partials of the fixed-window operators, summed over this
    /// process's workers of each one's peak (an upper bound of the peak of
    /// the sum).
    pub peak_window_partials: u64,
    /// As `peak_window_partials`, in bytes of window state.
    pub peak_window_bytes: u64,
    /// Under `--memory-budget`: the sum of the workers' peak bytes of
    /// panes on disk, and the spill counts summed over the workers
    /// ([`weir_dataflows::pane_store::PaneStore::spill_counts`]).
    pub window_disk: (u64, [u64; 6]),
    /// The output directory.
    pub out_dir: PathBuf,
    /// Late rows written by this process.
    pub late_rows: u64,
    /// Checkpoints: `None` when off.
    pub checkpoints: Option<CheckpointSummary>,
}

/// What checkpointing did in a run.
#[derive(Clone, Debug, Default)]
pub struct CheckpointSummary {
    /// The checkpoint the run resumed from: `(id, cut time)`.
    pub restored_from: Option<(u64, u64)>,
    /// Warnings about newer checkpoints that could not be used.
    pub restore_warnings: Vec<String>,
    /// Updates loaded from the checkpoint, over all workers of this process.
    pub restored_updates: u64,
    /// The slowest worker's time to load and decode its share.
    pub restore_load: Duration,
    /// Time to pick the checkpoint to restore: read the commit stream and
    /// checksum every file of the chosen checkpoint (and of newer unusable
    /// ones).
    pub restore_verify: Duration,
    /// Bytes in the restored checkpoint's files.
    pub restored_bytes: u64,
    /// The last checkpoint the sidecar confirmed: `(id, cut time)`.
    pub last_committed: Option<(u64, u64)>,
    /// Commit latency of the last checkpoint, µs.
    pub last_commit_latency_us: Option<u64>,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad command-line values.
    #[error("{0}")]
    Usage(String),
    /// An input file could not be ingested.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The log could not be read.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Reading the input during the run failed.
    #[error(transparent)]
    Source(#[from] FeedError),
    /// An output file could not be written.
    #[error("{path}: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Timely could not start or a worker failed.
    #[error("dataflow: {0}")]
    Dataflow(String),
    /// The checkpoint store refused or failed.
    #[error(transparent)]
    Store(#[from] crate::checkpoint::store::StoreError),
    /// The checkpoint sidecar failed.
    #[error(transparent)]
    Sidecar(#[from] crate::checkpoint::client::ClientError),
    /// A checkpoint could not be restored.
    #[error("restore: {0}")]
    Restore(String),
    /// A window operator's state failed (a spill file could not be
    /// written, or was damaged when read back); a rerun restores from the
    /// last checkpoint.
    #[error("{0}; nothing committed is lost: rerun to continue from the last checkpoint")]
    WindowState(String),
}

impl From<crate::job::RestoreError> for RunError {
    fn from(e: crate::job::RestoreError) -> Self {
        match e {
            crate::job::RestoreError::Store(e) => RunError::Store(e),
            crate::job::RestoreError::Invalid(reason) => RunError::Restore(reason),
        }
    }
}

/// Reads a hostfile: one `host:port` per line; blank lines and `#` comments skipped.
pub fn read_hostfile(path: &Path, processes: usize) -> Result<Vec<String>, RunError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| RunError::Usage(format!("{}: {e}", path.display())))?;
    let addresses: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    if addresses.len() < processes {
        return Err(RunError::Usage(format!(
            "{}: {} addresses for {processes} processes",
            path.display(),
            addresses.len()
        )));
    }
    for (line, address) in addresses.iter().enumerate() {
        if !address.contains(':') {
            return Err(RunError::Usage(format!(
                "{}: entry {} ({address:?}) is not host:port",
                path.display(),
                line + 1
            )));
        }
    }
    Ok(addresses.into_iter().take(processes).collect())
}
