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
//!
//! The operator also reports its state as a collection: every change to
//! the set of open sessions is an update (an absorbed session retracted and
//! the merged one inserted at the partial's time, a closed session retracted
//! at its close time). A checkpoint persists these updates; a restore feeds
//! the open sessions back in as partials.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use differential_dataflow::VecCollection;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::combiner::{FastMap, SessionPartial, Update};
use crate::key::Key;
use crate::row::WindowRow;
use crate::sliding::ROWS_PER_ACTIVATION;
use crate::window::round_down;

/// Session partials, as released by the session combiner.
pub type SessionPartials<'scope> = VecCollection<'scope, u64, (Key, SessionPartial), isize>;

/// Partials waiting for their time to complete, with a capability for it.
type Pending = Vec<((Key, SessionPartial), u64, isize)>;

/// Changes to the open sessions, as `((key, session), time, diff)`.
pub type SessionState<'scope> = Stream<'scope, u64, Vec<Update<(Key, SessionPartial)>>>;

/// Either output of the session operator.
#[derive(Clone, Debug)]
enum SessionOutput {
    Row(WindowRow),
    State(Update<(Key, SessionPartial)>),
}

/// The rows among the session operator's outputs.
fn rows_of(outputs: Stream<'_, u64, Vec<SessionOutput>>) -> Stream<'_, u64, Vec<WindowRow>> {
    outputs.flat_map(|o| match o {
        SessionOutput::Row(row) => Some(row),
        SessionOutput::State(_) => None,
    })
}

/// The session rows of `partials`, each emitted once when its session
/// closes, and, if `with_state` (a checkpointed run persists them), the
/// changes to the open sessions. Without it no change is made or sent:
/// two per merged partial, which a run without checkpoints only dropped.
pub fn session_windows(
    partials: SessionPartials<'_>,
    gap_ms: u64,
    granularity_ms: u64,
    with_state: bool,
) -> (Stream<'_, u64, Vec<WindowRow>>, Option<SessionState<'_>>) {
    assert!(granularity_ms > 0 && granularity_ms <= gap_ms);
    // The time by which every event that could join a session ending at
    // `last + gap` has arrived: the granule of `last + gap - 1`.
    let close_time = move |s: &SessionPartial| round_down(s.last_ts + gap_ms - 1, granularity_ms);
    let exchange =
        Exchange::new(|update: &((Key, SessionPartial), u64, isize)| update.0 .0.hash_value());
    let scope = partials.inner.scope();
    let outputs = partials
        .inner
        .unary_frontier(exchange, "SessionWindows", move |_cap, info| {
            let activator = scope.activator_for(info.address);
            let mut open: FastMap<Key, Vec<SessionPartial>> = FastMap::default();
            // (close time, key), possibly stale after a merge moved a session's end.
            let mut closing: BinaryHeap<Reverse<(u64, Key)>> = BinaryHeap::new();
            let mut held: Option<Capability<u64>> = None;
            let mut pending: BTreeMap<u64, (Capability<u64>, Pending)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|stamp, batches| {
                    // A collection's update carries its own time, at or after
                    // the stamp it travels under.
                    for batch in batches {
                        for update in batch.drain(..) {
                            let time = update.1;
                            pending
                                .entry(time)
                                .or_insert_with(|| {
                                    (stamp.delayed(&time, output.output_index()), Vec::new())
                                })
                                .1
                                .push(update);
                        }
                    }
                });
                // Times in order, each once complete: the state changes then
                // form a collection (an insertion never follows, in time, a
                // retraction of the same session).
                while let Some(first) = pending.first_entry() {
                    if frontier.frontier().less_equal(first.key()) {
                        break;
                    }
                    let (time, (cap, partials)) = first.remove_entry();
                    if held.as_ref().is_none_or(|h| *h.time() > time) {
                        held = Some(cap.clone());
                    }
                    let mut changes = Vec::new();
                    for ((key, partial), _time, copies) in partials {
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
                                if with_state {
                                    changes.push(SessionOutput::State((
                                        (key.clone(), *s),
                                        time,
                                        -1,
                                    )));
                                }
                            }
                            !connects
                        });
                        if with_state {
                            changes.push(SessionOutput::State(((key.clone(), merged), time, 1)));
                        }
                        sessions.push(merged);
                        // Entries made stale by this merge are skipped when popped.
                        closing.push(Reverse((close_time(&merged), key)));
                    }
                    if !changes.is_empty() {
                        output.session(&cap).give_iterator(changes.drain(..));
                    }
                }
                let frontier_time = frontier.frontier().first().copied();
                // At most [`ROWS_PER_ACTIVATION`] closed sessions per
                // activation, then again: the rows in flight stay bounded
                // and their containers are reused. All at once (a lateness
                // longer than the input closes every session at its end),
                // q11's millions of rows sat in the channel, and zeroing
                // their fresh pages was two thirds of the run.
                let mut budget = ROWS_PER_ACTIVATION;
                while let Some(Reverse((t, _))) = closing.peek() {
                    if frontier_time.is_some_and(|f| *t >= f) {
                        break;
                    }
                    if budget == 0 {
                        activator.activate();
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
                        budget = budget.saturating_sub(1);
                        let cap = holder.delayed(&ct);
                        let mut session = output.session(&cap);
                        session.give(SessionOutput::Row(WindowRow {
                            window_start: s.first_ts,
                            window_end: s.last_ts + gap_ms,
                            key: key.as_str().into(),
                            agg: s.agg,
                        }));
                        if with_state {
                            session.give(SessionOutput::State(((key.clone(), *s), ct, -1)));
                        }
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
        });
    if !with_state {
        // One consumer: timely clones a stream's containers for each more.
        return (rows_of(outputs), None);
    }
    let rows = rows_of(outputs.clone());
    let state = outputs.flat_map(|o| match o {
        SessionOutput::State(update) => Some(update),
        SessionOutput::Row(_) => None,
    });
    (rows, Some(state))
}
