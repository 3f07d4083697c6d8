//! The inputs phase: what a run reads. The input files to ingest (by topic
//! and format; see [`super::ingesting`]), before the run or beside it
//! ([`super::overlap`]), and the source partitions, each with how a worker
//! opens its feed.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::ingesting::{ingest_topics_locked, TopicFiles};
use super::overlap::{self, OverlappedIngest};
use crate::csv_input::RowSchema;
use crate::job::WindowQuery;
use crate::log::{list_partitions, partition_dir};
use crate::log_feed::read_ahead::ReadAheadFeed;
use crate::log_feed::LogFeed;
use crate::nexmark::feed::{GeneratorFeed, ProjectedFeed};
use crate::nexmark::{files_by_table, source_partition, NexmarkTable};
use crate::run::{GeneratedInput, RunError, RunOptions, EVENTS_TOPIC};
use crate::source::{FeedError, PartitionFeed};

/// What the inputs phase hands on.
pub(super) struct Inputs {
    /// The source partitions.
    pub(super) partitions: Vec<InputPartition>,
    /// The input log, `<data-dir>/log`.
    pub(super) log_dir: PathBuf,
    /// The ingest of the input files, going on beside the run.
    pub(super) overlapped: Option<OverlappedIngest>,
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
    if options.generated.is_some() && !options.inputs.is_empty() {
        return Err(RunError::Usage(
            "input files and generated input exclude each other (--input, --generate-events)"
                .into(),
        ));
    }
    let files = expand_inputs(&options.inputs)?;
    let mut overlapped = None;
    if !files.is_empty() {
        let plan = ingest_plan(&query, &files)?;
        if overlaps_ingest(options) {
            let feeds = (options.until_end, options.hooks.stop.as_ref());
            overlapped = overlap::start(&options.data_dir, &plan, &options.log_config, feeds)?;
        } else {
            ingest_topics_locked(&options.data_dir, &plan, &options.log_config)?;
        }
    }
    let log_dir = options.data_dir.join(crate::log::LOG_DIR_NAME);
    let being_ingested = overlapped
        .as_ref()
        .map_or(&[][..], OverlappedIngest::new_partitions);
    let partitions = input_partitions(&query, (&log_dir, being_ingested), options.generated)?;
    Ok(Inputs {
        partitions,
        log_dir,
        overlapped,
    })
}

/// Whether the run ingests its input files while it runs (decision 72):
/// unless `--ingest-first`, only alone (the processes of a cluster read
/// partitions another process ingests), and only to the end: a tailing
/// run's worker far ahead of a written, idle partition waits for input
/// that never comes, and the file it reads would never be written.
fn overlaps_ingest(options: &RunOptions) -> bool {
    !options.ingest_first && options.cluster.is_none() && options.until_end
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
                ..
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
                Ok(self.project(feed, query, resume))
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

impl InputPartition {
    /// The feed of a partition being ingested, handed its records by the
    /// ingest (see [`super::overlap`]), from `start_offset` on.
    pub fn open_fed(
        &self,
        mut feed: ReadAheadFeed,
        query: &WindowQuery,
        (start_offset, max_ts_before): (u64, Option<u64>),
    ) -> Box<dyn PartitionFeed> {
        feed.resume_fed_at(start_offset);
        self.project(Box::new(feed), query, (query.lateness_ms, max_ts_before))
    }

    /// `feed` as the query reads it: a Nexmark table's events projected to
    /// the query's; `resume` is the lateness and the largest time before
    /// the start.
    fn project(
        &self,
        feed: Box<dyn PartitionFeed>,
        query: &WindowQuery,
        resume: (u64, Option<u64>),
    ) -> Box<dyn PartitionFeed> {
        match (*self, query.nexmark) {
            (
                InputPartition::Log {
                    id,
                    table: Some(table),
                    ..
                },
                Some(nexmark),
            ) => Box::new(ProjectedFeed::new(feed, id, (nexmark, table), resume)),
            _ => feed,
        }
    }
}

/// The partitions `query` reads: from the log under `log_dir` (with the
/// new partitions of `being_ingested`, by topic), or from the generator.
pub fn input_partitions(
    query: &WindowQuery,
    (log_dir, being_ingested): (&Path, &[(&str, Vec<u32>)]),
    generated: Option<GeneratedInput>,
) -> Result<Vec<InputPartition>, RunError> {
    let list = |topic: &str| -> Result<Vec<u32>, RunError> {
        let mut partitions = list_partitions(log_dir, topic)?;
        for (_, new) in being_ingested.iter().filter(|(t, _)| *t == topic) {
            partitions.extend(new);
        }
        partitions.sort_unstable();
        partitions.dedup();
        Ok(partitions)
    };
    let Some(nexmark) = query.nexmark else {
        if generated.is_some() {
            return Err(RunError::Usage(
                "generated input is only for the Nexmark queries (--query q5|q7|q8|q11|q12)".into(),
            ));
        }
        let partitions = list(EVENTS_TOPIC)?;
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
        let partitions = list(table.name())?;
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
