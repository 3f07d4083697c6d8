//! The loop of a stream ingest: read, decode, append or match, commit;
//! reconnect with backoff when the server goes away; pause while the log is
//! over its size limit. The protocol is in the parent module's doc.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::dead_letter::DeadLetters;
use super::message::{MessageDecoder, MessageFormat};
use super::position::SourcePosition;
use super::{StreamIngestError, StreamSource, MAX_UNCOMMITTED_MESSAGES, POSITION_FILE_NAME};
use crate::csv_input::RowSchema;
use crate::event::{decode_record, LogRecord};
use crate::ingest::MANIFEST_FILE_NAME;
use crate::log::{partition_dir, validate_topic, LogConfig, PartitionReader, PartitionWriter};
use crate::nats::jetstream::{Delivered, StreamReader};
use crate::storage::durable::{create_dir_all_durably, write_file_atomically};
use crate::storage::IoError;

/// How often appended records are handed to the file system, where readers
/// (a tailing `weir run`) see them; durable only at the next commit.
const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

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
}

/// Reads `source` into its partition until `stop` is set, the stream is
/// caught up (with `until_caught_up`) or an error that reconnecting does not
/// cure. The first connection's failure is returned at once.
pub fn ingest_stream(
    log_dir: &Path,
    source: &StreamSource,
    options: &StreamIngestOptions,
    stop: &AtomicBool,
) -> Result<StreamIngestReport, StreamIngestError> {
    let mut appender = Appender::open(log_dir, source, options)?;
    let timeout = Duration::from_millis(options.connect_timeout_ms.max(1));
    let start_seq = appender.current.source_seq + 1;
    let mut reader = StreamReader::open(&source.server, &source.stream, start_seq, timeout)?;
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
                std::thread::sleep(interval.max(Duration::from_millis(100)));
                last_commit = Instant::now();
                continue;
            }
        }
        let deadline = (last_commit + interval)
            .min(last_flush + FLUSH_INTERVAL)
            .max(now + Duration::from_millis(1));
        match reader.next(deadline) {
            Ok(Some(message)) => appender.accept(&message)?,
            Ok(None) => {}
            Err(e) if e.is_transient() => {
                tracing::warn!("{source}: {e}; reconnecting");
                appender.commit()?;
                last_commit = Instant::now();
                let from_seq = appender.current.source_seq + 1;
                reader = reconnect(source, from_seq, timeout, options.reconnect_limit_ms, stop)?;
                appender.report.reconnects += 1;
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
    Ok(appender.report)
}

/// Connects again, with exponential backoff (100 ms to 5 s), for up to
/// `limit_ms`.
fn reconnect(
    source: &StreamSource,
    from_seq: u64,
    timeout: Duration,
    limit_ms: u64,
    stop: &AtomicBool,
) -> Result<StreamReader, StreamIngestError> {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(100);
    loop {
        std::thread::sleep(backoff);
        match StreamReader::open(&source.server, &source.stream, from_seq, timeout) {
            Ok(reader) => return Ok(reader),
            Err(e) if e.is_transient() && !stop.load(Ordering::Relaxed) => {
                let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
                if waited_ms >= limit_ms {
                    return Err(StreamIngestError::ReconnectGaveUp { waited_ms, last: e });
                }
                tracing::debug!("{source}: still unreachable: {e}");
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The bytes of a partition's segment files.
fn partition_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The partition's writing side: log, dead letters, position.
struct Appender {
    dir: PathBuf,
    source_name: String,
    position_path: PathBuf,
    writer: PartitionWriter,
    dead: DeadLetters,
    decoder: MessageDecoder,
    /// What is committed plus what was read since (its `log_next_offset`
    /// and `dead_letter_len_bytes` are set at commit).
    current: SourcePosition,
    /// Records after the committed offset, from before this run, still to
    /// be matched (event records only: markers need no match).
    tail: VecDeque<(u64, Vec<u8>)>,
    /// The offset after the last tail record matched.
    matched_next_offset: u64,
    uncommitted: u64,
    report: StreamIngestReport,
    _lock: File,
}

impl Appender {
    fn open(
        log_dir: &Path,
        source: &StreamSource,
        options: &StreamIngestOptions,
    ) -> Result<Self, StreamIngestError> {
        validate_topic(&options.topic)?;
        let topic_dir = log_dir.join(&options.topic);
        if topic_dir.join(MANIFEST_FILE_NAME).exists() {
            return Err(StreamIngestError::FileTopic { dir: topic_dir });
        }
        let dir = partition_dir(log_dir, &options.topic, options.partition);
        create_dir_all_durably(&dir)?;
        let lock_path = dir.join(format!("{POSITION_FILE_NAME}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(IoError::at(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(StreamIngestError::Locked { path: lock_path });
        }
        let position_path = dir.join(POSITION_FILE_NAME);
        let committed = match std::fs::read(&position_path) {
            Ok(bytes) => SourcePosition::decode(&bytes).map_err(|(byte_offset, reason)| {
                StreamIngestError::PositionCorrupt {
                    path: position_path.clone(),
                    byte_offset,
                    reason,
                }
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SourcePosition {
                source: source.stream.clone(),
                ..SourcePosition::default()
            },
            Err(e) => return Err(IoError::at(&position_path)(e).into()),
        };
        if committed.source != source.stream {
            return Err(StreamIngestError::OtherSource {
                dir,
                recorded: committed.source,
                given: source.stream.clone(),
            });
        }
        let writer = PartitionWriter::open(&dir, options.log_config)?;
        let log_end = writer.next_offset();
        if log_end < committed.log_next_offset {
            return Err(StreamIngestError::LogBehindPosition {
                dir,
                log_end,
                committed: committed.log_next_offset,
            });
        }
        let tail = read_tail(&dir, committed.log_next_offset, log_end)?;
        if !tail.is_empty() {
            tracing::info!(
                "{}: {} record(s) after the committed offset {}: matching them against the stream",
                dir.display(),
                tail.len(),
                committed.log_next_offset
            );
        }
        let dead = DeadLetters::open(&options.dead_letter_path, committed.dead_letter_len_bytes)?;
        Ok(Self {
            source_name: source.to_string(),
            position_path,
            writer,
            dead,
            decoder: MessageDecoder::new(options.format, options.schema),
            matched_next_offset: committed.log_next_offset,
            report: StreamIngestReport {
                source_seq: committed.source_seq,
                log_next_offset: committed.log_next_offset,
                ..StreamIngestReport::default()
            },
            current: committed,
            tail,
            uncommitted: 0,
            dir,
            _lock: lock,
        })
    }

    fn accept(&mut self, message: &Delivered) -> Result<(), StreamIngestError> {
        let last = self.current.source_seq;
        if message.seq <= last {
            return Ok(());
        }
        if message.seq > last + 1 && last > 0 {
            tracing::warn!(
                "{}: sequences {}..{} are not in the stream (removed before they were read)",
                self.source_name,
                last + 1,
                message.seq - 1
            );
            self.report.skipped_seqs += message.seq - last - 1;
        }
        match self.decoder.decode(&message.payload) {
            Ok(record) => {
                if let Some((offset, expected)) = self.tail.front() {
                    if expected.as_slice() != record {
                        return Err(StreamIngestError::TailMismatch {
                            dir: self.dir.clone(),
                            offset: *offset,
                            seq: message.seq,
                            source_name: self.source_name.clone(),
                        });
                    }
                    self.matched_next_offset = offset + 1;
                    self.tail.pop_front();
                    self.report.matched += 1;
                } else {
                    self.writer.append(record)?;
                    self.report.appended += 1;
                }
            }
            Err(reason) => {
                self.dead
                    .write(&self.source_name, message.seq, &reason, &message.payload)?;
                self.current.dead_letters += 1;
                self.report.dead_letters += 1;
            }
        }
        self.current.source_seq = message.seq;
        self.current.messages += 1;
        self.report.messages += 1;
        self.uncommitted += 1;
        Ok(())
    }

    /// With the stream read up to `last_seq`, every tail record must have
    /// been matched.
    fn check_tail_matched(&self, last_seq: u64) -> Result<(), StreamIngestError> {
        match self.tail.front() {
            None => Ok(()),
            Some((offset, _)) => Err(StreamIngestError::UnmatchedTail {
                dir: self.dir.clone(),
                offset: *offset,
                records: self.tail.len(),
                last_seq,
            }),
        }
    }

    /// Makes what was read durable and then records it in `POSITION`.
    fn commit(&mut self) -> Result<(), StreamIngestError> {
        if self.uncommitted == 0 {
            return Ok(());
        }
        self.dead.sync()?;
        self.writer.sync()?;
        self.current.log_next_offset = if self.tail.is_empty() {
            self.writer.next_offset()
        } else {
            self.matched_next_offset
        };
        self.current.dead_letter_len_bytes = self.dead.len_bytes();
        write_file_atomically(&self.position_path, &self.current.encode())?;
        self.uncommitted = 0;
        self.report.source_seq = self.current.source_seq;
        self.report.log_next_offset = self.current.log_next_offset;
        Ok(())
    }
}

/// The event records of `dir` in `[from, end)`, with their offsets.
fn read_tail(
    dir: &Path,
    from: u64,
    end: u64,
) -> Result<VecDeque<(u64, Vec<u8>)>, StreamIngestError> {
    let mut tail = VecDeque::new();
    if from == end {
        return Ok(tail);
    }
    let mut reader = PartitionReader::open(dir, from)?;
    while let Some((offset, payload)) = reader.next()? {
        if offset >= end {
            break;
        }
        if let Ok(LogRecord::Event(_)) = decode_record(payload) {
            tail.push_back((offset, payload.to_vec()));
        }
    }
    Ok(tail)
}
