//! Deterministic idleness on the appending side (decision 29): whatever
//! appends events to several partitions of a topic as they arrive (the
//! latency harness's generator, stream connectors) asks [`IdleMarkers`]
//! which partitions have had nothing new for the idle timeout, and appends
//! an idle marker to each of them. The marker carries the event time of the
//! partitions still active (the least of their largest `ts`; when all are
//! quiet, the largest `ts` appended anywhere), so a quiet partition's
//! watermark follows the others instead of holding every window back, but
//! never runs ahead of the slowest active one (a marker ahead of it would
//! not move the frontier, only make the quiet partition's next events
//! late). The markers are records of the log, so a replay reads the same
//! ones and computes the same results; only *where* they fall depends on
//! the appender's clock, as the events' own order does.

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

// Every field has its unit in its name, as everywhere here.
#[allow(clippy::struct_field_names)]
#[derive(Clone, Copy, Debug)]
struct PartitionClock {
    /// When the partition last had an event appended, on the caller's clock.
    last_event_ms: u64,
    /// When it last had an event or a marker appended.
    last_append_ms: u64,
    /// The largest time of its events.
    max_event_ts_ms: Option<u64>,
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
                    last_event_ms: now_ms,
                    last_append_ms: now_ms,
                    max_event_ts_ms: None,
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
        clock.last_event_ms = now_ms;
        clock.last_append_ms = now_ms;
        clock.max_event_ts_ms = Some(clock.max_event_ts_ms.map_or(ts_ms, |m| m.max(ts_ms)));
        clock.max_ts_ms = Some(clock.max_ts_ms.map_or(ts_ms, |m| m.max(ts_ms)));
        self.event_time_ms = Some(self.event_time_ms.map_or(ts_ms, |m| m.max(ts_ms)));
    }

    /// The markers due at `now_ms`, as `(partition, watermark_ms)`: every
    /// partition with no append for the idle timeout whose time is behind
    /// the watermark, which is the least largest event time of the
    /// partitions that had an event within the timeout, or, when none did,
    /// the largest event time appended anywhere. Each marker is recorded as
    /// appended, so a quiet partition gets one per timeout at most, and only
    /// while the others move on.
    pub fn due(&mut self, now_ms: u64) -> Vec<(usize, u64)> {
        let Some(event_time_ms) = self.event_time_ms else {
            return Vec::new();
        };
        let timeout_ms = self.idle_timeout_ms;
        let quiet_since = |last_ms: u64| now_ms.saturating_sub(last_ms) >= timeout_ms;
        let watermark_ms = self
            .partitions
            .iter()
            .filter(|c| !quiet_since(c.last_event_ms))
            .filter_map(|c| c.max_event_ts_ms)
            .min()
            .unwrap_or(event_time_ms);
        let mut due = Vec::new();
        for (partition, clock) in self.partitions.iter_mut().enumerate() {
            if quiet_since(clock.last_append_ms) && clock.max_ts_ms.is_none_or(|m| m < watermark_ms)
            {
                clock.last_append_ms = now_ms;
                clock.max_ts_ms = Some(watermark_ms);
                due.push((partition, watermark_ms));
            }
        }
        due
    }

    /// Appends the markers due at `now_ms` to `writers` (indexed by
    /// partition) and returns how many it wrote. The events appended so far
    /// are flushed first, so a reader never sees a marker before the events
    /// its watermark came from.
    pub fn append_due(
        &mut self,
        now_ms: u64,
        writers: &mut [PartitionWriter],
    ) -> Result<usize, LogError> {
        assert_eq!(writers.len(), self.partitions.len());
        let due = self.due(now_ms);
        if !due.is_empty() {
            for writer in writers.iter_mut() {
                writer.flush()?;
            }
        }
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
    fn a_quiet_partition_follows_the_slowest_active_one_once_per_timeout() {
        let mut markers = IdleMarkers::new(3, 100, 0);
        assert!(markers.due(1_000).is_empty(), "nothing appended yet");
        markers.appended(0, 5_000, 1_000);
        markers.appended(1, 4_000, 1_000);
        // Partition 2 has been quiet since the start: it follows the
        // slowest active partition, 1, not the fastest.
        assert_eq!(markers.due(1_050), vec![(2, 4_000)]);
        assert!(markers.due(1_099).is_empty());
        // All quiet for the timeout: everything follows the largest time
        // appended (2 is not quiet yet: its marker was at 1050).
        assert_eq!(markers.due(1_100), vec![(1, 5_000)]);
        assert_eq!(markers.due(1_150), vec![(2, 5_000)]);
        // Nothing new anywhere: no more markers however long it stays quiet.
        assert!(markers.due(10_000).is_empty());
        // Once event time moves, partitions long quiet follow at once.
        markers.appended(0, 6_000, 10_000);
        assert_eq!(markers.due(10_050), vec![(1, 6_000), (2, 6_000)]);
        assert!(markers.due(10_100).is_empty());
        // An appended event resets the partition's clock; 2 is active again
        // and holds the watermark for 1 at its own time.
        markers.appended(0, 7_000, 10_150);
        markers.appended(2, 6_500, 10_190);
        assert_eq!(markers.due(10_250), vec![(1, 6_500)]);
        assert!(markers.due(10_289).is_empty());
        // A marker does not make its partition active: with 2 quiet, 1
        // follows 0 (7000), and 2, quiet since 10190, too.
        assert_eq!(markers.due(10_350), vec![(1, 7_000), (2, 7_000)]);
    }

    #[test]
    fn one_far_future_event_is_not_copied_into_quiet_partitions_while_others_are_active() {
        let mut markers = IdleMarkers::new(3, 100, 0);
        markers.appended(0, u64::from(u32::MAX), 0);
        markers.appended(1, 1_000, 0);
        markers.appended(1, 1_100, 150);
        assert_eq!(markers.due(150), vec![(2, 1_100)]);
    }

    #[test]
    #[should_panic(expected = "below")]
    fn refuses_a_timeout_that_would_flood_the_log() {
        IdleMarkers::new(1, MIN_IDLE_TIMEOUT_MS - 1, 0);
    }
}
