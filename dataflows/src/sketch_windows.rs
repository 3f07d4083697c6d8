//! Tumbling and sliding windows whose partials carry a distinct-count
//! sketch ([`AggDistinct`], `--aggregates ...,distinct`).
//!
//! A sketch cannot be subtracted, so the pane store's add-on-enter /
//! subtract-on-leave does not apply: here each live pane keeps its
//! partials in a hash map, and a window's row for a key is the merge of
//! the key's partials in the window's panes, computed when the window
//! closes. That is O(partials in the window) work per slide (a sketch
//! merge is a register-wise maximum, at most 4,096 bytes): for sliding
//! windows of many panes the distinct count costs what the issue's
//! two-stack scheme saves for count, sum, min and max (decision 26).
//!
//! Partials arrive at their pane's release time `pane_end - G` (restored
//! ones at the restored cut's last granule, or later), are staged until
//! the frontier passes that time, and enter their pane; a pane leaves when
//! the last window holding it has been emitted. Rows go out in chunks of
//! [`ROWS_PER_ACTIVATION`].

use std::collections::BTreeMap;
use std::mem::size_of;
use std::sync::Arc;

use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::agg::Agg;
use crate::aggregates::Aggregates;
use crate::combiner::{hold_least, hold_only, FastMap, Update};
use crate::emit::{Emit, LEFT};
use crate::gauge::StateGauge;
use crate::key::Key;
use crate::sketch::AggDistinct;
use crate::sliding::{FixedWindows, ROWS_PER_ACTIVATION};

/// Sketch pane partials `(key, (pane_start, partial))`.
pub type SketchPartials<'scope> = VecCollection<'scope, u64, (Key, (u64, AggDistinct)), isize>;

/// One update of [`SketchPartials`].
pub type SketchUpdate = Update<(Key, (u64, AggDistinct))>;

/// One output row: a key's aggregates in the window `[start, end)`, with
/// its estimated number of distinct values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SketchRow {
    /// Window start (inclusive), ms.
    pub window_start: u64,
    /// Window end (exclusive), ms.
    pub window_end: u64,
    /// The key.
    pub key: String,
    /// Count, sum, min and max (all zero but `count` for a key that left,
    /// with `--emit changes`).
    pub agg: Agg,
    /// Estimated distinct values (0 for a key that left).
    pub distinct: u64,
}

/// What a key's row says: compared by `--emit changes`.
type RowValue = (Agg, u64);

/// The rows of `partials` for fixed windows, each emitted once when its
/// window closes (see the module doc).
pub fn sketch_windows(
    partials: SketchPartials<'_>,
    windows: FixedWindows,
    gauge: Arc<StateGauge>,
) -> Stream<'_, u64, Vec<SketchRow>> {
    let FixedWindows {
        size_ms,
        slide_ms,
        granularity_ms,
        emit,
        columns,
    } = windows;
    assert!(slide_ms > 0 && size_ms.is_multiple_of(slide_ms));
    assert!(granularity_ms > 0 && slide_ms.is_multiple_of(granularity_ms));
    let scope = partials.inner.scope();
    let by_key = Exchange::new(|update: &SketchUpdate| update.0 .0.hash_value());
    partials
        .inner
        .unary_frontier(by_key, "SketchWindows", move |_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut state = State::default();
            let mut held: Option<Capability<u64>> = None;
            // The end of the next window to emit.
            let mut next_end = 0u64;
            // Rows of the window being emitted, and its end.
            let mut emitting: Option<(u64, Vec<SketchRow>)> = None;
            move |(input, frontier), output| {
                input.for_each_stamp(|stamp, batches| {
                    hold_least(&mut held, &stamp, output.output_index());
                    for batch in batches {
                        for ((key, (pane_start, partial)), time, diff) in batch.drain(..) {
                            let copies = u64::try_from(diff)
                                .ok()
                                .filter(|&c| c > 0)
                                .expect("pane partials are only ever inserted");
                            state
                                .staged
                                .entry(time)
                                .or_default()
                                .push((key, pane_start, partial, copies));
                        }
                    }
                });
                let frontier_time = frontier.frontier().first().copied();
                let complete = |t: u64| frontier_time.is_none_or(|f| t < f);
                let mut budget = ROWS_PER_ACTIVATION;
                loop {
                    if let Some((window_end, rows)) = emitting.as_mut() {
                        let cap = held
                            .as_ref()
                            .expect("a capability is held while a window is emitted")
                            .delayed(&(*window_end - granularity_ms));
                        let take = rows.len().min(budget);
                        budget -= take;
                        output
                            .session(&cap)
                            .give_iterator(rows.drain(rows.len() - take..));
                        if !rows.is_empty() {
                            activator.activate();
                            break;
                        }
                        emitting = None;
                        next_end += slide_ms;
                    }
                    if state.panes.is_empty() && state.previous.is_empty() {
                        let Some(&first) = state.staged.keys().next() else {
                            break;
                        };
                        next_end = (first + granularity_ms).div_ceil(slide_ms) * slide_ms;
                    }
                    let emit_time = next_end - granularity_ms;
                    if !complete(emit_time) {
                        break;
                    }
                    state.apply_staged_through(emit_time);
                    state.evict_before(next_end.saturating_sub(size_ms));
                    let rows = state.window_rows(next_end, size_ms, emit, columns);
                    if rows.is_empty() {
                        next_end += slide_ms;
                    } else {
                        emitting = Some((next_end, rows));
                    }
                }
                gauge.set(
                    state.live_partials,
                    state.previous.len(),
                    state.heap_bytes(),
                );
                let live =
                    emitting.is_some() || !state.panes.is_empty() || !state.previous.is_empty();
                let next_emit = live.then(|| next_end - granularity_ms);
                let staged = state.staged.keys().next().copied();
                hold_only(&mut held, next_emit.into_iter().chain(staged).min());
            }
        })
}

/// The operator's state on one worker.
#[derive(Default)]
struct State {
    /// Partials not yet entered, by time: `(key, pane_start, partial, copies)`.
    staged: BTreeMap<u64, Vec<(Key, u64, AggDistinct, u64)>>,
    /// Live panes by start: each key's merged partial.
    panes: BTreeMap<u64, FastMap<Key, AggDistinct>>,
    live_partials: usize,
    /// Heap bytes of the sketches in `panes`.
    sketch_bytes: usize,
    /// `--emit changes`: each key's row in the last window emitted.
    previous: FastMap<Key, RowValue>,
}

impl State {
    fn apply_staged_through(&mut self, time: u64) {
        while let Some(entry) = self.staged.first_entry() {
            if *entry.key() > time {
                break;
            }
            for (key, pane_start, partial, copies) in entry.remove() {
                let pane = self.panes.entry(pane_start).or_default();
                match pane.get_mut(&key) {
                    Some(merged) => {
                        self.sketch_bytes -= merged.heap_bytes();
                        merged.merge_weighted(&partial, copies);
                        self.sketch_bytes += merged.heap_bytes();
                    }
                    None => {
                        let mut first = partial;
                        first.agg = first.agg.repeated(copies);
                        self.sketch_bytes += first.heap_bytes();
                        self.live_partials += 1;
                        pane.insert(key, first);
                    }
                }
            }
        }
    }

    fn evict_before(&mut self, window_start: u64) {
        while let Some(entry) = self.panes.first_entry() {
            if *entry.key() >= window_start {
                break;
            }
            let pane = entry.remove();
            self.live_partials -= pane.len();
            self.sketch_bytes -= pane.values().map(AggDistinct::heap_bytes).sum::<usize>();
        }
    }

    /// The rows of the window ending at `window_end` (the live panes are
    /// exactly its panes).
    fn window_rows(
        &mut self,
        window_end: u64,
        size_ms: u64,
        emit: Emit,
        columns: Aggregates,
    ) -> Vec<SketchRow> {
        let mut merged: FastMap<&Key, AggDistinct> = FastMap::default();
        for pane in self.panes.values() {
            for (key, partial) in pane {
                merged
                    .entry(key)
                    .and_modify(|m| m.merge_weighted(partial, 1))
                    .or_insert_with(|| partial.clone());
            }
        }
        let window_start = window_end.saturating_sub(size_ms);
        let row = |key: &Key, (agg, distinct): RowValue| SketchRow {
            window_start,
            window_end,
            key: key.as_str().to_owned(),
            agg,
            distinct,
        };
        let values = merged
            .into_iter()
            .map(|(key, m)| (key, (m.agg, m.distinct.estimate())));
        match emit {
            Emit::All => values.map(|(key, value)| row(key, value)).collect(),
            Emit::Changes => {
                let mut rows = Vec::new();
                let mut current = FastMap::default();
                // Compared as written: only the selected columns.
                for (key, value) in values {
                    let value = (columns.project(&value.0), value.1);
                    if self.previous.remove(key) != Some(value) {
                        rows.push(row(key, value));
                    }
                    current.insert(key.clone(), value);
                }
                rows.extend(self.previous.drain().map(|(key, _)| row(&key, (LEFT, 0))));
                self.previous = current;
                rows
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        let entry_bytes = size_of::<Key>() + size_of::<AggDistinct>() + 1;
        let previous_bytes =
            self.previous.capacity() * (size_of::<Key>() + size_of::<RowValue>() + 1);
        self.live_partials * entry_bytes + self.sketch_bytes + previous_bytes
    }
}
