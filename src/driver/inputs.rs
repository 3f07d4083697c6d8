//! The inputs phase: what a run reads. The input files to ingest (by topic
//! and format, under a lock shared by the processes of a cluster) and the
//! source partitions, each with how a worker opens its feed.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::csv_input::RowSchema;
use crate::ingest::ingest_files_as;
use crate::job::WindowQuery;
use crate::log::LogConfig;
use crate::log::{list_partitions, partition_dir};
use crate::log_feed::LogFeed;
use crate::nexmark::feed::{GeneratorFeed, ProjectedFeed};
use crate::nexmark::{files_by_table, source_partition, NexmarkTable};
use crate::run::{GeneratedInput, RunError, RunOptions, EVENTS_TOPIC};
use crate::source::{FeedError, PartitionFeed};
use crate::storage::durable::lock_file_within;

/// What the inputs phase hands on.
pub(super) struct Inputs {
    /// The source partitions.
    pub(super) partitions: Vec<InputPartition>,
    /// The input log, `<data-dir>/log`.
    pub(super) log_dir: PathBuf,
}

/// Checks the options, ingests the input files and lists the partitions.
pub(super) fn prepare(options: &RunOptions) -> Result<Inputs, RunError> {
    let query = options.query;
    query
        .spec
        .check_granularity(query.granularity_ms)
        .map_err(|e| RunError::Usage(e.to_string()))?;
    if options.workers == 0 {
        return Err(RunError::Usage("--workers must be at least 1".into()));
    }
    let files = expand_inputs(&options.inputs)?;
    if !files.is_empty() {
        let plan = ingest_plan(&query, &files)?;
        ingest_topics_locked(&options.data_dir, &plan, &options.log_config)?;
    }
    let log_dir = options.data_dir.join(crate::log::LOG_DIR_NAME);
    let partitions = input_partitions(&query, &log_dir, options.generated)?;
    Ok(Inputs {
        partitions,
        log_dir,
    })
}

/// Expands inputs: directories to their `*.csv` files (sorted), files as given.
pub fn expand_inputs(inputs: &[PathBuf]) -> Result<Vec<PathBuf>, RunError> {
    let mut files = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| RunError::Usage(format!("{}: {e}", input.display())))?
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .filter(|p| p.extension().is_some_and(|e| e == "csv"))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(RunError::Usage(format!(
                    "{}: no .csv files in this directory",
                    input.display()
                )));
            }
            files.extend(found);
        } else if input.is_file() {
            files.push(input.clone());
        } else {
            return Err(RunError::Usage(format!(
                "{}: no such file or directory",
                input.display()
            )));
        }
    }
    Ok(files)
}

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
    std::fs::create_dir_all(data_dir).map_err(|e| RunError::Output {
        path: data_dir.to_owned(),
        source: e,
    })?;
    let lock = lock_ingest(data_dir, INGEST_LOCK_WAIT)?;
    // Topics are independent directories: ingested at once, so that the
    // small tables' files keep the cores busy while the large table's run
    // (each topic still writes its files one per core).
    let log_dir = data_dir.join(crate::log::LOG_DIR_NAME);
    let ingest_topic = |(topic, schema, files): &TopicFiles| {
        let report = ingest_files_as(&log_dir, topic, *schema, files, log_config)?;
        for file in &report.files {
            tracing::debug!(topic, path = %file.path.display(), partition = file.partition, records = file.records, skipped = file.skipped, "ingest");
        }
        Ok::<(), RunError>(())
    };
    let topics: Vec<&TopicFiles> = topics.iter().filter(|t| !t.2.is_empty()).collect();
    let results: Vec<Result<(), RunError>> = match topics.as_slice() {
        [one] => vec![ingest_topic(one)],
        _ => std::thread::scope(|scope| {
            let handles: Vec<_> = topics
                .iter()
                .map(|t| scope.spawn(|| ingest_topic(t)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("an ingest thread panicked"))
                .collect()
        }),
    };
    drop(lock);
    // The first topic's error, in the order given.
    results.into_iter().collect()
}

/// Files to ingest into one topic, in one format.
pub type TopicFiles = (&'static str, RowSchema, Vec<PathBuf>);

/// The files to ingest, per topic, for `query`. A Nexmark query ingests
/// only the tables it reads (q5 the bids): the files of the others are
/// checked to be table files, then left alone, with a log line.
pub fn ingest_plan(query: &WindowQuery, files: &[PathBuf]) -> Result<Vec<TopicFiles>, RunError> {
    let Some(nexmark) = query.nexmark else {
        return Ok(vec![(EVENTS_TOPIC, RowSchema::Generic, files.to_vec())]);
    };
    let (read, unread): (Vec<_>, Vec<_>) = files_by_table(files)
        .map_err(RunError::Usage)?
        .into_iter()
        .partition(|(table, _)| nexmark.tables().contains(table));
    for (table, files) in unread.iter().filter(|(_, files)| !files.is_empty()) {
        tracing::info!(
            query = nexmark.name(),
            table = table.name(),
            files = files.len(),
            "not ingested: the query does not read this table"
        );
    }
    Ok(read
        .into_iter()
        .map(|(table, files)| (table.name(), RowSchema::Nexmark(table), files))
        .collect())
}

/// One partition a source reads.
#[derive(Clone, Copy, Debug)]
pub enum InputPartition {
    /// A log partition.
    Log {
        /// The source partition number (what checkpoints record).
        id: u32,
        /// Its topic.
        topic: &'static str,
        /// Its partition in the topic.
        partition: u32,
        /// The Nexmark table it holds, if any.
        table: Option<NexmarkTable>,
    },
    /// A partition of the Nexmark generator, read directly.
    Generated {
        /// The source partition number.
        id: u32,
        /// The generator's partition.
        partition: u32,
        /// Of how many, and of how many events.
        input: GeneratedInput,
        /// The table delivered.
        table: NexmarkTable,
    },
}

impl InputPartition {
    /// The source partition number.
    pub fn id(&self) -> u32 {
        match self {
            InputPartition::Log { id, .. } | InputPartition::Generated { id, .. } => *id,
        }
    }

    /// The directory of a log partition under `log_dir` (`None`: generated).
    pub fn log_partition_dir(&self, log_dir: &Path) -> Option<PathBuf> {
        match *self {
            InputPartition::Log {
                topic, partition, ..
            } => Some(partition_dir(log_dir, topic, partition)),
            InputPartition::Generated { .. } => None,
        }
    }

    /// Opens the feed at `start_offset`; a log partition is read on a
    /// thread of its own with `read_ahead`.
    pub fn open(
        &self,
        (log_dir, query): (&Path, &WindowQuery),
        (start_offset, max_ts_before): (u64, Option<u64>),
        (until_end, read_ahead): (bool, bool),
        stop: Option<Arc<AtomicBool>>,
    ) -> Result<Box<dyn PartitionFeed>, FeedError> {
        let resume = (query.lateness_ms, max_ts_before);
        match *self {
            InputPartition::Log {
                id,
                topic,
                partition,
                table,
            } => {
                let dir = partition_dir(log_dir, topic, partition);
                let error = |e| FeedError {
                    partition: id,
                    source: Box::new(e),
                };
                let feed = LogFeed::open_with_stop(&dir, id, start_offset, until_end, stop)
                    .map_err(error)?;
                let feed: Box<dyn PartitionFeed> = if read_ahead {
                    Box::new(feed.read_ahead().map_err(error)?)
                } else {
                    Box::new(feed)
                };
                Ok(match (query.nexmark, table) {
                    (Some(q), Some(t)) => Box::new(ProjectedFeed::new(feed, id, (q, t), resume)),
                    _ => feed,
                })
            }
            InputPartition::Generated {
                id,
                partition,
                input,
                table,
            } => {
                let query = query
                    .nexmark
                    .expect("generated input is for Nexmark queries");
                let feed = GeneratorFeed::new(
                    input.events,
                    (u64::from(partition), u64::from(input.partitions)),
                    start_offset,
                    table,
                );
                Ok(Box::new(ProjectedFeed::new(
                    feed,
                    id,
                    (query, table),
                    resume,
                )))
            }
        }
    }
}

/// The partitions `query` reads: from the log under `log_dir`, or from the
/// generator.
pub fn input_partitions(
    query: &WindowQuery,
    log_dir: &Path,
    generated: Option<GeneratedInput>,
) -> Result<Vec<InputPartition>, RunError> {
    let Some(nexmark) = query.nexmark else {
        if generated.is_some() {
            return Err(RunError::Usage(
                "generated input is only for the Nexmark queries (--query q5|q7|q8|q11|q12)".into(),
            ));
        }
        let partitions = list_partitions(log_dir, EVENTS_TOPIC)?;
        if partitions.is_empty() {
            return Err(RunError::Usage(format!(
                "no input: the log {} has no partitions (give --input FILE...)",
                log_dir.join(EVENTS_TOPIC).display()
            )));
        }
        return Ok(partitions
            .into_iter()
            .map(|p| InputPartition::Log {
                id: p,
                topic: EVENTS_TOPIC,
                partition: p,
                table: None,
            })
            .collect());
    };
    let mut out = Vec::new();
    for &table in nexmark.tables() {
        if let Some(input) = generated {
            out.extend((0..input.partitions).map(|p| InputPartition::Generated {
                id: source_partition(table, p),
                partition: p,
                input,
                table,
            }));
            continue;
        }
        let partitions = list_partitions(log_dir, table.name())?;
        if partitions.is_empty() {
            return Err(RunError::Usage(format!(
                "no input for {nexmark}: the log {} has no partitions (give --input DIR with {}-<n>.csv files, made by `weir gen nexmark`)",
                log_dir.join(table.name()).display(),
                table.name()
            )));
        }
        out.extend(partitions.into_iter().map(|p| InputPartition::Log {
            id: source_partition(table, p),
            topic: table.name(),
            partition: p,
            table: Some(table),
        }));
    }
    Ok(out)
}

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
