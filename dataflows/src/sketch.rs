//! Approximate aggregates: the partial of a pane with a distinct-count
//! sketch (`--aggregates ...,distinct`) and/or exact value counts for the
//! most frequent values (`topk`) beside the exact count, sum, min and max,
//! merged across workers and panes like any partial.

pub mod hll;
pub mod top;

#[cfg(test)]
mod tests;

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::agg::Agg;
use crate::combiner::PaneValue;
use hll::Hll;
use top::ValueCounts;

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

/// What the sketch windows operator ([`crate::sketch_windows`]) needs of a
/// pane partial: the part merged across panes (aggregates and the distinct
/// sketch) and, with `topk`, the pane's exact value counts.
pub trait SketchPartial: PaneValue {
    /// The merged part and the value counts.
    fn split(self) -> (AggDistinct, Option<ValueCounts>);
}

impl SketchPartial for AggDistinct {
    fn split(self) -> (AggDistinct, Option<ValueCounts>) {
        (self, None)
    }
}

/// The distinct-count part of an [`AggTop`]: a [`Hll`] when `distinct` is
/// selected as well, else [`NoDistinct`].
pub trait DistinctPart:
    Clone + Ord + Debug + Serialize + DeserializeOwned + Send + 'static
{
    /// The part of one value.
    fn of(value: i64) -> Self;
    /// Adds one value.
    fn insert(&mut self, value: i64);
    /// The sketch (empty for [`NoDistinct`]).
    fn into_hll(self) -> Hll;
}

impl DistinctPart for Hll {
    fn of(value: i64) -> Self {
        Hll::of(value)
    }
    #[inline]
    fn insert(&mut self, value: i64) {
        Hll::insert(self, value);
    }
    fn into_hll(self) -> Hll {
        self
    }
}

/// No distinct-count sketch (`topk` without `distinct`): no bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NoDistinct;

impl DistinctPart for NoDistinct {
    fn of(_value: i64) -> Self {
        NoDistinct
    }
    #[inline]
    fn insert(&mut self, _value: i64) {}
    fn into_hll(self) -> Hll {
        Hll::new()
    }
}

/// A pane partial with `topk` selected: the exact aggregates, the distinct
/// part `D` and the exact counts of the pane's values (pruned only once the
/// pane is complete, [`top`]'s module doc).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AggTop<D> {
    /// The exact aggregates.
    pub agg: Agg,
    /// The distinct values, approximately (or nothing).
    pub distinct: D,
    /// Every value's count.
    pub values: ValueCounts,
}

impl<D: DistinctPart> PaneValue for AggTop<D> {
    fn of(value: i64) -> Self {
        AggTop {
            agg: Agg::of(value),
            distinct: D::of(value),
            values: ValueCounts::of(value),
        }
    }

    #[inline]
    fn add(&mut self, value: i64) {
        self.agg.add(value);
        self.distinct.insert(value);
        self.values.insert(value);
    }
}

impl<D: DistinctPart> SketchPartial for AggTop<D> {
    fn split(self) -> (AggDistinct, Option<ValueCounts>) {
        let merged = AggDistinct {
            agg: self.agg,
            distinct: self.distinct.into_hll(),
        };
        (merged, Some(self.values))
    }
}
