//! Open-loop pacing: which events are due by a given moment.
//!
//! Event `i` (from 0) is intended at `start + i / rate` (more during the
//! bursts of [`Shape::Spikes`]). The generator appends every due event,
//! stamped with the moment it became due, whatever the engine is doing, so a
//! slow engine shows up as latency instead of silently lowering the load (no
//! coordinated omission).

/// The schedule of an open-loop load at a fixed rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pacer {
    /// Events per second.
    pub rate_per_s: u64,
}

impl Pacer {
    /// The number of events intended strictly before `elapsed_us` after start.
    pub fn due_before(self, elapsed_us: u64) -> u64 {
        // i / rate < elapsed  <=>  i < elapsed * rate; count = ceil(elapsed * rate).
        let scaled = u128::from(elapsed_us) * u128::from(self.rate_per_s);
        scaled.div_ceil(1_000_000) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::Pacer;

    #[test]
    fn due_counts_match_hand_computed_values() {
        let p = Pacer { rate_per_s: 50_000 };
        assert_eq!(p.due_before(0), 0);
        // 50,000/s is one event per 20 µs: events 0 (at 0 µs) and 1 (at 20 µs) are before 21 µs.
        assert_eq!(p.due_before(20), 1);
        assert_eq!(p.due_before(21), 2);
        assert_eq!(p.due_before(1_000_000), 50_000);
    }

    #[test]
    fn slow_rates_and_big_counts_do_not_overflow() {
        let p = Pacer { rate_per_s: 3 };
        assert_eq!(p.due_before(1_000_000), 3);
        assert_eq!(p.due_before(1_000_001), 4);
        let fast = Pacer {
            rate_per_s: u64::from(u32::MAX),
        };
        assert_eq!(fast.due_before(u64::from(u32::MAX)), 18_446_744_065_120);
    }
}

/// The shape of a load over time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// The rate, all the time.
    Steady,
    /// Five times the rate during seconds 20–30 of every minute.
    Spikes,
    /// During seconds 20–30 of every minute, one event in ten is stamped
    /// far in the past (most of them become late events).
    LateBursts,
    /// Half of all events carry the same key, `hot`.
    HotKey,
    /// The key space moves on by half every 10 s: new keys keep arriving.
    KeyGrowth,
    /// After the warm-up, the last partition receives nothing (a quiet
    /// source): without `--idle-timeout` it holds every window back.
    QuietPartition,
}

/// The burst phase of every minute, ms: `[start, end)`.
pub const BURST_PHASE_MS: (u64, u64) = (20_000, 30_000);
/// The rate multiplier of [`Shape::Spikes`].
pub const SPIKE_FACTOR: u64 = 5;

/// Time spent in burst phases during the first `elapsed_ms`.
pub fn burst_time_ms(elapsed_ms: u64) -> u64 {
    let (start, end) = BURST_PHASE_MS;
    let full_minutes = elapsed_ms / 60_000;
    let in_minute = elapsed_ms % 60_000;
    full_minutes * (end - start) + in_minute.clamp(start, end) - start
}

/// Whether `elapsed_ms` falls in a burst phase.
pub fn in_burst(elapsed_ms: u64) -> bool {
    (BURST_PHASE_MS.0..BURST_PHASE_MS.1).contains(&(elapsed_ms % 60_000))
}

impl Shape {
    /// Events due strictly before `elapsed_us` at a base rate of `rate_per_s`.
    pub fn due_before(self, rate_per_s: u64, elapsed_us: u64) -> u64 {
        let base = Pacer { rate_per_s }.due_before(elapsed_us);
        if self != Shape::Spikes {
            return base;
        }
        let extra_us = burst_time_ms(elapsed_us / 1_000) * 1_000;
        base + Pacer {
            rate_per_s: rate_per_s * (SPIKE_FACTOR - 1),
        }
        .due_before(extra_us)
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn burst_time_by_hand() {
        assert_eq!(burst_time_ms(0), 0);
        assert_eq!(burst_time_ms(20_000), 0);
        assert_eq!(burst_time_ms(25_000), 5_000);
        assert_eq!(burst_time_ms(45_000), 10_000);
        assert_eq!(burst_time_ms(85_000), 15_000);
        assert!(in_burst(20_000) && !in_burst(30_000) && in_burst(81_000));
    }

    #[test]
    fn spikes_add_four_times_the_rate_during_bursts() {
        // 30 s at 1,000/s with a 10 s burst at 5x: 30,000 + 4 * 10,000.
        assert_eq!(Shape::Spikes.due_before(1_000, 30_000_000), 70_000);
        assert_eq!(Shape::Steady.due_before(1_000, 30_000_000), 30_000);
        assert_eq!(Shape::Spikes.due_before(1_000, 20_000_000), 20_000);
    }
}
