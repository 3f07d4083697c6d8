//! Idempotent, atomic ingest of `ts,key,value` CSV files into the input
//! log: one file becomes one partition of a topic.
//!
//! # Idempotence
//! `<log_dir>/<topic>/MANIFEST` (see [`manifest`]) records each ingested
//! file's canonical path, content (size and CRC32C), partition and record
//! count. A file is identified by its canonical path (decision 23): a file
//! whose path is already there is skipped if its content is unchanged and
//! refused ([`IngestErrorKind::ChangedSinceIngest`]) if not; any other file
//! is a new partition, even with the same content as another (two files are
//! two partitions), and gets the next partition number (one more than the
//! largest in the manifest). Paths recorded by earlier versions, as given
//! and maybe relative, are resolved against the current directory.
//!
//! A new file is read once: the identity recorded is that of the bytes
//! parsed, and a file whose size or modification time differs after the
//! read from before it is refused ([`IngestErrorKind::FileChanged`]).
//!
//! # Atomicity
//! A file is written to `<topic>/<p>.tmp/` while every row is validated;
//! on any error the temporary directory is removed and the log is exactly
//! as before that file. On success the partition is fsynced, an `INGEST`
//! marker (the file's manifest entry) is written into it, the directory is
//! renamed to `<topic>/<p>` (and the topic directory fsynced), and only then
//! the manifest is replaced atomically. Files of one call are parsed and
//! written in parallel, one thread per core ([`parallel`]), each into its
//! own temporary partition, and committed in the order given: files before
//! a failing one stay ingested, the ones after it are not, and the error
//! says which.
//!
//! # Recovery (what a crash leaves behind)
//! Before ingesting, leftover `*.tmp` directories are removed (they never
//! became partitions), and a partition directory missing from the manifest
//! (a crash between its rename and the manifest update) is *adopted*: its
//! `INGEST` marker holds the entry the manifest update would have written,
//! and the partition is complete since it was fsynced before the rename.
//! A partition directory without a valid marker was not made by ingest and
//! is reported as an error rather than deleted. A topic directory is only
//! managed by ingest if it has a `MANIFEST` (written, empty, before the first
//! partition); ingest refuses to touch a topic that has partitions but no
//! manifest. Only one ingest may run on a topic at a time (not enforced).

pub mod idle;
pub mod manifest;
mod parallel;
mod plan;
pub mod stream;
pub mod tee;

use std::path::{Path, PathBuf};

use crate::csv_input::{CsvError, RowSchema};
use crate::log::{parse_partition_name, LogConfig, LogError};
use crate::storage::durable::{
    create_dir_all_durably, remove_dir_all_durably, write_file_atomically,
};
use manifest::{FileIdentity, Manifest, MAX_PATH_LEN_BYTES};
pub use plan::PlannedIngest;

/// File name of the manifest in the topic directory.
pub const MANIFEST_FILE_NAME: &str = "MANIFEST";
/// File name of the ingest marker in a partition directory.
pub const MARKER_FILE_NAME: &str = "INGEST";

/// What happened to one input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    /// The input file.
    pub path: PathBuf,
    /// The partition holding its records.
    pub partition: u32,
    /// Its number of records.
    pub records: u64,
    /// Whether it was skipped because this file (same canonical path, same
    /// content) had already been ingested (then `partition` and `records`
    /// are those of that earlier ingest).
    pub skipped: bool,
}

/// The result of [`ingest_files`]: one entry per input file, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// The files, in the order given.
    pub files: Vec<FileReport>,
}

/// An ingest that stopped: the files completed before the failure (they
/// stay ingested) and the cause.
#[derive(Debug, thiserror::Error)]
#[error("ingest stopped ({} earlier file(s) complete): {kind}", completed.files.len())]
pub struct IngestError {
    /// The files completed (or skipped) before the failure.
    pub completed: IngestReport,
    /// What went wrong.
    pub kind: IngestErrorKind,
}

/// The cause of an [`IngestError`].
#[derive(Debug, thiserror::Error)]
pub enum IngestErrorKind {
    /// A CSV error (file, line, reason); the file was not ingested.
    #[error(transparent)]
    Csv(#[from] CsvError),
    /// A log error.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Appending the row at `line` of `path` failed.
    #[error("{}:{line}: {source}", path.display())]
    Append {
        /// The input file.
        path: PathBuf,
        /// The row's line.
        line: u64,
        /// The log error.
        #[source]
        source: LogError,
    },
    /// Reading an input file or the topic directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest (or a partition's marker) does not decode.
    #[error("{}: corrupt at byte {byte_offset}: {reason}", path.display())]
    ManifestCorrupt {
        /// The manifest or marker file.
        path: PathBuf,
        /// Where the problem starts.
        byte_offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The input changed while it was being ingested.
    #[error("{}: the file changed while it was being ingested", path.display())]
    FileChanged {
        /// The input file.
        path: PathBuf,
    },
    /// The input was ingested before, and its content has changed since.
    #[error(
        "{}: already ingested into partition {partition} ({} bytes, CRC32C {:08x}) but now has other content ({} bytes, CRC32C {:08x}); the log keeps what was ingested: restore the file or use a new data directory",
        path.display(), ingested.size_bytes, ingested.content_crc32c, now.size_bytes, now.content_crc32c
    )]
    ChangedSinceIngest {
        /// The input file.
        path: PathBuf,
        /// The partition it was ingested into.
        partition: u32,
        /// Its content then.
        ingested: FileIdentity,
        /// Its content now.
        now: FileIdentity,
    },
    /// The input's canonical path cannot be recorded in the manifest.
    #[error("{}: the canonical path {canonical:?} is not UTF-8 or longer than {MAX_PATH_LEN_BYTES} bytes, and the manifest identifies input files by their path", path.display())]
    UnrecordablePath {
        /// The input file, as given.
        path: PathBuf,
        /// Its canonical path.
        canonical: PathBuf,
    },
    /// The topic has partitions but no manifest, so ingest did not make it.
    #[error("{}: the topic has partitions but no {MANIFEST_FILE_NAME}: not created by ingest, refusing to modify it", path.display())]
    UnmanagedTopic {
        /// The topic directory.
        path: PathBuf,
    },
    /// A partition directory that is neither in the manifest nor has a
    /// valid ingest marker.
    #[error("{}: partition directory not in the manifest and without a valid {MARKER_FILE_NAME} marker; remove it or move it away", path.display())]
    UnmanagedPartition {
        /// The partition directory.
        path: PathBuf,
    },
    /// The manifest lists a partition whose directory is missing.
    #[error("{}: listed in the manifest but missing", path.display())]
    MissingPartition {
        /// The partition directory.
        path: PathBuf,
    },
    /// No partition number is left.
    #[error("no free partition number left")]
    TooManyPartitions,
}

/// A durable file operation failed: a log error, as before the helpers
/// moved to [`crate::storage`].
impl From<crate::storage::IoError> for IngestErrorKind {
    fn from(e: crate::storage::IoError) -> Self {
        Self::Log(e.into())
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IngestErrorKind + '_ {
    move |source| IngestErrorKind::Io {
        path: path.to_owned(),
        source,
    }
}

/// Ingests `files` into `topic` under `log_dir`, one partition per file, in
/// order (see the module documentation for idempotence, atomicity and
/// recovery). Segment size and index interval come from `config`; while a
/// partition is written nothing is fsynced until it is complete.
pub fn ingest_files(
    log_dir: &Path,
    topic: &str,
    files: &[PathBuf],
    config: &LogConfig,
) -> Result<IngestReport, IngestError> {
    ingest_files_as(log_dir, topic, RowSchema::Generic, files, config)
}

/// As [`ingest_files`], for files of `schema`.
pub fn ingest_files_as(
    log_dir: &Path,
    topic: &str,
    schema: RowSchema,
    files: &[PathBuf],
    config: &LogConfig,
) -> Result<IngestReport, IngestError> {
    ingest_files_with_threads(
        log_dir,
        topic,
        schema,
        files,
        config,
        default_ingest_threads(),
    )
}

/// Threads that write partitions at once by default: one per core.
pub fn default_ingest_threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// As [`ingest_files_as`], with up to `threads` files parsed and written
/// at once (each into its own temporary partition); partitions are still
/// numbered, committed and reported in the order given.
pub fn ingest_files_with_threads(
    log_dir: &Path,
    topic: &str,
    schema: RowSchema,
    files: &[PathBuf],
    config: &LogConfig,
    threads: usize,
) -> Result<IngestReport, IngestError> {
    plan_ingest(log_dir, topic, schema, files, config)?.run(threads, None)
}

/// Plans ingesting `files` (rows of `schema`) into `topic` under `log_dir`,
/// as [`ingest_files_as`] does first: recovers what a crash left, decides
/// which files are skipped and which become which new partitions. Nothing
/// is written until [`PlannedIngest::run`].
pub fn plan_ingest(
    log_dir: &Path,
    topic: &str,
    schema: RowSchema,
    files: &[PathBuf],
    config: &LogConfig,
) -> Result<PlannedIngest, IngestError> {
    PlannedIngest::prepare(log_dir, topic, schema, files, config)
}

/// Where the file recorded as `recorded` in the manifest is now: the path
/// canonicalized, or made absolute if it no longer exists. This code records
/// canonical paths; earlier versions recorded the path as given, which may be
/// relative: it is taken relative to the current directory, as a rerun of
/// the same command in the same directory gives it.
fn resolve_recorded_path(recorded: &str) -> PathBuf {
    let path = Path::new(recorded);
    std::fs::canonicalize(path)
        .or_else(|_| std::path::absolute(path))
        .unwrap_or_else(|_| path.to_owned())
}

/// Reads the manifest, creating an empty one for a new (or empty) topic.
fn open_manifest(topic_dir: &Path) -> Result<Manifest, IngestErrorKind> {
    let path = topic_dir.join(MANIFEST_FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => decode_manifest(&path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_dir_all_durably(topic_dir)?;
            if has_partition_dirs(topic_dir)? {
                return Err(IngestErrorKind::UnmanagedTopic {
                    path: topic_dir.to_owned(),
                });
            }
            let manifest = Manifest::default();
            write_file_atomically(&path, &manifest.encode())?;
            Ok(manifest)
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn decode_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, IngestErrorKind> {
    Manifest::decode(bytes).map_err(|(byte_offset, reason)| IngestErrorKind::ManifestCorrupt {
        path: path.to_owned(),
        byte_offset,
        reason,
    })
}

fn has_partition_dirs(topic_dir: &Path) -> Result<bool, IngestErrorKind> {
    for entry in std::fs::read_dir(topic_dir).map_err(io_err(topic_dir))? {
        let entry = entry.map_err(io_err(topic_dir))?;
        if entry
            .file_name()
            .to_str()
            .and_then(parse_partition_name)
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes leftover temporary directories and adopts partitions renamed
/// into place just before a crash (see the module documentation).
fn recover(topic_dir: &Path, manifest: &mut Manifest) -> Result<(), IngestErrorKind> {
    let mut adopted = false;
    let mut names: Vec<_> = std::fs::read_dir(topic_dir)
        .map_err(io_err(topic_dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err(topic_dir))?;
    names.sort();
    for name in names {
        let Some(name) = name.to_str() else { continue };
        let path = topic_dir.join(name);
        if name
            .strip_suffix(".tmp")
            .and_then(parse_partition_name)
            .is_some()
            && path.is_dir()
        {
            tracing::warn!(dir = %path.display(), "removing an incomplete partition left by an interrupted ingest");
            remove_dir_all_durably(&path)?;
            continue;
        }
        let Some(p) = parse_partition_name(name) else {
            continue;
        };
        if manifest.partition(p).is_some() {
            continue;
        }
        let marker_path = path.join(MARKER_FILE_NAME);
        let bytes = std::fs::read(&marker_path).ok();
        if let Some(bytes) = bytes.as_deref().filter(|b| Manifest::is_newer_format(b)) {
            // Written by a newer weir: name it, rather than call the
            // partition unmanaged.
            decode_manifest(&marker_path, bytes)?;
        }
        let marker = bytes
            .and_then(|b| Manifest::decode(&b).ok())
            .filter(|m| m.entries.len() == 1 && m.entries[0].partition == p);
        let Some(mut marker) = marker else {
            return Err(IngestErrorKind::UnmanagedPartition { path });
        };
        let entry = marker.entries.pop().expect("one entry");
        tracing::warn!(
            dir = %path.display(), file = %entry.source_path, records = entry.records,
            "adopting a partition completed just before a crash"
        );
        manifest.entries.push(entry);
        adopted = true;
    }
    for e in &manifest.entries {
        let path = topic_dir.join(e.partition.to_string());
        if !path.is_dir() {
            return Err(IngestErrorKind::MissingPartition { path });
        }
    }
    if adopted {
        write_file_atomically(&topic_dir.join(MANIFEST_FILE_NAME), &manifest.encode())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
