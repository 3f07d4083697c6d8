//! Assembles the generic window query on one worker: source, query dataflow,
//! sinks and probe.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use differential_dataflow::AsCollection;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Probe;

use timely::dataflow::ProbeHandle;
use timely::worker::Worker;
use weir_dataflows::combiner::{PaneCombiner, SessionCombiner};
use weir_dataflows::session::session_windows;
use weir_dataflows::sliding::{fixed_windows, FixedWindows};
use weir_dataflows::{LateRow, WindowRow, WindowSpec};

use crate::source::{partition_source, ErrorSlot, PartitionFeed, SourceConfig, SourceCounters};

/// The generic window query's parameters.
#[derive(Clone, Copy, Debug)]
pub struct WindowQuery {
    /// Window shape.
    pub spec: WindowSpec,
    /// Time granularity, ms (checked against `spec`).
    pub granularity_ms: u64,
    /// Allowed lateness, ms.
    pub lateness_ms: u64,
}

/// Receives the rows a worker produces.
pub trait RowSink: 'static {
    /// Final window rows (drain them).
    fn window_rows(&mut self, rows: &mut Vec<WindowRow>);
    /// Late events (drain them).
    fn late_rows(&mut self, rows: &mut Vec<LateRow>);
}

/// The number of records held by all arrangements of a worker, from
/// differential's arrangement log (batches built, merged and dropped).
#[derive(Debug, Default)]
pub struct ArrangementGauge {
    /// Records currently held.
    pub records: AtomicI64,
    /// The largest value `records` has had.
    pub peak_records: AtomicI64,
}

impl ArrangementGauge {
    fn add(&self, delta: i64) {
        let now = self.records.fetch_add(delta, Ordering::Relaxed) + delta;
        self.peak_records.fetch_max(now, Ordering::Relaxed);
    }
}

/// Registers a logger that keeps `gauge` up to date for this worker.
pub fn track_arrangements(worker: &mut Worker, gauge: Arc<ArrangementGauge>) {
    use differential_dataflow::logging::{DifferentialEvent, DifferentialEventBuilder};
    if let Some(mut registry) = worker.log_register() {
        registry.insert::<DifferentialEventBuilder, _>(
            "differential/arrange",
            move |_time, events| {
                let Some(events) = events else { return };
                for (_, event) in events.iter() {
                    match event {
                        DifferentialEvent::Batch(b) => gauge.add(b.length as i64),
                        DifferentialEvent::Merge(m) => {
                            if let Some(complete) = m.complete {
                                gauge.add(complete as i64 - m.length1 as i64 - m.length2 as i64);
                            }
                        }
                        DifferentialEvent::Drop(d) => gauge.add(-(d.length as i64)),
                        _ => {}
                    }
                }
            },
        );
    }
}

/// Builds the window query over `feeds` (this worker's partitions) and
/// returns a probe whose frontier is empty once every row has been sunk.
pub fn build_window_query<F, S>(
    worker: &mut Worker,
    feeds: Vec<(u32, F)>,
    query: WindowQuery,
    source_config: SourceConfig,
    sink: Rc<RefCell<S>>,
    errors: ErrorSlot,
    counters: Arc<SourceCounters>,
) -> ProbeHandle<u64>
where
    F: PartitionFeed,
    S: RowSink,
{
    query
        .spec
        .check_granularity(query.granularity_ms)
        .expect("granularity checked before the run");
    let probe = ProbeHandle::new();
    worker.dataflow::<u64, _, _>(|scope| {
        let (rows, late) = match query.spec {
            WindowSpec::Tumbling { .. } | WindowSpec::Sliding { .. } => {
                let slide_ms = query.spec.slide_ms().expect("fixed windows slide");
                let combiner = PaneCombiner::new(slide_ms, query.granularity_ms);
                let (partials, late) = partition_source(
                    scope,
                    feeds,
                    combiner,
                    source_config,
                    errors,
                    counters,
                    probe.clone(),
                );
                let windows = FixedWindows {
                    size_ms: query.spec.size_ms(),
                    slide_ms,
                    granularity_ms: query.granularity_ms,
                };
                (fixed_windows(partials.as_collection(), windows), late)
            }
            WindowSpec::Session { gap_ms } => {
                let combiner = SessionCombiner::new(gap_ms, query.granularity_ms);
                let (partials, late) = partition_source(
                    scope,
                    feeds,
                    combiner,
                    source_config,
                    errors,
                    counters,
                    probe.clone(),
                );
                (
                    session_windows(partials.as_collection(), gap_ms, query.granularity_ms),
                    late,
                )
            }
        };
        let rows = rows.probe_with(&probe);
        let late = late.probe_with(&probe);
        let rows_sink = Rc::clone(&sink);
        rows.sink(Pipeline, "WindowRowSink", move |(input, _frontier)| {
            input.for_each_stamp(|_stamp, batches| {
                for batch in batches {
                    rows_sink.borrow_mut().window_rows(batch);
                }
            });
        });
        late.sink(Pipeline, "LateRowSink", move |(input, _frontier)| {
            input.for_each_stamp(|_stamp, batches| {
                for batch in batches {
                    sink.borrow_mut().late_rows(batch);
                }
            });
        });
        probe
    })
}

/// The default read-ahead bound of the sources: a few windows (plus the
/// lateness) of event time, so that a fast worker buffers a bounded amount of
/// future state while a slow one catches up.
pub fn max_ahead_ms(query: &WindowQuery) -> u64 {
    4 * query.spec.size_ms().max(query.granularity_ms) + query.lateness_ms
}
