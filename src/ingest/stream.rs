//! Continuous ingest from a stream source into a topic of the log:
//! `nats://HOST:PORT/STREAM` (a NATS JetStream stream) into partition 0,
//! `kafka://HOST:PORT/TOPIC` (a Kafka-protocol topic) into one partition
//! per topic partition. Each message is one row ([`message`]), appended in
//! source order; a malformed one goes to the dead-letter file
//! ([`dead_letter`]) with its sequence and never stops the source. Kafka
//! offsets are sequences from 1 here (offset + 1), so 0 means "none".
//!
//! # Exactly once across `kill -9`
//! Every commit (at most every `commit_interval_ms`, and at least every
//! [`MAX_UNCOMMITTED_MESSAGES`]) makes the appended records and dead
//! letters durable and then replaces the partition's `POSITION`
//! ([`position`]) with the log offset, the last stream sequence and the
//! dead-letter length they reach. A crash between the two leaves records
//! after the committed offset (a reader may already have read them), so a
//! restart does not cut them: it reads the stream again from the committed
//! sequence and *matches* those records, in order, against the messages'
//! records, appending only once past them (the decoding is deterministic,
//! so they are equal unless the stream or the log was changed behind its
//! back, which is refused with the offset and sequence). Dead-letter rows
//! after the committed length are cut and written again.
//!
//! # A full disk
//! When the log's disk (or quota) is full, the source pauses: what was
//! committed stays, the appenders are dropped, and after a backoff (1 s,
//! doubling to 30 s) the partitions are opened again as after a crash
//! (a torn record cut, the uncommitted records matched), until there is
//! room. Nothing is dropped; a stop ends the pause.
//!
//! # Topics
//! A partition has one source (its `POSITION` names it); a topic fed by
//! files (`MANIFEST`) is refused, as `weir ingest FILES` refuses a topic
//! it did not make. One process per partition: a lock file
//! (`POSITION.lock`) refuses a second one.

mod appender;
pub mod dead_letter;
mod kafka_loop;
pub mod message;
pub mod metrics;
mod nats_loop;
mod options;
pub mod position;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::kafka::KafkaError;
use crate::log::LogError;
use crate::nats::NatsError;
use crate::storage::IoError;

pub use options::{StreamIngestOptions, StreamIngestReport};

/// File name of a stream-fed partition's committed position.
pub const POSITION_FILE_NAME: &str = "POSITION";
/// The most messages read between two commits: bounds the records a
/// restart must match.
pub const MAX_UNCOMMITTED_MESSAGES: u64 = 1 << 16;
/// The first wait before trying again on a full disk; it doubles up to
/// [`DISK_FULL_MAX_BACKOFF`], and starts over once an attempt commits.
const DISK_FULL_FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between two attempts on a full disk.
const DISK_FULL_MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The kind of a stream source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A NATS JetStream stream: one log partition.
    Nats,
    /// A Kafka-protocol topic: one log partition per topic partition.
    Kafka,
}

/// A stream to ingest, from its URL: `nats://HOST:PORT/STREAM` or
/// `kafka://HOST:PORT/TOPIC`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamSource {
    /// NATS or Kafka.
    pub kind: SourceKind,
    /// `host:port` of the server (the broker, for Kafka).
    pub server: String,
    /// The JetStream stream, or the Kafka topic.
    pub name: String,
}

impl fmt::Display for StreamSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            SourceKind::Nats => "nats",
            SourceKind::Kafka => "kafka",
        };
        write!(f, "{scheme}://{}/{}", self.server, self.name)
    }
}

impl FromStr for StreamSource {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        const FORMS: &str = "nats://HOST:PORT/STREAM or kafka://HOST:PORT/TOPIC";
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!("{url:?}: expected {FORMS}"));
        };
        let kind = match scheme {
            "nats" => SourceKind::Nats,
            "kafka" => SourceKind::Kafka,
            _ => {
                return Err(format!(
                    "{url:?}: {scheme}:// sources are not supported; {FORMS} are"
                ))
            }
        };
        let Some((server, name)) = rest.split_once('/') else {
            return Err(format!("{url:?}: no stream or topic: expected {FORMS}"));
        };
        let Some((host, port)) = server.rsplit_once(':') else {
            return Err(format!("{url:?}: no port: expected {FORMS}"));
        };
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!("{url:?}: bad HOST:PORT {server:?}"));
        }
        let valid = match kind {
            // JetStream: no `.`, `*`, `>`, path separators or spaces.
            SourceKind::Nats => {
                name.len() <= 255
                    && !name
                        .chars()
                        .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c))
            }
            // Kafka: letters, digits, `.`, `_`, `-`, at most 249.
            SourceKind::Kafka => {
                name.len() <= 249
                    && name != "."
                    && name != ".."
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            }
        };
        if name.is_empty() || !valid {
            return Err(format!("{url:?}: bad stream or topic name {name:?}"));
        }
        Ok(Self {
            kind,
            server: server.to_owned(),
            name: name.to_owned(),
        })
    }
}

/// Reads `source` into its partitions until `stop` is set, the source is
/// caught up (with `until_caught_up`) or an error that neither reconnecting
/// nor waiting for disk space cures. The first connection's failure is
/// returned at once; a full disk pauses the source (see the module doc).
pub fn ingest_stream(
    log_dir: &Path,
    source: &StreamSource,
    options: &StreamIngestOptions,
    stop: &AtomicBool,
) -> Result<StreamIngestReport, StreamIngestError> {
    let mut reports: BTreeMap<u32, StreamIngestReport> = BTreeMap::new();
    let mut backoff = DISK_FULL_FIRST_BACKOFF;
    loop {
        let mut opened = Vec::new();
        let attempt = (&mut opened, &reports);
        let result = match source.kind {
            SourceKind::Nats => nats_loop::ingest_nats(log_dir, source, options, stop, attempt),
            SourceKind::Kafka => kafka_loop::ingest_kafka(log_dir, source, options, stop, attempt),
        };
        let committed_before = committed_messages(&reports);
        for appender in opened {
            reports.insert(appender.partition, appender.into_committed_report());
        }
        match result {
            Ok(()) => return Ok(StreamIngestReport::merged(reports.into_iter().collect())),
            Err(e) if e.is_storage_full() && !stop.load(Ordering::Relaxed) => {
                if committed_messages(&reports) > committed_before {
                    backoff = DISK_FULL_FIRST_BACKOFF;
                }
                tracing::warn!(
                    "{source}: paused: the log's disk is full ({e}); nothing read is lost; \
                     trying again in {} s",
                    backoff.as_secs()
                );
                if let Some(first) = reports.values_mut().next() {
                    first.pauses += 1;
                }
                if let Some(m) = &options.metrics {
                    m.paused();
                }
                if !sleep_unless_stopped(backoff, stop) {
                    return Ok(StreamIngestReport::merged(reports.into_iter().collect()));
                }
                backoff = (backoff * 2).min(DISK_FULL_MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

fn committed_messages(reports: &BTreeMap<u32, StreamIngestReport>) -> u64 {
    reports.values().map(|r| r.messages).sum()
}

/// Sleeps `wait`, in steps of at most 100 ms; `false` if `stop` was set.
fn sleep_unless_stopped(wait: Duration, stop: &AtomicBool) -> bool {
    let until = Instant::now() + wait;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

/// Why a stream ingest stopped. What was committed before stays committed.
#[derive(Debug, thiserror::Error)]
pub enum StreamIngestError {
    /// The NATS server, the stream or the connection.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The Kafka broker, the topic or the connection.
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A side file (position, dead letters, lock).
    #[error(transparent)]
    Io(#[from] IoError),
    /// The `POSITION` file does not decode.
    #[error("{}: corrupt at byte {byte_offset}: {reason}", path.display())]
    PositionCorrupt {
        /// The file.
        path: PathBuf,
        /// Where the problem is.
        byte_offset: u64,
        /// What it is.
        reason: String,
    },
    /// The partition is fed by another stream.
    #[error("{}: this partition is fed by stream {recorded:?}, not {given:?}; use another --topic or data directory", dir.display())]
    OtherSource {
        /// The partition directory.
        dir: PathBuf,
        /// The stream in its `POSITION`.
        recorded: String,
        /// The stream given.
        given: String,
    },
    /// The topic holds ingested files.
    #[error("{}: the topic holds ingested files (it has a MANIFEST); a stream goes into a topic of its own", dir.display())]
    FileTopic {
        /// The topic directory.
        dir: PathBuf,
    },
    /// Another process ingests into the partition.
    #[error("{}: another process is ingesting into this partition", path.display())]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The log holds fewer records than were committed.
    #[error("{}: the log ends at offset {log_end} but offsets up to {committed} were committed: committed records are missing", dir.display())]
    LogBehindPosition {
        /// The partition directory.
        dir: PathBuf,
        /// Where the log ends.
        log_end: u64,
        /// The committed offset.
        committed: u64,
    },
    /// A record after the committed offset is not the record of the message
    /// read again at its place.
    #[error("{}: the record at offset {offset} is not the one of message {seq} of {source_name}: the stream or the log changed; refusing to append", dir.display())]
    TailMismatch {
        /// The partition directory.
        dir: PathBuf,
        /// The record's offset.
        offset: u64,
        /// The message's sequence.
        seq: u64,
        /// The source.
        source_name: String,
    },
    /// Records after the committed offset that the stream no longer
    /// accounts for.
    #[error("{}: {records} uncommitted record(s) from offset {offset} are not matched by the stream's messages up to its last sequence {last_seq}", dir.display())]
    UnmatchedTail {
        /// The partition directory.
        dir: PathBuf,
        /// The first unmatched record.
        offset: u64,
        /// How many are left.
        records: usize,
        /// The stream's last sequence.
        last_seq: u64,
    },
    /// The source could not be reached again in time.
    #[error("gave up reconnecting after {waited_ms} ms: {last}")]
    ReconnectGaveUp {
        /// How long it tried.
        waited_ms: u64,
        /// The last failure.
        last: String,
    },
}

impl StreamIngestError {
    /// Whether the error is the log's disk or quota being full (the source
    /// pauses and tries again).
    pub fn is_storage_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                );
            }
            cause = e.source();
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::{StreamIngestError, StreamSource};
    use crate::log::LogError;
    use crate::storage::IoError;

    #[test]
    fn full_disks_and_quotas_are_told_from_other_errors() {
        let log = |errno| {
            StreamIngestError::Log(LogError::Io {
                path: "seg".into(),
                source: std::io::Error::from_raw_os_error(errno),
            })
        };
        let side = |errno| {
            StreamIngestError::Io(IoError {
                path: "POSITION.tmp".into(),
                source: std::io::Error::from_raw_os_error(errno),
            })
        };
        // ENOSPC, EDQUOT (Linux)
        for errno in [28, 122] {
            assert!(log(errno).is_storage_full(), "{errno}");
            assert!(side(errno).is_storage_full(), "{errno}");
        }
        // EACCES, EIO, EROFS
        for errno in [13, 5, 30] {
            assert!(!log(errno).is_storage_full(), "{errno}");
            assert!(!side(errno).is_storage_full(), "{errno}");
        }
        let gave_up = StreamIngestError::ReconnectGaveUp {
            waited_ms: 1,
            last: "No space left on device".into(),
        };
        assert!(!gave_up.is_storage_full());
    }

    #[test]
    fn source_urls() {
        let s: StreamSource = "nats://127.0.0.1:4222/ORDERS".parse().unwrap();
        assert_eq!(
            (s.server.as_str(), s.name.as_str()),
            ("127.0.0.1:4222", "ORDERS")
        );
        assert_eq!(s.to_string(), "nats://127.0.0.1:4222/ORDERS");
        let k: StreamSource = "kafka://localhost:9092/bids.v1".parse().unwrap();
        assert_eq!(
            (k.kind, k.name.as_str()),
            (super::SourceKind::Kafka, "bids.v1")
        );
        for bad in [
            "127.0.0.1:4222/S",
            "http://127.0.0.1:9092/t",
            "kafka://h:1/a b",
            "kafka://h:1/a*b",
            "nats://127.0.0.1:4222",
            "nats://127.0.0.1/S",
            "nats://127.0.0.1:99999/S",
            "nats://:4222/S",
            "nats://h:1/",
            "nats://h:1/a.b",
            "nats://h:1/a b",
        ] {
            assert!(bad.parse::<StreamSource>().is_err(), "{bad}");
        }
    }
}
