//! One stream-fed partition's writing side: the log writer, the dead
//! letters and the committed `POSITION`, with the restart's matching of
//! records past the committed offset (the protocol is in the parent
//! module's doc). Source-agnostic: a source hands it messages with their
//! sequence numbers, in order.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use super::dead_letter::DeadLetters;
use super::message::MessageDecoder;
use super::options::{StreamIngestOptions, StreamIngestReport};
use super::position::SourcePosition;
use super::{StreamIngestError, POSITION_FILE_NAME};
use crate::event::{decode_record, LogRecord};
use crate::ingest::MANIFEST_FILE_NAME;
use crate::log::format::parse_segment_file_name;
use crate::log::{partition_dir, validate_topic, PartitionReader, PartitionWriter};
use crate::storage::durable::{create_dir_all_durably, write_file_atomically};
use crate::storage::IoError;

/// A message of a source: its sequence number (from 1, increasing) and
/// its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceMessage<'a> {
    /// Its sequence number.
    pub seq: u64,
    /// Its payload.
    pub payload: &'a [u8],
}

/// The bytes of a partition's segment files.
pub(super) fn partition_bytes(dir: &Path) -> u64 {
    crate::metrics::dir_usage(dir, |name| parse_segment_file_name(name).is_some()).1
}

/// The partition's writing side: log, dead letters, position.
pub(super) struct Appender {
    pub(super) dir: PathBuf,
    source_name: String,
    position_path: PathBuf,
    pub(super) writer: PartitionWriter,
    dead: DeadLetters,
    decoder: MessageDecoder,
    /// What is committed plus what was read since (its `log_next_offset`
    /// and `dead_letter_len_bytes` are set at commit).
    pub(super) current: SourcePosition,
    /// Records after the committed offset, from before this run, still to
    /// be matched (event records only: markers need no match).
    tail: VecDeque<(u64, Vec<u8>)>,
    /// The offset after the last tail record matched.
    matched_next_offset: u64,
    pub(super) uncommitted: u64,
    /// Whether sequence gaps are normal for the source (no warning).
    pub(super) gaps_expected: bool,
    pub(super) partition: u32,
    metrics: Option<std::sync::Arc<super::metrics::SourceMetrics>>,
    /// This run's figures, from the figures of earlier attempts of the same
    /// run (a pause for a full disk re-opens the appender).
    pub(super) report: StreamIngestReport,
    /// `report`'s message counts at the last commit.
    committed_counts: MessageCounts,
    _lock: File,
}

impl Appender {
    /// Opens partition `partition` of the options' topic for the source
    /// recorded as `source_id` in its `POSITION` (named `source_name` in
    /// errors and dead letters), with dead letters in `dead_letter_path`;
    /// its report goes on from `earlier` (the same run's earlier attempts).
    pub(super) fn open(
        log_dir: &Path,
        (source_id, source_name): (&str, String),
        options: &StreamIngestOptions,
        (partition, earlier): (u32, Option<&StreamIngestReport>),
        dead_letter_path: &Path,
    ) -> Result<Self, StreamIngestError> {
        validate_topic(&options.topic)?;
        let topic_dir = log_dir.join(&options.topic);
        if topic_dir.join(MANIFEST_FILE_NAME).exists() {
            return Err(StreamIngestError::FileTopic { dir: topic_dir });
        }
        let dir = partition_dir(log_dir, &options.topic, partition);
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
                source: source_id.to_owned(),
                ..SourcePosition::default()
            },
            Err(e) => return Err(IoError::at(&position_path)(e).into()),
        };
        if committed.source != source_id {
            return Err(StreamIngestError::OtherSource {
                dir,
                recorded: committed.source,
                given: source_id.to_owned(),
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
        let dead = DeadLetters::open(dead_letter_path, committed.dead_letter_len_bytes)?;
        let report = StreamIngestReport {
            source_seq: committed.source_seq,
            log_next_offset: committed.log_next_offset,
            partitions: Vec::new(),
            ..earlier.cloned().unwrap_or_default()
        };
        Ok(Self {
            source_name,
            position_path,
            writer,
            dead,
            decoder: MessageDecoder::new(options.format, options.schema),
            matched_next_offset: committed.log_next_offset,
            committed_counts: MessageCounts::of(&report),
            report,
            current: committed,
            tail,
            uncommitted: 0,
            gaps_expected: false,
            partition,
            metrics: options.metrics.clone(),
            dir,
            _lock: lock,
        })
    }

    /// Appends (or matches) the record of `message`, or dead-letters it;
    /// the event's time when it is in the log now.
    pub(super) fn accept(
        &mut self,
        message: &SourceMessage<'_>,
    ) -> Result<Option<u64>, StreamIngestError> {
        let last = self.current.source_seq;
        if message.seq <= last {
            return Ok(None);
        }
        if message.seq > last + 1 && last > 0 {
            // Kafka leaves gaps (transaction markers, compaction); a NATS
            // stream only when messages were removed before they were read.
            if !self.gaps_expected {
                tracing::warn!(
                    "{}: sequences {}..{} are not in the stream (removed before they were read)",
                    self.source_name,
                    last + 1,
                    message.seq - 1
                );
            }
            self.report.skipped_seqs += message.seq - last - 1;
        }
        let mut event_ts = None;
        match self.decoder.decode(message.payload) {
            Ok(record) => {
                if let Ok(LogRecord::Event(event)) = decode_record(record) {
                    event_ts = Some(event.ts);
                }
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
                    .write(&self.source_name, message.seq, &reason, message.payload)?;
                self.current.dead_letters += 1;
                self.report.dead_letters += 1;
            }
        }
        self.current.source_seq = message.seq;
        self.current.messages += 1;
        self.report.messages += 1;
        self.uncommitted += 1;
        Ok(event_ts)
    }

    /// Appends an idle marker at `watermark_ms` (decision 29), unless
    /// records from before a restart are still to be matched (a marker
    /// among them would be read before events older than its watermark).
    pub(super) fn append_idle_marker(
        &mut self,
        watermark_ms: u64,
    ) -> Result<(), StreamIngestError> {
        if self.tail.is_empty() {
            let mut payload = Vec::with_capacity(crate::event::IDLE_MARKER_LEN_BYTES);
            crate::event::encode_idle_marker(watermark_ms, &mut payload);
            self.writer.append(&payload)?;
            self.uncommitted += 1;
        }
        Ok(())
    }

    /// With the stream read up to `last_seq`, every tail record must have
    /// been matched.
    pub(super) fn check_tail_matched(&self, last_seq: u64) -> Result<(), StreamIngestError> {
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
    pub(super) fn commit(&mut self) -> Result<(), StreamIngestError> {
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
        self.committed_counts = MessageCounts::of(&self.report);
        if let Some(m) = &self.metrics {
            let r = &self.report;
            m.committed(
                self.partition,
                (r.messages, r.appended, r.matched, r.dead_letters),
                self.current.source_seq,
            );
        }
        Ok(())
    }
}

impl Appender {
    /// The report of what was committed: messages read after the last
    /// commit are read again by the next attempt (they are not counted
    /// twice); the reconnects and pauses stay counted.
    pub(super) fn into_committed_report(self) -> StreamIngestReport {
        let c = self.committed_counts;
        StreamIngestReport {
            messages: c.messages,
            appended: c.appended,
            matched: c.matched,
            dead_letters: c.dead_letters,
            skipped_seqs: c.skipped_seqs,
            ..self.report
        }
    }
}

/// A report's counts of messages (those a commit makes final).
#[derive(Clone, Copy, Debug, Default)]
struct MessageCounts {
    messages: u64,
    appended: u64,
    matched: u64,
    dead_letters: u64,
    skipped_seqs: u64,
}

impl MessageCounts {
    fn of(r: &StreamIngestReport) -> Self {
        Self {
            messages: r.messages,
            appended: r.appended,
            matched: r.matched,
            dead_letters: r.dead_letters,
            skipped_seqs: r.skipped_seqs,
        }
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
