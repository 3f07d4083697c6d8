//! Wakes a source paused for running too far ahead of the output frontier
//! (see [`SourceConfig::max_ahead_ms`](super::SourceConfig::max_ahead_ms))
//! once that frontier moves, so that a worker with nothing else to do parks
//! instead of re-running the source in a loop.
//!
//! The operator at the end of the dataflow, which timely schedules whenever
//! its input frontier changes, reports each frontier it sees with
//! [`AheadWaker::frontier_seen`]. A source that finds itself ahead pauses
//! with [`AheadWaker::pause`], naming the frontier it judged by, and is
//! activated as soon as the reported frontier is another one (at once if the
//! last one reported already is, so a change seen before the pause is not
//! missed). Frontiers are the least time, `u64::MAX` for the empty one.

use std::cell::RefCell;
use std::rc::Rc;

use timely::scheduling::Activator;

/// Shared by the sources of one worker's dataflow and its output operator.
#[derive(Clone, Debug, Default)]
pub struct AheadWaker(Rc<RefCell<WakerState>>);

#[derive(Debug, Default)]
struct WakerState {
    /// The output frontier last reported, if any.
    seen: Option<u64>,
    /// Per registered source: its activator and, while paused, the frontier
    /// it paused at.
    sources: Vec<(Activator, Option<u64>)>,
}

/// A source's registration with an [`AheadWaker`].
#[derive(Clone, Copy, Debug)]
pub struct WakerSlot(usize);

impl AheadWaker {
    /// Registers the source that `activator` schedules.
    pub fn register(&self, activator: Activator) -> WakerSlot {
        let mut state = self.0.borrow_mut();
        state.sources.push((activator, None));
        WakerSlot(state.sources.len() - 1)
    }

    /// Pauses the source of `slot`, which is ahead of the output frontier
    /// `frontier` and must run again once it moves.
    pub fn pause(&self, slot: WakerSlot, frontier: u64) {
        let mut state = self.0.borrow_mut();
        let seen = state.seen;
        let (activator, paused_at) = &mut state.sources[slot.0];
        if seen.is_some_and(|seen| seen != frontier) {
            activator.activate();
        } else {
            *paused_at = Some(frontier);
        }
    }

    /// Reports the output frontier; activates the sources paused at another.
    pub fn frontier_seen(&self, frontier: u64) {
        let mut state = self.0.borrow_mut();
        state.seen = Some(frontier);
        for (activator, paused_at) in &mut state.sources {
            if paused_at.is_some_and(|at| at != frontier) {
                *paused_at = None;
                activator.activate();
            }
        }
    }
}
