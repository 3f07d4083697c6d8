//! The source operator: reads input partitions, applies the lateness rule of
//! DESIGN §2, pre-aggregates with the query's local combiner and holds its
//! capability at the worker's watermark.
//!
//! Worker `w` of `W` reads the partitions `p` with `p % W == w`, interleaved
//! a bounded number of records at a time so that no partition pins the
//! frontier while another is read. An event is late iff
//! `ts < max_ts_p - lateness`, where `max_ts_p` is the largest time read from
//! its partition before it; this depends only on the log, so results are the
//! same for every worker and process count.
//!
//! A source never re-activates itself in a loop: a source more than
//! `max_ahead_ms` ahead of the output frontier pauses until that frontier
//! moves ([`AheadWaker`]), and one whose partitions are all idle (a tailing
//! run with no new input) polls again after a wait that doubles, from
//! `idle_poll_ms` up to `idle_poll_max_ms`, while they stay idle; so a worker
//! with no input to read parks. A source also parks, reading nothing, while
//! the checkpoint sidecar is behind ([`SourceGate`], decision 27).

mod waker;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::{ProbeHandle, Scope, Stream};
use weir_dataflows::combiner::{LocalCombiner, Update};
use weir_dataflows::key::KeyRef;
use weir_dataflows::window::round_down;
use weir_dataflows::{LateRow, MAX_EVENT_TS_MS};

use crate::checkpoint::pressure::SourceGate;
use crate::event::{EventRef, LogRecord};

pub use crate::checkpoint::resume::{PartitionProgress, SharedProgress};
pub use waker::{AheadWaker, WakerSlot};

/// The longest wait between polls of idle partitions that `weir run` uses:
/// input appended to a quiet tailing run is read at most this late, and an
/// idle source costs a poll per this much time.
pub const IDLE_POLL_MAX_MS: u64 = 16;

/// What a poll of a partition found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeedStatus {
    /// Records were delivered; there may be more right away.
    Progress,
    /// No record is available now; more may be appended later.
    Idle,
    /// The partition has ended (finite input read to its end).
    Ended,
}

/// An error reading a partition, with the partition it came from.
#[derive(Debug, thiserror::Error)]
#[error("input partition {partition}: {source}")]
pub struct FeedError {
    /// The partition.
    pub partition: u32,
    /// What went wrong (names file and offset where there is one).
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// One input partition, read in order from some offset.
pub trait PartitionFeed: 'static {
    /// Delivers up to `max_records` records (events and idle markers) with
    /// their offsets.
    fn poll(
        &mut self,
        max_records: usize,
        deliver: &mut dyn FnMut(u64, LogRecord<'_>),
    ) -> Result<FeedStatus, FeedError>;

    /// Whether records are on their way though none may be there now (a
    /// partition its ingest still writes, decision 72): an idle poll then
    /// does not mean that the source has caught up.
    fn filling(&self) -> bool {
        false
    }
}

/// Where the first failure of any worker is kept for the driver to report.
pub type ErrorSlot = Arc<Mutex<Option<FeedError>>>;

/// Counters shared by the sources of one process.
#[derive(Debug)]
pub struct SourceCounters {
    /// Events read, late or not.
    pub events_read: AtomicU64,
    /// Events refused as late.
    pub events_late: AtomicU64,
    /// Idle markers read (decision 29).
    pub idle_markers: AtomicU64,
    /// Log segment files deleted by `--log-retention checkpointed`, and
    /// their bytes (with their indexes).
    pub log_segments_deleted: AtomicU64,
    /// See `log_segments_deleted`.
    pub log_bytes_deleted: AtomicU64,
    /// Each source's watermark (ms of event time; `u64::MAX` once its
    /// partitions have ended; 0 before the first read).
    pub watermarks: Mutex<Vec<Arc<AtomicU64>>>,
    /// Each source's pre-aggregated partials not yet released, with its
    /// worker index: the state of the windows still open (for tumbling
    /// windows, all of it).
    pub combiner_partials: Mutex<Vec<(usize, Arc<AtomicU64>)>>,
    /// Each fixed-window operator's state (live partials, keys, bytes),
    /// with its worker index.
    pub window_state: Mutex<Vec<(usize, Arc<weir_dataflows::gauge::StateGauge>)>>,
    /// Sources that have read every partition to its end at least once
    /// (the end it had then, for a tailing run): they have caught up.
    pub caught_up: AtomicUsize,
    /// The least time of an accepted (not late) event read (`u64::MAX`: none yet).
    pub min_event_ms: AtomicU64,
    /// How many times a source operator ran (however little it did): shows
    /// whether idle sources park.
    pub activations: AtomicU64,
}

impl Default for SourceCounters {
    fn default() -> Self {
        Self {
            events_read: AtomicU64::new(0),
            events_late: AtomicU64::new(0),
            idle_markers: AtomicU64::new(0),
            log_segments_deleted: AtomicU64::new(0),
            log_bytes_deleted: AtomicU64::new(0),
            watermarks: Mutex::default(),
            combiner_partials: Mutex::default(),
            window_state: Mutex::default(),
            caught_up: AtomicUsize::new(0),
            min_event_ms: AtomicU64::new(u64::MAX),
            activations: AtomicU64::new(0),
        }
    }
}

impl SourceCounters {
    /// The least watermark of this process's sources: `None` before any
    /// source exists, `Some(u64::MAX)` once all have ended.
    pub fn watermark_ms(&self) -> Option<u64> {
        let watermarks = self.watermarks.lock().ok()?;
        watermarks.iter().map(|w| w.load(Ordering::Relaxed)).min()
    }
}

/// Settings of the source.
#[derive(Clone, Copy, Debug)]
pub struct SourceConfig {
    /// Time granularity, ms.
    pub granularity_ms: u64,
    /// Allowed lateness, ms.
    pub lateness_ms: u64,
    /// Records read from one partition per activation.
    pub batch_records: usize,
    /// How long to wait before polling again when every partition has just
    /// become idle; the wait doubles while they stay idle.
    pub idle_poll_ms: u64,
    /// The longest wait between polls of idle partitions: how late, at most,
    /// a source notices input appended after a quiet period.
    pub idle_poll_max_ms: u64,
    /// How far (event time, ms) this worker's watermark may run ahead of the
    /// dataflow's output frontier before the source pauses (until that
    /// frontier moves). Bounds the state buffered for future times when one
    /// worker reads faster than another.
    pub max_ahead_ms: u64,
    /// Checkpoint cuts are multiples of this (0: no checkpoints, no resume marks).
    pub cut_step_ms: u64,
    /// After a restore from a cut at this time: accepted events with a
    /// smaller time are already in the restored state and are skipped.
    pub restored_cut_ms: Option<u64>,
}

/// One partition to read, and from where.
pub struct PartitionInput<F> {
    /// The partition.
    pub partition: u32,
    /// Its records, from `start_offset`.
    pub feed: F,
    /// The offset the feed starts at.
    pub start_offset: u64,
    /// The largest event time of the records before `start_offset`.
    pub max_ts_before: Option<u64>,
}

struct PartitionState<F> {
    partition: u32,
    feed: F,
    ended: bool,
}

/// The source's two outputs: the combiner's partials (differential updates)
/// and the late events.
pub type SourceStreams<'scope, R> = (
    Stream<'scope, u64, Vec<Update<R>>>,
    Stream<'scope, u64, Vec<LateRow>>,
);

/// Builds the source over `partitions` (this worker's share). `progress` is
/// filled with one entry per partition, in the order given. `output_probe`
/// is the output frontier that `max_ahead_ms` is measured from; the operator
/// that sees that frontier must report it to `waker`. With checkpoints,
/// `gate` holds the source while the sidecar is behind.
#[allow(clippy::too_many_arguments)]
pub fn partition_source<F, C>(
    scope: Scope<'_, u64>,
    partitions: Vec<PartitionInput<F>>,
    progress: SharedProgress,
    mut combiner: C,
    config: SourceConfig,
    errors: ErrorSlot,
    counters: Arc<SourceCounters>,
    (output_probe, waker, gate): (ProbeHandle<u64>, AheadWaker, Option<SourceGate>),
) -> SourceStreams<'_, C::Record>
where
    F: PartitionFeed,
    C: LocalCombiner,
{
    assert!(config.granularity_ms > 0 && config.batch_records > 0);
    assert!(config.idle_poll_ms <= config.idle_poll_max_ms);
    let worker_index = scope.index();
    let mut builder = OperatorBuilder::new("PartitionSource".to_owned(), scope);
    let activator = scope.activator_for(builder.operator_info().address);
    let (partials_output, partials) = builder.new_output::<Vec<Update<C::Record>>>();
    let (late_output, late) = builder.new_output::<Vec<LateRow>>();
    let mut partials_output: OutputBuilder<u64, CapacityContainerBuilder<Vec<Update<C::Record>>>> =
        OutputBuilder::from(partials_output);
    let mut late_output: OutputBuilder<u64, CapacityContainerBuilder<Vec<LateRow>>> =
        OutputBuilder::from(late_output);

    builder.build(move |mut capabilities| {
        let mut late_cap = capabilities.pop();
        let mut partials_cap = capabilities.pop();
        let mut states: Vec<PartitionState<F>> = Vec::with_capacity(partitions.len());
        {
            let mut progress = progress.borrow_mut();
            progress.clear();
            for input in partitions {
                progress.push(PartitionProgress::new(input.partition, input.start_offset, input.max_ts_before));
                states.push(PartitionState {
                    partition: input.partition,
                    feed: input.feed,
                    ended: false,
                });
            }
        }
        let mut late_rows: Vec<(u64, LateRow)> = Vec::new();
        let mut failed = false;
        let published_watermark = Arc::new(AtomicU64::new(0));
        counters
            .watermarks
            .lock()
            .expect("poisoned")
            .push(Arc::clone(&published_watermark));
        let held_partials = Arc::new(AtomicU64::new(0));
        counters
            .combiner_partials
            .lock()
            .expect("poisoned")
            .push((worker_index, Arc::clone(&held_partials)));
        let mut caught_up = false;
        let slot = waker.register(activator.clone());
        let mut idle_wait_ms = config.idle_poll_ms;
        // A bucket was left partly released: this activation releases more
        // before it reads more (see below).
        let mut releasing = false;
        move |_frontiers| {
            counters.activations.fetch_add(1, Ordering::Relaxed);
            if failed || partials_cap.is_none() {
                return;
            }
            // Backpressure: the sidecar is behind; read nothing, release
            // nothing, until the driver wakes the source.
            if gate.as_ref().is_some_and(|g| g.park_if_held(&activator)) {
                return;
            }
            // Flow control: wait while this worker is far ahead of the slowest output.
            let out = output_probe.with_frontier(|f| f.first().copied());
            if let (Some(cap), Some(out)) = (partials_cap.as_ref(), out) {
                if *cap.time() > out.saturating_add(config.max_ahead_ms) {
                    // Not activated again until the output frontier moves.
                    waker.pause(slot, out);
                    return;
                }
            }
            let mut progressed = false;
            let mut events_read = 0u64;
            let mut markers_read = 0u64;
            let mut min_ts = u64::MAX;
            let mut progress = progress.borrow_mut();
            // While a released bucket still drains, read nothing: events read
            // meanwhile would grow the next bucket's table through every
            // doubling (a 2M-key pane drains over ~16 activations), and the
            // partials have to go downstream before their windows fire anyway.
            let reading = !releasing;
            for (state, partition_progress) in states.iter_mut().zip(progress.iter_mut()).filter(|(s, _)| reading && !s.ended) {
                let mut too_large: Option<(u64, u64)> = None;
                let SourceConfig {
                    lateness_ms,
                    granularity_ms,
                    cut_step_ms,
                    restored_cut_ms,
                    ..
                } = config;
                let partition = state.partition;
                let polled = state.feed.poll(config.batch_records, &mut |offset, record| {
                    let EventRef { ts, key, value, key_hash } = match record {
                        LogRecord::Event(event) => event,
                        LogRecord::Idle { watermark_ms } => {
                            markers_read += 1;
                            // Counts for the lateness rule as an event at
                            // `watermark_ms` would (decision 29).
                            if watermark_ms > MAX_EVENT_TS_MS {
                                too_large.get_or_insert((offset, watermark_ms));
                            } else {
                                partition_progress.observe(offset, watermark_ms, cut_step_ms);
                            }
                            return;
                        }
                    };
                    events_read += 1;
                    if ts > MAX_EVENT_TS_MS {
                        too_large.get_or_insert((offset, ts));
                        return;
                    }
                    let max_before = partition_progress.max_ts();
                    partition_progress.observe(offset, ts, cut_step_ms);
                    if max_before.is_some_and(|m| ts < m.saturating_sub(lateness_ms)) {
                        // Stamped with the partition's max time so far: the
                        // row belongs to a cut exactly when its offset does.
                        let time = round_down(max_before.unwrap_or(0), granularity_ms);
                        late_rows.push((time, LateRow {
                            partition,
                            offset,
                            ts,
                            key: key.to_owned(),
                            value,
                        }));
                    } else {
                        min_ts = min_ts.min(ts);
                        if restored_cut_ms.is_none_or(|cut| ts >= cut) {
                            let key = match key_hash {
                                Some(hash) => KeyRef::with_hash(key, hash),
                                None => KeyRef::new(key),
                            };
                            combiner.add_hashed(key, ts, value);
                        }
                    }
                });
                let result = match (polled, too_large) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Some((offset, ts))) => Err(FeedError {
                        partition,
                        source: format!("record at offset {offset} has time {ts} ms, above the maximum {MAX_EVENT_TS_MS}").into(),
                    }),
                    (Ok(status), None) => Ok(status),
                };
                match result {
                    Ok(FeedStatus::Progress) => progressed = true,
                    Ok(FeedStatus::Idle) => {}
                    Ok(FeedStatus::Ended) => state.ended = true,
                    Err(e) => {
                        // Keep the capabilities: nothing downstream may treat
                        // the input as complete. The driver stops the run.
                        tracing::error!(error = %e, "source failed");
                        errors.lock().expect("error slot poisoned").get_or_insert(e);
                        failed = true;
                        return;
                    }
                }
            }
            counters.events_read.fetch_add(events_read, Ordering::Relaxed);
            if markers_read > 0 {
                counters.idle_markers.fetch_add(markers_read, Ordering::Relaxed);
            }
            if min_ts != u64::MAX {
                counters.min_event_ms.fetch_min(min_ts, Ordering::Relaxed);
            }

            // The least rounded time an accepted event may still have.
            let watermark: Option<u64> = states
                .iter()
                .zip(progress.iter())
                .filter(|(s, _)| !s.ended)
                .map(|(_, p)| {
                    p.max_ts()
                        .map_or(0, |m| round_down(m.saturating_sub(config.lateness_ms), config.granularity_ms))
                })
                .min();
            drop(progress);
            published_watermark.store(watermark.unwrap_or(u64::MAX), Ordering::Relaxed);
            if reading
                && !progressed
                && !caught_up
                && !states.iter().any(|s| !s.ended && s.feed.filling())
            {
                caught_up = true;
                counters.caught_up.fetch_add(1, Ordering::Relaxed);
            }

            if !late_rows.is_empty() {
                counters.events_late.fetch_add(late_rows.len() as u64, Ordering::Relaxed);
                let cap = late_cap.as_ref().expect("late capability held while running");
                let mut output = late_output.activate();
                for (time, row) in late_rows.drain(..) {
                    // time >= the partition's watermark >= the capability.
                    output.session(&cap.delayed(&time)).give(row);
                }
            }
            let release_below = watermark.unwrap_or(u64::MAX);
            let mut more_to_release = false;
            if combiner.min_pending_time().is_some_and(|t| t < release_below) {
                let cap = partials_cap.as_ref().expect("capability held while running");
                let mut output = partials_output.activate();
                let mut session = output.session(cap);
                more_to_release = combiner.flush_before(
                    release_below,
                    RELEASE_PER_ACTIVATION,
                    &mut |update| {
                        debug_assert!(update.1 >= *cap.time());
                        session.give(update);
                    },
                );
            }
            held_partials.store(combiner.pending_partials() as u64, Ordering::Relaxed);
            // A bucket partly released holds the partials' capability at its time.
            let partials_hold = match (watermark, combiner.min_pending_time()) {
                (Some(w), Some(t)) => Some(w.min(t)),
                (w, _) => w,
            };
            releasing = more_to_release;
            if more_to_release {
                activator.activate();
            }
            if let Some(hold) = partials_hold {
                if let Some(cap) = partials_cap.as_mut() {
                    if *cap.time() < hold {
                        cap.downgrade(&hold);
                    }
                }
            }
            if let Some(w) = watermark {
                if let Some(cap) = late_cap.as_mut() {
                    if *cap.time() < w {
                        cap.downgrade(&w);
                    }
                }
                if progressed {
                    idle_wait_ms = config.idle_poll_ms;
                    activator.activate();
                } else {
                    activator.activate_after(Duration::from_millis(idle_wait_ms));
                    idle_wait_ms = (idle_wait_ms * 2).min(config.idle_poll_max_ms);
                }
            } else if !more_to_release {
                debug_assert!(combiner.min_pending_time().is_none());
                partials_cap = None;
                late_cap = None;
            }
        }
    });
    (partials, late)
}

/// Partials a source hands downstream per activation at most: a pane of
/// millions of keys is released over several activations, so the exchange
/// queues a bounded number of them at a time.
pub const RELEASE_PER_ACTIVATION: usize = 64 * 1024;

/// A partition held in memory: for tests, and for generators that feed the
/// engine directly.
#[derive(Clone, Debug)]
pub struct MemoryFeed {
    events: Arc<Vec<(u64, String, i64)>>,
    position: usize,
}

impl MemoryFeed {
    /// A feed over `events`, in order, from offset 0.
    pub fn new(events: Arc<Vec<(u64, String, i64)>>) -> Self {
        MemoryFeed {
            events,
            position: 0,
        }
    }
}

impl PartitionFeed for MemoryFeed {
    fn poll(
        &mut self,
        max_records: usize,
        deliver: &mut dyn FnMut(u64, LogRecord<'_>),
    ) -> Result<FeedStatus, FeedError> {
        let end = (self.position + max_records).min(self.events.len());
        for (offset, (ts, key, value)) in self.events[self.position..end].iter().enumerate() {
            let event = EventRef {
                ts: *ts,
                key,
                value: *value,
                key_hash: None,
            };
            deliver((self.position + offset) as u64, LogRecord::Event(event));
        }
        let delivered = end > self.position;
        self.position = end;
        Ok(if self.position == self.events.len() {
            FeedStatus::Ended
        } else if delivered {
            FeedStatus::Progress
        } else {
            FeedStatus::Idle
        })
    }
}

impl PartitionFeed for Box<dyn PartitionFeed> {
    fn poll(
        &mut self,
        max_records: usize,
        deliver: &mut dyn FnMut(u64, LogRecord<'_>),
    ) -> Result<FeedStatus, FeedError> {
        (**self).poll(max_records, deliver)
    }

    fn filling(&self) -> bool {
        (**self).filling()
    }
}

#[cfg(test)]
mod tests;
