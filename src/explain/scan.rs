//! The input events of one key and window, read from the log with the
//! lateness rule of the source operator (DESIGN.md, "Time, watermarks,
//! late data"): per partition in log order, an event is late iff its time
//! is below the largest time read before it (events and idle markers) minus
//! the lateness. So the events listed here are exactly those the run
//! accepted or refused, whatever restarts it had.

use std::path::Path;

use super::ExplainError;
use crate::checkpoint::format::CommitRecord;
use crate::event::{decode_record, LogRecord};
use crate::log::{list_partitions, partition_dir, LogError, PartitionReader};
use crate::run::EVENTS_TOPIC;

/// An input event as the dead-letter files list it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputEvent {
    /// Its log partition.
    pub partition: u32,
    /// Its offset there.
    pub offset: u64,
    /// Its time, ms.
    pub ts: u64,
    /// Its key.
    pub key: String,
    /// Its value.
    pub value: i64,
}

/// A late event with the time that made it late.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LateEvent {
    /// The event.
    pub event: InputEvent,
    /// The largest time its partition had reached before it.
    pub max_ts_before: u64,
}

/// The events of one key whose times are in one window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WindowEvents {
    /// Accepted: these made the row.
    pub accepted: Vec<InputEvent>,
    /// Refused as late.
    pub late: Vec<LateEvent>,
    /// Per partition read: `(partition, first offset read, end offset)`.
    pub read: Vec<(u32, u64, u64)>,
}

/// Reads the events of `key` with times in `[start, end)` from the log of
/// `data_dir`. Each partition is read from the resume point of the newest
/// checkpoint in `commits` whose cut is at or before `start` (the records
/// before it have smaller times), else from its first offset.
pub fn window_events(
    data_dir: &Path,
    commits: &[CommitRecord],
    (key, (start, end)): (&str, (u64, u64)),
    lateness_ms: u64,
) -> Result<WindowEvents, ExplainError> {
    let log_dir = data_dir.join(crate::log::LOG_DIR_NAME);
    let partitions = list_partitions(&log_dir, EVENTS_TOPIC)?;
    if partitions.is_empty() {
        return Err(ExplainError::NoLog { log_dir });
    }
    let resume = commits.iter().rev().find(|c| c.cut_time <= start);
    let mut found = WindowEvents::default();
    for partition in partitions {
        let (from, mut max_ts) = resume
            .and_then(|c| c.partitions.iter().find(|p| p.partition == partition))
            .map_or((0, None), |p| (p.resume_offset, p.max_ts_before));
        let dir = partition_dir(&log_dir, EVENTS_TOPIC, partition);
        let mut reader = match PartitionReader::open(&dir, from) {
            Ok(reader) => reader,
            Err(LogError::OffsetBeforeStart { first, .. }) => {
                return Err(ExplainError::LogDeleted {
                    dir,
                    needed: from,
                    first,
                })
            }
            Err(e) => return Err(e.into()),
        };
        while let Some((offset, payload)) = reader.next()? {
            let event = match decode_record(payload) {
                Ok(LogRecord::Event(event)) => event,
                Ok(LogRecord::Idle { watermark_ms }) => {
                    max_ts = max_ts.max(Some(watermark_ms));
                    continue;
                }
                Err(e) => {
                    return Err(ExplainError::BadRecord {
                        dir,
                        offset,
                        reason: e.to_string(),
                    })
                }
            };
            let before = max_ts;
            max_ts = max_ts.max(Some(event.ts));
            if event.key != key || event.ts < start || event.ts >= end {
                continue;
            }
            let input = InputEvent {
                partition,
                offset,
                ts: event.ts,
                key: event.key.to_owned(),
                value: event.value,
            };
            match before {
                Some(m) if event.ts < m.saturating_sub(lateness_ms) => {
                    found.late.push(LateEvent {
                        event: input,
                        max_ts_before: m,
                    });
                }
                _ => found.accepted.push(input),
            }
        }
        found.read.push((partition, from, reader.next_offset()));
    }
    Ok(found)
}
