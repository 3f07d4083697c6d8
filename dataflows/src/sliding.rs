//! Sliding windows (tumbling windows, one pane each, take the shortcut in
//! [`crate::tumbling`]).
//!
//! The input is the collection of pane partials `(key, (pane_start, agg))`
//! released by [`crate::combiner::PaneCombiner`] at time `pane_end - G`
//! (restored partials may come later, at the restored cut's last granule).
//! They are exchanged by key and kept in a [`PaneStore`]: one packed copy
//! per live (key, pane), and each key's aggregate over the current window,
//! updated when a pane enters (add) or leaves (subtract; min and max by the
//! store's two-stack scheme), so a slide costs O(1) amortized per partial
//! whatever the number of panes in a window.
//!
//! For each window end `e` (a multiple of the slide) in order, once the
//! frontier has passed `e - G`: the partials of times up to `e - G` enter,
//! the panes starting before `e - size` leave, and one row per live key is
//! emitted, in chunks of [`ROWS_PER_ACTIVATION`] so the rows in flight stay
//! bounded. Panes leave when the window passes them: the store holds
//! exactly the open windows' state, and nothing is stored ahead of time.

use std::sync::Arc;

use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::agg::Agg;
use crate::aggregates::Aggregates;
use crate::combiner::{hold_least, hold_only, Update};
use crate::emit::Emit;
use crate::gauge::StateGauge;
use crate::key::Key;
use crate::pane_store::{PaneStore, SpillConfig};
use crate::row::WindowRow;

/// Rows one activation emits at most; the operator activates itself again
/// for the rest of a window.
pub const ROWS_PER_ACTIVATION: usize = 64 * 1024;

/// Parameters of tumbling (`size == slide`) and sliding windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedWindows {
    /// Window length, ms.
    pub size_ms: u64,
    /// Distance between window starts, ms; divides `size_ms`.
    pub slide_ms: u64,
    /// Time granularity, ms; divides `slide_ms`.
    pub granularity_ms: u64,
    /// Which rows are emitted.
    pub emit: Emit,
    /// The columns written: `--emit changes` writes a row only when one of
    /// them changes.
    pub columns: Aggregates,
    /// Sliding windows give no rows at emit times below this (0: all).
    /// A restored run sets its restored cut: the window closing there is
    /// evaluated once on the restored state (the baseline of `--emit
    /// changes`), but its rows were committed before the crash, and the
    /// exactly-once sink would drop them (2.5M rows per worker at 2.5M
    /// keys, on the way to the first new row).
    pub quiet_before_ms: u64,
}

impl FixedWindows {
    /// Panics unless the slide divides the size and the granularity the
    /// slide (checked when the options are parsed; every window operator
    /// relies on it).
    pub fn assert_valid(&self) {
        assert!(self.slide_ms > 0 && self.size_ms.is_multiple_of(self.slide_ms));
        assert!(self.granularity_ms > 0 && self.slide_ms.is_multiple_of(self.granularity_ms));
    }
}

/// One update of [`PanePartials`].
pub type PaneUpdate = Update<(Key, (u64, Agg))>;

/// Pane partials, as released by the pane combiner.
pub type PanePartials<'scope> = VecCollection<'scope, u64, (Key, (u64, Agg)), isize>;

/// The window rows of `partials`, each emitted once when its window closes.
/// Tumbling windows (`size == slide`) go to [`crate::tumbling::tumbling_windows`].
/// With `spill`, a sliding window keeps its state within the budget by
/// moving cold panes to disk ([`PaneStore::with_spill`]); a tumbling window
/// holds only its open windows and ignores it.
pub fn fixed_windows(
    partials: PanePartials<'_>,
    windows: FixedWindows,
    gauge: Arc<StateGauge>,
    spill: Option<SpillConfig>,
) -> Stream<'_, u64, Vec<WindowRow>> {
    windows.assert_valid();
    if windows.size_ms == windows.slide_ms {
        return crate::tumbling::tumbling_windows(partials, windows, gauge);
    }
    sliding_windows(partials, windows, gauge, spill)
}

/// A window whose rows are being emitted.
struct Emitting {
    window_end: u64,
    rows: Rows,
}

/// Where the rows of a window being emitted come from.
enum Rows {
    /// Every live key of the store, from this slot on (`--emit all`).
    Slots(usize),
    /// The store's changes, from this position on (`--emit changes`).
    Changes(usize),
}

/// Sliding windows over a [`PaneStore`] (see the module doc).
fn sliding_windows(
    partials: PanePartials<'_>,
    windows: FixedWindows,
    gauge: Arc<StateGauge>,
    spill: Option<SpillConfig>,
) -> Stream<'_, u64, Vec<WindowRow>> {
    let FixedWindows {
        size_ms,
        slide_ms,
        granularity_ms,
        emit,
        columns,
        quiet_before_ms,
    } = windows;
    let scope = partials.inner.scope();
    let by_key = Exchange::new(|update: &PaneUpdate| update.0 .0.hash_value());
    partials
        .inner
        .unary_frontier(by_key, "SlidingWindows", move |_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut store = match spill {
                Some(config) => PaneStore::with_spill(slide_ms, config).unwrap_or_else(|e| {
                    // Reported as the other failures are (below).
                    gauge.fail(e.to_string());
                    PaneStore::new(slide_ms)
                }),
                None => PaneStore::new(slide_ms),
            };
            if emit == Emit::Changes {
                store.track_changes(columns);
            }
            // A capability at or below every pending time and the next emission.
            let mut held: Option<Capability<u64>> = None;
            // The end of the next window to emit.
            let mut next_end: u64 = 0;
            let mut emitting: Option<Emitting> = None;
            move |(input, frontier), output| {
                if let Some(e) = store.failure() {
                    gauge.fail(e.to_string());
                }
                if gauge.failure().is_some() {
                    // Nothing more is emitted and the capabilities are
                    // kept, so no frontier passes rows this operator did
                    // not give: the driver stops the run.
                    input.for_each(|_, batches| batches.clear());
                    return;
                }
                input.for_each_stamp(|stamp, batches| {
                    hold_least(&mut held, &stamp, output.output_index());
                    // Staged (packed) until their time: see `PaneStore::stage`.
                    for batch in batches {
                        let mut updates = batch.drain(..).peekable();
                        while let Some(time) = updates.peek().map(|u| u.1) {
                            let same = std::iter::from_fn(|| updates.next_if(|u| u.1 == time));
                            store.stage(time, same.map(partial));
                        }
                    }
                });
                let frontier_time = frontier.frontier().first().copied();
                let complete = |t: u64| frontier_time.is_none_or(|f| t < f);
                // Rows this activation may still give, over all windows (at
                // the end of the input every remaining window is complete).
                let mut budget = ROWS_PER_ACTIVATION;
                loop {
                    if let Some(window) = emitting.as_mut() {
                        if budget == 0 {
                            activator.activate();
                            break;
                        }
                        let emit_time = window.window_end - granularity_ms;
                        let cap = held
                            .as_ref()
                            .expect("a capability is held while a window is emitted")
                            .delayed(&emit_time);
                        // Windows that would start before the epoch hold only events from 0 on.
                        let window_start = window.window_end.saturating_sub(size_ms);
                        let window_end = window.window_end;
                        let mut session = output.session(&cap);
                        let mut given = 0;
                        let mut give = |key: &Key, agg: Agg| {
                            given += 1;
                            session.give(WindowRow {
                                window_start,
                                window_end,
                                key: key.as_str().into(),
                                agg,
                            });
                        };
                        let more = match &mut window.rows {
                            Rows::Slots(next) => {
                                let from = *next;
                                store
                                    .aggregates_from(from, budget, &mut give)
                                    .map(|slot| *next = slot)
                                    .is_some()
                            }
                            Rows::Changes(next) => {
                                let from = *next;
                                store
                                    .changes_from(from, budget, &mut give)
                                    .map(|position| *next = position)
                                    .is_some()
                            }
                        };
                        budget -= given;
                        if more {
                            activator.activate();
                            break;
                        }
                        if matches!(window.rows, Rows::Changes(_)) {
                            store.clear_changes();
                        }
                        emitting = None;
                        next_end += slide_ms;
                    }
                    if store.is_empty() {
                        // Skip windows with nothing in them: the next is the
                        // first to hold the earliest pending partial (which
                        // may be earlier than a window skipped to before it
                        // arrived; every window emitted ends before it).
                        let Some(first) = store.first_staged_time() else {
                            break;
                        };
                        next_end = (first + granularity_ms).div_ceil(slide_ms) * slide_ms;
                    }
                    let emit_time = next_end - granularity_ms;
                    if !complete(emit_time) {
                        break;
                    }
                    store.apply_staged_through(emit_time);
                    store.evict_before(next_end.saturating_sub(size_ms));
                    if let Some(e) = store.failure() {
                        gauge.fail(e.to_string());
                        // Keep every capability as it is (see above).
                        return;
                    }
                    let rows = match emit {
                        Emit::All => (!store.is_empty()).then_some(Rows::Slots(0)),
                        Emit::Changes => store.has_changes().then_some(Rows::Changes(0)),
                    };
                    match rows {
                        Some(rows) if emit_time >= quiet_before_ms => {
                            emitting = Some(Emitting {
                                window_end: next_end,
                                rows,
                            });
                        }
                        // Nothing to give, or a window the restored run
                        // committed: its changes are the next one's baseline.
                        rows => {
                            if matches!(rows, Some(Rows::Changes(_))) {
                                store.clear_changes();
                            }
                            next_end += slide_ms;
                        }
                    }
                }
                gauge.set(store.live_partials(), store.live_keys(), store.heap_bytes());
                gauge.set_disk(store.disk_bytes(), store.spill_counts());
                // Hold a capability only for what may still be emitted.
                let next_emit =
                    (emitting.is_some() || !store.is_empty()).then(|| next_end - granularity_ms);
                let least_needed = match (next_emit, store.first_staged_time()) {
                    (Some(e), Some(p)) => Some(p.min(e)),
                    (e, p) => e.or(p),
                };
                hold_only(&mut held, least_needed);
            }
        })
}

/// A staged partial of `update`: `(key, pane_start, aggregate, copies)`.
fn partial(update: PaneUpdate) -> (Key, u64, Agg, u64) {
    let ((key, (pane_start, agg)), _, diff) = update;
    let copies = u64::try_from(diff)
        .ok()
        .filter(|&c| c > 0)
        .expect("pane partials are only ever inserted");
    (key, pane_start, agg, copies)
}
