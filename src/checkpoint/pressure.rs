//! Backpressure from the checkpoint path onto the sources, so that a slow or
//! stopped sidecar bounds the engine's memory instead of letting it grow.
//!
//! Two things grow while the sidecar does not commit: the persist tap's
//! buffer (every partial since the last cut: no cut is announced while
//! [`MAX_UNCOMMITTED_CHECKPOINTS`] are uncommitted) and the input read past
//! the last durable checkpoint. So the sources of a process stop reading the
//! log ([`hold`]) while
//! - the checkpoints announced and not yet committed are at their maximum
//!   (no cut can be announced, so nothing read now can be shipped), or
//! - at least one checkpoint is uncommitted and the persist taps of the
//!   process buffer [`PressureLimits::max_tap_buffer_bytes`] or more (the
//!   tap drains only when a checkpoint is cut, and a sidecar that is behind
//!   delays the cuts).
//!
//! Neither condition can deadlock the run: an announced cut `T` lies below
//! the output frontier, so every share of it can be made without reading
//! more input and the sidecar can commit it; and with nothing uncommitted
//! the sources always read (a tap over its bound then drains at the next
//! cut). The bound is therefore not a hard cap on the tap: with a healthy
//! sidecar the tap may hold one checkpoint interval of partials whatever
//! the bound, and what the sources had read before they stopped still
//! reaches it (at most one release of [`RELEASE_PER_ACTIVATION`] partials
//! per source).
//!
//! A held source parks: it registers with its worker's [`SourceGate`] and is
//! not activated again until the driver, which calls
//! [`SourceGate::wake_if_released`] on every round of the worker's loop (at
//! least every 20 ms), sees the hold lifted (decision 27).
//!
//! [`MAX_UNCOMMITTED_CHECKPOINTS`]: crate::checkpoint::cadence::MAX_UNCOMMITTED_CHECKPOINTS
//! [`RELEASE_PER_ACTIVATION`]: crate::source::RELEASE_PER_ACTIVATION

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use timely::scheduling::Activator;

use crate::metrics::Exposition;

/// The default of [`PressureLimits::max_tap_buffer_bytes`]: 256 MiB per
/// process (`weir run --max-tap-buffer-mb`).
pub const DEFAULT_MAX_TAP_BUFFER_BYTES: u64 = 256 << 20;

/// When the sources of a process stop reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PressureLimits {
    /// Checkpoints announced and not committed at which the sources stop
    /// (the cadence's maximum).
    pub max_uncommitted: u64,
    /// Bytes the persist taps of the process may buffer, while a checkpoint
    /// is uncommitted, before the sources stop.
    pub max_tap_buffer_bytes: u64,
}

/// Why the sources are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldReason {
    /// The maximum number of checkpoints is uncommitted.
    MaxUncommitted,
    /// The taps' buffer is over its bound while a checkpoint is uncommitted.
    TapBufferFull,
}

/// Whether the sources must stop reading, and why: the decision of this
/// module, as a pure function of the checkpoints `uncommitted` and the
/// bytes the taps buffer.
pub fn hold(uncommitted: u64, tap_bytes: u64, limits: PressureLimits) -> Option<HoldReason> {
    if uncommitted >= limits.max_uncommitted {
        Some(HoldReason::MaxUncommitted)
    } else if uncommitted > 0 && tap_bytes >= limits.max_tap_buffer_bytes {
        Some(HoldReason::TapBufferFull)
    } else {
        None
    }
}

/// The checkpoint path's state as one process sees it, shared by its
/// workers (taps, sources, driver) and the metrics endpoint.
#[derive(Debug)]
pub struct SidecarPressure {
    limits: PressureLimits,
    /// The newest checkpoint id a tap of this process has seen announced.
    announced: AtomicU64,
    /// The newest checkpoint id the sidecar acknowledged to this process.
    committed: AtomicU64,
    /// Bytes buffered by the persist taps of this process.
    tap_bytes: AtomicU64,
    /// Whether sources were held at the last check.
    held: AtomicBool,
    /// Times a source parked because of a hold.
    holds: AtomicU64,
}

impl SidecarPressure {
    /// For a run whose checkpoint ids continue from `last_id` (the restored
    /// or newest committed checkpoint; 0 for a fresh run).
    pub fn new(limits: PressureLimits, last_id: u64) -> Self {
        Self {
            limits,
            announced: AtomicU64::new(last_id),
            committed: AtomicU64::new(last_id),
            tap_bytes: AtomicU64::new(0),
            held: AtomicBool::new(false),
            holds: AtomicU64::new(0),
        }
    }

    /// The bytes the taps of the process may buffer before the sources stop.
    pub fn tap_bound_bytes(&self) -> u64 {
        self.limits.max_tap_buffer_bytes
    }

    /// A tap saw checkpoint `id` announced.
    pub fn announced(&self, id: u64) {
        self.announced.fetch_max(id, Ordering::Relaxed);
    }

    /// The sidecar acknowledged checkpoint `id` (and every one before it).
    pub fn committed(&self, id: u64) {
        self.committed.fetch_max(id, Ordering::Relaxed);
    }

    /// A tap's buffer went from `before` to `after` bytes.
    pub fn tap_resized(&self, before: u64, after: u64) {
        if after >= before {
            self.tap_bytes.fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.tap_bytes.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Checkpoints announced and not yet committed.
    pub fn uncommitted(&self) -> u64 {
        self.announced
            .load(Ordering::Relaxed)
            .saturating_sub(self.committed.load(Ordering::Relaxed))
    }

    /// Bytes the persist taps of this process buffer.
    pub fn tap_bytes(&self) -> u64 {
        self.tap_bytes.load(Ordering::Relaxed)
    }

    /// Whether the sources must stop reading now, and why.
    pub fn hold(&self) -> Option<HoldReason> {
        let reason = hold(self.uncommitted(), self.tap_bytes(), self.limits);
        self.held.store(reason.is_some(), Ordering::Relaxed);
        reason
    }

    /// Writes the backpressure metrics.
    pub fn expose(&self, out: &mut Exposition) {
        out.gauge(
            "checkpoints_uncommitted",
            "Checkpoints announced and not yet acknowledged as committed to this process.",
            self.uncommitted(),
        );
        out.gauge(
            "tap_buffer_bytes",
            "Bytes the persist taps of this process buffer for the next checkpoint.",
            self.tap_bytes(),
        );
        out.gauge(
            "tap_buffer_limit_bytes",
            "Tap bytes at which the sources stop reading while a checkpoint is uncommitted (--max-tap-buffer-mb).",
            self.limits.max_tap_buffer_bytes,
        );
        out.gauge(
            "sources_held",
            "1 while the sources stop reading because the sidecar is behind (checkpoints uncommitted at their maximum, or the tap buffer over its bound), else 0.",
            u8::from(self.held.load(Ordering::Relaxed)),
        );
        out.counter(
            "source_holds_total",
            "Times a source parked because the sidecar was behind.",
            self.holds.load(Ordering::Relaxed),
        );
    }
}

/// One worker's view of the [`SidecarPressure`]: its sources park here
/// while the sidecar is behind.
#[derive(Clone, Debug)]
pub struct SourceGate {
    pressure: Arc<SidecarPressure>,
    parked: Rc<RefCell<Vec<Activator>>>,
}

impl SourceGate {
    /// A gate of one worker on the process's `pressure`.
    pub fn new(pressure: Arc<SidecarPressure>) -> Self {
        Self {
            pressure,
            parked: Rc::default(),
        }
    }

    /// The process's pressure.
    pub fn pressure(&self) -> &Arc<SidecarPressure> {
        &self.pressure
    }

    /// Whether the source that `activator` schedules must not read now; if
    /// so it is parked, and activated again by
    /// [`wake_if_released`](Self::wake_if_released).
    pub fn park_if_held(&self, activator: &Activator) -> bool {
        let Some(reason) = self.pressure.hold() else {
            return false;
        };
        let mut parked = self.parked.borrow_mut();
        if parked.is_empty() {
            tracing::debug!(
                ?reason,
                uncommitted = self.pressure.uncommitted(),
                tap_bytes = self.pressure.tap_bytes(),
                "sources stop reading: the checkpoint sidecar is behind"
            );
        }
        parked.push(activator.clone());
        self.pressure.holds.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Activates the parked sources if the hold is lifted.
    pub fn wake_if_released(&self) {
        if self.parked.borrow().is_empty() || self.pressure.hold().is_some() {
            return;
        }
        for activator in self.parked.borrow_mut().drain(..) {
            activator.activate();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PressureLimits = PressureLimits {
        max_uncommitted: 4,
        max_tap_buffer_bytes: 1_000,
    };

    #[test]
    fn sources_stop_at_the_uncommitted_maximum_whatever_the_tap_holds() {
        assert_eq!(hold(4, 0, LIMITS), Some(HoldReason::MaxUncommitted));
        assert_eq!(hold(5, 10_000, LIMITS), Some(HoldReason::MaxUncommitted));
        assert_eq!(hold(3, 0, LIMITS), None);
    }

    #[test]
    fn a_full_tap_stops_the_sources_only_while_a_checkpoint_is_uncommitted() {
        assert_eq!(hold(1, 1_000, LIMITS), Some(HoldReason::TapBufferFull));
        assert_eq!(hold(3, 5_000, LIMITS), Some(HoldReason::TapBufferFull));
        assert_eq!(hold(1, 999, LIMITS), None);
        // Nothing uncommitted: the next cut drains the tap, so reading on
        // cannot deadlock the run.
        assert_eq!(hold(0, u64::MAX, LIMITS), None);
    }

    #[test]
    fn the_process_view_counts_announced_committed_and_tap_bytes() {
        let pressure = SidecarPressure::new(LIMITS, 7);
        assert_eq!(pressure.uncommitted(), 0);
        assert_eq!(pressure.hold(), None);
        pressure.announced(8);
        pressure.announced(9);
        pressure.announced(8); // a late tap: ids only grow
        assert_eq!(pressure.uncommitted(), 2);
        pressure.tap_resized(0, 600);
        pressure.tap_resized(0, 500);
        assert_eq!(pressure.tap_bytes(), 1_100);
        assert_eq!(pressure.hold(), Some(HoldReason::TapBufferFull));
        pressure.tap_resized(600, 100);
        assert_eq!(pressure.tap_bytes(), 600);
        assert_eq!(pressure.hold(), None);
        pressure.announced(11);
        assert_eq!(pressure.hold(), Some(HoldReason::MaxUncommitted));
        pressure.committed(10);
        assert_eq!(pressure.uncommitted(), 1);
        assert_eq!(pressure.hold(), None);
        pressure.committed(9); // acks are cumulative
        assert_eq!(pressure.uncommitted(), 1);
    }
}
