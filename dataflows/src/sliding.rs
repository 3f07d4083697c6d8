//! Sliding windows as a differential dataflow (tumbling windows, one pane
//! each, take the shortcut in [`crate::tumbling`]).
//!
//! The input is the collection of pane partials `(key, (pane_start, agg))`
//! released by [`crate::combiner::PaneCombiner`] at time `pane_end - G`.
//!
//! - Each partial is inserted at its time and retracted `size` after its
//!   pane's release time (`pane_end - G`, computed from the pane), so at
//!   time `e - G` (for `e` a multiple of the slide) the collection holds exactly
//!   the panes of the window `[e - size, e)`: the window's contents are a
//!   collection, and no event or partial is copied `size / slide` times.
//! - `reduce` per key folds the current panes into one [`Agg`]; it only fires
//!   at times `≡ -G (mod slide)`, when a pane enters or leaves.
//! - [`emit_windows`] follows the reduce output in time order and, once the
//!   frontier has passed `e - G`, emits one row per key present: each window
//!   result exactly once.
//!
//! The retraction is also the eviction: once the frontier passes a pane's
//! retraction time, the insert and the retraction cancel when the trace
//! compacts, so the arranged state holds only the open windows.

use std::collections::BTreeMap;

use differential_dataflow::{AsCollection, VecCollection};
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::agg::Agg;
use crate::combiner::{hold_least, hold_only, FastMap, Update};
use crate::key::Key;
use crate::row::WindowRow;

/// Parameters of tumbling (`size == slide`) and sliding windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedWindows {
    /// Window length, ms.
    pub size_ms: u64,
    /// Distance between window starts, ms; divides `size_ms`.
    pub slide_ms: u64,
    /// Time granularity, ms; divides `slide_ms`.
    pub granularity_ms: u64,
}

/// Pane partials, as released by the pane combiner.
pub type PanePartials<'scope> = VecCollection<'scope, u64, (Key, (u64, Agg)), isize>;

/// The window rows of `partials`, each emitted once when its window closes.
/// Tumbling windows (`size == slide`) go to [`crate::tumbling::tumbling_windows`].
pub fn fixed_windows(
    partials: PanePartials<'_>,
    windows: FixedWindows,
) -> Stream<'_, u64, Vec<WindowRow>> {
    assert!(windows.slide_ms > 0 && windows.size_ms.is_multiple_of(windows.slide_ms));
    assert!(windows.granularity_ms > 0 && windows.slide_ms.is_multiple_of(windows.granularity_ms));
    if windows.size_ms == windows.slide_ms {
        return crate::tumbling::tumbling_windows(partials, windows);
    }
    let FixedWindows {
        size_ms,
        slide_ms,
        granularity_ms,
    } = windows;
    // A pane leaves `size` after the time the combiner releases it at,
    // `pane_end - G`: computed from the pane, not from the update's time, so
    // that restored partials may enter later than that (see
    // `restored_panes` in the engine) and still leave on time.
    let expired = hold_until_due(&partials.clone().inner.map(
        move |((key, (pane_start, agg)), time, diff)| {
            let released_at = pane_start + slide_ms - granularity_ms;
            debug_assert!(time >= released_at, "a pane partial before its pane's end");
            ((key, (pane_start, agg)), released_at + size_ms, -diff)
        },
    ))
    .as_collection();
    let current =
        partials
            .concat(expired)
            .reduce_named("WindowAggregate", |_key, panes, output| {
                let mut total: Option<Agg> = None;
                for ((_, agg), copies) in panes {
                    // A pane is present with a positive count; a negative count
                    // would mean a retraction without its insert.
                    debug_assert!(*copies > 0, "pane retracted more often than inserted");
                    let copies = u64::try_from(*copies).unwrap_or(0);
                    if copies == 0 {
                        continue;
                    }
                    match &mut total {
                        Some(t) => t.merge_weighted(agg, copies),
                        None => total = Some(agg.repeated(copies)),
                    }
                }
                if let Some(total) = total {
                    output.push((total, 1isize));
                }
            });
    emit_windows(&current.inner, windows)
}

/// Holds updates whose time lies ahead until the frontier reaches it.
///
/// The retractions of `fixed_windows` are known when their pane arrives, a
/// whole window before they take effect. Sent on at once, they would wait in
/// the arrangement's batcher, which merges every update it holds, ready or
/// not, at each frontier advance: a sliding window of `n` panes would re-sort
/// `n` panes' worth of retractions at every slide (and a restored state all of
/// it at every granule of the replay). Held here in a map by time, each is
/// sent once, when the frontier reaches its time, and merged once.
fn hold_until_due<'scope, D: Clone + 'static>(
    updates: &Stream<'scope, u64, Vec<Update<D>>>,
) -> Stream<'scope, u64, Vec<Update<D>>> {
    updates
        .clone()
        .unary_frontier(Pipeline, "HoldUntilDue", |_cap, _info| {
            let mut pending: BTreeMap<u64, Vec<Update<D>>> = BTreeMap::new();
            // A capability at or below every pending time.
            let mut held: Option<Capability<u64>> = None;
            move |(input, frontier), output| {
                input.for_each_stamp(|stamp, batches| {
                    hold_least(&mut held, &stamp, output.output_index());
                    for batch in batches {
                        for update in batch.drain(..) {
                            debug_assert!(stamp.least().is_some_and(|t| update.1 >= *t));
                            pending.entry(update.1).or_default().push(update);
                        }
                    }
                });
                let frontier_time = frontier.frontier().first().copied();
                // Due: no input below the update's time can still arrive.
                while let Some(entry) = pending.first_entry() {
                    let time = *entry.key();
                    if frontier_time.is_some_and(|f| f < time) {
                        break;
                    }
                    let cap = held
                        .as_ref()
                        .expect("a capability is held while updates are pending")
                        .delayed(&time);
                    output.session(&cap).give_container(&mut entry.remove());
                }
                hold_only(&mut held, pending.keys().next().copied());
            }
        })
}

/// Turns the per-key aggregate of the current window into one row per key
/// and window, once the frontier has passed each window's last granule.
fn emit_windows<'scope>(
    current: &Stream<'scope, u64, Vec<Update<(Key, Agg)>>>,
    windows: FixedWindows,
) -> Stream<'scope, u64, Vec<WindowRow>> {
    let FixedWindows {
        size_ms,
        slide_ms,
        granularity_ms,
    } = windows;
    current
        .clone()
        .unary_frontier(Pipeline, "EmitWindows", move |_cap, _info| {
            // Updates not yet applied, by time.
            let mut pending: BTreeMap<u64, Vec<(Key, Agg, isize)>> = BTreeMap::new();
            // The aggregate of every key in the current window.
            let mut state: FastMap<Key, Agg> = FastMap::default();
            // A capability at or below every pending time and `next_end - G`.
            let mut held: Option<Capability<u64>> = None;
            // The end of the next window to emit.
            let mut next_end: u64 = 0;
            move |(input, frontier), output| {
                input.for_each_stamp(|stamp, batches| {
                    hold_least(&mut held, &stamp, output.output_index());
                    for batch in batches {
                        for ((key, agg), time, diff) in batch.drain(..) {
                            pending.entry(time).or_default().push((key, agg, diff));
                        }
                    }
                });
                let frontier_time = frontier.frontier().first().copied();
                let complete = |t: u64| frontier_time.is_none_or(|f| t < f);
                loop {
                    if state.is_empty() {
                        // Skip windows with nothing in them.
                        let Some(&first) = pending.keys().next() else {
                            break;
                        };
                        let first_end = (first + granularity_ms).div_ceil(slide_ms) * slide_ms;
                        next_end = next_end.max(first_end);
                    }
                    let emit_time = next_end - granularity_ms;
                    assert!(
                        !(frontier_time.is_none() && pending.is_empty() && !state.is_empty()),
                        "window state never retracted: {} keys left after the input ended",
                        state.len()
                    );
                    if !complete(emit_time) {
                        break;
                    }
                    while let Some(entry) = pending.first_entry() {
                        if *entry.key() > emit_time {
                            break;
                        }
                        let mut updates = entry.remove();
                        // Retractions first: a key's old value leaves before its new one arrives.
                        updates.sort_unstable_by_key(|u| u.2);
                        for (key, agg, diff) in updates {
                            if diff < 0 {
                                let removed = state.remove(&key);
                                debug_assert_eq!(
                                    removed,
                                    Some(agg),
                                    "retracted an absent aggregate"
                                );
                            } else {
                                debug_assert_eq!(diff, 1, "reduce emits one value per key");
                                state.insert(key, agg);
                            }
                        }
                    }
                    if !state.is_empty() {
                        let cap = held
                            .as_ref()
                            .expect("a capability is held while state is non-empty")
                            .delayed(&emit_time);
                        // Windows that would start before the epoch hold only events from 0 on.
                        let window_start = next_end.saturating_sub(size_ms);
                        let mut session = output.session(&cap);
                        for (key, agg) in &state {
                            session.give(WindowRow {
                                window_start,
                                window_end: next_end,
                                key: key.as_str().to_owned(),
                                agg: *agg,
                            });
                        }
                    }
                    next_end += slide_ms;
                }
                // Hold a capability only for what may still be emitted.
                let least_needed = match (state.is_empty(), pending.keys().next()) {
                    (false, Some(&p)) => Some(p.min(next_end - granularity_ms)),
                    (false, None) => Some(next_end - granularity_ms),
                    (true, Some(&p)) => Some(p),
                    (true, None) => None,
                };
                hold_only(&mut held, least_needed);
            }
        })
}
