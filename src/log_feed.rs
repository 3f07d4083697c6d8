//! A [`PartitionFeed`] over a partition of the input log.

use std::path::Path;

use crate::event::decode_event;
use crate::log::{LogError, PartitionReader};
use crate::source::{FeedError, FeedStatus, PartitionFeed};

/// Reads one log partition from an offset, decoding events.
pub struct LogFeed {
    partition: u32,
    dir: std::path::PathBuf,
    reader: PartitionReader,
    until_end: bool,
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
        Ok(LogFeed {
            partition,
            dir: dir.to_owned(),
            reader: PartitionReader::open(dir, from_offset)?,
            until_end,
        })
    }
}

impl PartitionFeed for LogFeed {
    fn poll(
        &mut self,
        max_records: usize,
        deliver: &mut dyn FnMut(u64, u64, &str, i64),
    ) -> Result<FeedStatus, FeedError> {
        let partition = self.partition;
        let dir = &self.dir;
        for _ in 0..max_records {
            let record = self.reader.next().map_err(|e| FeedError {
                partition,
                source: Box::new(e),
            })?;
            let Some((offset, payload)) = record else {
                return Ok(if self.until_end {
                    FeedStatus::Ended
                } else {
                    FeedStatus::Idle
                });
            };
            let event = decode_event(payload).map_err(|e| FeedError {
                partition,
                source: format!("record at offset {offset} in {}: {e}", dir.display()).into(),
            })?;
            deliver(offset, event.ts, event.key, event.value);
        }
        Ok(FeedStatus::Progress)
    }
}
