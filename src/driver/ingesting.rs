//! Ingesting a run's input files under the data dir's ingest lock (shared
//! by the processes of a cluster, so that they agree on the partition
//! numbers): planned per topic, then written, the topics at once.

use std::path::{Path, PathBuf};

use crate::csv_input::RowSchema;
use crate::ingest::tee::IngestTees;
use crate::ingest::{default_ingest_threads, plan_ingest, IngestError, PlannedIngest};
use crate::log::LogConfig;
use crate::nexmark::NexmarkTable;
use crate::run::{RunError, EVENTS_TOPIC};
use crate::storage::durable::lock_file_within;

/// Ingests `files` under an exclusive lock on the data directory, so the
/// processes of a cluster sharing it agree on the partition numbers.
pub fn ingest_locked(
    data_dir: &Path,
    files: &[PathBuf],
    log_config: &LogConfig,
) -> Result<(), RunError> {
    ingest_topics_locked(
        data_dir,
        &[(EVENTS_TOPIC, RowSchema::Generic, files.to_vec())],
        log_config,
    )
}

/// How long a run waits for another process's ingest into its data dir (a
/// cluster's processes ingest the same files; one does, the others find
/// them ingested): far longer than any ingest should take, so a stuck one
/// ends the wait with an error instead of a hang.
const INGEST_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);
const INGEST_LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Takes `data_dir`'s ingest lock, waiting at most `wait` for another
/// process to let go of it.
fn lock_ingest(data_dir: &Path, wait: std::time::Duration) -> Result<std::fs::File, RunError> {
    let lock_path = data_dir.join("ingest.lock");
    let held = |source| RunError::Output {
        path: lock_path.clone(),
        source,
    };
    lock_file_within(&lock_path, (wait, INGEST_LOCK_POLL), || {
        tracing::info!(
            path = %lock_path.display(),
            wait_s = wait.as_secs(),
            "another process is ingesting into this data dir: waiting for it"
        );
    })
    .map_err(held)?
    .ok_or_else(|| {
        held(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "held by another process's ingest for {} s: is it stuck?",
                wait.as_secs()
            ),
        ))
    })
}

/// As [`ingest_locked`], for files of several topics and formats.
pub fn ingest_topics_locked(
    data_dir: &Path,
    topics: &[TopicFiles],
    log_config: &LogConfig,
) -> Result<(), RunError> {
    let lock = lock_data_dir_ingest(data_dir)?;
    let log_dir = data_dir.join(crate::log::LOG_DIR_NAME);
    let planned = plan_topics(&log_dir, topics, log_config);
    let ingested = run_planned(planned, &[]);
    drop(lock);
    ingested
}

/// Creates `data_dir` and takes its ingest lock, waiting for another
/// process's ingest as long as [`INGEST_LOCK_WAIT`].
pub(super) fn lock_data_dir_ingest(data_dir: &Path) -> Result<std::fs::File, RunError> {
    std::fs::create_dir_all(data_dir).map_err(|e| RunError::Output {
        path: data_dir.to_owned(),
        source: e,
    })?;
    lock_ingest(data_dir, INGEST_LOCK_WAIT)
}

/// One topic's ingest, planned (or refused while planning).
pub(super) struct TopicPlan {
    pub(super) topic: &'static str,
    /// The Nexmark table the topic holds, if any.
    pub(super) table: Option<NexmarkTable>,
    pub(super) planned: Result<PlannedIngest, IngestError>,
}

/// Plans the ingest of each topic with files (at once: planning reads the
/// files ingested before, to check them unchanged).
pub(super) fn plan_topics(
    log_dir: &Path,
    topics: &[TopicFiles],
    log_config: &LogConfig,
) -> Vec<TopicPlan> {
    let plan = |(topic, schema, files): &TopicFiles| TopicPlan {
        topic,
        table: match schema {
            RowSchema::Nexmark(table) => Some(*table),
            RowSchema::Generic => None,
        },
        planned: plan_ingest(log_dir, topic, *schema, files, log_config),
    };
    in_parallel(topics.iter().filter(|t| !t.2.is_empty()).collect(), plan)
}

/// Runs the planned ingests, the topics at once (so that the small tables'
/// files keep the cores busy while the large table's run); topic `i`'s new
/// partitions go to `tees[i]` if there is one, one thread per file, else
/// one thread per core writes them. The first topic's error, in order.
pub(super) fn run_planned(
    planned: Vec<TopicPlan>,
    tees: &[Option<&dyn IngestTees>],
) -> Result<(), RunError> {
    let topics: Vec<(TopicPlan, Option<&dyn IngestTees>)> = planned
        .into_iter()
        .enumerate()
        .map(|(i, plan)| (plan, tees.get(i).copied().flatten()))
        .collect();
    let run = |(plan, tees): (TopicPlan, Option<&dyn IngestTees>)| {
        let planned = plan.planned?;
        let threads = match tees {
            Some(_) => planned.new_partitions().len(),
            None => default_ingest_threads(),
        };
        let report = planned.run(threads, tees)?;
        for file in &report.files {
            tracing::debug!(topic = plan.topic, path = %file.path.display(), partition = file.partition, records = file.records, skipped = file.skipped, "ingest");
        }
        Ok::<(), RunError>(())
    };
    in_parallel(topics, run).into_iter().collect()
}

/// `f` of each item, on threads of their own when there are several.
fn in_parallel<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.into_iter().map(f).collect();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(|| f(item)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an ingest thread panicked"))
            .collect()
    })
}

/// Files to ingest into one topic, in one format.
pub type TopicFiles = (&'static str, RowSchema, Vec<PathBuf>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ingest_lock_held_past_the_wait_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let held = lock_ingest(tmp.path(), std::time::Duration::ZERO).unwrap();
        let error = lock_ingest(tmp.path(), std::time::Duration::from_millis(30)).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("ingest.lock") && text.contains("stuck"),
            "{text}"
        );
        drop(held);
        lock_ingest(tmp.path(), std::time::Duration::ZERO).unwrap();
    }
}
