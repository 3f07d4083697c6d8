//! Open-loop pacing: which events are due by a given moment.
//!
//! Event `i` (from 0) is intended at `start + i / rate`. The generator
//! appends every due event with its intended time as event time, whatever
//! the engine is doing, so a slow engine shows up as latency instead of
//! silently lowering the load (no coordinated omission).

/// The schedule of an open-loop load at a fixed rate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pacer {
    /// Wall-clock ms (since the epoch) of event 0.
    pub start_ms: u64,
    /// Events per second.
    pub rate_per_s: u64,
}

impl Pacer {
    /// The number of events intended strictly before `elapsed_us` after start.
    pub fn due_before(&self, elapsed_us: u64) -> u64 {
        // i / rate < elapsed  <=>  i < elapsed * rate; count = ceil(elapsed * rate).
        let scaled = u128::from(elapsed_us) * u128::from(self.rate_per_s);
        scaled.div_ceil(1_000_000) as u64
    }

    /// The intended wall-clock ms of event `i` (rounded down).
    pub fn intended_ms(&self, i: u64) -> u64 {
        self.start_ms + (u128::from(i) * 1_000 / u128::from(self.rate_per_s)) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::Pacer;

    #[test]
    fn due_counts_match_hand_computed_values() {
        let p = Pacer {
            start_ms: 1_000,
            rate_per_s: 50_000,
        };
        assert_eq!(p.due_before(0), 0);
        // 50,000/s is one event per 20 µs: events 0 (at 0 µs) and 1 (at 20 µs) are before 21 µs.
        assert_eq!(p.due_before(20), 1);
        assert_eq!(p.due_before(21), 2);
        assert_eq!(p.due_before(1_000_000), 50_000);
        assert_eq!(p.intended_ms(0), 1_000);
        assert_eq!(p.intended_ms(49), 1_000);
        assert_eq!(p.intended_ms(50), 1_001);
        assert_eq!(p.intended_ms(50_000), 2_000);
    }

    #[test]
    fn slow_rates_and_big_counts_do_not_overflow() {
        let p = Pacer {
            start_ms: 0,
            rate_per_s: 3,
        };
        assert_eq!(p.due_before(1_000_000), 3);
        assert_eq!(p.due_before(1_000_001), 4);
        assert_eq!(p.intended_ms(4), 1_333);
        let fast = Pacer {
            start_ms: 0,
            rate_per_s: u64::from(u32::MAX),
        };
        assert_eq!(fast.due_before(u64::from(u32::MAX)), 18_446_744_065_120);
    }
}
