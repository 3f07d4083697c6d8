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
///
/// Most (key, pane) partials hold a handful of values: up to
/// [`SMALL_MAX_VALUES`] they are a sorted vector (a B-tree node costs ~200
/// bytes and an allocation even for one value), beyond it a B-tree, so that
/// a key with many values per pane is not quadratic. The form depends only
/// on the number of values (counts only grow), so equal counts are equal
/// values and the derived order is a total order consistent with them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ValueCounts(Counts);

/// The two forms of [`ValueCounts`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Counts {
    /// At most [`SMALL_MAX_VALUES`] entries, sorted by value.
    Small(Vec<(i64, u64)>),
    /// More.
    Large(BTreeMap<i64, u64>),
}

/// The most values [`ValueCounts`] keeps in a sorted vector.
pub const SMALL_MAX_VALUES: usize = 32;

impl Default for ValueCounts {
    fn default() -> Self {
        ValueCounts(Counts::Small(Vec::new()))
    }
}

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
        ValueCounts(Counts::Small(vec![(value, 1)]))
    }

    /// Counts `value` once more.
    #[inline]
    pub fn insert(&mut self, value: i64) {
        self.add(value, 1);
    }

    /// Adds `count` to `value`'s count.
    #[inline]
    fn add(&mut self, value: i64, count: u64) {
        match &mut self.0 {
            Counts::Small(entries) => match entries.binary_search_by_key(&value, |e| e.0) {
                Ok(i) => entries[i].1 += count,
                Err(i) if entries.len() < SMALL_MAX_VALUES => entries.insert(i, (value, count)),
                Err(_) => {
                    let mut large: BTreeMap<i64, u64> = entries.iter().copied().collect();
                    large.insert(value, count);
                    self.0 = Counts::Large(large);
                }
            },
            Counts::Large(map) => *map.entry(value).or_insert(0) += count,
        }
    }

    /// Adds `copies` copies of `other`'s counts.
    pub fn merge_weighted(&mut self, other: &ValueCounts, copies: u64) {
        for (value, count) in other.iter() {
            self.add(value, count * copies);
        }
    }

    /// The values and their counts, by value.
    pub fn iter(&self) -> impl Iterator<Item = (i64, u64)> + '_ {
        let (small, large) = match &self.0 {
            Counts::Small(entries) => (Some(entries.iter().copied()), None),
            Counts::Large(map) => (None, Some(map.iter().map(|(&v, &c)| (v, c)))),
        };
        small
            .into_iter()
            .flatten()
            .chain(large.into_iter().flatten())
    }

    /// Number of distinct values counted.
    pub fn len(&self) -> usize {
        match &self.0 {
            Counts::Small(entries) => entries.len(),
            Counts::Large(map) => map.len(),
        }
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held on the heap, approximately (a B-tree node per 11 entries).
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Counts::Small(entries) => entries.capacity() * ENTRY_BYTES,
            Counts::Large(map) => map.len() * 24,
        }
    }

    /// The `keep` values with the largest counts (ties: the smaller value),
    /// with their counts, sorted by value.
    pub fn keep_top(&self, keep: usize) -> Box<[(i64, u64)]> {
        let mut entries: Vec<(i64, u64)> = self.iter().collect();
        if entries.len() > keep {
            entries.select_nth_unstable_by(keep, order);
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
        let mut out = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES * self.len());
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&(self.len() as u64).to_le_bytes());
        for (value, count) in self.iter() {
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
        let mut counts = ValueCounts::default();
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
            counts.add(value, count);
        }
        Ok(counts)
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

/// A window's counts for one key: the sum of its panes' kept counts,
/// sorted by value. A vector, not a hash map: most keys hold a few values
/// (16 bytes each, where a map's buckets took ~2 KiB per key), and adding or
/// subtracting a sorted pane is one merge pass.
#[derive(Clone, Debug, Default)]
pub struct WindowCounts(Vec<(i64, u64)>);

impl WindowCounts {
    /// Adds a pane's kept counts (sorted by value).
    pub fn add(&mut self, kept: &[(i64, u64)]) {
        debug_assert!(kept.is_sorted_by_key(|e| e.0), "kept values are sorted");
        if kept
            .iter()
            .all(|&(v, _)| self.0.binary_search_by_key(&v, |e| e.0).is_ok())
        {
            for &(value, count) in kept {
                let i = self
                    .0
                    .binary_search_by_key(&value, |e| e.0)
                    .expect("checked");
                self.0[i].1 += count;
            }
            return;
        }
        let mut merged = Vec::with_capacity(self.0.len() + kept.len());
        let (mut old, mut new) = (self.0.iter().peekable(), kept.iter().peekable());
        loop {
            let next = match (old.peek(), new.peek()) {
                (Some(&&(a, ca)), Some(&&(b, cb))) if a == b => {
                    old.next();
                    new.next();
                    (a, ca + cb)
                }
                (Some(&&a), Some(&&b)) if a.0 < b.0 => *old.next().expect("peeked"),
                (_, Some(_)) => *new.next().expect("peeked"),
                (Some(_), None) => *old.next().expect("peeked"),
                (None, None) => break,
            };
            merged.push(next);
        }
        self.0 = merged;
    }

    /// Subtracts a pane's kept counts, added before.
    pub fn subtract(&mut self, kept: &[(i64, u64)]) {
        let mut emptied = false;
        for &(value, count) in kept {
            let i = self
                .0
                .binary_search_by_key(&value, |e| e.0)
                .expect("a pane leaves with the counts it entered with");
            let total = &mut self.0[i].1;
            *total = total
                .checked_sub(count)
                .expect("a window's count covers its panes'");
            emptied |= *total == 0;
        }
        if emptied {
            self.0.retain(|&(_, count)| count > 0);
            if self.0.capacity() > 4 * self.0.len() {
                self.0.shrink_to_fit();
            }
        }
    }

    /// Whether no value is counted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes held, approximately.
    pub fn heap_bytes(&self) -> usize {
        self.0.capacity() * ENTRY_BYTES
    }

    /// The `k` values with the largest counts, largest first (ties: the
    /// smaller value first).
    pub fn top(&self, k: usize) -> Vec<(i64, u64)> {
        // A row per key and slide: select from a buffer of 2k candidates,
        // not from a copy of the window's (up to k * 8 * panes) values.
        let mut best: Vec<(i64, u64)> = Vec::with_capacity(2 * k);
        let mut floor: Option<(i64, u64)> = None;
        for &entry in &self.0 {
            if floor.is_some_and(|f| better(&f, &entry)) {
                continue;
            }
            best.push(entry);
            if best.len() == 2 * k {
                best.select_nth_unstable_by(k - 1, order);
                best.truncate(k);
                floor = Some(best[k - 1]);
            }
        }
        top_of(best, k)
    }
}

/// The order of a top list: the larger count first, then the smaller value.
fn order(a: &(i64, u64), b: &(i64, u64)) -> std::cmp::Ordering {
    b.1.cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Whether `a` comes before `b` in a top list.
fn better(a: &(i64, u64), b: &(i64, u64)) -> bool {
    order(a, b).is_lt()
}

/// The `k` entries of `entries` with the largest counts, largest first
/// (ties: the smaller value first).
pub fn top_of(mut entries: Vec<(i64, u64)>, k: usize) -> Vec<(i64, u64)> {
    if entries.len() > k {
        entries.select_nth_unstable_by(k, order);
        entries.truncate(k);
        // Rows are held until written: not with the whole window's capacity.
        entries.shrink_to_fit();
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
