//! Tumbling and sliding windows whose partials carry a distinct-count
//! sketch ([`AggDistinct`], `--aggregates ...,distinct`) and/or value
//! counts for the most frequent values (`topk`, [`crate::sketch::top`]).
//!
//! A sketch cannot be subtracted, so the pane store's add-on-enter /
//! subtract-on-leave does not apply. Sketches merge associatively, so the
//! whole partial (count, sum, min, max and sketch) goes through the
//! two-stack queue the pane store uses for min and max ([`State`]): a
//! window's row for a key is one merge of the key's front and back
//! aggregates, and each partial is merged a constant number of times per
//! window length, whatever the number of panes (decision 26). A sketch
//! merge is a register-wise maximum over at most 4,096 bytes, so a key
//! with many distinct values costs a few microseconds per slide.
//!
//! Top values are not merged by the stacks: a complete pane keeps its most
//! frequent values (a function of the pane alone), and a key's window
//! counts add a pane's kept values when it enters and subtract them when it
//! leaves, so merges in any grouping give the same counts (decision 32).
//!
//! Partials arrive at their pane's release time `pane_end - G` (restored
//! ones at the restored cut's last granule, or later), are staged until
//! the frontier passes that time, and enter their pane; a pane leaves when
//! the last window holding it has been emitted. Rows go out in chunks of
//! [`ROWS_PER_ACTIVATION`].

use std::collections::{BTreeMap, VecDeque};
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
use crate::sketch::top::{kept_per_pane, ValueCounts, WindowCounts};
use crate::sketch::{AggDistinct, SketchPartial};
use crate::sliding::{FixedWindows, ROWS_PER_ACTIVATION};

/// Sketch pane partials `(key, (pane_start, partial))`.
pub type SketchPartials<'scope, P> = VecCollection<'scope, u64, (Key, (u64, P)), isize>;

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
    /// Estimated distinct values (0 for a key that left, or when
    /// `distinct` is not selected).
    pub distinct: u64,
    /// With `topk`: the most frequent values and their counts, most
    /// frequent first (none for a key that left).
    pub top: Vec<(i64, u64)>,
}

/// What a key's row says: compared by `--emit changes`.
type RowValue = (Agg, u64, Vec<(i64, u64)>);

/// The rows of `partials` for fixed windows, each emitted once when its
/// window closes (see the module doc).
pub fn sketch_windows<P: SketchPartial>(
    partials: SketchPartials<'_, P>,
    windows: FixedWindows,
    gauge: Arc<StateGauge>,
) -> Stream<'_, u64, Vec<SketchRow>> {
    let FixedWindows {
        size_ms,
        slide_ms,
        granularity_ms,
        emit,
        columns,
        ..
    } = windows;
    windows.assert_valid();
    let scope = partials.inner.scope();
    let by_key = Exchange::new(|update: &Update<(Key, (u64, P))>| update.0 .0.hash_value());
    partials
        .inner
        .unary_frontier(by_key, "SketchWindows", move |_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut state = State {
                one_pane: size_ms == slide_ms,
                topk: columns.topk(),
                ..State::default()
            };
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
                            let (partial, values) = partial.split();
                            state
                                .staged
                                .entry(time)
                                .or_default()
                                .push((key, pane_start, partial, values, copies));
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
                    if state.is_empty() && state.previous.is_empty() {
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

/// A key's partial in one pane.
struct PaneEntry {
    /// The pane's own partial.
    own: AggDistinct,
    /// In the front stack: the merge of the key's partials in the *later*
    /// front panes (`None`: there are none); unused in the back stack.
    later: Option<AggDistinct>,
    /// With `topk`: the pane's value counts while it is being entered,
    /// then the values it keeps.
    top: Option<PaneTop>,
}

/// A pane entry's top values.
enum PaneTop {
    /// Exact counts, before every partial of the pane is in.
    Counting(ValueCounts),
    /// The values the complete pane keeps (sorted by value), added to the
    /// key's window counts.
    Kept(Box<[(i64, u64)]>),
}

impl PaneTop {
    fn heap_bytes(&self) -> usize {
        match self {
            PaneTop::Counting(counts) => counts.heap_bytes(),
            PaneTop::Kept(kept) => size_of_val::<[(i64, u64)]>(kept),
        }
    }
}

/// The operator's state on one worker: the live panes as a two-stack
/// queue, done for all keys at once as in the pane store (decision 25).
/// The oldest `front_panes` panes are the front stack, the others the back
/// stack; per key, `front` is the merge of its front panes and `back` of
/// its back panes, so a window's row is one merge of the two. When the
/// oldest pane leaves, each of its keys' `front` becomes the entry's
/// `later`; when the front is empty, every pane moves to it in one pass
/// from the newest pane to the oldest. Each partial is merged a constant
/// number of times per window length: O(1) merges per partial and slide.
#[derive(Default)]
struct State {
    /// Partials not yet entered, by time: `(key, pane_start, partial,
    /// value counts, copies)`.
    staged: BTreeMap<u64, Vec<Staged>>,
    /// Live panes by start, oldest first.
    panes: VecDeque<(u64, FastMap<Key, PaneEntry>)>,
    front_panes: usize,
    front: FastMap<Key, AggDistinct>,
    back: FastMap<Key, AggDistinct>,
    live_partials: usize,
    /// Heap bytes of every sketch held.
    sketch_bytes: usize,
    /// `--emit changes`: each key's row in the last window emitted.
    previous: FastMap<Key, RowValue>,
    /// Tumbling windows: a window is one pane, whose partials are its rows
    /// (no front or back aggregates).
    one_pane: bool,
    /// `--topk`: how many values a row lists.
    topk: Option<usize>,
    /// With `topk`: each key's counts over the live panes.
    window_top: FastMap<Key, WindowCounts>,
    /// With `topk`: the (pane start, key) entries whose partials are being
    /// entered, to keep their top values once all are in.
    counting: Vec<(u64, Key)>,
}

/// A staged partial: `(key, pane_start, partial, value counts, copies)`.
type Staged = (Key, u64, AggDistinct, Option<ValueCounts>, u64);

/// Merges `value` into `key`'s entry of `map`, keeping `heap` (the bytes
/// of the sketches held) up to date.
fn merge_into(
    map: &mut FastMap<Key, AggDistinct>,
    key: &Key,
    value: &AggDistinct,
    heap: &mut usize,
) {
    if let Some(merged) = map.get_mut(key) {
        *heap -= merged.heap_bytes();
        merged.merge_weighted(value, 1);
        *heap += merged.heap_bytes();
    } else {
        let value = value.clone();
        *heap += value.heap_bytes();
        map.insert(key.clone(), value);
    }
}

impl State {
    fn is_empty(&self) -> bool {
        self.panes.is_empty()
    }

    fn apply_staged_through(&mut self, time: u64) {
        while let Some(entry) = self.staged.first_entry() {
            if *entry.key() > time {
                break;
            }
            for (key, pane_start, mut partial, values, copies) in entry.remove() {
                partial.agg = partial.agg.repeated(copies);
                let values = values.map(|v| {
                    if copies == 1 {
                        return v;
                    }
                    let mut repeated = ValueCounts::default();
                    repeated.merge_weighted(&v, copies);
                    repeated
                });
                self.insert(key, pane_start, partial, values);
            }
        }
        self.keep_top_values();
    }

    /// Every partial of the panes being entered is in (the frontier passed
    /// their time): each keeps its most frequent values, added to its key's
    /// window counts.
    fn keep_top_values(&mut self) {
        let Some(k) = self.topk else {
            return;
        };
        for (pane_start, key) in std::mem::take(&mut self.counting) {
            let position = self
                .panes
                .binary_search_by_key(&pane_start, |(start, _)| *start)
                .expect("a pane being entered is live");
            let entry = self.panes[position]
                .1
                .get_mut(&key)
                .expect("an entry being entered is in its pane");
            let top = entry
                .top
                .as_mut()
                .expect("entries have top values with topk");
            let PaneTop::Counting(counts) = top else {
                unreachable!("an entry is kept once")
            };
            let kept = counts.keep_top(kept_per_pane(k));
            let window = self.window_top.entry(key).or_default();
            self.sketch_bytes -= window.heap_bytes();
            window.add(&kept);
            self.sketch_bytes += window.heap_bytes();
            self.sketch_bytes -= top.heap_bytes();
            *top = PaneTop::Kept(kept);
            self.sketch_bytes += top.heap_bytes();
        }
    }

    fn insert(
        &mut self,
        key: Key,
        pane_start: u64,
        partial: AggDistinct,
        values: Option<ValueCounts>,
    ) {
        let position = self.panes.partition_point(|(start, _)| *start < pane_start);
        assert!(
            position >= self.front_panes,
            "pane {pane_start} enters below the front stack"
        );
        if self
            .panes
            .get(position)
            .is_none_or(|(start, _)| *start != pane_start)
        {
            self.panes
                .insert(position, (pane_start, FastMap::default()));
        }
        if !self.one_pane {
            merge_into(&mut self.back, &key, &partial, &mut self.sketch_bytes);
        }
        let pane = &mut self.panes[position].1;
        if let Some(entry) = pane.get_mut(&key) {
            self.sketch_bytes -= entry.own.heap_bytes();
            entry.own.merge_weighted(&partial, 1);
            self.sketch_bytes += entry.own.heap_bytes();
            if let Some(values) = values {
                match entry.top.as_mut() {
                    Some(PaneTop::Counting(counts)) => {
                        self.sketch_bytes -= counts.heap_bytes();
                        counts.merge_weighted(&values, 1);
                        self.sketch_bytes += counts.heap_bytes();
                    }
                    // A pane's partials all arrive at one time (or, restored,
                    // together): keeping the top values of part of a pane
                    // would make them depend on how the input was split.
                    _ => panic!("pane {pane_start} got a partial after it was complete"),
                }
            }
        } else {
            self.sketch_bytes += partial.heap_bytes();
            self.live_partials += 1;
            let top = values.map(|values| {
                self.sketch_bytes += values.heap_bytes();
                self.counting.push((pane_start, key.clone()));
                PaneTop::Counting(values)
            });
            pane.insert(
                key,
                PaneEntry {
                    own: partial,
                    later: None,
                    top,
                },
            );
        }
    }

    /// Subtracts a leaving entry's kept values from its key's window counts.
    fn leave_top(&mut self, key: &Key, entry: &PaneEntry) {
        let Some(top) = &entry.top else {
            return;
        };
        self.sketch_bytes -= top.heap_bytes();
        let PaneTop::Kept(kept) = top else {
            unreachable!("a pane leaves after it was complete")
        };
        let window = self
            .window_top
            .get_mut(key)
            .expect("a key with a live pane has window counts");
        self.sketch_bytes -= window.heap_bytes();
        window.subtract(kept);
        if window.is_empty() {
            self.window_top.remove(key);
        } else {
            self.sketch_bytes += window.heap_bytes();
        }
    }

    fn evict_before(&mut self, window_start: u64) {
        while self
            .panes
            .front()
            .is_some_and(|(start, _)| *start < window_start)
        {
            if self.one_pane {
                let (_, pane) = self.panes.pop_front().expect("checked above");
                self.live_partials -= pane.len();
                self.sketch_bytes -= pane.values().map(|e| e.own.heap_bytes()).sum::<usize>();
                for (key, entry) in &pane {
                    self.leave_top(key, entry);
                }
                continue;
            }
            if self.front_panes == 0 {
                self.flip();
            }
            let (_, pane) = self.panes.pop_front().expect("checked above");
            self.front_panes -= 1;
            self.live_partials -= pane.len();
            for (key, entry) in pane {
                self.leave_top(&key, &entry);
                self.sketch_bytes -= entry.own.heap_bytes();
                if let Some(gone) = self.front.remove(&key) {
                    self.sketch_bytes -= gone.heap_bytes();
                }
                if let Some(later) = entry.later {
                    // Counted already, as the entry's.
                    self.front.insert(key, later);
                }
            }
        }
    }

    /// Moves every pane to the front stack (see the struct doc).
    fn flip(&mut self) {
        debug_assert!(self.front.is_empty());
        let mut running: FastMap<Key, AggDistinct> = FastMap::default();
        for (_, pane) in self.panes.iter_mut().rev() {
            for (key, entry) in pane.iter_mut() {
                entry.later = running.get(key).cloned();
                if let Some(later) = &entry.later {
                    self.sketch_bytes += later.heap_bytes();
                }
                match running.get_mut(key) {
                    Some(merged) => merged.merge_weighted(&entry.own, 1),
                    None => {
                        running.insert(key.clone(), entry.own.clone());
                    }
                }
            }
        }
        // `running` now equals `back`: the back's sketches become the front's.
        self.front = std::mem::take(&mut self.back);
        self.front_panes = self.panes.len();
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
        let window_start = window_end.saturating_sub(size_ms);
        let row = |key: &Key, (agg, distinct, top): RowValue| SketchRow {
            window_start,
            window_end,
            key: key.as_str().to_owned(),
            agg,
            distinct,
            top,
        };
        let (topk, window_top) = (self.topk, &self.window_top);
        let top = |key: &Key| match topk {
            Some(k) => window_top.get(key).map(|w| w.top(k)).unwrap_or_default(),
            None => Vec::new(),
        };
        let value = |merged: &AggDistinct| (merged.agg, merged.distinct.estimate(), Vec::new());
        let both = |key: &Key, front: &AggDistinct| match self.back.get(key) {
            Some(back) => {
                let mut merged = front.clone();
                merged.merge_weighted(back, 1);
                value(&merged)
            }
            None => value(front),
        };
        let values: Box<dyn Iterator<Item = (&Key, RowValue)>> = if self.one_pane {
            debug_assert!(self.panes.len() <= 1, "a tumbling window is one pane");
            Box::new(
                self.panes
                    .iter()
                    .flat_map(|(_, pane)| pane.iter().map(|(key, e)| (key, value(&e.own)))),
            )
        } else {
            Box::new(
                self.front
                    .iter()
                    .map(|(key, front)| (key, both(key, front)))
                    .chain(
                        self.back
                            .iter()
                            .filter(|(key, _)| !self.front.contains_key(*key))
                            .map(|(key, back)| (key, value(back))),
                    ),
            )
        };
        let values = values.map(|(key, (agg, distinct, _))| (key, (agg, distinct, top(key))));
        match emit {
            Emit::All => values.map(|(key, value)| row(key, value)).collect(),
            Emit::Changes => {
                let mut rows = Vec::new();
                let mut current = FastMap::default();
                // Compared as written: only the selected columns.
                for (key, value) in values {
                    let value = (columns.project(&value.0), value.1, value.2);
                    if self.previous.remove(key).as_ref() != Some(&value) {
                        rows.push(row(key, value.clone()));
                    }
                    current.insert(key.clone(), value);
                }
                rows.extend(
                    self.previous
                        .drain()
                        .map(|(key, _)| row(&key, (LEFT, 0, Vec::new()))),
                );
                self.previous = current;
                rows
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        let entry_bytes = size_of::<Key>() + size_of::<PaneEntry>() + 1;
        let key_bytes = size_of::<Key>() + size_of::<AggDistinct>() + 1;
        let previous_bytes =
            self.previous.capacity() * (size_of::<Key>() + size_of::<RowValue>() + 1);
        self.live_partials * entry_bytes
            + (self.front.capacity() + self.back.capacity()) * key_bytes
            + self.sketch_bytes
            + previous_bytes
    }
}
