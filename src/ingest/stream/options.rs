//! How a stream ingest is configured and what it reports, and what both
//! source loops share: the flush interval and reconnecting with backoff.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::message::MessageFormat;
use super::metrics::SourceMetrics;
use super::{StreamIngestError, StreamSource};
use crate::csv_input::RowSchema;
use crate::log::LogConfig;

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
    /// Bounds connecting (and, for NATS, every request).
    pub connect_timeout_ms: u64,
    /// Bounds each Kafka request once sent (Kafka clients'
    /// `request.timeout.ms`): a broker may take seconds to serve a fetch of
    /// a large backlog.
    pub request_timeout_ms: u64,
    /// Give up after failing to reconnect for this long.
    pub reconnect_limit_ms: u64,
    /// Where the committed figures go (a metrics endpoint), if anywhere.
    pub metrics: Option<Arc<SourceMetrics>>,
    /// A Kafka partition with nothing new for this long gets an idle
    /// marker (decision 29), so it does not hold back the windows of the
    /// others; `None`: never.
    pub idle_timeout_ms: Option<u64>,
}

impl StreamIngestOptions {
    /// The defaults for `topic` of `schema` under `data_dir`: dead letters
    /// in `data_dir/dead-letter/<topic>-source.csv`, commits every 100 ms,
    /// 5 s to connect, 30 s per Kafka request, 60 s to reconnect, no size
    /// limit, until stopped.
    pub fn new(topic: &str, schema: RowSchema, format: MessageFormat, data_dir: &Path) -> Self {
        Self {
            topic: topic.to_owned(),
            schema,
            format,
            partition: 0,
            log_config: LogConfig::default(),
            dead_letter_path: data_dir
                .join(super::dead_letter::DEAD_LETTER_DIR_NAME)
                .join(super::dead_letter::default_file_name(topic)),
            until_caught_up: false,
            max_log_bytes: None,
            commit_interval_ms: 100,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            reconnect_limit_ms: 60_000,
            metrics: None,
            idle_timeout_ms: None,
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
    /// Times reading paused: the log over `max_log_bytes`, or its disk full.
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

/// Fails with [`StreamIngestError::ReconnectGaveUp`] (and `last`) once
/// `limit_ms` have passed since `started`.
pub(super) fn give_up_after(
    started: Instant,
    limit_ms: u64,
    last: &impl std::fmt::Display,
) -> Result<(), StreamIngestError> {
    let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if waited_ms >= limit_ms {
        return Err(StreamIngestError::ReconnectGaveUp {
            waited_ms,
            last: last.to_string(),
        });
    }
    Ok(())
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
                give_up_after(started, limit_ms, &e)?;
                tracing::debug!("{source}: still unreachable: {e}");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}
