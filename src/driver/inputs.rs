//! What a run reads: the input files to ingest (by topic and format) and
//! the source partitions, each with how a worker opens its feed.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::csv_input::RowSchema;
use crate::job::WindowQuery;
use crate::log::{list_partitions, partition_dir};
use crate::log_feed::LogFeed;
use crate::nexmark::feed::{GeneratorFeed, ProjectedFeed};
use crate::nexmark::{files_by_table, source_partition, NexmarkTable};
use crate::run::{GeneratedInput, RunError, EVENTS_TOPIC};
use crate::source::{FeedError, PartitionFeed};

/// Files to ingest into one topic, in one format.
pub type TopicFiles = (&'static str, RowSchema, Vec<PathBuf>);

/// The files to ingest, per topic, for `query`.
pub fn ingest_plan(query: &WindowQuery, files: &[PathBuf]) -> Result<Vec<TopicFiles>, RunError> {
    if query.nexmark.is_none() {
        return Ok(vec![(EVENTS_TOPIC, RowSchema::Generic, files.to_vec())]);
    }
    Ok(files_by_table(files)
        .map_err(RunError::Usage)?
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

    /// Opens the feed at `start_offset`.
    pub fn open(
        &self,
        (log_dir, query): (&Path, &WindowQuery),
        (start_offset, max_ts_before): (u64, Option<u64>),
        until_end: bool,
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
                let feed = LogFeed::open_with_stop(&dir, id, start_offset, until_end, stop)
                    .map_err(|e| FeedError {
                        partition: id,
                        source: Box::new(e),
                    })?;
                Ok(match (query.nexmark, table) {
                    (Some(q), Some(t)) => Box::new(ProjectedFeed::new(feed, id, (q, t), resume)),
                    _ => Box::new(feed),
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
