//! Tests of the top-k value counts: which values a pane keeps, the bytes
//! (golden, damaged), and the documented error bound on random panes.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn counts(values: impl IntoIterator<Item = i64>) -> ValueCounts {
    let mut c = ValueCounts::default();
    for v in values {
        c.insert(v);
    }
    c
}

#[test]
fn a_pane_keeps_its_most_frequent_values_ties_to_the_smaller() {
    // 5 x3, -1 x3, 9 x2, 2 x2, 7 x1
    let c = counts([5, 5, 5, -1, -1, -1, 9, 9, 2, 2, 7]);
    assert_eq!(&*c.keep_top(3), &[(-1, 3), (2, 2), (5, 3)]);
    assert_eq!(&*c.keep_top(2), &[(-1, 3), (5, 3)]);
    assert_eq!(c.keep_top(10).len(), 5);
    assert!(ValueCounts::default().keep_top(4).is_empty());
    assert_eq!(
        top_of(c.keep_top(10).into_vec(), 3),
        vec![(-1, 3), (5, 3), (2, 2)]
    );
}

#[test]
fn window_counts_add_and_subtract_panes() {
    let mut w = WindowCounts::default();
    w.add(&[(1, 2), (3, 1)]);
    w.add(&[(3, 4)]);
    assert_eq!(w.top(1), vec![(3, 5)]);
    w.subtract(&[(1, 2), (3, 1)]);
    assert_eq!(w.top(5), vec![(3, 4)]);
    w.subtract(&[(3, 4)]);
    assert!(w.is_empty());
}

#[test]
fn the_top_field_lists_value_colon_count() {
    let mut out = Vec::new();
    format_top(&[(7, 3), (-2, 1)], &mut out);
    assert_eq!(out, b"7:3|-2:1");
    out.clear();
    format_top(&[], &mut out);
    assert!(out.is_empty());
}

/// The bytes of the counts {-1: 2, 300: 1}, written from `docs/formats.md`.
const GOLDEN: [u8; 41] = [
    1, 2, 0, 0, 0, 0, 0, 0, 0, // version, two entries
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 0, 0, 0, // -1 x2
    0x2c, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, // 300 x1
];

#[test]
fn golden_bytes_round_trip() {
    let c = counts([300, -1, -1]);
    assert_eq!(c.to_bytes(), GOLDEN);
    assert_eq!(ValueCounts::from_bytes(&GOLDEN).unwrap(), c);
    let bincoded = bincode::serialize(&c).unwrap();
    assert_eq!(bincode::deserialize::<ValueCounts>(&bincoded).unwrap(), c);
}

#[test]
fn damaged_bytes_are_refused_with_their_offset() {
    for len in 0..GOLDEN.len() {
        let e = ValueCounts::from_bytes(&GOLDEN[..len]).unwrap_err();
        assert!(
            e.reason.contains("truncated") || e.reason == "empty",
            "{len}: {e}"
        );
    }
    let refused = |bytes: Vec<u8>, offset: usize, reason: &str| {
        let e = ValueCounts::from_bytes(&bytes).unwrap_err();
        assert_eq!((e.offset, e.reason.as_str()), (offset, reason), "{bytes:?}");
    };
    let mut v = GOLDEN.to_vec();
    v[0] = 2;
    refused(v, 0, "unknown version 2");
    let mut v = GOLDEN.to_vec();
    v.push(0);
    refused(v, 41, "bytes after the last entry");
    let mut v = GOLDEN.to_vec();
    v[16] = 0x7f; // the first value becomes i64::MAX: not increasing
    refused(v, 25, "values not strictly increasing");
    let mut v = GOLDEN.to_vec();
    v[33] = 0; // the second count becomes 0
    refused(v, 33, "a count of zero");
    let mut v = GOLDEN.to_vec();
    v[8] = 0xff; // an entry count no length can hold
    refused(v, 1, "entry count out of range");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Each pane keeps `m` values; the window's counts (the panes' kept
    /// counts summed in any order) are never above the true counts, at most
    /// n / (m + 1) below, and no left-out value beats the row's last by more.
    #[test]
    fn window_counts_are_within_the_bound(
        panes in prop::collection::vec(
            prop::collection::vec(prop_oneof![0i64..6, 0i64..40, any::<i64>()], 0..300),
            1..8,
        ),
        k in 1usize..4,
        reversed in any::<bool>(),
    ) {
        let m = kept_per_pane(k);
        let mut exact: BTreeMap<i64, u64> = BTreeMap::new();
        let mut kept: Vec<Box<[(i64, u64)]>> = Vec::new();
        for pane in &panes {
            for &v in pane {
                *exact.entry(v).or_default() += 1;
            }
            // Two halves counted apart and merged: the pane's counts.
            let (a, b) = pane.split_at(pane.len() / 2);
            let mut c = counts(a.iter().copied());
            c.merge_weighted(&counts(b.iter().copied()), 1);
            prop_assert_eq!(&c, &counts(pane.iter().copied()));
            kept.push(c.keep_top(m));
        }
        if reversed {
            kept.reverse();
        }
        let mut window = WindowCounts::default();
        for k in &kept {
            window.add(k);
        }
        let n: u64 = exact.values().sum();
        let bound = n / (m as u64 + 1);
        let top = window.top(k);
        for &(v, c) in &top {
            let truth = exact[&v];
            prop_assert!(c <= truth && truth - c <= bound, "{v}: {c} of {truth}, bound {bound}");
        }
        let last = if top.len() == k { top[k - 1].1 } else { 0 };
        for (v, &truth) in &exact {
            if !top.iter().any(|(t, _)| t == v) {
                prop_assert!(truth <= last + bound, "{v} x{truth} left out, last {last}, bound {bound}");
            }
        }
        // Leaving panes in any order empties the window.
        for k in kept.iter().rev() {
            window.subtract(k);
        }
        prop_assert!(window.is_empty());
    }
}

proptest! {
    /// The window's top list picks from a bounded buffer: the same list as
    /// sorting every value.
    #[test]
    fn window_top_equals_the_top_of_every_value(
        entries in prop::collection::btree_map(-60i64..60, 1u64..6, 0..100),
        k in 1usize..12,
    ) {
        let mut window = WindowCounts::default();
        let all: Vec<(i64, u64)> = entries.into_iter().collect();
        window.add(&all);
        prop_assert_eq!(window.top(k), top_of(all, k));
    }
}

proptest! {
    /// Counting in any order and grouping, across the vector and B-tree
    /// forms, gives equal counts and bytes.
    #[test]
    fn counts_are_equal_however_gathered(
        values in prop::collection::vec(prop_oneof![0i64..8, 0i64..80], 0..200),
        split in any::<prop::sample::Index>(),
    ) {
        let whole = counts(values.iter().copied());
        let at = split.index(values.len() + 1);
        let mut merged = counts(values[at..].iter().rev().copied());
        merged.merge_weighted(&counts(values[..at].iter().copied()), 1);
        prop_assert_eq!(&merged, &whole);
        prop_assert_eq!(merged.to_bytes(), whole.to_bytes());
        prop_assert_eq!(ValueCounts::from_bytes(&whole.to_bytes()).unwrap(), whole.clone());
        let mut exact: BTreeMap<i64, u64> = BTreeMap::new();
        for &v in &values {
            *exact.entry(v).or_default() += 1;
        }
        prop_assert_eq!(whole.iter().collect::<Vec<_>>(), exact.into_iter().collect::<Vec<_>>());
    }
}
