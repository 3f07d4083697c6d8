//! Deterministic idleness on the appending side (decision 29): whatever
//! appends events to several partitions of a topic as they arrive (the
//! latency harness's generator, stream connectors) asks [`IdleMarkers`]
//! which partitions have had nothing new for the idle timeout, and appends
//! an idle marker to each of them. The marker carries the appender's event
//! time (the largest `ts` it appended to any partition), so a quiet
//! partition's watermark follows the busiest one instead of holding every
//! window back. The markers are records of the log, so a replay reads the
//! same ones and computes the same results; only *where* they fall depends
//! on the appender's clock, as the events' own order does.

use crate::event::encode_idle_marker;
use crate::log::{LogError, PartitionWriter};

/// The smallest idle timeout: a marker per partition at most this often.
pub const MIN_IDLE_TIMEOUT_MS: u64 = 10;

/// Which partitions are due an idle marker, from the appends and a clock.
#[derive(Clone, Debug)]
pub struct IdleMarkers {
    idle_timeout_ms: u64,
    partitions: Vec<PartitionClock>,
    /// The largest time appended to any partition (the appender's event time).
    event_time_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug)]
struct PartitionClock {
    /// When the partition last had a record appended (event or marker), on
    /// the caller's clock.
    last_append_ms: u64,
    /// The largest time of its records (events and markers).
    max_ts_ms: Option<u64>,
}

impl IdleMarkers {
    /// A policy for `partitions` partitions that all had an append at
    /// `now_ms`; a partition is idle after `idle_timeout_ms` without one.
    ///
    /// # Panics
    /// If `idle_timeout_ms` is below [`MIN_IDLE_TIMEOUT_MS`].
    pub fn new(partitions: usize, idle_timeout_ms: u64, now_ms: u64) -> Self {
        assert!(
            idle_timeout_ms >= MIN_IDLE_TIMEOUT_MS,
            "idle timeout {idle_timeout_ms} ms is below {MIN_IDLE_TIMEOUT_MS} ms"
        );
        IdleMarkers {
            idle_timeout_ms,
            partitions: vec![
                PartitionClock {
                    last_append_ms: now_ms,
                    max_ts_ms: None,
                };
                partitions
            ],
            event_time_ms: None,
        }
    }

    /// Records an event at `ts_ms` appended to `partition` at `now_ms`.
    pub fn appended(&mut self, partition: usize, ts_ms: u64, now_ms: u64) {
        let clock = &mut self.partitions[partition];
        clock.last_append_ms = now_ms;
        clock.max_ts_ms = Some(clock.max_ts_ms.map_or(ts_ms, |m| m.max(ts_ms)));
        self.event_time_ms = Some(self.event_time_ms.map_or(ts_ms, |m| m.max(ts_ms)));
    }

    /// The markers due at `now_ms`, as `(partition, watermark_ms)`: every
    /// partition with no append for the idle timeout whose time is behind
    /// the appender's event time. Each is recorded as appended, so a quiet
    /// partition gets a marker per timeout only while the others move on.
    pub fn due(&mut self, now_ms: u64) -> Vec<(usize, u64)> {
        let Some(event_time_ms) = self.event_time_ms else {
            return Vec::new();
        };
        let mut due = Vec::new();
        for (partition, clock) in self.partitions.iter_mut().enumerate() {
            let quiet = now_ms.saturating_sub(clock.last_append_ms) >= self.idle_timeout_ms;
            if quiet && clock.max_ts_ms.is_none_or(|m| m < event_time_ms) {
                clock.last_append_ms = now_ms;
                clock.max_ts_ms = Some(event_time_ms);
                due.push((partition, event_time_ms));
            }
        }
        due
    }

    /// Appends the markers due at `now_ms` to `writers` (indexed by
    /// partition) and returns how many it wrote.
    pub fn append_due(
        &mut self,
        now_ms: u64,
        writers: &mut [PartitionWriter],
    ) -> Result<usize, LogError> {
        assert_eq!(writers.len(), self.partitions.len());
        let due = self.due(now_ms);
        let mut payload = Vec::with_capacity(crate::event::IDLE_MARKER_LEN_BYTES);
        for &(partition, watermark_ms) in &due {
            payload.clear();
            encode_idle_marker(watermark_ms, &mut payload);
            writers[partition].append(&payload)?;
        }
        Ok(due.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_partition_follows_the_busiest_once_per_timeout() {
        let mut markers = IdleMarkers::new(3, 100, 0);
        assert!(markers.due(1_000).is_empty(), "nothing appended yet");
        markers.appended(0, 5_000, 1_000);
        markers.appended(1, 4_000, 1_000);
        // Partition 2 has been quiet since the start; 1 is behind but not quiet.
        assert_eq!(markers.due(1_050), vec![(2, 5_000)]);
        assert!(markers.due(1_099).is_empty());
        // Quiet for the timeout: 1 catches up; 2 is already at 5000.
        assert_eq!(markers.due(1_100), vec![(1, 5_000)]);
        // Nothing new anywhere: no more markers however long it stays quiet.
        assert!(markers.due(10_000).is_empty());
        // Once the event time moves, partitions long quiet follow at once.
        markers.appended(0, 6_000, 10_000);
        assert_eq!(markers.due(10_050), vec![(1, 6_000), (2, 6_000)]);
        assert!(markers.due(10_100).is_empty());
        // An appended event resets the partition's clock.
        markers.appended(0, 7_000, 10_150);
        markers.appended(2, 6_500, 10_190);
        assert_eq!(markers.due(10_250), vec![(1, 7_000)]);
        assert_eq!(markers.due(10_290), vec![(2, 7_000)]);
    }

    #[test]
    #[should_panic(expected = "below")]
    fn refuses_a_timeout_that_would_flood_the_log() {
        IdleMarkers::new(1, MIN_IDLE_TIMEOUT_MS - 1, 0);
    }
}
