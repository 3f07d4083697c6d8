//! The body of `weir run`, read top-down: [`run`] calls one function per
//! phase, in order, each in a child module, and none calls back up.
//!
//! 0. [`restore`] (a standby, `--restore-from`): take over the newest
//!    checkpoint of the cold tier and the log shipped with it.
//! 1. [`inputs`]: check the options, ingest the input files (idempotent),
//!    list the source partitions.
//! 2. [`restore`]: find the newest usable checkpoint; then [`outputs`]
//!    truncates this process's output files to its committed lengths.
//! 3. [`sidecar`]: start (process 0, unless one was given) or reach the
//!    checkpoint sidecar and say hello (the hello carries the restored
//!    checkpoint: the sidecar's epoch follows it, so this comes after 2).
//! 4. [`dataflow`]: the process's shared state and metrics endpoint; on each
//!    worker, its partitions, output files and key groups of the checkpoint
//!    (loaded in parallel), and the query dataflow.
//! 5. [`drive`]: step each worker until its dataflow completes, shipping
//!    checkpoint shares and updating the figures.
//! 6. [`finish`]: wait for the final checkpoint to commit, close the
//!    sidecar connection, sum up.
//!
//! [`crate::run`] holds the options and result types the driver takes and
//! returns; it calls nothing of the driver.

use std::path::PathBuf;
use std::time::Duration;

use crate::run::{ClusterOptions, RunError, RunOptions, RunSummary};

mod checkpointing;
mod dataflow;
mod drive;
mod finish;
mod ingesting;
mod inputs;
pub mod metrics;
mod outputs;
mod overlap;
mod restore;
mod retention;
mod sidecar;

pub use ingesting::{ingest_locked, ingest_topics_locked};
pub use inputs::expand_inputs;
pub use restore::take_over_standby;

/// How long to wait for the sidecar to listen, and for the final commit.
const SIDECAR_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the window query as configured; returns this process's summary.
pub fn run(options: &RunOptions) -> Result<RunSummary, RunError> {
    let place = Place::of(options);
    restore::take_over(options)?;
    let inputs = inputs::prepare(options)?;
    let restored = restore::choose(options)?;
    outputs::prepare(options, restored.record.as_ref(), place)?;
    if place.process == 0 && options.generated.is_none() {
        // For the tools that read the data dir later (`weir explain`).
        crate::job::query_file::record_query(&options.data_dir, &options.query).map_err(|e| {
            RunError::Output {
                path: e.path,
                source: e.source,
            }
        })?;
    }
    let sidecar = sidecar::start(options, place, restored.record.as_ref())?;
    let process = dataflow::Process::new(options, inputs, &restored, &sidecar, place)?;
    let driven = drive::execute(options, process, sidecar.client.clone())?;
    finish::finish(options, driven, sidecar, restored.summary, place)
}

/// This process's place among the run's processes and workers.
#[derive(Clone, Copy, Debug)]
struct Place {
    /// Index of this process.
    process: usize,
    /// Workers in the whole cluster.
    workers_total: usize,
    /// Global index of this process's first worker.
    first_worker: usize,
}

impl Place {
    fn of(options: &RunOptions) -> Self {
        let (processes, process) = options
            .cluster
            .as_ref()
            .map_or((1, 0), |c| (c.processes, c.process));
        Place {
            process,
            workers_total: options.workers * processes,
            first_worker: process * options.workers,
        }
    }
}

/// Timely's configuration for `workers` threads, alone or in a cluster.
pub fn timely_config(workers: usize, cluster: Option<&ClusterOptions>) -> timely::Config {
    let mut worker = timely::WorkerConfig::default();
    // Keep merging arrangement batches while input is quiet, so retracted
    // window state is physically dropped rather than waiting for new data.
    differential_dataflow::configure(
        &mut worker,
        &differential_dataflow::Config {
            idle_merge_effort: Some(100_000),
        },
    );
    let communication = match cluster {
        None if workers == 1 => timely::CommunicationConfig::Thread,
        None => timely::CommunicationConfig::Process(workers),
        Some(c) => timely::CommunicationConfig::Cluster {
            threads: workers,
            process: c.process,
            addresses: c.addresses.clone(),
            report: false,
            zerocopy: false,
        },
    };
    timely::Config {
        communication,
        worker,
    }
}

/// The `weir` binary: `$WEIR_BIN`, this executable if it is `weir`, or a
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
