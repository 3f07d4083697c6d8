//! Approximate aggregates: the partial of a pane with a distinct-count
//! sketch beside the exact count, sum, min and max (`--aggregates
//! ...,distinct`), merged across workers and panes like any partial.

pub mod hll;

#[cfg(test)]
mod tests;

use serde::{Deserialize, Serialize};

use crate::agg::Agg;
use crate::combiner::PaneValue;
use hll::Hll;

/// Count, sum, min, max and a [`Hll`] sketch of the distinct values.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AggDistinct {
    /// The exact aggregates.
    pub agg: Agg,
    /// The distinct values, approximately.
    pub distinct: Hll,
}

impl AggDistinct {
    /// Merges `copies` copies of `other` in (a set's union with itself is
    /// the set: copies only multiply the exact aggregates).
    pub fn merge_weighted(&mut self, other: &AggDistinct, copies: u64) {
        self.agg.merge_weighted(&other.agg, copies);
        self.distinct.merge(&other.distinct);
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.distinct.heap_bytes()
    }
}

impl PaneValue for AggDistinct {
    fn of(value: i64) -> Self {
        AggDistinct {
            agg: Agg::of(value),
            distinct: Hll::of(value),
        }
    }

    #[inline]
    fn add(&mut self, value: i64) {
        self.agg.add(value);
        self.distinct.insert(value);
    }
}
