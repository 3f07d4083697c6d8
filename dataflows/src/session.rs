//! Session windows per key.
//!
//! Input: the collection of [`SessionPartial`]s released by the session
//! combiner (one per key and granule per worker), exchanged by key. Each key
//! keeps its open sessions as disjoint intervals; an arriving partial merges
//! with every open session it connects to (less than `gap` apart). A session
//! whose end `last + gap` the frontier has passed can no longer grow: it is
//! emitted once and dropped, so state holds only open sessions.
//!
//! Merging is a union of connected intervals, so the result does not depend
//! on the order partials arrive in.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::combiner::{hold_least, FastMap, SessionPartial};
use crate::key::Key;
use crate::row::WindowRow;
use crate::window::round_down;

/// Session partials, as released by the session combiner.
pub type SessionPartials<'scope> = VecCollection<'scope, u64, (Key, SessionPartial), isize>;

/// The session rows of `partials`, each emitted once when its session closes.
pub fn session_windows(
    partials: SessionPartials<'_>,
    gap_ms: u64,
    granularity_ms: u64,
) -> Stream<'_, u64, Vec<WindowRow>> {
    assert!(granularity_ms > 0 && granularity_ms <= gap_ms);
    // The time by which every event that could join a session ending at
    // `last + gap` has arrived: the granule of `last + gap - 1`.
    let close_time = move |s: &SessionPartial| round_down(s.last_ts + gap_ms - 1, granularity_ms);
    let exchange =
        Exchange::new(|update: &((Key, SessionPartial), u64, isize)| update.0 .0.hash_value());
    partials
        .inner
        .unary_frontier(exchange, "SessionWindows", move |_cap, _info| {
            let mut open: FastMap<Key, Vec<SessionPartial>> = FastMap::default();
            // (close time, key), possibly stale after a merge moved a session's end.
            let mut closing: BinaryHeap<Reverse<(u64, Key)>> = BinaryHeap::new();
            let mut held: Option<Capability<u64>> = None;
            move |(input, frontier), output| {
                input.for_each_stamp(|stamp, batches| {
                    hold_least(&mut held, &stamp, output.output_index());
                    for batch in batches {
                        for ((key, partial), _time, copies) in batch.drain(..) {
                            assert!(copies > 0, "session partial retracted: {key:?} {partial:?}");
                            let mut merged = partial;
                            for _ in 1..copies {
                                merged.agg.merge(&partial.agg);
                            }
                            let sessions = open.entry(key.clone()).or_default();
                            // Absorb every open session that connects to the new one.
                            sessions.retain(|s| {
                                let connects = s.first_ts < merged.last_ts + gap_ms
                                    && merged.first_ts < s.last_ts + gap_ms;
                                if connects {
                                    merged.merge(s);
                                }
                                !connects
                            });
                            sessions.push(merged);
                            // Entries made stale by this merge are skipped when popped.
                            closing.push(Reverse((close_time(&merged), key)));
                        }
                    }
                });
                let frontier_time = frontier.frontier().first().copied();
                while let Some(Reverse((t, _))) = closing.peek() {
                    if frontier_time.is_some_and(|f| *t >= f) {
                        break;
                    }
                    let Reverse((_, key)) = closing.pop().expect("peeked");
                    let Some(sessions) = open.get_mut(&key) else {
                        continue;
                    };
                    let holder = held
                        .as_ref()
                        .expect("a capability is held while sessions are open");
                    sessions.retain(|s| {
                        let ct = close_time(s);
                        if frontier_time.is_some_and(|f| ct >= f) {
                            return true;
                        }
                        let cap = holder.delayed(&ct);
                        output.session(&cap).give(WindowRow {
                            window_start: s.first_ts,
                            window_end: s.last_ts + gap_ms,
                            key: key.as_str().to_owned(),
                            agg: s.agg,
                        });
                        false
                    });
                    if sessions.is_empty() {
                        open.remove(&key);
                    }
                }
                if let Some(Reverse((t, _))) = closing.peek() {
                    if let Some(h) = held.as_mut() {
                        if h.time() < t {
                            h.downgrade(t);
                        }
                    }
                } else {
                    debug_assert!(open.is_empty(), "open sessions without a close time");
                    held = None;
                }
            }
        })
}
