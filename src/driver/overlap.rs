//! `weir run --input` overlapped with its own ingest (decision 72): the
//! files are planned under the data dir's ingest lock, then written on
//! threads of their own, one per new file, while the dataflow runs; the
//! thread that parses a file hands the records it appends to the run
//! through a fed feed ([`crate::log_feed::read_ahead::fed`]), so nothing is
//! read back from the log. The log, the manifest and every error are those
//! of an ingest before the run.
//!
//! What keeps this exactly once:
//! - no checkpoint is cut until the ingest has committed every file
//!   ([`OverlappedIngest::committed`], read by the cadence): a checkpoint
//!   must not cover records of a file whose ingest may still fail;
//! - a run whose ingest failed fails with the ingest's error
//!   ([`OverlappedIngest::finish`]), whatever its workers did meanwhile.
//!
//! Each new file has a thread, so a partition never waits for a thread
//! held by another that waits for the run (a worker pauses a partition far
//! ahead in event time until the others catch up). So the overlap is for
//! at most [`MAX_OVERLAPPED_FILES`] new files; with more, or when planning
//! refuses a file, the files are ingested before the run, as with
//! `--ingest-first`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::ingesting::{lock_data_dir_ingest, plan_topics, run_planned, TopicFiles};
use crate::event::EventRef;
use crate::ingest::tee::{IngestTees, RecordTee};
use crate::ingest::PlannedIngest;
use crate::log::{partition_dir, LogConfig};
use crate::log_feed::read_ahead::fed::{fed, ChunkFiller};
use crate::log_feed::read_ahead::ReadAheadFeed;
use crate::nexmark::source_partition;
use crate::run::RunError;

/// The most new files a run ingests while it runs (a thread and about
/// 4 MiB of buffers each); with more it ingests them first.
pub const MAX_OVERLAPPED_FILES: usize = 32;

/// An ingest going on beside the run.
pub(super) struct OverlappedIngest {
    /// The feeds of the new partitions, by source partition, until a
    /// worker takes its own.
    feeds: Mutex<HashMap<u32, ReadAheadFeed>>,
    /// The new partitions of each topic.
    new_partitions: Vec<(&'static str, Vec<u32>)>,
    outcome: Arc<Outcome>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// How the ingest ended, once it has.
#[derive(Default)]
struct Outcome {
    /// Every new file is committed.
    committed: Arc<AtomicBool>,
    /// `Some` once the ingest ended.
    result: Mutex<Option<Result<(), RunError>>>,
}

/// Plans `topics` under `data_dir`'s ingest lock and starts writing their
/// new files beside the run (`until_end` and `stop` for their feeds, as
/// the run's); `None` when the files were ingested first instead (see the
/// module doc) or there was nothing new.
pub(super) fn start(
    data_dir: &Path,
    topics: &[TopicFiles],
    log_config: &LogConfig,
    (until_end, stop): (bool, Option<&Arc<AtomicBool>>),
) -> Result<Option<OverlappedIngest>, RunError> {
    let lock = lock_data_dir_ingest(data_dir)?;
    let log_dir = data_dir.join(crate::log::LOG_DIR_NAME);
    let planned = plan_topics(&log_dir, topics, log_config);
    let new_files: usize = planned
        .iter()
        .filter_map(|p| p.planned.as_ref().ok())
        .map(|p| p.new_partitions().len())
        .sum();
    let refused = planned.iter().any(|p| {
        p.planned
            .as_ref()
            .map_or(true, PlannedIngest::refuses_a_file)
    });
    if refused || new_files == 0 || new_files > MAX_OVERLAPPED_FILES {
        if new_files > MAX_OVERLAPPED_FILES {
            tracing::info!(
                new_files,
                max = MAX_OVERLAPPED_FILES,
                "ingesting the input files before the run: too many new files to ingest while it runs"
            );
        }
        let ingested = run_planned(planned, &[]);
        drop(lock);
        return ingested.map(|()| None);
    }
    let mut feeds = HashMap::new();
    let mut new_partitions = Vec::new();
    let mut tees = Vec::new();
    for plan in &planned {
        let partitions = plan.planned.as_ref().expect("planned").new_partitions();
        let table = plan.table;
        let mut fillers = HashMap::new();
        for &partition in &partitions {
            let id = table.map_or(partition, |t| source_partition(t, partition));
            let dir = partition_dir(&log_dir, plan.topic, partition);
            let (feed, filler) = fed(id, dir, until_end, stop.cloned());
            feeds.insert(id, feed);
            fillers.insert(partition, filler);
        }
        new_partitions.push((plan.topic, partitions));
        tees.push(TopicTees {
            fillers: Mutex::new(fillers),
        });
    }
    let outcome = Arc::new(Outcome::default());
    let ended = Arc::clone(&outcome);
    let thread = std::thread::Builder::new()
        .name("weir-ingest".into())
        .spawn(move || {
            let tee_refs: Vec<Option<&dyn IngestTees>> =
                tees.iter().map(|t| Some(t as &dyn IngestTees)).collect();
            // A panic must still end the ingest with an error: the run
            // waits for its outcome (no checkpoint before it).
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_planned(planned, &tee_refs)
            }))
            .unwrap_or_else(|panic| {
                Err(RunError::Dataflow(format!(
                    "the ingest of the input files panicked: {}",
                    crate::panic_message::panic_message(panic.as_ref()).unwrap_or("(no message)")
                )))
            });
            // The fillers of files never started: their feeds fail.
            drop(tee_refs);
            drop(tees);
            drop(lock);
            if result.is_ok() {
                ended.committed.store(true, Ordering::Release);
                tracing::info!("the input files are ingested: checkpoints may be cut");
            }
            *ended.result.lock().expect("poisoned") = Some(result);
        })
        .map_err(|e| RunError::Dataflow(format!("cannot start the ingest thread: {e}")))?;
    tracing::info!(
        new_files,
        "ingesting the input files while the run reads them (no checkpoint until they are in)"
    );
    Ok(Some(OverlappedIngest {
        feeds: Mutex::new(feeds),
        new_partitions,
        outcome,
        thread: Mutex::new(Some(thread)),
    }))
}

impl OverlappedIngest {
    /// The new partitions of each topic (not yet in the log).
    pub(super) fn new_partitions(&self) -> &[(&'static str, Vec<u32>)] {
        &self.new_partitions
    }

    /// The feed of source partition `id`, if it is being ingested (taken once).
    pub(super) fn take_feed(&self, id: u32) -> Option<ReadAheadFeed> {
        self.feeds.lock().expect("poisoned").remove(&id)
    }

    /// Set once every new file is committed.
    pub(super) fn committed(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.outcome.committed)
    }

    /// Whether the ingest has failed.
    pub(super) fn failed(&self) -> bool {
        matches!(*self.outcome.result.lock().expect("poisoned"), Some(Err(_)))
    }

    /// Waits for the ingest to end; its error, if it failed.
    pub(super) fn finish(&self) -> Result<(), RunError> {
        // Feeds no worker took would hold their files' threads for ever.
        self.feeds.lock().expect("poisoned").clear();
        if let Some(thread) = self.thread.lock().expect("poisoned").take() {
            thread.join().map_err(|panic| {
                RunError::Dataflow(format!(
                    "the ingest thread panicked: {}",
                    crate::panic_message::panic_message(panic.as_ref()).unwrap_or("(no message)")
                ))
            })?;
        }
        self.outcome
            .result
            .lock()
            .expect("poisoned")
            .take()
            .unwrap_or(Ok(()))
    }
}

impl Drop for OverlappedIngest {
    /// A run that ends early (an error before its workers started) still
    /// leaves the data dir as an ingest would: the files are all ingested,
    /// or up to the first that fails, and the lock is let go.
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(error = %e, "the ingest of the input files failed");
        }
    }
}

/// A topic's fillers, by partition, until the thread writing each takes it.
struct TopicTees {
    fillers: Mutex<HashMap<u32, ChunkFiller>>,
}

impl IngestTees for TopicTees {
    fn writer(&self, partition: u32) -> Option<Box<dyn RecordTee>> {
        let filler = self.fillers.lock().expect("poisoned").remove(&partition)?;
        Some(Box::new(filler))
    }
}

impl RecordTee for ChunkFiller {
    fn record(&mut self, offset: u64, event: EventRef<'_>) -> bool {
        self.push(offset, event)
    }

    fn written(&mut self) {
        ChunkFiller::written(self);
    }
}
