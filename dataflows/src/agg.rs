//! The aggregate of a window for one key: count, sum, min and max.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What each event adds to a sum besides its value: 0. The
/// `fixture-changed-sum` feature, a test fixture and never a release, makes
/// it 1: an aggregate that deliberately differs, for `weir upgrade-check`.
const SUM_BIAS: i128 = if cfg!(feature = "fixture-changed-sum") {
    1
} else {
    0
};

/// Count, sum, min and max of the values of some events.
///
/// Sums are exact 128-bit integers ([`Sum`]), so no realistic input (at
/// most 2^63 events of `i64` values) can overflow them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Agg {
    /// Number of events.
    pub count: u64,
    /// Sum of the values.
    pub sum: Sum,
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
            sum: Sum::from(i128::from(value) + SUM_BIAS),
            min: value,
            max: value,
        }
    }

    /// Adds one value.
    #[inline]
    pub fn add(&mut self, value: i64) {
        self.count += 1;
        self.sum = Sum::from(self.sum.get() + i128::from(value) + SUM_BIAS);
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
        self.sum = Sum::from(self.sum.get() + other.sum.get() * i128::from(multiplicity));
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

/// An exact `i128` sum stored as two `u64` words, so that it needs 8-byte
/// alignment, not 16: an [`Agg`] is 40 bytes instead of 48, and so is every
/// partial held by a combiner or in flight (decision 25). It orders,
/// prints and serializes as the `i128` it holds (checkpoint bytes are
/// unchanged).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Sum([u64; 2]);

impl Sum {
    /// Zero.
    pub const ZERO: Sum = Sum([0, 0]);

    /// The sum's value.
    #[inline]
    pub fn get(self) -> i128 {
        (u128::from(self.0[1]) << 64 | u128::from(self.0[0])) as i128
    }
}

impl From<i128> for Sum {
    #[inline]
    fn from(value: i128) -> Self {
        let bits = value as u128;
        Sum([bits as u64, (bits >> 64) as u64])
    }
}

impl Ord for Sum {
    fn cmp(&self, other: &Self) -> Ordering {
        self.get().cmp(&other.get())
    }
}

impl PartialOrd for Sum {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for Sum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.get(), f)
    }
}

impl fmt::Display for Sum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.get(), f)
    }
}

impl Serialize for Sum {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i128(self.get())
    }
}

impl<'de> Deserialize<'de> for Sum {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        i128::deserialize(deserializer).map(Sum::from)
    }
}

#[cfg(test)]
mod tests {
    use super::{Agg, Sum};

    #[test]
    fn sums_keep_i128_values_order_and_bytes() {
        let values = [i128::MIN, -1, 0, 1, i128::from(i64::MAX) * 3, i128::MAX];
        for (i, &a) in values.iter().enumerate() {
            assert_eq!(Sum::from(a).get(), a);
            for &b in &values[i..] {
                assert_eq!(Sum::from(a).cmp(&Sum::from(b)), a.cmp(&b));
            }
            assert_eq!(
                bincode::serialize(&Sum::from(a)).unwrap(),
                bincode::serialize(&a).unwrap()
            );
        }
        assert_eq!(std::mem::size_of::<Agg>(), 40);
    }

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
                sum: Sum::from(10 + 3 * 2),
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
                sum: Sum::from(3 * 2),
                min: -3,
                max: 5
            }
        );
    }

    #[test]
    fn sum_does_not_overflow_on_extreme_values() {
        let mut a = Agg::of(i64::MAX);
        a.add(i64::MAX);
        assert_eq!(a.sum.get(), 2 * i128::from(i64::MAX));
    }
}
