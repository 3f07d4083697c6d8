//! Local pre-aggregation, run by the source on each worker before the exchange.
//!
//! A combiner folds accepted events into one partial aggregate per
//! (time bucket, key) and releases a bucket's partials once the worker's local
//! watermark has passed the bucket's time, so at most one record per key and
//! bucket and worker crosses the network. Hot keys cost one hash-map update per
//! event instead of one exchanged record per event.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::agg::Agg;
use crate::key::{CarriedHash, Key, KeyRef};
use crate::window::round_down;

/// Hash maps keyed by strings on the hot path. foldhash with a fixed seed:
/// fast, and the same across processes.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// An empty [`FastMap`] with room for `capacity` entries.
pub fn fast_map_with_capacity<K, V>(capacity: usize) -> FastMap<K, V> {
    FastMap::with_capacity_and_hasher(capacity, foldhash::fast::FixedState::default())
}

/// Keeps in `held` a capability at or below the least time of `stamp` (and
/// of what `held` covered already): for operators that emit later, at times
/// derived from their input.
pub fn hold_least(
    held: &mut Option<timely::dataflow::operators::Capability<u64>>,
    stamp: &timely::dataflow::operators::InputCapability<u64>,
    output_port: usize,
) {
    let cap = stamp.retain_least(output_port).expect("non-empty stamp");
    if held.as_ref().is_none_or(|h| cap.time() < h.time()) {
        *held = Some(cap);
    }
}

/// Moves `held` to `least_needed`, the least time the operator may still
/// emit at, or drops it when there is none. `least_needed` must not be below
/// the capability's time.
pub fn hold_only(
    held: &mut Option<timely::dataflow::operators::Capability<u64>>,
    least_needed: Option<u64>,
) {
    match (least_needed, held.as_mut()) {
        (Some(least), Some(h)) => {
            if *h.time() < least {
                h.downgrade(&least);
            }
        }
        (Some(_), None) => unreachable!("pending output without a capability"),
        (None, _) => *held = None,
    }
}

/// One update of a differential collection: data, time, diff.
pub type Update<D> = (D, u64, isize);

/// Pre-aggregation of accepted events on one worker.
pub trait LocalCombiner: 'static {
    /// The record shipped downstream as a differential update.
    type Record: Clone + Ord + Debug + Serialize + DeserializeOwned + Send + 'static;

    /// Folds one accepted event in.
    fn add(&mut self, key: &str, ts: u64, value: i64) {
        self.add_hashed(KeyRef::new(key), ts, value);
    }

    /// Folds one accepted event in, its key hashed already.
    fn add_hashed(&mut self, key: KeyRef<'_>, ts: u64, value: i64);

    /// Hands partials whose time is `< watermark` to `out`, as updates at
    /// that time with diff +1, at most `limit` of them, oldest bucket first;
    /// returns whether some are left (call again, with the same or a later
    /// watermark). One by one and in bounded steps: a pane of a million keys
    /// is neither gathered into a vector nor queued downstream at once. The
    /// caller guarantees that no event added later has a rounded time below
    /// `watermark`.
    fn flush_before(
        &mut self,
        watermark: u64,
        limit: usize,
        out: &mut dyn FnMut(Update<Self::Record>),
    ) -> bool;

    /// The least time of a partial still held, if any.
    fn min_pending_time(&self) -> Option<u64>;

    /// How many partials are held (one per key and open bucket).
    fn pending_partials(&self) -> usize;

    /// The hash of a record's key (for key groups in checkpoints).
    fn key_hash(record: &Self::Record) -> u64;
}

/// The most keys a new bucket is sized for while another is still open.
const PRESIZE_WHILE_OPEN: usize = 1 << 16;

/// Room for a new table of partials at `time`: `last_released` (the keys of
/// the last table released) when no other table is `open`; otherwise, for a
/// table newer than every open one, the newest open table's keys if more,
/// and never more than [`PRESIZE_WHILE_OPEN`]. A table older than the newest
/// (late events) gets only what the last release suggests. Without the
/// newest table's size, a run whose lateness keeps every table open sized
/// each new one at 0 and rehashed it up to the key set: in profiles of a
/// 5M-event tumbling run (80K keys per pane) that was 5% of the samples,
/// and 19% in a run where the kernel zeroed the doubled tables' fresh huge
/// pages. End to end the difference was within the run-to-run noise.
pub fn presize<M>(
    time: u64,
    open: &BTreeMap<u64, M>,
    len: impl Fn(&M) -> usize,
    last_released: usize,
    another_in_flight: bool,
) -> usize {
    match open.last_key_value() {
        None if !another_in_flight => last_released,
        Some((&newest, table)) if time > newest => {
            last_released.max(len(table)).min(PRESIZE_WHILE_OPEN)
        }
        _ => last_released.min(PRESIZE_WHILE_OPEN),
    }
}

/// A bucket's partials by key, in a table placed by the hash the keys
/// carry ([`CarriedHash`]: looked up by a [`KeyRef`], nothing is hashed
/// again, and a partial leaves with its key's hash). A bucket drains in the
/// order of its keys' hashes: the window operators' tables, hashed the same
/// way, are then walked nearly in order instead of at random (a third of a
/// 2M-key sliding run was cache misses in those lookups).
type BucketMap<P> = hashbrown::HashMap<Key, P, CarriedHash>;

fn bucket_map<P>(capacity: usize) -> BucketMap<P> {
    hashbrown::HashMap::with_capacity_and_hasher(capacity, CarriedHash)
}

/// Partials grouped by bucket time, then key.
#[derive(Debug)]
struct Buckets<P> {
    by_time: BTreeMap<u64, BucketMap<P>>,
    /// A bucket partly released: its time and its partials still to give
    /// (drained in place, so its table is reused afterwards).
    draining: Option<(u64, BucketMap<P>)>,
    /// Keys in the last bucket flushed: the newest bucket is sized for that
    /// many once it is the only one open, so it does not rehash its way up
    /// to the key set every bucket. While older buckets are still open (for
    /// the lateness after a bucket's end), a new bucket starts at most
    /// [`PRESIZE_WHILE_OPEN`]: two maps sized for the whole key set at once
    /// were a quarter of the peak memory of a 2M-key sliding window.
    last_bucket_keys: usize,
}

impl<P> Buckets<P> {
    fn new() -> Self {
        Buckets {
            by_time: BTreeMap::new(),
            draining: None,
            last_bucket_keys: 0,
        }
    }

    #[inline]
    fn upsert(
        &mut self,
        time: u64,
        key: KeyRef<'_>,
        new: impl FnOnce() -> P,
        fold: impl FnOnce(&mut P),
    ) {
        let map = if let Some(map) = self.by_time.get_mut(&time) {
            map
        } else {
            let capacity = presize(
                time,
                &self.by_time,
                hashbrown::HashMap::len,
                self.last_bucket_keys,
                self.draining.is_some(),
            );
            self.by_time.entry(time).or_insert(bucket_map(capacity))
        };
        // Looked up by reference first so that the common case (key seen)
        // allocates nothing.
        if let Some(partial) = map.get_mut(&key) {
            fold(partial);
        } else {
            map.insert(key.to_key(), new());
        }
    }

    fn flush_before<R>(
        &mut self,
        watermark: u64,
        limit: usize,
        out: &mut dyn FnMut(Update<R>),
        mut make: impl FnMut(u64, Key, P) -> R,
    ) -> bool {
        let mut given = 0;
        loop {
            if let Some((time, rest)) = self.draining.as_mut() {
                let time = *time;
                // In bucket order, i.e. by hash; what is not taken stays.
                for (key, p) in rest.extract_if(|_, _| true).take(limit - given) {
                    out((make(time, key, p), time, 1));
                    given += 1;
                }
                if !rest.is_empty() {
                    return true;
                }
                let (_, drained) = self.draining.take().expect("draining");
                self.reuse_table(drained);
            }
            let Some(entry) = self.by_time.first_entry() else {
                return false;
            };
            if *entry.key() >= watermark {
                return false;
            }
            if given == limit {
                return true;
            }
            let time = *entry.key();
            let map = entry.remove();
            self.last_bucket_keys = map.len();
            self.draining = Some((time, map));
        }
    }

    /// After a bucket drained: if one bucket is left open, it gets room for
    /// the key set, in the drained bucket's table when that one is larger
    /// (its few partials move over) rather than in a freshly allocated one:
    /// a new table of a million keys faulted in ~100 MB of zeroed pages per
    /// pane.
    fn reuse_table(&mut self, mut drained: BucketMap<P>) {
        if let (1, Some(mut newest)) = (self.by_time.len(), self.by_time.last_entry()) {
            let map = newest.get_mut();
            if drained.capacity() > map.capacity() {
                drained.extend(map.drain());
                std::mem::swap(map, &mut drained);
            }
            map.reserve(self.last_bucket_keys.saturating_sub(map.len()));
        }
    }

    fn min_time(&self) -> Option<u64> {
        let draining = self.draining.as_ref().map(|(time, _)| *time);
        draining.or_else(|| self.by_time.keys().next().copied())
    }

    fn len(&self) -> usize {
        let draining = self.draining.as_ref().map_or(0, |(_, rest)| rest.len());
        draining
            + self
                .by_time
                .values()
                .map(hashbrown::HashMap::len)
                .sum::<usize>()
    }
}

/// What a pane combiner keeps per (pane, key): [`Agg`], or a richer
/// partial with sketches ([`crate::sketch::AggDistinct`]).
pub trait PaneValue: Clone + Ord + Debug + Serialize + DeserializeOwned + Send + 'static {
    /// The partial of one value.
    fn of(value: i64) -> Self;
    /// Folds one more value in.
    fn add(&mut self, value: i64);
}

impl PaneValue for Agg {
    #[inline]
    fn of(value: i64) -> Self {
        Agg::of(value)
    }

    #[inline]
    fn add(&mut self, value: i64) {
        Agg::add(self, value);
    }
}

/// Combiner for tumbling and sliding windows: one partial `P` ([`Agg`]
/// unless sketches are selected) per (pane, key), where panes are the
/// slide-long slices `[k*slide, (k+1)*slide)`.
///
/// A pane's partial is released at time `pane_end - granularity`, the last
/// granule of the pane, so every contribution to the pane arrives downstream
/// at one time and the window operator fires once per pane.
#[derive(Debug)]
pub struct PaneCombiner<P = Agg> {
    slide_ms: u64,
    granularity_ms: u64,
    buckets: Buckets<P>,
}

impl<P> PaneCombiner<P> {
    /// A combiner for panes of `slide_ms`; `granularity_ms` divides `slide_ms`.
    pub fn new(slide_ms: u64, granularity_ms: u64) -> Self {
        assert!(
            granularity_ms > 0 && slide_ms.is_multiple_of(granularity_ms),
            "granularity {granularity_ms} must divide slide {slide_ms}"
        );
        PaneCombiner {
            slide_ms,
            granularity_ms,
            buckets: Buckets::new(),
        }
    }

    /// The time at which the partial of the pane holding `ts` is released.
    #[inline]
    pub fn pane_time(&self, ts: u64) -> u64 {
        round_down(ts, self.slide_ms) + self.slide_ms - self.granularity_ms
    }
}

impl<P: PaneValue> LocalCombiner for PaneCombiner<P> {
    /// `(key, (pane_start, partial))`
    type Record = (Key, (u64, P));

    #[inline]
    fn add_hashed(&mut self, key: KeyRef<'_>, ts: u64, value: i64) {
        let time = self.pane_time(ts);
        self.buckets
            .upsert(time, key, || P::of(value), |partial| partial.add(value));
    }

    fn flush_before(
        &mut self,
        watermark: u64,
        limit: usize,
        out: &mut dyn FnMut(Update<Self::Record>),
    ) -> bool {
        let pane_offset_ms = self.slide_ms - self.granularity_ms;
        self.buckets
            .flush_before(watermark, limit, out, |time, key, partial| {
                (key, (time - pane_offset_ms, partial))
            })
    }

    fn min_pending_time(&self) -> Option<u64> {
        self.buckets.min_time()
    }

    fn pending_partials(&self) -> usize {
        self.buckets.len()
    }

    fn key_hash(record: &Self::Record) -> u64 {
        record.0.hash_value()
    }
}

/// Partial session: events of one key within one granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionPartial {
    /// Least event time, ms.
    pub first_ts: u64,
    /// Greatest event time, ms.
    pub last_ts: u64,
    /// Aggregate of the events.
    pub agg: Agg,
}

impl SessionPartial {
    fn of(ts: u64, value: i64) -> Self {
        SessionPartial {
            first_ts: ts,
            last_ts: ts,
            agg: Agg::of(value),
        }
    }

    /// Merges another partial of the same session.
    pub fn merge(&mut self, other: &SessionPartial) {
        self.first_ts = self.first_ts.min(other.first_ts);
        self.last_ts = self.last_ts.max(other.last_ts);
        self.agg.merge(&other.agg);
    }
}

/// Combiner for session windows: one [`SessionPartial`] per (granule, key).
///
/// With `granularity <= gap`, all events of a granule are less than `gap`
/// apart and so belong to one session; a partial is released at its granule's
/// time.
#[derive(Debug)]
pub struct SessionCombiner {
    granularity_ms: u64,
    buckets: Buckets<SessionPartial>,
}

impl SessionCombiner {
    /// A combiner for sessions of `gap_ms` with granules of `granularity_ms`.
    pub fn new(gap_ms: u64, granularity_ms: u64) -> Self {
        assert!(
            granularity_ms > 0 && granularity_ms <= gap_ms,
            "granularity {granularity_ms} must be positive and at most the gap {gap_ms}"
        );
        SessionCombiner {
            granularity_ms,
            buckets: Buckets::new(),
        }
    }
}

impl LocalCombiner for SessionCombiner {
    /// `(key, partial session)`
    type Record = (Key, SessionPartial);

    #[inline]
    fn add_hashed(&mut self, key: KeyRef<'_>, ts: u64, value: i64) {
        let time = round_down(ts, self.granularity_ms);
        self.buckets.upsert(
            time,
            key,
            || SessionPartial::of(ts, value),
            |partial| partial.merge(&SessionPartial::of(ts, value)),
        );
    }

    fn flush_before(
        &mut self,
        watermark: u64,
        limit: usize,
        out: &mut dyn FnMut(Update<Self::Record>),
    ) -> bool {
        self.buckets
            .flush_before(watermark, limit, out, |_time, key, partial| (key, partial))
    }

    fn min_pending_time(&self) -> Option<u64> {
        self.buckets.min_time()
    }

    fn pending_partials(&self) -> usize {
        self.buckets.len()
    }

    fn key_hash(record: &Self::Record) -> u64 {
        record.0.hash_value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_table_is_sized_from_the_newest_open_one_within_the_cap() {
        let len = |n: &usize| *n;
        let open: BTreeMap<u64, usize> = [(10, 3), (20, 80_000)].into_iter().collect();
        // Newer than every open table: the newest one's keys, capped.
        assert_eq!(presize(30, &open, len, 0, false), PRESIZE_WHILE_OPEN);
        let small: BTreeMap<u64, usize> = [(10, 500)].into_iter().collect();
        assert_eq!(presize(30, &small, len, 0, false), 500);
        assert_eq!(presize(30, &small, len, 900, false), 900);
        // Older than the newest (late events): only what the last release says.
        assert_eq!(presize(15, &open, len, 7, false), 7);
        assert_eq!(presize(15, &open, len, 1 << 20, false), PRESIZE_WHILE_OPEN);
        // Nothing open: the last release, uncapped, unless one is in flight.
        let none: BTreeMap<u64, usize> = BTreeMap::new();
        assert_eq!(presize(30, &none, len, 1 << 20, false), 1 << 20);
        assert_eq!(presize(30, &none, len, 1 << 20, true), PRESIZE_WHILE_OPEN);
    }

    #[test]
    fn buckets_opened_while_others_are_open_do_not_grow_by_rehashing() {
        let mut c = PaneCombiner::<Agg>::new(10_000, 1_000);
        for k in 0..5_000 {
            c.add(&format!("k{k}"), 1_000, 1);
        }
        c.add("k0", 11_000, 1);
        let newest = c.buckets.by_time.last_key_value().expect("open").1;
        assert!(newest.capacity() >= 5_000, "sized {}", newest.capacity());
    }

    #[test]
    fn pane_partials_release_at_pane_end_minus_granule() {
        let mut c = PaneCombiner::<Agg>::new(10_000, 1_000);
        c.add("a", 1_500, 4);
        c.add("a", 9_999, -2);
        c.add("b", 10_000, 7);
        assert_eq!(c.min_pending_time(), Some(9_000));
        let mut out = Vec::new();
        c.flush_before(9_000, usize::MAX, &mut |u| out.push(u));
        assert!(out.is_empty(), "released before the watermark passed");
        c.flush_before(9_001, usize::MAX, &mut |u| out.push(u));
        out.sort();
        let mut expected = Agg::of(4);
        expected.add(-2);
        assert_eq!(out, vec![((Key::from("a"), (0, expected)), 9_000, 1)]);
        assert_eq!(c.min_pending_time(), Some(19_000));
    }

    #[test]
    fn pending_partials_count_keys_per_open_bucket() {
        let mut c = PaneCombiner::<Agg>::new(10_000, 1_000);
        assert_eq!(c.pending_partials(), 0);
        for (key, ts) in [("a", 1), ("b", 2), ("a", 3), ("a", 10_000), ("c", 15_000)] {
            c.add(key, ts, 1);
        }
        // Pane 0: a, b; pane 10 s: a, c.
        assert_eq!(c.pending_partials(), 4);
        c.flush_before(9_001, usize::MAX, &mut |_| {});
        assert_eq!(c.pending_partials(), 2);
        c.flush_before(u64::MAX, usize::MAX, &mut |_| {});
        assert_eq!(c.pending_partials(), 0);
    }

    #[test]
    fn a_bucket_is_released_in_bounded_steps_and_holds_its_time_until_done() {
        let mut c = PaneCombiner::<Agg>::new(10_000, 1_000);
        for k in 0..5 {
            c.add(&format!("k{k}"), 1, k);
        }
        c.add("late-pane", 10_001, 1);
        let mut out = Vec::new();
        assert!(c.flush_before(u64::MAX, 2, &mut |u| out.push(u)));
        assert_eq!((out.len(), c.min_pending_time()), (2, Some(9_000)));
        assert_eq!(c.pending_partials(), 4);
        assert!(c.flush_before(u64::MAX, 3, &mut |u| out.push(u)));
        assert_eq!(out.len(), 5, "the first bucket is done");
        assert!(!c.flush_before(u64::MAX, 3, &mut |u| out.push(u)));
        assert_eq!((out.len(), c.min_pending_time()), (6, None));
        let mut keys: Vec<_> = out[..5]
            .iter()
            .map(|u| u.0 .0.as_str().to_owned())
            .collect();
        keys.sort();
        assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4"]);
    }

    #[test]
    fn session_partials_keep_first_and_last() {
        let mut c = SessionCombiner::new(5_000, 1_000);
        c.add("k", 1_700, 1);
        c.add("k", 1_100, 2);
        let mut out = Vec::new();
        c.flush_before(u64::MAX, usize::MAX, &mut |u| out.push(u));
        assert_eq!(out.len(), 1);
        let (_, partial) = &out[0].0;
        assert_eq!(
            (partial.first_ts, partial.last_ts, partial.agg.count),
            (1_100, 1_700, 2)
        );
        assert_eq!(out[0].1, 1_000);
    }
}
