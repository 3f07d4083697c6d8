//! The most frequent values of a (window, key) (`--aggregates ...,topk`,
//! decision 32), computed so that the result is a function of the input:
//! the same rows on any worker count and after any restart.
//!
//! - While a pane is open, its partials count values exactly
//!   ([`ValueCounts`]); the partials of all workers for a (key, pane) are
//!   summed once the pane is complete.
//! - A complete pane keeps its [`kept_per_pane`]`(k)` most frequent values
//!   with their exact counts ([`ValueCounts::keep_top`]; ties go to the
//!   smaller value): a function of the pane's events alone.
//! - A window's counts are the sum of its panes' kept counts
//!   ([`WindowCounts`]), added when a pane enters and subtracted when it
//!   leaves; the row lists the `k` largest.
//!
//! Error bound: a value's reported count `ĉ` is at most its true count `c`
//! and `c - ĉ ≤ Σ_p δ_p ≤ n / (m + 1)`, where `δ_p` is the largest count a
//! pane dropped, `n` the window's events and `m` the values kept per pane
//! (`m + 1` values of a pane that drops have a count of at least `δ_p`). So
//! a value left out of a full row has `c ≤ ĉ_k + n / (m + 1)`, `ĉ_k` the
//! row's smallest count.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::combiner::FastMap;

/// Version of the byte encoding ([`ValueCounts::to_bytes`]).
pub const FORMAT_VERSION: u8 = 1;
/// The largest `--topk`.
pub const MAX_TOPK: usize = 1_000;
/// The default `--topk`.
pub const DEFAULT_TOPK: usize = 10;
/// Bytes of one encoded entry: the value and its count.
const ENTRY_BYTES: usize = 16;
/// Bytes before the entries: the version and the entry count.
const HEADER_BYTES: usize = 9;

/// The values a complete pane keeps for `--topk k`: the error bound is the
/// window's events divided by one more than this.
pub fn kept_per_pane(k: usize) -> usize {
    8 * k
}

/// Exact counts of values: a pane partial's (module doc).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValueCounts(BTreeMap<i64, u64>);

/// Why bytes are not value counts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not top-k value counts at byte {offset}: {reason}")]
pub struct ValueCountsDecodeError {
    /// Offset of the first byte that does not fit.
    pub offset: usize,
    /// What is wrong there.
    pub reason: String,
}

impl ValueCounts {
    /// The counts of one value.
    pub fn of(value: i64) -> Self {
        ValueCounts(BTreeMap::from([(value, 1)]))
    }

    /// Counts `value` once more.
    #[inline]
    pub fn insert(&mut self, value: i64) {
        *self.0.entry(value).or_insert(0) += 1;
    }

    /// Adds `copies` copies of `other`'s counts.
    pub fn merge_weighted(&mut self, other: &ValueCounts, copies: u64) {
        for (&value, &count) in &other.0 {
            *self.0.entry(value).or_insert(0) += count * copies;
        }
    }

    /// Number of distinct values counted.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes held on the heap, approximately (a B-tree node per 11 entries).
    pub fn heap_bytes(&self) -> usize {
        self.0.len() * 24
    }

    /// The `keep` values with the largest counts (ties: the smaller value),
    /// with their counts, sorted by value.
    pub fn keep_top(&self, keep: usize) -> Box<[(i64, u64)]> {
        let mut entries: Vec<(i64, u64)> = self.0.iter().map(|(&v, &c)| (v, c)).collect();
        if entries.len() > keep {
            entries.select_nth_unstable_by(keep, |a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            entries.truncate(keep);
            entries.sort_unstable_by_key(|&(value, _)| value);
        }
        entries.into_boxed_slice()
    }

    /// The counts' bytes, format version [`FORMAT_VERSION`]: the version,
    /// the number of entries (`u64` LE), then each entry as the value
    /// (`i64` LE) and its count (`u64` LE, at least 1), values strictly
    /// increasing.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES * self.0.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&(self.0.len() as u64).to_le_bytes());
        for (&value, &count) in &self.0 {
            out.extend_from_slice(&value.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        out
    }

    /// Reads [`ValueCounts::to_bytes`]' bytes; refuses anything else with
    /// the offset of the first byte that does not fit.
    pub fn from_bytes(bytes: &[u8]) -> Result<ValueCounts, ValueCountsDecodeError> {
        let bad = |offset: usize, reason: &str| ValueCountsDecodeError {
            offset,
            reason: reason.to_owned(),
        };
        match bytes.first() {
            Some(&FORMAT_VERSION) => {}
            Some(v) => return Err(bad(0, &format!("unknown version {v}"))),
            None => return Err(bad(0, "empty")),
        }
        let count_bytes = bytes
            .get(1..HEADER_BYTES)
            .ok_or_else(|| bad(bytes.len(), "truncated entry count"))?;
        let entries = u64::from_le_bytes(count_bytes.try_into().expect("8 bytes"));
        let body = &bytes[HEADER_BYTES..];
        let expected = usize::try_from(entries)
            .ok()
            .and_then(|n| n.checked_mul(ENTRY_BYTES))
            .ok_or_else(|| bad(1, "entry count out of range"))?;
        if body.len() < expected {
            return Err(bad(bytes.len(), "truncated entries"));
        }
        if body.len() > expected {
            return Err(bad(HEADER_BYTES + expected, "bytes after the last entry"));
        }
        let mut counts = BTreeMap::new();
        let mut previous: Option<i64> = None;
        for (i, entry) in body.chunks_exact(ENTRY_BYTES).enumerate() {
            let offset = HEADER_BYTES + i * ENTRY_BYTES;
            let value = i64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
            let count = u64::from_le_bytes(entry[8..].try_into().expect("8 bytes"));
            if previous.is_some_and(|p| p >= value) {
                return Err(bad(offset, "values not strictly increasing"));
            }
            if count == 0 {
                return Err(bad(offset + 8, "a count of zero"));
            }
            previous = Some(value);
            counts.insert(value, count);
        }
        Ok(ValueCounts(counts))
    }
}

impl Serialize for ValueCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> Deserialize<'de> for ValueCounts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = ValueCounts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the bytes of top-k value counts")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ValueCounts, E> {
                ValueCounts::from_bytes(v).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ValueCounts, A::Error> {
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element::<u8>()? {
                    bytes.push(b);
                }
                ValueCounts::from_bytes(&bytes).map_err(serde::de::Error::custom)
            }
        }
        deserializer.deserialize_bytes(Bytes)
    }
}

/// A window's counts for one key: the sum of its panes' kept counts.
#[derive(Clone, Debug, Default)]
pub struct WindowCounts(FastMap<i64, u64>);

impl WindowCounts {
    /// Adds a pane's kept counts.
    pub fn add(&mut self, kept: &[(i64, u64)]) {
        for &(value, count) in kept {
            *self.0.entry(value).or_insert(0) += count;
        }
    }

    /// Subtracts a pane's kept counts, added before.
    pub fn subtract(&mut self, kept: &[(i64, u64)]) {
        for &(value, count) in kept {
            let total = self
                .0
                .get_mut(&value)
                .expect("a pane leaves with the counts it entered with");
            *total = total
                .checked_sub(count)
                .expect("a window's count covers its panes'");
            if *total == 0 {
                self.0.remove(&value);
            }
        }
    }

    /// Whether no value is counted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes held, approximately.
    pub fn heap_bytes(&self) -> usize {
        self.0.capacity() * (ENTRY_BYTES + 1)
    }

    /// The `k` values with the largest counts, largest first (ties: the
    /// smaller value first).
    pub fn top(&self, k: usize) -> Vec<(i64, u64)> {
        top_of(self.0.iter().map(|(&v, &c)| (v, c)).collect(), k)
    }
}

/// The `k` entries of `entries` with the largest counts, largest first
/// (ties: the smaller value first).
pub fn top_of(mut entries: Vec<(i64, u64)>, k: usize) -> Vec<(i64, u64)> {
    let order = |a: &(i64, u64), b: &(i64, u64)| b.1.cmp(&a.1).then(a.0.cmp(&b.0));
    if entries.len() > k {
        entries.select_nth_unstable_by(k, order);
        entries.truncate(k);
    }
    entries.sort_unstable_by(order);
    entries
}

/// Writes a row's top values as one CSV field, `v1:c1|v2:c2|…` (nothing
/// when there are none).
pub fn format_top(top: &[(i64, u64)], out: &mut Vec<u8>) {
    let mut number = itoa::Buffer::new();
    for (i, &(value, count)) in top.iter().enumerate() {
        if i > 0 {
            out.push(b'|');
        }
        out.extend_from_slice(number.format(value).as_bytes());
        out.push(b':');
        out.extend_from_slice(number.format(count).as_bytes());
    }
}

#[cfg(test)]
mod tests;
