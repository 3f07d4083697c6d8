//! `weir run --from URL`: the stream source in a thread, appending to the
//! log the run reads (every partition of a Kafka topic exists before the
//! run lists them). The run tails the log; with `--until-end` the source
//! stops once it has every message the stream held at the start, and then
//! the run stops at the log's end. If the source fails, the run stops at
//! the log's end too, and the source's error is the command's.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use weir::csv_input::RowSchema;
use weir::ingest::stream::message::MessageFormat;
use weir::ingest::stream::metrics::SourceMetrics;
use weir::ingest::stream::{
    ingest_stream, SourceKind, StreamIngestError, StreamIngestOptions, StreamIngestReport,
    StreamSource,
};
use weir::kafka::KafkaClient;
use weir::log::partition_dir;
use weir::run::EVENTS_TOPIC;
use weir::storage::durable::create_dir_all_durably;

/// The source's thread and its two flags.
pub struct StreamThread {
    source: StreamSource,
    stop: Arc<AtomicBool>,
    /// Set when the source ends: the run's `RunHooks::stop`.
    pub run_stop: Arc<AtomicBool>,
    /// The source's figures, for the run's metrics endpoint.
    pub metrics: Arc<SourceMetrics>,
    handle: JoinHandle<Result<StreamIngestReport, StreamIngestError>>,
}

/// Starts reading `source` into topic `events` of `data_dir`'s log. The
/// partition exists when this returns, so the run finds it.
pub fn start(
    source: &StreamSource,
    (format, idle_timeout_ms): (MessageFormat, Option<u64>),
    data_dir: &Path,
    until_caught_up: bool,
) -> Result<StreamThread> {
    if let Some(ms) = idle_timeout_ms {
        anyhow::ensure!(
            ms >= weir::ingest::idle::MIN_IDLE_TIMEOUT_MS,
            "--idle-timeout must be at least {} ms",
            weir::ingest::idle::MIN_IDLE_TIMEOUT_MS
        );
    }
    let log_dir = data_dir.join(weir::log::LOG_DIR_NAME);
    let mut options = StreamIngestOptions::new(EVENTS_TOPIC, RowSchema::Generic, format, data_dir);
    options.idle_timeout_ms = idle_timeout_ms;
    // The run lists the partitions at its start: all of them must exist.
    let partitions: Vec<u32> = match source.kind {
        SourceKind::Nats => vec![options.partition],
        SourceKind::Kafka => {
            let timeout = Duration::from_millis(options.connect_timeout_ms.max(1));
            let mut client = KafkaClient::connect(&source.server, timeout)
                .with_context(|| format!("reading {source}"))?;
            client
                .partitions(&source.name)
                .with_context(|| format!("reading {source}"))?
                .into_iter()
                .map(|p| u32::try_from(p).with_context(|| format!("{source}: partition {p}")))
                .collect::<Result<_>>()?
        }
    };
    for p in partitions {
        let partition = partition_dir(&log_dir, EVENTS_TOPIC, p);
        create_dir_all_durably(&partition)
            .with_context(|| format!("creating {}", partition.display()))?;
    }
    options.until_caught_up = until_caught_up;
    let metrics = Arc::new(SourceMetrics::new(&source.to_string()));
    options.metrics = Some(Arc::clone(&metrics));
    let stop = Arc::new(AtomicBool::new(false));
    let run_stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (source, stop, run_stop) = (source.clone(), stop.clone(), run_stop.clone());
        std::thread::Builder::new()
            .name("stream-source".into())
            .spawn(move || {
                let result = ingest_stream(&log_dir, &source, &options, &stop);
                run_stop.store(true, Ordering::Relaxed);
                result
            })
            .context("starting the stream source thread")?
    };
    Ok(StreamThread {
        source: source.clone(),
        stop,
        run_stop,
        metrics,
        handle,
    })
}

impl StreamThread {
    /// Stops the source (if still reading) and returns what it did.
    pub fn finish(self) -> Result<StreamIngestReport> {
        self.stop.store(true, Ordering::Relaxed);
        let report = self
            .handle
            .join()
            .map_err(|_| anyhow::anyhow!("the stream source thread panicked"))?
            .with_context(|| format!("reading {}", self.source))?;
        eprintln!(
            "{}: {} messages read ({} appended, {} already in the log, {} dead-lettered), up to sequence {}",
            self.source,
            report.messages,
            report.appended,
            report.matched,
            report.dead_letters,
            report.source_seq
        );
        Ok(report)
    }
}
