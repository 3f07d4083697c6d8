//! Tests of how often a source runs while its input has stalled: a worker
//! with nothing to read must park, not re-run its source in a loop. They
//! count the sources' activations ([`SourceCounters::activations`]) over a
//! stalled period rather than measuring CPU, so a busy machine cannot make
//! them fail: a spinning source runs thousands of times in that period.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use weir_dataflows::{LateRow, WindowRow, WindowSpec};

use super::*;
use crate::job::{build_window_query, WindowQuery};
use crate::sink::RowSink;

/// Delivers its events, then has nothing new, ever: a tailing input that
/// stalled.
struct StalledFeed {
    events: Vec<(u64, String, i64)>,
    position: usize,
}

impl PartitionFeed for StalledFeed {
    fn poll(
        &mut self,
        max_records: usize,
        deliver: &mut dyn FnMut(u64, LogRecord<'_>),
    ) -> Result<FeedStatus, FeedError> {
        let end = (self.position + max_records).min(self.events.len());
        for (offset, (ts, key, value)) in
            self.events.iter().enumerate().take(end).skip(self.position)
        {
            // Every other key comes hashed, as a log read ahead gives them.
            let event = EventRef {
                ts: *ts,
                key,
                value: *value,
                key_hash: (offset % 2 == 1).then(|| weir_dataflows::key::key_hash(key)),
            };
            deliver(offset as u64, LogRecord::Event(event));
        }
        let progressed = end > self.position;
        self.position = end;
        Ok(if progressed {
            FeedStatus::Progress
        } else {
            FeedStatus::Idle
        })
    }
}

struct Discard;

impl RowSink for Discard {
    fn window_rows(&mut self, rows: &mut Vec<WindowRow>) {
        rows.clear();
    }
    fn result_lines(&mut self, lines: &mut Vec<String>) {
        lines.clear();
    }
    fn late_rows(&mut self, rows: &mut Vec<LateRow>) {
        rows.clear();
    }
}

/// Runs a tumbling 1 s window on two workers, each reading one partition
/// that stalls: worker 0's reaches 999 s (far more than `max_ahead_ms`, 4 s,
/// ahead of the output frontier), worker 1's only 9.9 s. Once both sources
/// have read everything, and a moment later, counts the sources'
/// activations over `window`; returns them with how long that took.
fn activations_while_stalled(
    idle_poll_ms: u64,
    idle_poll_max_ms: u64,
    window: Duration,
) -> (u64, Duration) {
    let query = WindowQuery {
        spec: WindowSpec::Tumbling { size_ms: 1_000 },
        granularity_ms: 1_000,
        lateness_ms: 0,
        nexmark: None,
        emit: weir_dataflows::emit::Emit::All,
        aggregates: weir_dataflows::aggregates::Aggregates::default(),
    };
    let config = SourceConfig {
        granularity_ms: 1_000,
        lateness_ms: 0,
        batch_records: 10_000,
        idle_poll_ms,
        idle_poll_max_ms,
        max_ahead_ms: crate::job::max_ahead_ms(&query),
        cut_step_ms: 0,
        restored_cut_ms: None,
    };
    let counters = Arc::new(SourceCounters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let errors: ErrorSlot = Arc::default();
    let guards = {
        let (counters, stop) = (Arc::clone(&counters), Arc::clone(&stop));
        timely::execute(timely::Config::process(2), move |worker| {
            let index = worker.index();
            let (count, step_ms) = if index == 0 {
                (1_000, 1_000)
            } else {
                (100, 100)
            };
            let events = (0..count)
                .map(|i| (i * step_ms, format!("k{}", i % 7), 1))
                .collect();
            let feeds = vec![PartitionInput {
                partition: index as u32,
                feed: StalledFeed {
                    events,
                    position: 0,
                },
                start_offset: 0,
                max_ts_before: None,
            }];
            let sink = Rc::new(RefCell::new(Discard));
            build_window_query(
                worker,
                feeds,
                query,
                config,
                sink,
                Arc::clone(&errors),
                Arc::clone(&counters),
                None,
                None,
            );
            while !stop.load(Ordering::Acquire) {
                worker.step_or_park(Some(Duration::from_millis(1)));
            }
            for dataflow in worker.installed_dataflows() {
                worker.drop_dataflow(dataflow);
            }
        })
        .unwrap()
    };
    let read_all = || {
        let mut w: Vec<u64> = counters
            .watermarks
            .lock()
            .unwrap()
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        w.sort_unstable();
        w == [9_000, 999_000]
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !read_all() {
        assert!(
            Instant::now() < deadline,
            "the sources did not read their input"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    // The output frontier catches up with worker 1 and stops.
    std::thread::sleep(Duration::from_millis(200));
    let (before, started) = (counters.activations.load(Ordering::Relaxed), Instant::now());
    std::thread::sleep(window);
    let (after, took) = (
        counters.activations.load(Ordering::Relaxed),
        started.elapsed(),
    );
    stop.store(true, Ordering::Release);
    for result in guards.join() {
        result.unwrap();
    }
    (after - before, took)
}

#[test]
fn a_source_ahead_of_a_stalled_frontier_is_not_run_again() {
    // Idle polls effectively off, so only the paused worker 0 could run.
    let (activations, took) = activations_while_stalled(60_000, 60_000, Duration::from_millis(300));
    assert!(
        activations <= 2,
        "{activations} source activations in {took:?} with the input stalled"
    );
}

#[test]
fn an_idle_source_backs_off_to_its_longest_poll_interval() {
    let (activations, took) = activations_while_stalled(1, 16, Duration::from_millis(500));
    // Worker 1 polls about once per 16 ms; worker 0 stays paused.
    let bound = took.as_millis() as u64 / 16 + 5;
    assert!(
        activations <= bound,
        "{activations} source activations in {took:?} (at most {bound}) with the input stalled"
    );
}
