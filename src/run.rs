//! `weir run`: ingests the inputs into the log, starts the timely workers
//! (threads of this process, or one process of a cluster), runs the window
//! query from the log and writes the output files.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ingest::{ingest_files, IngestError};
use crate::job::{
    build_window_query, max_ahead_ms, track_arrangements, ArrangementGauge, WindowQuery,
};
use crate::log::{list_partitions, partition_dir, LogConfig, LogError};
use crate::log_feed::LogFeed;
use crate::sink::{
    output_file_names, CsvSink, SharedCsvFile, LATE_ROWS_HEADER, WINDOW_ROWS_HEADER,
};
use crate::source::{ErrorSlot, SourceConfig, SourceCounters};

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
}

/// Everything `weir run` needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Holds `log/` (and later checkpoints).
    pub data_dir: PathBuf,
    /// Where output files go.
    pub out_dir: PathBuf,
    /// CSV files ingested (idempotently) before the run; one file = one partition.
    pub inputs: Vec<PathBuf>,
    /// The query.
    pub query: WindowQuery,
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
    /// This process's window rows file.
    pub windows_file: PathBuf,
    /// This process's late events file.
    pub late_file: PathBuf,
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
    Source(#[from] crate::source::FeedError),
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
}

/// Expands inputs: directories to their `*.csv` files (sorted), files as given.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, RunError> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| RunError::Usage(format!("{}: {e}", input.display())))?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|p| p.extension().is_some_and(|e| e == "csv"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(RunError::Usage(format!(
                    "{}: no .csv files in this directory",
                    input.display()
                )));
            }
            files.extend(found);
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            return Err(RunError::Usage(format!(
                "{}: no such file or directory",
                input.display()
            )));
        }
    }
    Ok(files)
}

/// Ingests `files` under an exclusive lock on the data directory, so the
/// processes of a cluster sharing it agree on the partition numbers.
pub fn ingest_locked(
    data_dir: &Path,
    files: &[PathBuf],
    log_config: &LogConfig,
) -> Result<(), RunError> {
    std::fs::create_dir_all(data_dir).map_err(|e| RunError::Output {
        path: data_dir.to_owned(),
        source: e,
    })?;
    let lock_path = data_dir.join("ingest.lock");
    let lock = std::fs::File::create(&lock_path)
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| RunError::Output {
            path: lock_path.clone(),
            source: e,
        })?;
    let report = ingest_files(&data_dir.join("log"), EVENTS_TOPIC, files, log_config);
    drop(lock);
    let report = report?;
    for file in &report.files {
        tracing::info!(path = %file.path.display(), partition = file.partition, records = file.records, skipped = file.skipped, "ingest");
    }
    Ok(())
}

/// Runs the window query as configured; returns this process's summary.
pub fn run(options: &RunOptions) -> Result<RunSummary, RunError> {
    options
        .query
        .spec
        .check_granularity(options.query.granularity_ms)
        .map_err(|e| RunError::Usage(e.to_string()))?;
    if options.workers == 0 {
        return Err(RunError::Usage("--workers must be at least 1".into()));
    }
    let files = expand_inputs(&options.inputs)?;
    ingest_locked(&options.data_dir, &files, &options.log_config)?;

    let log_dir = options.data_dir.join("log");
    let partitions = list_partitions(&log_dir, EVENTS_TOPIC)?;
    if partitions.is_empty() {
        return Err(RunError::Usage(format!(
            "no input: the log {} has no partitions (give --input FILE...)",
            log_dir.join(EVENTS_TOPIC).display()
        )));
    }
    let (processes, process) = options
        .cluster
        .as_ref()
        .map_or((1, 0), |c| (c.processes, c.process));
    std::fs::create_dir_all(&options.out_dir).map_err(|e| RunError::Output {
        path: options.out_dir.clone(),
        source: e,
    })?;
    let (windows_name, late_name) = output_file_names(processes, process);
    let create = |name: &str, header: &str| {
        let path = options.out_dir.join(name);
        SharedCsvFile::create(&path, header).map_err(|e| RunError::Output { path, source: e })
    };
    let windows_file = create(&windows_name, WINDOW_ROWS_HEADER)?;
    let late_file = create(&late_name, LATE_ROWS_HEADER)?;

    let timely_config = timely_config(options.workers, options.cluster.as_ref());
    let errors = ErrorSlot::default();
    let counters = Arc::new(SourceCounters::default());
    let gauges: Arc<Mutex<Vec<Arc<ArrangementGauge>>>> = Arc::default();
    let output_error: Arc<Mutex<Option<std::io::Error>>> = Arc::default();
    let started = Instant::now();
    let guards = {
        let (errors, counters, gauges, output_error) = (
            Arc::clone(&errors),
            Arc::clone(&counters),
            Arc::clone(&gauges),
            Arc::clone(&output_error),
        );
        let (windows_file, late_file) = (Arc::clone(&windows_file), Arc::clone(&late_file));
        let query = options.query;
        let until_end = options.until_end;
        let source_config = SourceConfig {
            granularity_ms: query.granularity_ms,
            lateness_ms: query.lateness_ms,
            batch_records: options.batch_records,
            idle_poll_ms: 10,
            max_ahead_ms: max_ahead_ms(&query),
        };
        timely::execute(timely_config, move |worker| {
            let (index, peers) = (worker.index(), worker.peers());
            let gauge = Arc::new(ArrangementGauge::default());
            gauges
                .lock()
                .expect("gauges poisoned")
                .push(Arc::clone(&gauge));
            track_arrangements(worker, gauge);
            let mut feeds = Vec::new();
            for &p in partitions.iter().filter(|&&p| p as usize % peers == index) {
                match LogFeed::open(&partition_dir(&log_dir, EVENTS_TOPIC, p), p, 0, until_end) {
                    Ok(feed) => feeds.push((p, feed)),
                    Err(e) => {
                        errors.lock().expect("error slot poisoned").get_or_insert(
                            crate::source::FeedError {
                                partition: p,
                                source: Box::new(e),
                            },
                        );
                        return;
                    }
                }
            }
            let sink = Rc::new(RefCell::new(CsvSink::new(
                Arc::clone(&windows_file),
                Arc::clone(&late_file),
            )));
            let probe = build_window_query(
                worker,
                feeds,
                query,
                source_config,
                Rc::clone(&sink),
                Arc::clone(&errors),
                Arc::clone(&counters),
            );
            let mut last_flush = Instant::now();
            while !probe.done() {
                if errors.lock().expect("error slot poisoned").is_some() {
                    return;
                }
                worker.step_or_park(Some(Duration::from_millis(50)));
                if last_flush.elapsed() >= Duration::from_secs(1) {
                    // Tailing runs never finish; keep the files current.
                    if let Err(e) = sink.borrow_mut().flush() {
                        output_error.lock().expect("poisoned").get_or_insert(e);
                        return;
                    }
                    last_flush = Instant::now();
                }
            }
            let flushed = sink.borrow_mut().flush();
            if let Err(e) = flushed {
                output_error.lock().expect("poisoned").get_or_insert(e);
            }
        })
        .map_err(RunError::Dataflow)?
    };
    for result in guards.join() {
        result.map_err(RunError::Dataflow)?;
    }
    let elapsed = started.elapsed();
    if let Some(e) = errors.lock().expect("error slot poisoned").take() {
        return Err(RunError::Source(e));
    }
    if let Some(e) = output_error.lock().expect("poisoned").take() {
        return Err(RunError::Output {
            path: windows_file.path().to_owned(),
            source: e,
        });
    }
    let peak_arranged_records = gauges
        .lock()
        .expect("gauges poisoned")
        .iter()
        .map(|g| g.peak_records.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    Ok(RunSummary {
        partitions: partitions_count(&options.data_dir)?,
        total_workers: options.workers * processes,
        events_read: counters.events_read.load(Ordering::Relaxed),
        events_late: counters.events_late.load(Ordering::Relaxed),
        window_rows: windows_file.rows_written(),
        elapsed,
        peak_arranged_records,
        windows_file: windows_file.path().to_owned(),
        late_file: late_file.path().to_owned(),
    })
}

fn partitions_count(data_dir: &Path) -> Result<usize, RunError> {
    Ok(list_partitions(&data_dir.join("log"), EVENTS_TOPIC)?.len())
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
