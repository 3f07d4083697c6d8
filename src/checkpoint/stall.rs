//! Noticing a checkpoint sidecar that stopped answering (stopped with
//! `SIGSTOP`, hung on a disk, starved of CPU).
//!
//! A stopped sidecar breaks nothing at once: its socket stays open, so the
//! engine only sees that no acknowledgement comes. [`AckClock`] measures
//! that: the time since which this process is owed an acknowledgement and
//! has heard none, i.e. since the later of the last `Committed` ack and the
//! moment the oldest unacknowledged share was handed to the client. It is
//! kept by the workers (a share queued) and the client thread (an ack), so a
//! client thread blocked in a write cannot hide the stall.
//! [`StallStats::check`], called by the driver at least every 20 ms, turns
//! the wait into a state: stalled once it reaches the threshold (the
//! checkpoint interval: a sidecar stopped between two cuts is reported by
//! the end of the next interval after the cut, within two intervals of the
//! stop), answering again at the next ack.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::metrics::Exposition;

/// When this process last heard from the sidecar and what it is owed.
#[derive(Debug)]
pub struct AckClock {
    state: Mutex<ClockState>,
}

#[derive(Debug)]
struct ClockState {
    last_ack: Instant,
    /// Per checkpoint with a share handed to the client and not
    /// acknowledged: when its first share was handed over.
    owed: BTreeMap<u64, Instant>,
}

impl AckClock {
    /// A clock that last heard from the sidecar at `now` (its welcome).
    pub fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new(ClockState {
                last_ack: now,
                owed: BTreeMap::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A share of checkpoint `id` was handed to the client at `now`.
    pub fn owe(&self, id: u64, now: Instant) {
        self.state().owed.entry(id).or_insert(now);
    }

    /// The sidecar acknowledged checkpoint `id` (and so every one before it) at `now`.
    pub fn acked(&self, id: u64, now: Instant) {
        let mut state = self.state();
        state.last_ack = now;
        state.owed = state.owed.split_off(&(id + 1));
    }

    /// How long, at `now`, this process has been owed an acknowledgement
    /// without hearing one; `None` if it is owed none.
    pub fn waiting(&self, now: Instant) -> Option<Duration> {
        let state = self.state();
        let oldest = state.owed.values().min()?;
        Some(now.saturating_duration_since((*oldest).max(state.last_ack)))
    }

    /// Checkpoints owed.
    pub fn owed(&self) -> usize {
        self.state().owed.len()
    }
}

/// A change of the stall state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallChange {
    /// The sidecar has acknowledged nothing for `waited` while owed.
    Stalled {
        /// How long it has been silent.
        waited: Duration,
    },
    /// The sidecar answers again (or is owed nothing any more).
    Resumed,
}

/// The decision, as a pure function: whether a wait of `waiting` makes the
/// sidecar stalled for the threshold `after`.
pub fn is_stalled(waiting: Option<Duration>, after: Duration) -> bool {
    waiting.is_some_and(|w| w >= after)
}

/// The stall figures of a connection (shown by the metrics endpoint).
#[derive(Debug)]
pub struct StallStats {
    /// Time since the last ack while owed one.
    pub clock: AckClock,
    stalled: AtomicBool,
    stalls: AtomicU64,
}

impl StallStats {
    /// Figures of a connection welcomed at `now`.
    pub fn new(now: Instant) -> Self {
        Self {
            clock: AckClock::new(now),
            stalled: AtomicBool::new(false),
            stalls: AtomicU64::new(0),
        }
    }

    /// Whether the sidecar is considered stalled.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    /// Re-evaluates the stall state at `now` with the threshold `after`;
    /// returns the change, if any (the caller logs it).
    pub fn check(&self, now: Instant, after: Duration) -> Option<StallChange> {
        let waiting = self.clock.waiting(now);
        let stalled = is_stalled(waiting, after);
        if self.stalled.swap(stalled, Ordering::Relaxed) == stalled {
            return None;
        }
        if stalled {
            self.stalls.fetch_add(1, Ordering::Relaxed);
            Some(StallChange::Stalled {
                waited: waiting.unwrap_or_default(),
            })
        } else {
            Some(StallChange::Resumed)
        }
    }

    /// [`check`](Self::check), logging a change: a warning when the sidecar
    /// stalls, another when it answers again.
    pub fn check_and_log(&self, after: Duration) {
        match self.check(Instant::now(), after) {
            Some(StallChange::Stalled { waited }) => tracing::warn!(
                waited_ms = crate::metrics::millis(waited),
                owed_checkpoints = self.clock.owed(),
                "the checkpoint sidecar has acknowledged nothing for {:.1} s while checkpoints \
                 wait for it: stalled (stopped, or overloaded?); the sources stop reading while \
                 it is behind (weir_sidecar_stalled = 1)",
                waited.as_secs_f64()
            ),
            Some(StallChange::Resumed) => {
                tracing::warn!("the checkpoint sidecar answers again: no longer stalled");
            }
            None => {}
        }
    }

    /// Writes the stall metrics.
    pub fn expose(&self, out: &mut Exposition) {
        out.gauge(
            "sidecar_stalled",
            "1 while the checkpoint sidecar has acknowledged nothing for a checkpoint interval or more while owed an acknowledgement, else 0.",
            u8::from(self.stalled()),
        );
        out.gauge(
            "sidecar_ack_wait_seconds",
            "How long this process has been owed a checkpoint acknowledgement without hearing one (0 when owed none).",
            self.clock
                .waiting(Instant::now())
                .map_or(0.0, |w| w.as_secs_f64()),
        );
        out.counter(
            "sidecar_stalls_total",
            "Times the checkpoint sidecar was found stalled.",
            self.stalls.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_wait_counts_from_the_later_of_the_last_ack_and_the_oldest_share() {
        let t0 = Instant::now();
        let clock = AckClock::new(t0);
        assert_eq!(clock.waiting(t0 + 10 * S), None, "owed nothing");
        clock.owe(1, t0 + 5 * S);
        clock.owe(1, t0 + 6 * S); // another worker's share of the same checkpoint
        assert_eq!(clock.waiting(t0 + 7 * S), Some(2 * S));
        clock.owe(2, t0 + 7 * S);
        clock.acked(1, t0 + 8 * S);
        // Checkpoint 2 waits since before the ack: the sidecar is making
        // progress, so the wait counts from the ack.
        assert_eq!(clock.waiting(t0 + 9 * S), Some(S));
        assert_eq!(clock.owed(), 1);
        clock.owe(3, t0 + 9 * S);
        clock.acked(3, t0 + 10 * S); // cumulative
        assert_eq!(clock.waiting(t0 + 20 * S), None);
    }

    #[test]
    fn a_stall_is_reported_once_and_its_end_once() {
        let t0 = Instant::now();
        let stats = StallStats::new(t0);
        stats.clock.owe(1, t0);
        assert_eq!(stats.check(t0 + S / 2, S), None);
        assert_eq!(
            stats.check(t0 + S, S),
            Some(StallChange::Stalled { waited: S })
        );
        assert!(stats.stalled());
        assert_eq!(stats.check(t0 + 5 * S, S), None, "reported once");
        stats.clock.acked(1, t0 + 6 * S);
        assert_eq!(stats.check(t0 + 6 * S, S), Some(StallChange::Resumed));
        assert_eq!(stats.check(t0 + 60 * S, S), None, "owed nothing");
        assert_eq!(stats.stalls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_threshold_is_inclusive_and_nothing_owed_is_never_a_stall() {
        assert!(!is_stalled(None, S));
        assert!(!is_stalled(Some(Duration::from_millis(999)), S));
        assert!(is_stalled(Some(S), S));
    }
}
