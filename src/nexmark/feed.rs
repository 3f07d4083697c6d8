//! Feeds that deliver a Nexmark query's projection of stored records: over
//! a log partition ([`ProjectedFeed`]) or straight from the generator
//! ([`GeneratorFeed`], for throughput runs without files).

use weir_dataflows::nexmark::{NexmarkQuery, NexmarkTable};

use crate::source::{FeedError, FeedStatus, PartitionFeed};

/// A feed whose records are projected for `query`: a stored record that is
/// not in its table's stored format is an error naming its offset.
pub struct ProjectedFeed<F> {
    inner: F,
    partition: u32,
    query: NexmarkQuery,
    table: NexmarkTable,
}

impl<F> ProjectedFeed<F> {
    /// Projects the records of `inner` (source partition `partition`, of
    /// `table`) for `query`.
    pub fn new(inner: F, partition: u32, query: NexmarkQuery, table: NexmarkTable) -> Self {
        ProjectedFeed {
            inner,
            partition,
            query,
            table,
        }
    }
}

impl<F: PartitionFeed> PartitionFeed for ProjectedFeed<F> {
    fn poll(
        &mut self,
        max_records: usize,
        deliver: &mut dyn FnMut(u64, u64, &str, i64),
    ) -> Result<FeedStatus, FeedError> {
        let (query, table) = (self.query, self.table);
        let mut malformed: Option<u64> = None;
        let status =
            self.inner
                .poll(max_records, &mut |offset, ts, key, value| match query
                    .project(table, key, value)
                {
                    Some((key, value)) if malformed.is_none() => deliver(offset, ts, key, value),
                    Some(_) => {}
                    None => {
                        malformed.get_or_insert(offset);
                    }
                })?;
        match malformed {
            None => Ok(status),
            Some(offset) => Err(FeedError {
                partition: self.partition,
                source: format!(
                    "record at offset {offset} is not a stored {} record ({})",
                    table.name(),
                    table.stored_columns()
                )
                .into(),
            }),
        }
    }
}

/// One partition of the generator's events, read directly: partition `p` of
/// `P` holds events `p, p + P, p + 2P, ...` of the first `events` (the same
/// split `weir gen nexmark` writes to files), of which this feed delivers
/// `table`'s. Offsets count all of the partition's events.
pub struct GeneratorFeed {
    generator: nexmark::EventGenerator,
    next_offset: u64,
    end_offset: u64,
    query: NexmarkQuery,
    table: NexmarkTable,
    key: String,
}

impl GeneratorFeed {
    /// The feed of `table` in partition `partition` of `partitions`, from
    /// `start_offset`, for `query`.
    pub fn new(
        events: u64,
        (partition, partitions): (u64, u64),
        start_offset: u64,
        query: NexmarkQuery,
        table: NexmarkTable,
    ) -> Self {
        assert!(partition < partitions);
        let end_offset = events.saturating_sub(partition).div_ceil(partitions);
        GeneratorFeed {
            generator: super::gen::generator()
                .with_offset(partition + start_offset * partitions)
                .with_step(partitions),
            next_offset: start_offset,
            end_offset,
            query,
            table,
            key: String::with_capacity(64),
        }
    }
}

impl PartitionFeed for GeneratorFeed {
    fn poll(
        &mut self,
        max_records: usize,
        deliver: &mut dyn FnMut(u64, u64, &str, i64),
    ) -> Result<FeedStatus, FeedError> {
        let end = self.end_offset.min(self.next_offset + max_records as u64);
        while self.next_offset < end {
            let offset = self.next_offset;
            self.next_offset += 1;
            let event = self.generator.next().expect("the generator never ends");
            if let Some((ts, value)) = super::gen::stored_record(&event, self.table, &mut self.key)
            {
                let (key, value) = self
                    .query
                    .project(self.table, &self.key, value)
                    .expect("generated records are well formed");
                deliver(offset, ts, key, value);
            }
        }
        Ok(if self.next_offset == self.end_offset {
            FeedStatus::Ended
        } else {
            FeedStatus::Progress
        })
    }
}
