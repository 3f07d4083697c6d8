//! `--aggregates ...,topk` against the reference: on random inputs, for
//! tumbling and sliding windows (up to 3,600 panes) on 1, 2 and 4 workers,
//! every row's top values equal the reference's rule exactly (each pane's
//! exact counts, pruned to its most frequent values, summed over the
//! window's panes: a function of the input, so no tolerance) and lie within
//! the documented bound of the exact counts; and the windows rebuilt from
//! `--emit changes` equal every window.

use std::collections::BTreeMap;

use proptest::prelude::*;
use weir::csv_input::write_csv_field;
use weir::job::WindowQuery;
use weir::memory::run_in_memory;
use weir_dataflows::aggregates::{Aggregates, SketchColumns};
use weir_dataflows::emit::Emit;
use weir_dataflows::reference::reference_window_values;
use weir_dataflows::sketch::hll::Hll;
use weir_dataflows::sketch::top::{kept_per_pane, top_of, ValueCounts};
use weir_dataflows::{Agg, WindowSpec};

use crate::emit_changes::fixed_window_strategy;
use crate::oracle::{partitions_strategy, Partitions};

/// The values a pane keeps, with their counts.
type Kept = Box<[(i64, u64)]>;

/// A reference row: its line, the exact counts of its values and its top.
struct Expected {
    line: String,
    exact: BTreeMap<i64, u64>,
    top: Vec<(i64, u64)>,
}

/// The expected rows of `query` (with `topk`) on `partitions`, sorted by line.
fn expected_rows(partitions: &Partitions, query: WindowQuery) -> Vec<Expected> {
    let k = query.aggregates.topk().expect("topk is selected");
    let slide_ms = query.spec.slide_ms().expect("fixed windows");
    let (windows, _) = reference_window_values(partitions, query.spec, query.lateness_ms);
    let pane_spec = WindowSpec::Tumbling { size_ms: slide_ms };
    let (panes, _) = reference_window_values(partitions, pane_spec, query.lateness_ms);
    // Per key, each pane's kept values by pane start.
    let mut kept: BTreeMap<String, BTreeMap<u64, Kept>> = BTreeMap::new();
    for ((start, _, key), values) in panes {
        let mut counts = ValueCounts::default();
        for &v in &values {
            counts.insert(v);
        }
        let pane = counts.keep_top(kept_per_pane(k));
        kept.entry(key).or_default().insert(start, pane);
    }
    let mut rows: Vec<Expected> = windows
        .into_iter()
        .map(|((start, end, key), values)| {
            let mut agg = Agg::of(values[0]);
            let mut hll = Hll::of(values[0]);
            let mut exact: BTreeMap<i64, u64> = BTreeMap::from([(values[0], 1)]);
            for &v in &values[1..] {
                agg.add(v);
                hll.insert(v);
                *exact.entry(v).or_default() += 1;
            }
            let mut window: BTreeMap<i64, u64> = BTreeMap::new();
            for pane in kept[&key].range(start..end).map(|(_, pane)| pane) {
                for &(v, c) in pane {
                    *window.entry(v).or_default() += c;
                }
            }
            let top = top_of(window.into_iter().collect(), k);
            let mut line = format!("{start},{end},").into_bytes();
            write_csv_field(&mut line, &key).unwrap();
            let sketches = SketchColumns {
                distinct: Some(hll.estimate()),
                top: Some(&top),
            };
            query.aggregates.format_columns(&agg, sketches, &mut line);
            let line = String::from_utf8(line).unwrap();
            Expected { line, exact, top }
        })
        .collect();
    rows.sort_by(|a, b| a.line.cmp(&b.line));
    rows
}

/// The documented bound holds for every row (sketch/top.rs's module doc).
fn check_bound(rows: &[Expected], k: usize) -> Result<(), TestCaseError> {
    let m = kept_per_pane(k) as u64;
    for row in rows {
        let n: u64 = row.exact.values().sum();
        let bound = n / (m + 1);
        for &(v, c) in &row.top {
            let truth = row.exact[&v];
            prop_assert!(
                c <= truth && truth - c <= bound,
                "{}: {v} x{truth}",
                row.line
            );
        }
        let last = if row.top.len() == k {
            row.top[k - 1].1
        } else {
            0
        };
        for (v, &truth) in &row.exact {
            if !row.top.iter().any(|(t, _)| t == v) {
                prop_assert!(truth <= last + bound, "{}: {v} x{truth} left out", row.line);
            }
        }
    }
    Ok(())
}

/// `query` on 1, 2 and 4 workers writes exactly the `expected` lines.
fn same_lines_on_every_worker_count(
    partitions: &Partitions,
    query: WindowQuery,
    batch_records: usize,
    expected: &[Expected],
) -> Result<(), TestCaseError> {
    let lines: Vec<&str> = expected.iter().map(|row| row.line.as_str()).collect();
    for workers in [1, 2, 4] {
        let got = run_in_memory(partitions, query, workers, batch_records)
            .map_err(TestCaseError::fail)?;
        prop_assert_eq!(&got.lines, &lines, "{} on {} workers", query.spec, workers);
    }
    Ok(())
}

fn query(spec: WindowSpec, lateness_ms: u64, aggregates: Aggregates, emit: Emit) -> WindowQuery {
    WindowQuery {
        granularity_ms: 250,
        emit,
        aggregates,
        ..WindowQuery::generic(spec, lateness_ms)
    }
}

fn aggregates_strategy() -> impl Strategy<Value = Aggregates> {
    (
        prop_oneof![
            Just("count,sum,min,max,distinct,topk"),
            Just("topk"),
            Just("count,topk"),
            Just("max,distinct,topk"),
        ],
        prop_oneof![Just(1usize), Just(2), Just(10)],
    )
        .prop_map(|(text, k)| {
            let a: Aggregates = text.parse().expect("valid aggregates");
            a.with_topk(k).expect("valid k")
        })
}

/// Partitions with many events per pane and key, over more distinct
/// values than a pane keeps for `--topk 1` or `2`, with near-equal counts:
/// which values each pane keeps decides the rows.
fn crowded_partitions_strategy() -> impl Strategy<Value = Partitions> {
    let partition = (
        0u64..8,
        prop::collection::vec((0u64..3, 0u8..2, 0i64..30), 100..400),
    )
        .prop_map(|(start, events)| {
            let mut ts = start * 250;
            events
                .into_iter()
                .map(|(step, key, value)| {
                    ts += step * 20;
                    (ts, format!("k{key}"), value)
                })
                .collect()
        });
    prop::collection::vec(partition, 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn crowded_panes_keep_the_values_of_the_reference_rule(
        partitions in crowded_partitions_strategy(),
        spec in prop_oneof![
            Just(WindowSpec::Tumbling { size_ms: 1_000 }),
            Just(WindowSpec::Sliding { size_ms: 2_000, slide_ms: 500 }),
        ],
        k in prop_oneof![Just(1usize), Just(2)],
    ) {
        let aggregates = "topk".parse::<Aggregates>().unwrap().with_topk(k).unwrap();
        let query = query(spec, 1_000_000, aggregates, Emit::All);
        let expected = expected_rows(&partitions, query);
        check_bound(&expected, k)?;
        same_lines_on_every_worker_count(&partitions, query, 64, &expected)?;
    }

    #[test]
    fn top_values_match_the_reference_rule_and_bound(
        partitions in partitions_strategy(),
        spec in fixed_window_strategy(),
        lateness_ms in prop_oneof![Just(0u64), Just(500), Just(1_000_000)],
        aggregates in aggregates_strategy(),
        batch_records in prop_oneof![Just(1usize), Just(1_000)],
    ) {
        let query = query(spec, lateness_ms, aggregates, Emit::All);
        let expected = expected_rows(&partitions, query);
        check_bound(&expected, aggregates.topk().unwrap())?;
        same_lines_on_every_worker_count(&partitions, query, batch_records, &expected)?;
    }

    #[test]
    fn windows_rebuilt_from_topk_changes_equal_every_window(
        partitions in partitions_strategy(),
        spec in fixed_window_strategy(),
        lateness_ms in prop_oneof![Just(0u64), Just(1_000_000)],
        k in prop_oneof![Just(1usize), Just(3)],
    ) {
        let partitions: Partitions = partitions
            .into_iter()
            .map(|p| {
                p.into_iter()
                    .map(|(ts, key, value)| (ts, key.replace([',', '"'], "_"), value))
                    .collect()
            })
            .collect();
        let aggregates = "count,topk".parse::<Aggregates>().unwrap().with_topk(k).unwrap();
        let all = query(spec, lateness_ms, aggregates, Emit::All);
        let expected: Vec<String> =
            expected_rows(&partitions, all).into_iter().map(|row| row.line).collect();
        let changes = query(spec, lateness_ms, aggregates, Emit::Changes);
        let slide_ms = spec.slide_ms().expect("fixed windows");
        for workers in [1, 2, 4] {
            let got = run_in_memory(&partitions, changes, workers, 1_000)
                .map_err(TestCaseError::fail)?;
            prop_assert_eq!(
                crate::distinct::rebuild(&got.lines, spec.size_ms(), slide_ms),
                expected.clone(),
                "{} on {} workers", spec, workers
            );
        }
    }
}

#[test]
fn panes_with_many_values_keep_their_most_frequent_within_the_bound() {
    // 3 keys; per key and 1 s pane 400 events over ~200 values, a few of
    // them frequent: every pane drops values (k = 3 keeps 24).
    let partitions: Partitions = (0..2u64)
        .map(|p| {
            (0..24_000u64)
                .map(|i| {
                    let value = if i % 4 == 0 {
                        (i / 4 % 5) as i64
                    } else {
                        (i * 7 + p) as i64 % 200
                    };
                    (i / 4 + p, format!("k{}", i % 3), value)
                })
                .collect()
        })
        .collect();
    let spec: WindowSpec = "sliding:4s/1s".parse().unwrap();
    let aggregates = "count,topk"
        .parse::<Aggregates>()
        .unwrap()
        .with_topk(3)
        .unwrap();
    let query = WindowQuery {
        granularity_ms: 1_000,
        aggregates,
        ..WindowQuery::generic(spec, 1_000_000)
    };
    let expected = expected_rows(&partitions, query);
    check_bound(&expected, 3).unwrap();
    assert!(
        expected
            .iter()
            .any(|row| row.exact.len() > kept_per_pane(3) * 4),
        "panes dropped values"
    );
    // The frequent values 0..5 lead every window with enough events.
    for row in expected
        .iter()
        .filter(|row| row.exact.values().sum::<u64>() > 1_000)
    {
        assert!(
            row.top.iter().all(|&(v, _)| (0..5).contains(&v)),
            "{}",
            row.line
        );
    }
    let lines: Vec<String> = expected.into_iter().map(|row| row.line).collect();
    for workers in [1, 2, 4] {
        let got = run_in_memory(&partitions, query, workers, 512).unwrap();
        assert_eq!(got.lines, lines, "{workers} workers");
    }
}
