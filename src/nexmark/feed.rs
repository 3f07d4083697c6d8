//! Feeds that deliver a Nexmark query's projection of stored records: over
//! a log partition ([`ProjectedFeed`]) or straight from the generator
//! ([`GeneratorFeed`], for throughput runs without files).

use std::collections::BTreeMap;

use weir_dataflows::nexmark::{NexmarkQuery, NexmarkTable, WINDOW_MS};

use crate::event::{EventRef, LogRecord};
use crate::source::{FeedError, FeedStatus, PartitionFeed};

/// q7 keeps only the bids at each window's highest price. A bid priced
/// below an accepted bid seen before it in the same window and partition can
/// never be in the result, so it is delivered under the empty key, where all
/// such bids of a window aggregate into one record instead of one each. It
/// is still delivered, so offsets, watermarks and lateness are unchanged;
/// the lateness rule is applied here exactly as the source applies it (from
/// the same `max_ts_before`), so a late bid never dominates another.
#[derive(Debug)]
pub struct DominatedBids {
    lateness_ms: u64,
    max_ts: Option<u64>,
    /// Highest accepted price per open window start.
    highest: BTreeMap<u64, u64>,
}

/// The key dominated q7 bids are delivered under.
pub const DOMINATED_KEY: &str = "";

impl DominatedBids {
    /// A filter for a partition whose records before the first delivered
    /// one had `max_ts_before` as their largest time.
    pub fn new(lateness_ms: u64, max_ts_before: Option<u64>) -> Self {
        DominatedBids {
            lateness_ms,
            max_ts: max_ts_before,
            highest: BTreeMap::new(),
        }
    }

    /// An idle marker at `watermark_ms`: the partition's time advances as
    /// the source's does (decision 29), so lateness here stays the source's.
    pub fn advance(&mut self, watermark_ms: u64) {
        self.max_ts = Some(self.max_ts.map_or(watermark_ms, |m| m.max(watermark_ms)));
    }

    /// Whether the bid at `ts` with `price` is dominated.
    pub fn dominated(&mut self, ts: u64, price: i64) -> bool {
        let late = self
            .max_ts
            .is_some_and(|m| ts < m.saturating_sub(self.lateness_ms));
        self.max_ts = Some(self.max_ts.map_or(ts, |m| m.max(ts)));
        if late {
            return false;
        }
        let price = price.max(0) as u64;
        let window = ts - ts % WINDOW_MS;
        let highest = self.highest.entry(window).or_insert(price);
        let dominated = price < *highest;
        *highest = (*highest).max(price);
        // Windows no accepted bid can reach any more.
        let oldest_open = self
            .max_ts
            .unwrap_or(0)
            .saturating_sub(self.lateness_ms + WINDOW_MS);
        while self
            .highest
            .first_key_value()
            .is_some_and(|(w, _)| *w < oldest_open)
        {
            self.highest.pop_first();
        }
        dominated
    }
}

/// A feed whose records are projected for `query`: a stored record that is
/// not in its table's stored format is an error naming its offset.
pub struct ProjectedFeed<F> {
    inner: F,
    partition: u32,
    query: NexmarkQuery,
    table: NexmarkTable,
    dominated: Option<DominatedBids>,
}

impl<F> ProjectedFeed<F> {
    /// Projects the records of `inner` (source partition `partition`, of
    /// `table`) for `query`; q7 also needs the lateness and the largest time
    /// before the feed's first record (see [`DominatedBids`]).
    pub fn new(
        inner: F,
        partition: u32,
        (query, table): (NexmarkQuery, NexmarkTable),
        (lateness_ms, max_ts_before): (u64, Option<u64>),
    ) -> Self {
        ProjectedFeed {
            inner,
            partition,
            query,
            table,
            dominated: (query == NexmarkQuery::Q7)
                .then(|| DominatedBids::new(lateness_ms, max_ts_before)),
        }
    }
}

impl<F: PartitionFeed> PartitionFeed for ProjectedFeed<F> {
    fn filling(&self) -> bool {
        self.inner.filling()
    }

    fn poll(
        &mut self,
        max_records: usize,
        deliver: &mut dyn FnMut(u64, LogRecord<'_>),
    ) -> Result<FeedStatus, FeedError> {
        let (query, table) = (self.query, self.table);
        let mut malformed: Option<u64> = None;
        let dominated = &mut self.dominated;
        let status = self.inner.poll(max_records, &mut |offset, record| {
            if malformed.is_some() {
                return;
            }
            let EventRef { ts, key, value, .. } = match record {
                LogRecord::Event(event) => event,
                idle @ LogRecord::Idle { watermark_ms } => {
                    if let Some(d) = dominated.as_mut() {
                        d.advance(watermark_ms);
                    }
                    deliver(offset, idle);
                    return;
                }
            };
            let Some((key, value)) = query.project(table, key, value) else {
                malformed.get_or_insert(offset);
                return;
            };
            let below = dominated.as_mut().is_some_and(|d| d.dominated(ts, value));
            // The empty key as an empty slice of the record's own key, not
            // the literal: a literal `""` points at no memory (address 1),
            // and glibc's AVX-512 `memcmp`, comparing it with the stored
            // empty key in the combiner's table, then loads from that
            // address under an empty mask, which costs a microcode assist
            // (~80 ns) every time: 40% of a q7 run's samples.
            let key = if below {
                &key[..DOMINATED_KEY.len()]
            } else {
                key
            };
            deliver(offset, LogRecord::Event(EventRef::new(ts, key, value)));
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

/// One partition of one table of the generator's events, read directly, as
/// stored records (wrap it in a [`ProjectedFeed`] for a query): of the
/// first `events` events (all tables), `table`'s are numbered `0, 1, ...` in
/// generator order, and partition `p` of `P` holds those numbered
/// `p, p + P, ...`; offsets count them. Only `table`'s events are generated
/// (the generator skips the others by their event number). The split
/// differs from `weir gen nexmark`'s files (events `p, p + P, ...` of all
/// tables), but each partition is in time order either way, so with no late
/// events both give the same results (tested).
pub struct GeneratorFeed {
    generator: nexmark::EventGenerator,
    next_offset: u64,
    end_offset: u64,
    table: NexmarkTable,
    key: String,
}

impl GeneratorFeed {
    /// The feed of `table` in partition `partition` of `partitions`, from
    /// `start_offset`.
    pub fn new(
        events: u64,
        (partition, partitions): (u64, u64),
        start_offset: u64,
        table: NexmarkTable,
    ) -> Self {
        assert!(partition < partitions);
        let table_events = super::gen::table_events(events, table);
        let end_offset = table_events.saturating_sub(partition).div_ceil(partitions);
        GeneratorFeed {
            generator: super::gen::generator()
                .with_type_filter(super::gen::event_type(table))
                .with_offset(partition + start_offset * partitions)
                .with_step(partitions),
            next_offset: start_offset,
            end_offset,
            table,
            key: String::with_capacity(64),
        }
    }
}

impl PartitionFeed for GeneratorFeed {
    fn poll(
        &mut self,
        max_records: usize,
        deliver: &mut dyn FnMut(u64, LogRecord<'_>),
    ) -> Result<FeedStatus, FeedError> {
        let end = self.end_offset.min(self.next_offset + max_records as u64);
        while self.next_offset < end {
            let offset = self.next_offset;
            self.next_offset += 1;
            let event = self.generator.next().expect("the generator never ends");
            let (ts, value) = super::gen::stored_record(&event, self.table, &mut self.key)
                .expect("the type filter yields only the table's events");
            let key = &self.key;
            deliver(offset, LogRecord::Event(EventRef::new(ts, key, value)));
        }
        Ok(if self.next_offset == self.end_offset {
            FeedStatus::Ended
        } else {
            FeedStatus::Progress
        })
    }
}
