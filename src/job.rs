//! Assembles the generic window query on one worker: source, query dataflow,
//! checkpoint tap and announcer, output operator and probe.

pub mod query_file;
mod restore;

pub use restore::{open_restore, RestoreError, RestoreReport, RestoredState};
use restore::{restored_panes, restored_sessions};

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use differential_dataflow::AsCollection;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::{Concat, Probe};
use timely::dataflow::ProbeHandle;
use timely::worker::Worker;
use weir_dataflows::aggregates::{Aggregate, Aggregates, SketchColumns};
use weir_dataflows::combiner::{LocalCombiner, PaneCombiner, PaneValue, SessionCombiner};
use weir_dataflows::emit::Emit;
use weir_dataflows::gauge::StateGauge;
use weir_dataflows::nexmark::NexmarkQuery;
use weir_dataflows::pane_store::SpillConfig;
use weir_dataflows::session::session_windows;
use weir_dataflows::sketch::hll::Hll;
use weir_dataflows::sketch::{AggDistinct, AggTop, NoDistinct, SketchPartial};
use weir_dataflows::sketch_windows::{sketch_windows, SketchRow};
use weir_dataflows::sliding::{fixed_windows, FixedWindows};
use weir_dataflows::{Agg, Key, LateRow, WindowRow, WindowSpec};

use crate::checkpoint::cadence::Cadence;
use crate::checkpoint::cut::{
    cut_announcer, persist_tap, resume_only_tap, BacklogProbe, CutAssembler,
};
use crate::checkpoint::pressure::SourceGate;
pub use crate::sink::RowSink;
use crate::sink::{format_window_fields, output_operator, OutputRow};
use crate::source::{
    partition_source, AheadWaker, ErrorSlot, PartitionFeed, PartitionInput, SharedProgress,
    SourceConfig, SourceCounters,
};

/// The generic window query's parameters.
#[derive(Clone, Copy, Debug)]
pub struct WindowQuery {
    /// Window shape.
    pub spec: WindowSpec,
    /// Time granularity, ms (checked against `spec`).
    pub granularity_ms: u64,
    /// Allowed lateness, ms.
    pub lateness_ms: u64,
    /// The Nexmark query whose aggregation this is (its records are
    /// projected for it and its result stage follows the windows), or
    /// `None` for the generic window query.
    pub nexmark: Option<NexmarkQuery>,
    /// Which rows fixed windows emit (`Changes` only for the generic query
    /// with tumbling or sliding windows).
    pub emit: Emit,
    /// The aggregate columns of the generic query (the default for Nexmark).
    pub aggregates: Aggregates,
}

impl WindowQuery {
    /// The Nexmark query `query` with `lateness_ms`.
    pub fn nexmark(query: NexmarkQuery, lateness_ms: u64) -> Self {
        let spec = query.window();
        WindowQuery {
            spec,
            granularity_ms: spec.default_granularity_ms(),
            lateness_ms,
            nexmark: Some(query),
            emit: Emit::All,
            aggregates: Aggregates::default(),
        }
    }

    /// The generic window query over `spec` with the default granularity,
    /// all rows emitted and the default aggregates.
    pub fn generic(spec: WindowSpec, lateness_ms: u64) -> Self {
        WindowQuery {
            spec,
            granularity_ms: spec.default_granularity_ms(),
            lateness_ms,
            nexmark: None,
            emit: Emit::All,
            aggregates: Aggregates::default(),
        }
    }

    /// The header of the result rows file.
    pub fn result_header(&self) -> String {
        match self.nexmark {
            Some(q) => q.header().to_owned(),
            None => self.aggregates.header(),
        }
    }

    /// How far below a cut `T` persisted updates still matter: a window
    /// ending after `T` ends at `T + slide` or later, so its earliest pane
    /// is timed at or after `T - size + slide`; tumbling windows need none.
    /// With `--emit changes` the window ending at `T` is needed too (the
    /// next window's changes are against it): one pane more.
    /// Sessions persist the open sessions, whatever their age (`u64::MAX`).
    pub fn retention_ms(&self) -> u64 {
        match (self.spec.slide_ms(), self.emit) {
            (Some(_), Emit::Changes) => self.spec.size_ms(),
            (Some(slide_ms), Emit::All) => self.spec.size_ms() - slide_ms,
            (None, _) => u64::MAX,
        }
    }

    /// Checkpoint cuts are multiples of this, ms: the slide of fixed
    /// windows (a cut never splits a pane); for sessions the gap when it is
    /// a multiple of the granularity (a cut never splits a granule, and the
    /// open sessions' changes within a gap consolidate before a cut), else
    /// the granularity.
    pub fn cut_step_ms(&self) -> u64 {
        match self.spec {
            WindowSpec::Session { gap_ms } if gap_ms.is_multiple_of(self.granularity_ms) => gap_ms,
            spec => spec.slide_ms().unwrap_or(self.granularity_ms),
        }
    }

    /// A fingerprint of everything that shapes the persisted state; a
    /// checkpoint taken with another fingerprint is refused at restore.
    pub fn fingerprint(&self) -> u64 {
        let text = match self.nexmark {
            // The default `--emit all` and aggregates keep the fingerprint
            // they had before those options; the others are added.
            None => {
                let emit = match self.emit {
                    Emit::All => String::new(),
                    emit @ Emit::Changes => format!("|emit={emit}"),
                };
                // Only the partials' type shapes the state; the columns of
                // the default partials do not.
                let distinct = self.aggregates.contains(Aggregate::Distinct);
                let sketch = match (distinct, self.aggregates.topk()) {
                    (false, None) => String::new(),
                    (true, None) => "|sketch=hll-v1".to_owned(),
                    // The values a pane keeps depend on k.
                    (false, Some(k)) => format!("|sketch=top-v1|topk={k}"),
                    (true, Some(k)) => format!("|sketch=hll-v1+top-v1|topk={k}"),
                };
                format!(
                    "weir-window-v1|{}|{}|{}{emit}{sketch}",
                    self.spec, self.granularity_ms, self.lateness_ms
                )
            }
            Some(q) => format!(
                "weir-nexmark-v1|{q}|{}|{}|{}",
                self.spec, self.granularity_ms, self.lateness_ms
            ),
        };
        weir_dataflows::key::key_hash(&text)
    }
}

/// The number of records held by all arrangements of a worker, from
/// differential's arrangement log (batches built, merged and dropped).
#[derive(Debug, Default)]
pub struct ArrangementGauge {
    /// Records currently held.
    pub records: AtomicI64,
    /// The largest value `records` has had.
    pub peak_records: AtomicI64,
    /// Records currently held, per arrangement (timely operator id).
    pub per_operator: std::sync::Mutex<std::collections::BTreeMap<usize, i64>>,
    /// Batch merges completed.
    pub merges: AtomicU64,
    /// Records that merges consolidated away (retracted window state that is
    /// physically gone): the arrangements' eviction count.
    pub records_compacted: AtomicU64,
}

impl ArrangementGauge {
    fn add(&self, delta: i64) {
        let now = self.records.fetch_add(delta, Ordering::Relaxed) + delta;
        self.peak_records.fetch_max(now, Ordering::Relaxed);
    }

    /// Records held per arrangement operator: `(operator id, records)`.
    pub fn per_operator(&self) -> Vec<(usize, i64)> {
        self.per_operator
            .lock()
            .map(|m| m.iter().map(|(&op, &n)| (op, n)).collect())
            .unwrap_or_default()
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
                let mut per_operator = gauge.per_operator.lock().expect("poisoned");
                for (_, event) in events.iter() {
                    let (operator, delta) = match event {
                        DifferentialEvent::Batch(b) => (b.operator, b.length as i64),
                        DifferentialEvent::Merge(m) => {
                            let Some(complete) = m.complete else { continue };
                            let merged = (m.length1 + m.length2) as i64;
                            gauge.merges.fetch_add(1, Ordering::Relaxed);
                            gauge.records_compacted.fetch_add(
                                (merged - complete as i64).max(0) as u64,
                                Ordering::Relaxed,
                            );
                            (m.operator, complete as i64 - merged)
                        }
                        DifferentialEvent::Drop(d) => (d.operator, -(d.length as i64)),
                        _ => continue,
                    };
                    gauge.add(delta);
                    *per_operator.entry(operator).or_default() += delta;
                }
            },
        );
    }
}

/// A pane partial as persisted: the record of [`PaneCombiner`].
pub type PaneRecord = <PaneCombiner as LocalCombiner>::Record;

/// Checkpointing on one worker.
pub struct WorkerCheckpointing {
    /// Joins the tap's and the sink's shares of each cut.
    pub assembler: Rc<RefCell<CutAssembler>>,
    /// Whether this worker announces cuts (worker 0).
    pub leader: bool,
    /// Cuts are multiples of this, ms of event time.
    pub step_ms: u64,
    /// How often cuts are announced (worker 0 only).
    pub cadence: Cadence,
    /// The sidecar's backlog, for the cadence (worker 0 only).
    pub backlog: BacklogProbe,
    /// The restored checkpoint's id and cut time (0, 0 for a fresh run).
    pub restored: (u64, u64),
    /// The restored state of this worker's key groups.
    pub restored_state: RestoredState,
    /// Holds the sources while the sidecar is behind; the taps report to
    /// its pressure.
    pub gate: SourceGate,
}

/// A session as persisted: the record of [`SessionCombiner`].
pub type SessionRecord = <SessionCombiner as LocalCombiner>::Record;

/// Builds the window query over `feeds` (this worker's partitions) and
/// returns a probe whose frontier is empty once every row has been sunk.
#[allow(clippy::too_many_arguments)]
pub fn build_window_query<F, S>(
    worker: &mut Worker,
    feeds: Vec<PartitionInput<F>>,
    query: WindowQuery,
    source_config: SourceConfig,
    sink: Rc<RefCell<S>>,
    errors: ErrorSlot,
    counters: Arc<SourceCounters>,
    checkpointing: Option<WorkerCheckpointing>,
    spill: Option<SpillConfig>,
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
    let waker = AheadWaker::default();
    let progress: SharedProgress = Rc::default();
    worker.dataflow::<u64, _, _>(|scope| {
        let announcements = checkpointing.as_ref().map(|c| {
            cut_announcer(
                scope,
                probe.clone(),
                (c.leader, c.step_ms),
                (c.cadence, Rc::clone(&c.backlog)),
                c.restored,
            )
        });
        let assembler = checkpointing.as_ref().map(|c| Rc::clone(&c.assembler));
        let restored_cut = checkpointing.as_ref().map_or(0, |c| c.restored.1);
        let gate = checkpointing.as_ref().map(|c| c.gate.clone());
        let (rows, late) = match query.spec {
            WindowSpec::Tumbling { .. } | WindowSpec::Sliding { .. } => {
                let slide_ms = query.spec.slide_ms().expect("fixed windows slide");
                let gauge = Arc::new(StateGauge::default());
                counters
                    .window_state
                    .lock()
                    .expect("poisoned")
                    .push((scope.index(), Arc::clone(&gauge)));
                let windows = FixedWindows {
                    emit: query.emit,
                    columns: query.aggregates,
                    size_ms: query.spec.size_ms(),
                    slide_ms,
                    granularity_ms: query.granularity_ms,
                    quiet_before_ms: restored_cut,
                };
                let inputs = FixedInputs {
                    feeds,
                    query,
                    progress: Rc::clone(&progress),
                    source_config,
                    errors,
                    counters,
                    probe: (probe.clone(), waker.clone(), gate),
                    checkpointing: checkpointing.zip(announcements.as_ref()),
                    restored_cut,
                };
                let aggregates = query.aggregates;
                match (
                    aggregates.contains(Aggregate::Distinct),
                    aggregates.contains(Aggregate::TopK),
                ) {
                    (false, false) => {
                        let (partials, late) = fixed_window_partials::<F, Agg>(scope, inputs);
                        // Each worker spills into a directory of its own.
                        let spill = spill.map(|c| SpillConfig {
                            dir: c.dir.join(format!("worker-{}", scope.index())),
                            ..c
                        });
                        let rows = fixed_windows(partials.as_collection(), windows, gauge, spill);
                        (Rows::Windows(rows), late)
                    }
                    (true, false) => sketch_rows::<F, AggDistinct>(scope, inputs, windows, gauge),
                    (false, true) => {
                        sketch_rows::<F, AggTop<NoDistinct>>(scope, inputs, windows, gauge)
                    }
                    (true, true) => sketch_rows::<F, AggTop<Hll>>(scope, inputs, windows, gauge),
                }
            }
            WindowSpec::Session { gap_ms } => {
                let combiner = SessionCombiner::new(gap_ms, query.granularity_ms);
                let (mut partials, late) = partition_source(
                    scope,
                    feeds,
                    Rc::clone(&progress),
                    combiner,
                    source_config,
                    errors,
                    counters,
                    (probe.clone(), waker.clone(), gate),
                );
                let mut assembler_for_tap = None;
                if let Some(c) = checkpointing {
                    let pressure = Arc::clone(c.gate.pressure());
                    let RestoredState::Sessions(restored) = c.restored_state else {
                        unreachable!("sessions restore open sessions")
                    };
                    // Restored sessions re-enter as partials; the tap skips
                    // their re-insertion (times below the restored cut).
                    partials = partials.concat(restored_sessions(scope, restored));
                    assembler_for_tap = Some((c.assembler, pressure));
                }
                let (rows, state) = session_windows(
                    partials.as_collection(),
                    gap_ms,
                    query.granularity_ms,
                    assembler_for_tap.is_some(),
                );
                if let (Some((assembler, pressure)), Some(cuts), Some(state)) =
                    (assembler_for_tap, announcements.as_ref(), state)
                {
                    persist_tap::<SessionCombiner>(
                        &state,
                        cuts,
                        (Rc::clone(&progress), pressure),
                        assembler,
                        (restored_cut, query.retention_ms(), query.cut_step_ms()),
                    );
                }
                (Rows::Windows(rows), late)
            }
        };
        let rows = match (rows, query.nexmark) {
            (Rows::Lines(lines), _) => lines,
            (Rows::Windows(rows), Some(q)) => q.finish(rows).map(OutputRow::Result),
            (Rows::Windows(rows), None) if query.aggregates.is_default() => {
                rows.map(OutputRow::Window)
            }
            (Rows::Windows(rows), None) => {
                let aggregates = query.aggregates;
                rows.map(move |row| OutputRow::Result(window_line(&row, aggregates)))
            }
        };
        let rows = rows.probe_with(&probe);
        let late = late.probe_with(&probe);
        let outputs = rows.concat(late.map(OutputRow::Late));
        output_operator(
            &outputs,
            announcements.as_ref().zip(assembler),
            restored_cut,
            (sink, waker),
        );
        probe
    })
}

/// A worker's window rows, before they become output rows.
enum Rows<'scope> {
    /// Generic window rows (all four aggregates).
    Windows(timely::dataflow::Stream<'scope, u64, Vec<WindowRow>>),
    /// Rows already formatted for their columns.
    Lines(timely::dataflow::Stream<'scope, u64, Vec<OutputRow>>),
}

/// What the fixed windows' partials are built from.
struct FixedInputs<'a, 'scope, F> {
    feeds: Vec<PartitionInput<F>>,
    query: WindowQuery,
    progress: SharedProgress,
    source_config: SourceConfig,
    errors: ErrorSlot,
    counters: Arc<SourceCounters>,
    probe: (ProbeHandle<u64>, AheadWaker, Option<SourceGate>),
    checkpointing: Option<(
        WorkerCheckpointing,
        &'a timely::dataflow::Stream<'scope, u64, Vec<crate::checkpoint::cut::Announcement>>,
    )>,
    restored_cut: u64,
}

/// The pane partials (of type `P`) of this worker's sources, tapped for
/// checkpoints and joined by the restored ones, and the late events.
#[allow(clippy::type_complexity)]
fn fixed_window_partials<'scope, F: PartitionFeed, P: PaneValue>(
    scope: timely::dataflow::Scope<'scope, u64>,
    inputs: FixedInputs<'_, 'scope, F>,
) -> (
    timely::dataflow::Stream<'scope, u64, Vec<weir_dataflows::combiner::Update<(Key, (u64, P))>>>,
    timely::dataflow::Stream<'scope, u64, Vec<LateRow>>,
) {
    let FixedInputs {
        feeds,
        query,
        progress,
        source_config,
        errors,
        counters,
        probe,
        checkpointing,
        restored_cut,
    } = inputs;
    let slide_ms = query.spec.slide_ms().expect("fixed windows slide");
    let combiner = PaneCombiner::<P>::new(slide_ms, query.granularity_ms);
    let (mut partials, late) = partition_source(
        scope,
        feeds,
        Rc::clone(&progress),
        combiner,
        source_config,
        errors,
        counters,
        probe,
    );
    if let Some((c, cuts)) = checkpointing {
        let pressure = Arc::clone(c.gate.pressure());
        if query.retention_ms() == 0 {
            resume_only_tap(cuts, (progress, pressure), c.assembler, restored_cut);
        } else {
            persist_tap::<PaneCombiner<P>>(
                &partials,
                cuts,
                (progress, pressure),
                c.assembler,
                (restored_cut, query.retention_ms(), query.cut_step_ms()),
            );
        }
        // After the tap: restored state is in the checkpoint already.
        let RestoredState::Panes(restored) = c.restored_state else {
            unreachable!("fixed windows restore pane partials")
        };
        partials = partials.concat(restored_panes::<P>(scope, restored));
    }
    (partials, late)
}

/// The rows (as CSV lines) of fixed windows whose pane partials `P` carry
/// sketches, and the late events.
fn sketch_rows<'scope, F: PartitionFeed, P: SketchPartial>(
    scope: timely::dataflow::Scope<'scope, u64>,
    inputs: FixedInputs<'_, 'scope, F>,
    windows: FixedWindows,
    gauge: Arc<StateGauge>,
) -> (
    Rows<'scope>,
    timely::dataflow::Stream<'scope, u64, Vec<LateRow>>,
) {
    let (partials, late) = fixed_window_partials::<F, P>(scope, inputs);
    let aggregates = windows.columns;
    let rows = sketch_windows(partials.as_collection(), windows, gauge);
    let lines = rows.map(move |row| OutputRow::Result(sketch_line(&row, aggregates)));
    (Rows::Lines(lines), late)
}

/// A generic window row as a CSV line of `aggregates`' columns.
fn window_line(row: &WindowRow, aggregates: Aggregates) -> String {
    let fields = (row.window_start, row.window_end, row.key.as_str());
    line(|out| format_window_fields(fields, &row.agg, SketchColumns::default(), aggregates, out))
}

/// A row with sketch columns as a CSV line of `aggregates`' columns.
fn sketch_line(row: &SketchRow, aggregates: Aggregates) -> String {
    let fields = (row.window_start, row.window_end, row.key.as_str());
    let sketches = SketchColumns {
        distinct: Some(row.distinct),
        top: Some(&row.top),
    };
    line(|out| format_window_fields(fields, &row.agg, sketches, aggregates, out))
}

/// The line `format` writes.
fn line(format: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut bytes = Vec::with_capacity(64);
    format(&mut bytes);
    String::from_utf8(bytes).expect("numbers and a UTF-8 key")
}

/// The default read-ahead bound of the sources: a few windows (plus the
/// lateness) of event time, so that a fast worker buffers a bounded amount of
/// future state while a slow one catches up.
pub fn max_ahead_ms(query: &WindowQuery) -> u64 {
    4 * query.spec.size_ms().max(query.granularity_ms) + query.lateness_ms
}
