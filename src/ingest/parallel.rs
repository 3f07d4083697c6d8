//! Writing new partitions, several files at once: each file is parsed and
//! appended by one thread into its own temporary partition directory
//! (`<topic>/<p>.tmp`), checked and fsynced there with its marker; the
//! caller then commits them (rename, manifest) in the order given.
//!
//! Threads take the files in order from a shared counter, and the caller
//! takes their results in order as they are written ([`Writing::wait`]), so
//! a file is committed as soon as it and every file before it are written.
//! Once a file fails, no thread starts a later one (their work would be
//! discarded: the files after a failing one are not ingested), and the
//! temporary directories of the later ones already written are removed by
//! [`discard`] once the threads are done.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use super::manifest::{FileIdentity, Manifest, ManifestEntry};
use super::tee::{IngestTees, RecordTee};
use super::{io_err, IngestErrorKind, MARKER_FILE_NAME};
use crate::csv_input::{CsvReader, RowSchema};
use crate::event::encode_event;
use crate::log::{FsyncPolicy, LogConfig, PartitionWriter};
use crate::storage::durable::{remove_dir_all_durably, write_file_atomically};

/// Bytes appended between two early writebacks of a partition being written.
const WRITEBACK_STEP_BYTES: u64 = 8 << 20;

/// A file to write into a new partition.
pub(super) struct PartitionJob {
    /// The input file, as given.
    pub(super) path: PathBuf,
    /// The path its manifest entry records (its canonical path).
    pub(super) recorded: String,
    /// Its rows' format.
    pub(super) schema: RowSchema,
    /// The partition it becomes.
    pub(super) partition: u32,
}

/// The temporary directory partition `partition` is written into.
pub(super) fn tmp_dir(topic_dir: &Path, partition: u32) -> PathBuf {
    topic_dir.join(format!("{partition}.tmp"))
}

/// Jobs written by several threads, their results taken in order.
pub(super) struct Writing<'a> {
    topic_dir: &'a Path,
    jobs: &'a [&'a PartitionJob],
    config: &'a LogConfig,
    tees: Option<&'a dyn IngestTees>,
    results: Mutex<Vec<Option<Result<ManifestEntry, IngestErrorKind>>>>,
    written: Condvar,
    next: AtomicUsize,
    /// No job after this one is started (a failure, or a commit that
    /// failed).
    last_to_start: AtomicUsize,
}

impl<'a> Writing<'a> {
    pub(super) fn new(
        topic_dir: &'a Path,
        jobs: &'a [&'a PartitionJob],
        config: &'a LogConfig,
        tees: Option<&'a dyn IngestTees>,
    ) -> Self {
        Writing {
            topic_dir,
            jobs,
            config,
            tees,
            results: Mutex::new(jobs.iter().map(|_| None).collect()),
            written: Condvar::new(),
            next: AtomicUsize::new(0),
            last_to_start: AtomicUsize::new(usize::MAX),
        }
    }

    /// A writer thread's loop: takes the next job until none is left or
    /// one failed.
    pub(super) fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.jobs.len() {
                return;
            }
            let job = self.jobs[i];
            let tee = self.tees.and_then(|t| t.writer(job.partition));
            if i > self.last_to_start.load(Ordering::Relaxed) {
                // Not started after an earlier file failed: its tee goes
                // now, so what waits for its records learns at once that
                // none come (not once the files started before are done,
                // which may wait for that very reader).
                drop(tee);
                continue;
            }
            // A panic would leave `wait` waiting for this result for ever:
            // it becomes this file's error instead.
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                write_one(self.topic_dir, job, self.config, tee)
            }))
            .unwrap_or_else(|panic| {
                let message =
                    crate::panic_message::panic_message(panic.as_ref()).unwrap_or_default();
                Err(IngestErrorKind::Io {
                    path: job.path.clone(),
                    source: std::io::Error::other(format!(
                        "the thread writing it panicked: {message}"
                    )),
                })
            });
            if result.is_err() {
                self.stop_after(i);
            }
            self.results.lock().expect("ingest results poisoned")[i] = Some(result);
            self.written.notify_all();
        }
    }

    /// Job `i`'s result, once written (every job before it must have
    /// succeeded: then it is started).
    pub(super) fn wait(&self, i: usize) -> Result<ManifestEntry, IngestErrorKind> {
        let mut results = self.results.lock().expect("ingest results poisoned");
        loop {
            if let Some(result) = results[i].take() {
                return result;
            }
            results = self.written.wait(results).expect("ingest results poisoned");
        }
    }

    /// Starts no job after `i`.
    pub(super) fn stop_after(&self, i: usize) {
        self.last_to_start.fetch_min(i, Ordering::Relaxed);
    }
}

/// Removes the temporary directories of `partitions` (those of the files
/// after a failed one), written or not.
pub(super) fn discard(topic_dir: &Path, partitions: impl IntoIterator<Item = u32>) {
    for partition in partitions {
        let tmp = tmp_dir(topic_dir, partition);
        if let Err(e) = remove_dir_all_durably(&tmp) {
            tracing::warn!(dir = %tmp.display(), error = %e, "cannot remove a temporary partition");
        }
    }
}

/// One job's temporary partition, complete with its marker (removed again
/// on failure).
fn write_one(
    topic_dir: &Path,
    job: &PartitionJob,
    config: &LogConfig,
    tee: Option<Box<dyn RecordTee>>,
) -> Result<ManifestEntry, IngestErrorKind> {
    let tmp = tmp_dir(topic_dir, job.partition);
    remove_dir_all_durably(&tmp)?;
    let written = FileStamp::of(&job.path)
        .map_err(io_err(&job.path))
        .and_then(|before| write_partition(&tmp, job, before, config, tee));
    if written.is_err() {
        if let Err(cleanup) = remove_dir_all_durably(&tmp) {
            tracing::warn!(dir = %tmp.display(), error = %cleanup, "cannot remove the temporary partition");
        }
    }
    written
}

/// What says a file was not modified while it was read: its size and
/// modification time before and after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileStamp {
    pub(super) size_bytes: u64,
    pub(super) modified: Option<std::time::SystemTime>,
}

impl FileStamp {
    pub(super) fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(FileStamp {
            size_bytes: meta.len(),
            modified: meta.modified().ok(),
        })
    }
}

/// Writes `job`'s file into `tmp`: its identity (size, CRC32C) is that of
/// the bytes parsed, in one pass, and the file must still have the stamp
/// `before` (taken before it was opened) once they are all read. Each
/// record appended is also handed to `tee`, if any, until it declines.
pub(super) fn write_partition(
    tmp: &Path,
    job: &PartitionJob,
    before: FileStamp,
    config: &LogConfig,
    mut tee: Option<Box<dyn RecordTee>>,
) -> Result<ManifestEntry, IngestErrorKind> {
    let path = job.path.as_path();
    let mut csv = CsvReader::open_as(path, job.schema)?;
    let config = LogConfig {
        fsync: FsyncPolicy::Never,
        ..*config
    };
    let mut writer = PartitionWriter::open(tmp, config)?;
    let mut payload = Vec::with_capacity(64);
    // The disk writes what was appended while the parsing goes on: a
    // thread fsyncs the segment every WRITEBACK_STEP_BYTES, so the final
    // fsync has little left to write (decision 67). Its handle shares the
    // writer's open file, and Linux reports a write error once per open
    // file: an error it sees fails the file here, as the final one would.
    let (writeback, segments) = std::sync::mpsc::sync_channel::<std::fs::File>(1);
    let syncing = std::thread::Builder::new()
        .name("weir-writeback".into())
        .spawn(move || -> std::io::Result<()> {
            for segment in segments {
                segment.sync_data()?;
            }
            Ok(())
        })
        .map_err(io_err(tmp))?;
    let parsed = (|| {
        let mut next_writeback = WRITEBACK_STEP_BYTES;
        let mut appended_bytes = 0u64;
        while let Some(ev) = csv.next_record()? {
            payload.clear();
            encode_event(ev.ts, ev.key, ev.value, &mut payload);
            let offset = match writer.append(&payload) {
                Ok(offset) => offset,
                Err(source) => {
                    return Err(IngestErrorKind::Append {
                        path: path.to_owned(),
                        line: csv.line(),
                        source,
                    })
                }
            };
            if tee.as_mut().is_some_and(|t| !t.record(offset, ev)) {
                tee = None;
            }
            appended_bytes += payload.len() as u64;
            if appended_bytes >= next_writeback {
                next_writeback = appended_bytes + WRITEBACK_STEP_BYTES;
                if let Ok(segment) = writer.segment_file() {
                    // Busy with the last one (or failed): skip this step.
                    let _ = writeback.try_send(segment);
                }
            }
        }
        Ok(())
    })();
    drop(writeback);
    let synced = syncing
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the writeback thread panicked")));
    parsed?;
    synced.map_err(io_err(tmp))?;
    let after = FileStamp::of(path).map_err(io_err(path))?;
    if after != before || csv.bytes_read() != before.size_bytes {
        return Err(IngestErrorKind::FileChanged {
            path: path.to_owned(),
        });
    }
    let identity = FileIdentity {
        size_bytes: csv.bytes_read(),
        content_crc32c: csv.content_crc32c(),
    };
    writer.sync()?;
    let entry = ManifestEntry {
        partition: job.partition,
        records: writer.next_offset(),
        identity,
        source_path: job.recorded.clone(),
    };
    drop(writer);
    let marker = Manifest {
        entries: vec![entry.clone()],
    };
    write_file_atomically(&tmp.join(MARKER_FILE_NAME), &marker.encode())?;
    if let Some(mut tee) = tee {
        tee.written();
    }
    Ok(entry)
}
