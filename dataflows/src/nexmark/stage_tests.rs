//! The two-step per-window stages against the one-step ones: rows of a
//! window spread over workers, reduced locally ([`Best`]) or routed, then
//! combined, must give exactly the result lines of the stage run on all the
//! window's rows at once, ties across workers included.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::{
    highest_bid, hot_items, new_users, Best, WindowStage, HIGHEST_BID, HOT_ITEMS, NEW_USERS,
};
use crate::agg::Agg;
use crate::row::WindowRow;

fn row(key: &str, count: u64, max: i64) -> WindowRow {
    let mut agg = Agg::of(max);
    agg.count = count;
    WindowRow {
        window_start: 10_000,
        window_end: 20_000,
        key: key.into(),
        agg,
    }
}

/// The stage's lines for `rows` dealt to workers by `worker_of`: the local
/// step per worker, then each combining worker's share, as the dataflow does.
fn two_step(
    stage: WindowStage,
    rows: &[WindowRow],
    worker_of: &[usize],
    workers: usize,
) -> Vec<String> {
    let mut kept = Vec::new();
    for w in 0..workers {
        let mine = rows
            .iter()
            .zip(worker_of)
            .filter(|(_, o)| **o % workers == w);
        match stage.score {
            Some(score) => {
                let mut best = Best::default();
                for (r, _) in mine {
                    if let Some(s) = score(r) {
                        best.offer(s, r.clone());
                    }
                }
                kept.extend(best.into_rows());
            }
            None => kept.extend(mine.map(|(r, _)| r.clone())),
        }
    }
    // Combine: group by the routing field's worker (the window alone: one group).
    let mut groups: BTreeMap<&str, Vec<WindowRow>> = BTreeMap::new();
    for r in &kept {
        let field = stage.route.map_or("", |f| f(r));
        groups.entry(field).or_default().push(r.clone());
    }
    let mut lines = Vec::new();
    for (_, mut group) in groups {
        group.sort_unstable();
        (stage.finish)(&group, &mut lines);
    }
    lines.sort();
    lines
}

fn one_step(finish: fn(&[WindowRow], &mut Vec<String>), rows: &[WindowRow]) -> Vec<String> {
    let mut rows = rows.to_vec();
    rows.sort_unstable();
    let mut lines = Vec::new();
    finish(&rows, &mut lines);
    lines.sort();
    lines
}

#[test]
fn best_keeps_every_row_at_the_largest_score() {
    let mut best = Best::default();
    best.offer(2, row("a", 2, 0));
    best.offer(1, row("b", 1, 0));
    best.offer(2, row("c", 2, 0));
    assert_eq!(best.into_rows(), vec![row("a", 2, 0), row("c", 2, 0)]);
    let mut best = Best::default();
    best.offer(1, row("a", 1, 0));
    best.offer(3, row("b", 3, 0));
    assert_eq!(best.into_rows(), vec![row("b", 3, 0)]);
}

#[test]
fn a_tie_split_across_workers_is_reported_from_both() {
    // q5: auctions 1 and 2 both have the most bids, on different workers;
    // worker 1's auction 3 is its local best but not a result.
    let rows = [
        row("1", 5, 0),
        row("2", 5, 0),
        row("4", 2, 0),
        row("3", 3, 0),
    ];
    let got = two_step(HOT_ITEMS, &rows, &[0, 1, 0, 1], 2);
    assert_eq!(got, vec!["10000,20000,1,5", "10000,20000,2,5"]);
    assert_eq!(got, one_step(hot_items, &rows));
}

fn q5_rows() -> impl Strategy<Value = Vec<WindowRow>> {
    prop::collection::vec((0u8..12, 1u64..4), 0..24).prop_map(|rows| {
        let mut seen = BTreeSet::new();
        rows.into_iter()
            .filter(|(auction, _)| seen.insert(*auction))
            .map(|(auction, count)| row(&auction.to_string(), count, 0))
            .collect()
    })
}

fn q7_rows() -> impl Strategy<Value = Vec<WindowRow>> {
    prop::collection::vec((0u8..4, 0u8..3, 1i64..4, 1u64..3), 0..24)
        .prop_map(|rows| {
            rows.into_iter()
                .map(|(auction, bidder, price, count)| {
                    // Auction 0 stands for the empty key of dominated bids, which
                    // may carry the largest price of all.
                    let key = if auction == 0 {
                        String::new()
                    } else {
                        format!("{auction},{bidder},{price}")
                    };
                    row(&key, count, if auction == 0 { price + 1 } else { price })
                })
                .collect::<Vec<_>>()
        })
        .prop_map(|rows| {
            // One row per key and window, as the aggregation gives.
            let mut seen = BTreeSet::new();
            rows.into_iter()
                .filter(|r| seen.insert(r.key.clone()))
                .collect()
        })
}

fn q8_rows() -> impl Strategy<Value = Vec<WindowRow>> {
    prop::collection::vec((0u8..6, prop::option::of(0u8..3)), 0..24).prop_map(|rows| {
        let mut seen = BTreeSet::new();
        rows.into_iter()
            .filter(|r| seen.insert(*r))
            .map(|(id, name)| match name {
                Some(name) => row(&format!("{id},n{name}"), 1, 0),
                None => row(&id.to_string(), 1, 0),
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn q5_local_then_combined_equals_the_whole_window(
        rows in q5_rows(),
        worker_of in prop::collection::vec(0usize..4, 24),
        workers in 1usize..5,
    ) {
        let got = two_step(HOT_ITEMS, &rows, &worker_of, workers);
        prop_assert_eq!(got, one_step(hot_items, &rows));
    }

    #[test]
    fn q7_local_then_combined_equals_the_whole_window(
        rows in q7_rows(),
        worker_of in prop::collection::vec(0usize..4, 24),
        workers in 1usize..5,
    ) {
        let got = two_step(HIGHEST_BID, &rows, &worker_of, workers);
        prop_assert_eq!(got, one_step(highest_bid, &rows));
    }

    #[test]
    fn q8_routed_by_person_equals_the_whole_window(
        rows in q8_rows(),
        worker_of in prop::collection::vec(0usize..4, 24),
        workers in 1usize..5,
    ) {
        let got = two_step(NEW_USERS, &rows, &worker_of, workers);
        prop_assert_eq!(got, one_step(new_users, &rows));
    }
}
