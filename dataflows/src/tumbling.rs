//! Tumbling windows: each window is one pane, so its result is the merge of
//! that pane's partials, and nothing about it is needed once it is emitted.
//!
//! No pane store and no arrangement: the partials (all workers' at one time,
//! `pane_end - G`) are exchanged by key and merged into a hash map per time,
//! and once the frontier passes that time the window's rows go out,
//! [`ROWS_PER_ACTIVATION`] per activation (the operator activates itself for
//! the rest), so the rows in flight stay bounded however many keys a window
//! has. One hash-map update per partial; the oracle tests compare the rows
//! with the reference. With one worker in the dataflow and every row
//! emitted (`--emit all`), a window's partials come from one combiner, one
//! per key, so they are listed instead of merged (decision 70).

use std::collections::BTreeMap;
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
    // One combiner upstream gives each key of a window once: nothing to
    // merge, unless changes need the keys looked up.
    let listed = scope.peers() == 1 && emit == Emit::All;
    let by_key = Exchange::new(|update: &Update<(Key, (u64, Agg))>| update.0 .0.hash_value());
    partials
        .inner
        .unary_frontier(by_key, "TumblingWindows", move |_cap, info| {
            let activator = scope.activator_for(info.address);
            // The window whose rows are being given, [`ROWS_PER_ACTIVATION`]
            // per activation.
            let mut emitting: Option<Emitting> = None;
            // Per release time, each key's merged aggregate.
            let mut pending: BTreeMap<u64, Window> = BTreeMap::new();
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
                                    Window::len,
                                    last_window_keys,
                                    emitting.is_some(),
                                )
                                .max(last_window_keys);
                                pending
                                    .entry(time)
                                    .or_insert(Window::with_capacity(listed, capacity))
                            };
                            merged.add(key, &agg, copies);
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
                        match (emit, window) {
                            (Emit::All, Window::Merged(window)) => {
                                RowsLeft::All(window.into_iter())
                            }
                            (Emit::All, Window::Listed(window)) => {
                                debug_assert!(
                                    one_per_key(&window),
                                    "a key's partials of one window came twice from one combiner"
                                );
                                RowsLeft::Listed(window.into_iter())
                            }
                            (Emit::Changes, Window::Listed(_)) => {
                                unreachable!("changes merge their windows")
                            }
                            (Emit::Changes, Window::Merged(window)) => {
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
                    .map(|w| (w.len(), w.capacity()))
                    .chain(std::iter::once((previous.len(), previous.capacity())))
                    .fold((0, 0), |(n, c), (len, cap)| (n + len, c + cap));
                let largest_window = pending.values().map(Window::len).max().unwrap_or(0);
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

/// The partials of a window not released yet.
enum Window {
    /// Merged by key.
    Merged(FastMap<Key, Agg>),
    /// As they came: one per key (one combiner upstream; checked in debug
    /// builds).
    Listed(Vec<(Key, Agg)>),
}

impl Window {
    fn with_capacity(listed: bool, capacity: usize) -> Self {
        if listed {
            Window::Listed(Vec::with_capacity(capacity))
        } else {
            Window::Merged(fast_map_with_capacity(capacity))
        }
    }

    #[inline]
    fn add(&mut self, key: Key, agg: &Agg, copies: u64) {
        match self {
            Window::Merged(map) => {
                map.entry(key)
                    .and_modify(|total| total.merge_weighted(agg, copies))
                    .or_insert_with(|| agg.repeated(copies));
            }
            Window::Listed(list) => list.push((key, agg.repeated(copies))),
        }
    }

    fn len(&self) -> usize {
        match self {
            Window::Merged(map) => map.len(),
            Window::Listed(list) => list.len(),
        }
    }

    fn capacity(&self) -> usize {
        match self {
            Window::Merged(map) => map.capacity(),
            Window::Listed(list) => list.capacity(),
        }
    }
}

/// Whether `partials` hold each key once.
fn one_per_key(partials: &[(Key, Agg)]) -> bool {
    let mut keys = std::collections::HashSet::with_capacity(partials.len());
    partials.iter().all(|(key, _)| keys.insert(key))
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
