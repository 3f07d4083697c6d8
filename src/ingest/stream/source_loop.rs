//! The loop of a stream ingest: read, decode, append or match, commit;
//! reconnect with backoff when the server goes away; pause while the log is
//! over its size limit. The protocol is in the parent module's doc.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::appender::{partition_bytes, Appender, SourceMessage};
use super::message::MessageFormat;
use super::metrics::SourceMetrics;
use super::{SourceKind, StreamIngestError, StreamSource, MAX_UNCOMMITTED_MESSAGES};
use crate::csv_input::RowSchema;
use crate::log::LogConfig;
use crate::nats::jetstream::StreamReader;
use crate::nats::NatsError;

/// How often appended records are handed to the file system, where readers
/// (a tailing `weir run`) see them; durable only at the next commit.
pub(super) const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// How a stream ingest runs.
#[derive(Clone, Debug)]
pub struct StreamIngestOptions {
    /// The topic (`events`, or a Nexmark table's).
    pub topic: String,
    /// Its rows' format.
    pub schema: RowSchema,
    /// How payloads are written.
    pub format: MessageFormat,
    /// The partition the stream feeds.
    pub partition: u32,
    /// The log's configuration (its fsync policy is overridden by commits,
    /// which always sync).
    pub log_config: LogConfig,
    /// The dead-letter file.
    pub dead_letter_path: PathBuf,
    /// Stop once every message the stream held at the start is committed.
    pub until_caught_up: bool,
    /// Pause reading while the partition's segments take more than this.
    pub max_log_bytes: Option<u64>,
    /// Commit at most this often.
    pub commit_interval_ms: u64,
    /// Bounds connecting and every request.
    pub connect_timeout_ms: u64,
    /// Give up after failing to reconnect for this long.
    pub reconnect_limit_ms: u64,
    /// Where the committed figures go (a metrics endpoint), if anywhere.
    pub metrics: Option<Arc<SourceMetrics>>,
}

impl StreamIngestOptions {
    /// The defaults for `topic` of `schema` under `data_dir`: dead letters
    /// in `data_dir/dead-letter/<topic>-source.csv`, commits every 100 ms,
    /// 5 s to connect, 60 s to reconnect, no size limit, until stopped.
    pub fn new(topic: &str, schema: RowSchema, format: MessageFormat, data_dir: &Path) -> Self {
        Self {
            topic: topic.to_owned(),
            schema,
            format,
            partition: 0,
            log_config: LogConfig::default(),
            dead_letter_path: data_dir
                .join("dead-letter")
                .join(format!("{topic}-source.csv")),
            until_caught_up: false,
            max_log_bytes: None,
            commit_interval_ms: 100,
            connect_timeout_ms: 5_000,
            reconnect_limit_ms: 60_000,
            metrics: None,
        }
    }
}

/// What one stream ingest did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamIngestReport {
    /// The last stream sequence committed.
    pub source_seq: u64,
    /// The log offset after the last record committed.
    pub log_next_offset: u64,
    /// Messages read and committed by this run.
    pub messages: u64,
    /// Records appended by this run.
    pub appended: u64,
    /// Records found already in the log after the committed offset
    /// (appended before a crash) and matched.
    pub matched: u64,
    /// Messages dead-lettered by this run.
    pub dead_letters: u64,
    /// Sequences the stream skipped (removed before they were read).
    pub skipped_seqs: u64,
    /// Times the connection was made again.
    pub reconnects: u64,
    /// Times reading paused because the log was over `max_log_bytes`.
    pub pauses: u64,
    /// Per log partition: `(partition, last sequence committed, log offset
    /// after the last record committed)`; `source_seq` and
    /// `log_next_offset` above are the first partition's.
    pub partitions: Vec<(u32, u64, u64)>,
}

impl StreamIngestReport {
    /// The report of several partitions' appenders, in partition order.
    pub(super) fn merged(parts: Vec<(u32, StreamIngestReport)>) -> Self {
        let mut out = StreamIngestReport::default();
        for (i, (partition, r)) in parts.into_iter().enumerate() {
            if i == 0 {
                (out.source_seq, out.log_next_offset) = (r.source_seq, r.log_next_offset);
            }
            out.messages += r.messages;
            out.appended += r.appended;
            out.matched += r.matched;
            out.dead_letters += r.dead_letters;
            out.skipped_seqs += r.skipped_seqs;
            out.reconnects += r.reconnects;
            out.pauses += r.pauses;
            out.partitions
                .push((partition, r.source_seq, r.log_next_offset));
        }
        out
    }
}

/// Reads `source` into its partitions until `stop` is set, the source is
/// caught up (with `until_caught_up`) or an error that reconnecting does not
/// cure. The first connection's failure is returned at once.
pub fn ingest_stream(
    log_dir: &Path,
    source: &StreamSource,
    options: &StreamIngestOptions,
    stop: &AtomicBool,
) -> Result<StreamIngestReport, StreamIngestError> {
    match source.kind {
        SourceKind::Nats => ingest_nats(log_dir, source, options, stop),
        SourceKind::Kafka => super::kafka_loop::ingest_kafka(log_dir, source, options, stop),
    }
}

fn ingest_nats(
    log_dir: &Path,
    source: &StreamSource,
    options: &StreamIngestOptions,
    stop: &AtomicBool,
) -> Result<StreamIngestReport, StreamIngestError> {
    let mut appender = Appender::open(
        log_dir,
        (&source.name, source.to_string()),
        options,
        options.partition,
        &options.dead_letter_path,
    )?;
    let timeout = Duration::from_millis(options.connect_timeout_ms.max(1));
    let start_seq = appender.current.source_seq + 1;
    let mut reader = StreamReader::open(&source.server, &source.name, start_seq, timeout)?;
    let state = reader.state();
    if state.first_seq > start_seq {
        tracing::warn!(
            "{source}: messages {start_seq}..{} were removed from the stream before they were ingested",
            state.first_seq - 1
        );
    }
    let target_seq = state.last_seq;
    let interval = Duration::from_millis(options.commit_interval_ms.max(1));
    let mut last_commit = Instant::now();
    let mut last_flush = Instant::now();
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if options.until_caught_up && appender.current.source_seq >= target_seq {
            appender.check_tail_matched(target_seq)?;
            break;
        }
        let now = Instant::now();
        if now >= last_flush + FLUSH_INTERVAL {
            appender.writer.flush()?;
            last_flush = now;
            if options
                .max_log_bytes
                .is_some_and(|max| partition_bytes(&appender.dir) >= max)
            {
                appender.commit()?;
                appender.report.pauses += 1;
                if let Some(m) = &options.metrics {
                    m.paused();
                }
                std::thread::sleep(interval.max(Duration::from_millis(100)));
                last_commit = Instant::now();
                continue;
            }
        }
        let deadline = (last_commit + interval)
            .min(last_flush + FLUSH_INTERVAL)
            .max(now + Duration::from_millis(1));
        match reader.next(deadline) {
            Ok(Some(message)) => appender.accept(&SourceMessage {
                seq: message.seq,
                payload: &message.payload,
            })?,
            Ok(None) => {}
            Err(e) if e.is_transient() => {
                tracing::warn!("{source}: {e}; reconnecting");
                appender.commit()?;
                last_commit = Instant::now();
                let from_seq = appender.current.source_seq + 1;
                reader = reconnect(
                    source,
                    options.reconnect_limit_ms,
                    stop,
                    || StreamReader::open(&source.server, &source.name, from_seq, timeout),
                    NatsError::is_transient,
                )?;
                appender.report.reconnects += 1;
                if let Some(m) = &options.metrics {
                    m.reconnected();
                }
            }
            Err(e) => {
                appender.commit()?;
                return Err(e.into());
            }
        }
        if appender.uncommitted >= MAX_UNCOMMITTED_MESSAGES
            || (appender.uncommitted > 0 && now >= last_commit + interval)
        {
            appender.commit()?;
            last_commit = Instant::now();
        }
    }
    appender.commit()?;
    Ok(StreamIngestReport::merged(vec![(
        options.partition,
        appender.report,
    )]))
}

/// Connects again with `connect`, with exponential backoff (100 ms to
/// 5 s), for up to `limit_ms` while its failures are transient.
pub(super) fn reconnect<T, E: std::fmt::Display>(
    source: &StreamSource,
    limit_ms: u64,
    stop: &AtomicBool,
    mut connect: impl FnMut() -> Result<T, E>,
    is_transient: impl Fn(&E) -> bool,
) -> Result<T, StreamIngestError>
where
    StreamIngestError: From<E>,
{
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        std::thread::sleep(backoff);
        match connect() {
            Ok(connected) => return Ok(connected),
            Err(e) if is_transient(&e) && !stop.load(Ordering::Relaxed) => {
                let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                if waited_ms >= limit_ms {
                    return Err(StreamIngestError::ReconnectGaveUp {
                        waited_ms,
                        last: e.to_string(),
                    });
                }
                tracing::debug!("{source}: still unreachable: {e}");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
