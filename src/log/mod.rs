//! The input log: a segmented, append-only, CRC32C-framed log with one
//! directory per (topic, partition), `<log_dir>/<topic>/<partition>/`.
//!
//! Offsets are record sequence numbers, from 0 in each partition. A partition
//! is a run of segment files `<base-offset as 20 digits>.seg`, each with a
//! sparse offset index `<base>.idx` that is only a hint (it is validated and
//! rebuilt from the data, never trusted over it). The byte layout is in
//! [`format`] and [`index`]; [`PartitionWriter`] appends (and repairs a torn
//! tail when it opens), [`PartitionReader`] reads from any offset and never
//! returns bytes whose checksum does not match.
//!
//! Only this module (and the checkpoint store) may call `fsync` or `rename`,
//! through [`crate::storage::durable`], as other modules that need durable
//! file operations do.

pub mod format;
pub mod index;
mod reader;
pub mod retention;
mod segment;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

pub use format::MAX_RECORD_SIZE_BYTES;

/// The log's directory inside a data dir (`<data-dir>/log`).
pub const LOG_DIR_NAME: &str = "log";
pub use reader::PartitionReader;
pub use segment::{scan_segment, SegmentScan};
pub use writer::PartitionWriter;

/// The largest accepted [`LogConfig::segment_size_bytes`]: byte positions in
/// the index are `u32`, so a segment (plus one maximal record) must stay
/// below 4 GiB.
pub const MAX_SEGMENT_SIZE_BYTES: u64 = 1 << 31;

/// How a [`PartitionWriter`] is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// A segment is rolled when the next append would make it larger than
    /// this; a single larger record goes alone in its own segment.
    pub segment_size_bytes: u64,
    /// An index entry is written for the first record that starts at least
    /// this many bytes after the previous entry (0: one entry per record).
    pub index_interval_bytes: u64,
    /// When appended data is made durable.
    pub fsync: FsyncPolicy,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_size_bytes: 64 << 20,
            index_interval_bytes: 4 << 10,
            fsync: FsyncPolicy::Interval { interval_ms: 1000 },
        }
    }
}

impl LogConfig {
    /// Checks the limits of the format.
    pub fn validate(&self) -> Result<(), LogError> {
        if self.segment_size_bytes == 0 || self.segment_size_bytes > MAX_SEGMENT_SIZE_BYTES {
            return Err(LogError::InvalidConfig {
                reason: format!(
                    "segment_size_bytes must be in 1..={MAX_SEGMENT_SIZE_BYTES}, got {}",
                    self.segment_size_bytes
                ),
            });
        }
        Ok(())
    }
}

/// When a [`PartitionWriter`] calls `fsync`.
///
/// Parsed from `always`, `never`, `interval` (1000 ms) or `interval:<ms>`
/// (an optional `ms` suffix is accepted, e.g. `interval:500ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// After every append (and on every segment roll).
    Always,
    /// On an append when at least `interval_ms` passed since the last sync,
    /// on segment roll, on [`PartitionWriter::sync`] and on drop.
    Interval {
        /// Minimum time between two syncs.
        interval_ms: u64,
    },
    /// Only on an explicit [`PartitionWriter::sync`]. A crash may then leave
    /// any segment, not only the last one, incomplete.
    Never,
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Always => f.write_str("always"),
            Self::Never => f.write_str("never"),
            Self::Interval { interval_ms } => write!(f, "interval:{interval_ms}ms"),
        }
    }
}

/// The error of parsing an [`FsyncPolicy`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fsync policy `{text}`: expected `always`, `never`, `interval` or `interval:<ms>`")]
pub struct ParseFsyncPolicyError {
    /// The text that did not parse.
    pub text: String,
}

impl FromStr for FsyncPolicy {
    type Err = ParseFsyncPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseFsyncPolicyError { text: s.to_owned() };
        match s {
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            "interval" => Ok(Self::Interval { interval_ms: 1000 }),
            _ => {
                let ms = s.strip_prefix("interval:").ok_or_else(err)?;
                let ms = ms.strip_suffix("ms").unwrap_or(ms);
                if ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err());
                }
                let interval_ms = ms.parse().map_err(|_| err())?;
                Ok(Self::Interval { interval_ms })
            }
        }
    }
}

/// Errors of the log. Each names the file (or directory) and, for data
/// errors, the byte offset in that file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O operation on `path` failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Data does not match its checksum or is otherwise not what the format
    /// allows. Never skipped.
    #[error("{}: corrupt at byte {byte_offset}: {reason}", path.display())]
    Corrupt {
        /// The segment (or index) file.
        path: PathBuf,
        /// Where in the file the bad frame or header starts.
        byte_offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A reader was asked for an offset the partition does not hold.
    #[error("{}: offset {requested} is out of range (the partition holds offsets {first}..{end})", dir.display())]
    OffsetOutOfRange {
        /// The partition directory.
        dir: PathBuf,
        /// The offset asked for.
        requested: u64,
        /// The first offset held.
        first: u64,
        /// One past the last offset currently held.
        end: u64,
    },
    /// A reader was asked for an offset before the first one the partition
    /// holds.
    #[error(
        "{}: offset {requested} is before the first offset {first} the partition holds \
         (earlier segments were deleted: by `--log-retention checkpointed`, or by hand)",
        dir.display()
    )]
    OffsetBeforeStart {
        /// The partition directory.
        dir: PathBuf,
        /// The offset asked for.
        requested: u64,
        /// The first offset held.
        first: u64,
    },
    /// A payload larger than [`MAX_RECORD_SIZE_BYTES`].
    #[error("record of {size_bytes} bytes is larger than the maximum of {max_bytes} bytes")]
    RecordTooLarge {
        /// The payload size.
        size_bytes: usize,
        /// The limit.
        max_bytes: usize,
    },
    /// A [`LogConfig`] outside the format's limits.
    #[error("invalid log configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// A topic name that is not a safe directory name.
    #[error("invalid topic name `{topic}`: {reason}")]
    InvalidTopic {
        /// The name.
        topic: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An earlier write of this writer failed; its file may hold a partial
    /// record, so it must be reopened (which repairs the tail).
    #[error("{}: the writer failed earlier and must be reopened", path.display())]
    WriterFailed {
        /// The segment being written.
        path: PathBuf,
    },
}

impl LogError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

impl From<crate::storage::IoError> for LogError {
    fn from(e: crate::storage::IoError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}

/// Checks that `topic` is a safe, non-empty directory name: ASCII letters,
/// digits, `_`, `-` and `.`, not starting with `.`, at most 200 bytes.
pub fn validate_topic(topic: &str) -> Result<(), LogError> {
    let bad = |reason| {
        Err(LogError::InvalidTopic {
            topic: topic.to_owned(),
            reason,
        })
    };
    if topic.is_empty() {
        return bad("empty");
    }
    if topic.len() > 200 {
        return bad("longer than 200 bytes");
    }
    if topic.starts_with('.') {
        return bad("starts with `.`");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        return bad("only ASCII letters, digits, `_`, `-` and `.` are allowed");
    }
    Ok(())
}

/// The directory of one partition: `<log_dir>/<topic>/<partition>`.
pub fn partition_dir(log_dir: &Path, topic: &str, partition: u32) -> PathBuf {
    log_dir.join(topic).join(partition.to_string())
}

/// Parses a directory name that is a partition number in canonical decimal
/// form (no sign, no leading zeros); anything else (`3.tmp`, `MANIFEST`) is
/// not a partition.
pub fn parse_partition_name(name: &str) -> Option<u32> {
    let p: u32 = name.parse().ok()?;
    (name.bytes().all(|b| b.is_ascii_digit()) && p.to_string() == name).then_some(p)
}

/// The partitions of `topic`, sorted. A topic directory that does not exist
/// has no partitions; temporary directories (`<p>.tmp`) and files are ignored.
pub fn list_partitions(log_dir: &Path, topic: &str) -> Result<Vec<u32>, LogError> {
    let topic_dir = log_dir.join(topic);
    let entries = match std::fs::read_dir(&topic_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LogError::io(&topic_dir)(e)),
    };
    let mut partitions = Vec::new();
    for entry in entries {
        let entry = entry.map_err(LogError::io(&topic_dir))?;
        let Some(p) = entry.file_name().to_str().and_then(parse_partition_name) else {
            continue;
        };
        let file_type = entry.file_type().map_err(LogError::io(entry.path()))?;
        if file_type.is_dir() {
            partitions.push(p);
        }
    }
    partitions.sort_unstable();
    Ok(partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_policy_parses_and_round_trips() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!("never".parse(), Ok(FsyncPolicy::Never));
        assert_eq!(
            "interval".parse(),
            Ok(FsyncPolicy::Interval { interval_ms: 1000 })
        );
        assert_eq!(
            "interval:250".parse(),
            Ok(FsyncPolicy::Interval { interval_ms: 250 })
        );
        assert_eq!(
            "interval:250ms".parse(),
            Ok(FsyncPolicy::Interval { interval_ms: 250 })
        );
        for bad in [
            "",
            "Always",
            "interval:",
            "interval:-1",
            "interval:1s",
            "interval:+5",
        ] {
            assert!(bad.parse::<FsyncPolicy>().is_err(), "{bad}");
        }
        for p in [
            FsyncPolicy::Always,
            FsyncPolicy::Never,
            FsyncPolicy::Interval { interval_ms: 7 },
        ] {
            assert_eq!(p.to_string().parse(), Ok(p));
        }
    }

    #[test]
    fn config_limits() {
        assert!(LogConfig::default().validate().is_ok());
        let mut c = LogConfig {
            segment_size_bytes: 0,
            ..LogConfig::default()
        };
        assert!(c.validate().is_err());
        c.segment_size_bytes = MAX_SEGMENT_SIZE_BYTES + 1;
        assert!(c.validate().is_err());
        c.segment_size_bytes = 1;
        c.index_interval_bytes = 0;
        assert!(c.validate().is_ok());
    }

    #[test]
    fn partition_names() {
        assert_eq!(parse_partition_name("0"), Some(0));
        assert_eq!(parse_partition_name("17"), Some(17));
        for bad in ["", "01", "+1", "-1", "1.tmp", "MANIFEST", "4294967296"] {
            assert_eq!(parse_partition_name(bad), None, "{bad}");
        }
        assert_eq!(
            partition_dir(Path::new("/d"), "t", 3),
            PathBuf::from("/d/t/3")
        );
    }

    #[test]
    fn list_partitions_sorted_ignoring_temp() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(list_partitions(tmp.path(), "t").unwrap().is_empty());
        for name in ["10", "2", "0", "3.tmp", "007"] {
            std::fs::create_dir_all(tmp.path().join("t").join(name)).unwrap();
        }
        std::fs::write(tmp.path().join("t").join("5"), b"a file").unwrap();
        assert_eq!(list_partitions(tmp.path(), "t").unwrap(), vec![0, 2, 10]);
    }

    #[test]
    fn topic_names() {
        assert!(validate_topic("events-1.v2_x").is_ok());
        for bad in ["", ".", "..", "a/b", ".hidden", "a b", "é"] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }
}
