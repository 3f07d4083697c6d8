//! A [`PartitionFeed`] over a partition of the input log, read inline
//! ([`LogFeed`]) or on a thread of its own ([`read_ahead::ReadAheadFeed`]).

pub mod read_ahead;

use std::path::Path;

use crate::event::{decode_record, LogRecord};
use crate::log::{LogError, PartitionReader};
use crate::source::{FeedError, FeedStatus, PartitionFeed};

/// Reads one log partition from an offset, decoding events.
pub struct LogFeed {
    partition: u32,
    dir: std::path::PathBuf,
    reader: PartitionReader,
    until_end: bool,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl LogFeed {
    /// Opens partition `partition` (directory `dir`) at `from_offset`. With
    /// `until_end`, the partition ends when its current end is reached;
    /// otherwise the feed waits for more records.
    pub fn open(
        dir: &Path,
        partition: u32,
        from_offset: u64,
        until_end: bool,
    ) -> Result<Self, LogError> {
        Self::open_with_stop(dir, partition, from_offset, until_end, None)
    }

    /// As [`LogFeed::open`]; once `stop` is set, the partition also ends at
    /// its current end.
    pub fn open_with_stop(
        dir: &Path,
        partition: u32,
        from_offset: u64,
        until_end: bool,
        stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    ) -> Result<Self, LogError> {
        Ok(LogFeed {
            partition,
            dir: dir.to_owned(),
            reader: PartitionReader::open(dir, from_offset)?,
            until_end,
            stop,
        })
    }

    /// The same partition from the same offset, read on a thread of its own.
    pub fn read_ahead(self) -> Result<read_ahead::ReadAheadFeed, LogError> {
        let dir = self.dir.clone();
        read_ahead::ReadAheadFeed::start(self.reader, self.partition, self.until_end, self.stop)
            .map_err(LogError::io(dir))
    }
}

/// Decodes the record at `offset` of partition `partition` (directory
/// `dir`); an error names both, as every log feed reports it.
fn decode_at<'a>(
    (partition, dir): (u32, &Path),
    offset: u64,
    payload: &'a [u8],
) -> Result<LogRecord<'a>, FeedError> {
    decode_record(payload).map_err(|e| FeedError {
        partition,
        source: format!("record at offset {offset} in {}: {e}", dir.display()).into(),
    })
}

impl PartitionFeed for LogFeed {
    fn poll(
        &mut self,
        max_records: usize,
        deliver: &mut dyn FnMut(u64, LogRecord<'_>),
    ) -> Result<FeedStatus, FeedError> {
        let partition = self.partition;
        let dir = &self.dir;
        // Read before the data: an end reached after the run was stopped
        // ends the partition only if the stop came before that read.
        let stopping = self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Acquire));
        for _ in 0..max_records {
            let record = self.reader.next().map_err(|e| FeedError {
                partition,
                source: Box::new(e),
            })?;
            let Some((offset, payload)) = record else {
                return Ok(if self.until_end || stopping {
                    FeedStatus::Ended
                } else {
                    FeedStatus::Idle
                });
            };
            let record = decode_at((partition, dir), offset, payload)?;
            deliver(offset, record);
        }
        Ok(FeedStatus::Progress)
    }
}

#[cfg(test)]
mod tests;
