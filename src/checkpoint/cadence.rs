//! When worker 0 announces the next checkpoint cut: the cadence decision of
//! DESIGN §2, as pure functions of the sidecar backlog.
//!
//! - Every cadence announces at most [`MAX_UNCOMMITTED_CHECKPOINTS`]
//!   checkpoints ahead of the last commit. Workers never wait for the
//!   sidecar, so without this bound a sidecar slower than the interval would
//!   let every worker's queue of shares grow without limit; with it, a
//!   slow sidecar makes cuts rarer (each then covers more) instead.
//! - No cut is announced while the run's own ingest has files to commit
//!   (decision 72).
//! - The fixed cadence (the default) announces once per interval otherwise.
//! - The adaptive cadence doubles the interval, up to its maximum, after an
//!   announcement made while the previous checkpoint was still uncommitted or
//!   the queue to the sidecar was at least half full (backpressure), and
//!   halves it back towards the configured interval once neither holds.

/// Announced checkpoints that may be uncommitted at once.
pub const MAX_UNCOMMITTED_CHECKPOINTS: u64 = 4;

/// The adaptive cadence's longest interval, as a multiple of the configured one.
pub const ADAPTIVE_MAX_INTERVAL_FACTOR: u64 = 8;

/// How cuts are paced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cadence {
    /// The configured interval (`--checkpoint-interval`), ms of wall clock.
    pub interval_ms: u64,
    /// Whether the interval adapts to the sidecar's backlog.
    pub adaptive: bool,
}

/// The sidecar's backlog as worker 0's process sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SidecarBacklog {
    /// Checkpoints announced and not yet committed.
    pub uncommitted: u64,
    /// Shares queued for the sidecar client thread.
    pub queued: usize,
    /// That queue's capacity.
    pub capacity: usize,
    /// The run's own ingest has not committed every file its sources read
    /// yet (decision 72): a checkpoint now could cover records of a file
    /// whose ingest still fails, so none is announced.
    pub inputs_uncommitted: bool,
}

impl SidecarBacklog {
    /// The previous checkpoint is still uncommitted, or the queue is at least
    /// half full.
    fn pressed(&self) -> bool {
        self.uncommitted > 0 || self.queued * 2 >= self.capacity.max(1)
    }
}

impl Cadence {
    /// The interval to start with.
    pub fn initial_interval_ms(&self) -> u64 {
        self.interval_ms
    }

    /// Whether a cut may be announced now: `since_last_ms` after the last
    /// announcement, with the current interval `current_ms`. A final cut
    /// passes `since_last_ms = u64::MAX` (it does not wait for the interval).
    pub fn may_announce(
        &self,
        current_ms: u64,
        since_last_ms: u64,
        backlog: SidecarBacklog,
    ) -> bool {
        since_last_ms >= current_ms
            && backlog.uncommitted < MAX_UNCOMMITTED_CHECKPOINTS
            && !backlog.inputs_uncommitted
    }

    /// The interval after an announcement made under `backlog`.
    pub fn next_interval_ms(&self, current_ms: u64, backlog: SidecarBacklog) -> u64 {
        if !self.adaptive {
            return self.interval_ms;
        }
        let longest = self
            .interval_ms
            .saturating_mul(ADAPTIVE_MAX_INTERVAL_FACTOR);
        if backlog.pressed() {
            current_ms
                .saturating_mul(2)
                .clamp(self.interval_ms, longest)
        } else {
            (current_ms / 2).clamp(self.interval_ms, longest)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: SidecarBacklog = SidecarBacklog {
        uncommitted: 0,
        queued: 0,
        capacity: 64,
        inputs_uncommitted: false,
    };

    fn behind(uncommitted: u64) -> SidecarBacklog {
        SidecarBacklog {
            uncommitted,
            ..IDLE
        }
    }

    #[test]
    fn announcements_wait_for_the_interval_and_for_the_sidecar() {
        let fixed = Cadence {
            interval_ms: 1_000,
            adaptive: false,
        };
        assert!(!fixed.may_announce(1_000, 999, IDLE));
        assert!(fixed.may_announce(1_000, 1_000, IDLE));
        assert!(fixed.may_announce(1_000, 5_000, behind(3)));
        // Four checkpoints ahead of the last commit: no fifth, even a final one.
        assert!(!fixed.may_announce(1_000, 5_000, behind(4)));
        assert!(!fixed.may_announce(1_000, u64::MAX, behind(4)));
        assert!(fixed.may_announce(1_000, u64::MAX, behind(0)));
        // The run's own ingest has yet to commit its files: no cut, not
        // even the final one.
        let ingesting = SidecarBacklog {
            inputs_uncommitted: true,
            ..IDLE
        };
        assert!(!fixed.may_announce(1_000, 5_000, ingesting));
        assert!(!fixed.may_announce(1_000, u64::MAX, ingesting));
    }

    #[test]
    fn the_fixed_cadence_keeps_its_interval() {
        let fixed = Cadence {
            interval_ms: 1_000,
            adaptive: false,
        };
        assert_eq!(fixed.next_interval_ms(1_000, behind(3)), 1_000);
        assert_eq!(fixed.next_interval_ms(1_000, IDLE), 1_000);
    }

    #[test]
    fn the_adaptive_cadence_backs_off_under_pressure_and_returns() {
        let adaptive = Cadence {
            interval_ms: 500,
            adaptive: true,
        };
        let half_full = SidecarBacklog { queued: 32, ..IDLE };
        let mut interval = adaptive.initial_interval_ms();
        assert_eq!(interval, 500);
        // Pressed: 500 -> 1000 -> 2000 -> 4000 -> 4000 (8x the configured 500).
        for (backlog, expected) in [
            (behind(1), 1_000),
            (half_full, 2_000),
            (behind(2), 4_000),
            (behind(1), 4_000),
        ] {
            interval = adaptive.next_interval_ms(interval, backlog);
            assert_eq!(interval, expected, "{backlog:?}");
        }
        // Drained: halves back, never below the configured interval.
        for expected in [2_000, 1_000, 500, 500] {
            interval = adaptive.next_interval_ms(interval, IDLE);
            assert_eq!(interval, expected);
        }
        // 31 of 64 queued is less than half: not pressed.
        let below_half = SidecarBacklog { queued: 31, ..IDLE };
        assert_eq!(adaptive.next_interval_ms(1_000, below_half), 500);
    }
}
