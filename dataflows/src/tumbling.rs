//! Tumbling windows: each window is one pane, so its result is the merge of
//! that pane's partials, and nothing about it is needed once it is emitted.
//!
//! No pane store and no arrangement: the partials (all workers' at one time,
//! `pane_end - G`) are exchanged by key and merged into a hash map per time,
//! and once the frontier passes that time the window's rows go out,
//! [`ROWS_PER_ACTIVATION`] per activation (the operator activates itself for
//! the rest), so the rows in flight stay bounded however many keys a window
//! has. One hash-map update per partial; the oracle tests compare the rows
//! with the reference.

use std::collections::{BTreeMap, HashMap};
use std::mem::size_of;
use std::sync::Arc;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::agg::Agg;
use crate::combiner::{fast_map_with_capacity, hold_least, hold_only, presize, FastMap, Update};
use crate::emit::{Emit, LEFT};
use crate::gauge::StateGauge;
use crate::key::Key;
use crate::row::WindowRow;
use crate::sliding::{FixedWindows, PanePartials, ROWS_PER_ACTIVATION};

/// The window rows of `partials` for tumbling windows (`size == slide`),
/// each emitted once, at time `pane_end - G`, when the frontier passes it.
///
/// Every partial must arrive at its pane's release time `pane_end - G`: true
/// of the combiner's output, and restores of tumbling windows bring no
/// partials (a cut aligned to the slide closes every window below it),
/// except with `--emit changes`: then they bring the last closed window's,
/// at its release time, so that the next window's changes are computed
/// against it (its own rows are below the cut and dropped by the sink).
pub fn tumbling_windows(
    partials: PanePartials<'_>,
    windows: FixedWindows,
    gauge: Arc<StateGauge>,
) -> Stream<'_, u64, Vec<WindowRow>> {
    let FixedWindows {
        size_ms,
        slide_ms,
        granularity_ms,
        emit,
        columns,
        ..
    } = windows;
    windows.assert_valid();
    assert_eq!(size_ms, slide_ms, "tumbling windows have one pane each");
    let scope = partials.inner.scope();
    let by_key = Exchange::new(|update: &Update<(Key, (u64, Agg))>| update.0 .0.hash_value());
    partials
        .inner
        .unary_frontier(by_key, "TumblingWindows", move |_cap, info| {
            let activator = scope.activator_for(info.address);
            // The window whose rows are being given, [`ROWS_PER_ACTIVATION`]
            // per activation.
            let mut emitting: Option<Emitting> = None;
            // Per release time, each key's merged aggregate.
            let mut pending: BTreeMap<u64, FastMap<Key, Agg>> = BTreeMap::new();
            // Keys of the last window emitted: the next map starts that large.
            let mut last_window_keys = 0usize;
            // A capability at or below every pending time (and the window
            // after `previous`, while it is not empty).
            let mut held: Option<Capability<u64>> = None;
            // `--emit changes`: the last window emitted, key by key, and its end.
            let mut previous: FastMap<Key, Agg> = FastMap::default();
            let mut previous_end = 0u64;
            move |(input, frontier), output| {
                input.for_each_stamp(|stamp, batches| {
                    hold_least(&mut held, &stamp, output.output_index());
                    for batch in batches {
                        for ((key, (pane_start, agg)), time, diff) in batch.drain(..) {
                            assert_eq!(
                                time,
                                pane_start + slide_ms - granularity_ms,
                                "a tumbling pane's partial away from its release time"
                            );
                            let copies = u64::try_from(diff)
                                .ok()
                                .filter(|&c| c > 0)
                                .expect("pane partials are only ever inserted");
                            let merged = if let Some(merged) = pending.get_mut(&time) {
                                merged
                            } else {
                                // At least the last window's keys, as
                                // before: a window's table holds all of
                                // them whatever else is pending.
                                let capacity = presize(
                                    time,
                                    &pending,
                                    HashMap::len,
                                    last_window_keys,
                                    emitting.is_some(),
                                )
                                .max(last_window_keys);
                                pending
                                    .entry(time)
                                    .or_insert(fast_map_with_capacity(capacity))
                            };
                            merged
                                .entry(key)
                                .and_modify(|total| total.merge_weighted(&agg, copies))
                                .or_insert_with(|| agg.repeated(copies));
                        }
                    }
                });
                let frontier_time = frontier.frontier().first().copied();
                let complete = |t: u64| frontier_time.is_none_or(|f| t < f);
                let mut budget = ROWS_PER_ACTIVATION;
                loop {
                    if let Some(window) = emitting.as_mut() {
                        let cap = held
                            .as_ref()
                            .expect("a capability is held while a window is emitted")
                            .delayed(&window.time);
                        let (window_start, window_end) = (window.start, window.end);
                        let before = window.rows.len();
                        let rows = window
                            .rows
                            .by_ref()
                            .take(budget)
                            .map(|(key, agg)| WindowRow {
                                window_start,
                                window_end,
                                key: key.into_compact(),
                                agg,
                            });
                        output.session(&cap).give_iterator(rows);
                        budget -= before - window.rows.len();
                        if window.rows.len() > 0 {
                            activator.activate();
                            break;
                        }
                        emitting = None;
                    }
                    // With changes: the window after `previous`, if it has no
                    // partials, is the one where all of `previous` leaves.
                    let leave_time =
                        (!previous.is_empty()).then(|| previous_end + slide_ms - granularity_ms);
                    let next_time = pending.keys().next().copied();
                    let (time, leaving) = match (leave_time, next_time) {
                        (Some(l), n) if n.is_none_or(|n| n > l) => (l, true),
                        (_, Some(t)) => (t, false),
                        (_, None) => break,
                    };
                    if !complete(time) {
                        break;
                    }
                    let window_end = time + granularity_ms;
                    let rows = if leaving {
                        let left: Vec<_> = previous.drain().map(|(key, _)| (key, LEFT)).collect();
                        RowsLeft::Listed(left.into_iter())
                    } else {
                        let window = pending.remove(&time).expect("the next pending window");
                        last_window_keys = window.len();
                        match emit {
                            Emit::All => RowsLeft::All(window.into_iter()),
                            Emit::Changes => {
                                // `previous` is the window just before this one, or
                                // empty (it left in an empty window in between).
                                let mut changed = Vec::new();
                                for (key, agg) in &window {
                                    let before = previous.remove(key);
                                    if before.map(|b| columns.project(&b))
                                        != Some(columns.project(agg))
                                    {
                                        changed.push((key.clone(), *agg));
                                    }
                                }
                                changed.extend(previous.drain().map(|(key, _)| (key, LEFT)));
                                previous = window;
                                previous_end = window_end;
                                RowsLeft::Listed(changed.into_iter())
                            }
                        }
                    };
                    emitting = Some(Emitting {
                        time,
                        // Windows that would start before the epoch hold only events from 0 on.
                        start: window_end.saturating_sub(size_ms),
                        end: window_end,
                        rows,
                    });
                }
                let (aggregates, capacity) = pending
                    .values()
                    .chain(std::iter::once(&previous))
                    .fold((0, 0), |(n, c), m| (n + m.len(), c + m.capacity()));
                let largest_window = pending.values().map(HashMap::len).max().unwrap_or(0);
                // A hash map entry: key, aggregate and a control byte.
                let entry_bytes = size_of::<Key>() + size_of::<Agg>() + 1;
                gauge.set(aggregates, largest_window, capacity * entry_bytes);
                let leave_time =
                    (!previous.is_empty()).then(|| previous_end + slide_ms - granularity_ms);
                let next_time = pending.keys().next().copied();
                let emitting_time = emitting.as_ref().map(|w| w.time);
                hold_only(
                    &mut held,
                    next_time
                        .into_iter()
                        .chain(leave_time)
                        .chain(emitting_time)
                        .min(),
                );
            }
        })
}

/// A window whose rows are being given.
struct Emitting {
    /// Its release time, `end - G`: the rows' time.
    time: u64,
    start: u64,
    end: u64,
    rows: RowsLeft,
}

/// The rows of a window not given yet.
enum RowsLeft {
    /// Every key of the window (`--emit all`), straight from its map.
    All(std::collections::hash_map::IntoIter<Key, Agg>),
    /// Keys that changed or left.
    Listed(std::vec::IntoIter<(Key, Agg)>),
}

impl Iterator for RowsLeft {
    type Item = (Key, Agg);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            RowsLeft::All(rows) => rows.next(),
            RowsLeft::Listed(rows) => rows.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match self {
            RowsLeft::All(rows) => rows.size_hint(),
            RowsLeft::Listed(rows) => rows.size_hint(),
        }
    }
}

impl ExactSizeIterator for RowsLeft {}
