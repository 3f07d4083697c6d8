//! The aggregate of a window for one key: count, sum, min and max.

use serde::{Deserialize, Serialize};

/// Count, sum, min and max of the values of some events.
///
/// Sums are kept in `i128`, so no realistic input (at most 2^63 events of
/// `i64` values) can overflow them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Agg {
    /// Number of events.
    pub count: u64,
    /// Sum of the values.
    pub sum: i128,
    /// Smallest value.
    pub min: i64,
    /// Largest value.
    pub max: i64,
}

impl Agg {
    /// The aggregate of a single value.
    pub fn of(value: i64) -> Self {
        Agg {
            count: 1,
            sum: i128::from(value),
            min: value,
            max: value,
        }
    }

    /// Adds one value.
    #[inline]
    pub fn add(&mut self, value: i64) {
        self.count += 1;
        self.sum += i128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Merges `multiplicity` copies of `other` into `self`.
    ///
    /// Multiplicities come from differential dataflow, where two identical
    /// partial aggregates consolidate into one record with diff 2.
    #[inline]
    pub fn merge_weighted(&mut self, other: &Agg, multiplicity: u64) {
        debug_assert!(multiplicity > 0, "merging a partial with no weight");
        self.count += other.count * multiplicity;
        self.sum += other.sum * i128::from(multiplicity);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// The aggregate of `copies` copies of `self` (`copies > 0`): where a
    /// fold over weighted partials starts.
    #[inline]
    #[must_use]
    pub fn repeated(&self, copies: u64) -> Agg {
        let mut total = *self;
        if copies > 1 {
            total.merge_weighted(self, copies - 1);
        }
        total
    }

    /// Merges `other` into `self`.
    #[inline]
    pub fn merge(&mut self, other: &Agg) {
        self.merge_weighted(other, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::Agg;

    #[test]
    fn merge_weighted_counts_copies() {
        let mut a = Agg::of(5);
        a.add(-3);
        let mut b = Agg::of(10);
        b.merge_weighted(&a, 3);
        assert_eq!(
            b,
            Agg {
                count: 7,
                sum: 10 + 3 * 2,
                min: -3,
                max: 10
            }
        );
    }

    #[test]
    fn repeated_counts_every_copy_once() {
        let mut a = Agg::of(5);
        a.add(-3);
        assert_eq!(a.repeated(1), a);
        assert_eq!(
            a.repeated(3),
            Agg {
                count: 6,
                sum: 3 * 2,
                min: -3,
                max: 5
            }
        );
    }

    #[test]
    fn sum_does_not_overflow_on_extreme_values() {
        let mut a = Agg::of(i64::MAX);
        a.add(i64::MAX);
        assert_eq!(a.sum, 2 * i128::from(i64::MAX));
    }
}
