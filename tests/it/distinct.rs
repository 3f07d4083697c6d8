//! `--aggregates ...,distinct` against the reference: on random inputs,
//! for tumbling and sliding windows (up to 60 panes) on 1, 2 and 4 workers,
//! every row's columns equal the exact aggregates and the HyperLogLog
//! estimate of the window's exact set of values (a sketch is a function of
//! the set, so the merge of pane and worker sketches must give exactly
//! that); the estimates of these small sets equal the exact distinct
//! counts; and the windows rebuilt from `--emit changes` equal every window,
//! for subsets of the columns too (a row only when a written column changes).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use weir::csv_input::write_csv_field;
use weir::job::WindowQuery;
use weir::memory::run_in_memory;
use weir_dataflows::aggregates::{Aggregates, SketchColumns};
use weir_dataflows::emit::Emit;
use weir_dataflows::reference::reference_window_values;
use weir_dataflows::sketch::hll::Hll;
use weir_dataflows::{Agg, WindowSpec};

use crate::emit_changes::fixed_window_strategy;
use crate::oracle::{partitions_strategy, Partitions};

fn aggregates_strategy() -> impl Strategy<Value = Aggregates> {
    prop_oneof![
        Just("count,sum,min,max,distinct"),
        Just("distinct"),
        Just("count,distinct"),
        Just("max,distinct"),
    ]
    .prop_map(|text| text.parse().expect("valid aggregates"))
}

/// The expected lines of `query` on `partitions`, sorted, and the exact
/// distinct count of each.
fn expected_lines(partitions: &Partitions, query: WindowQuery) -> Vec<(String, usize)> {
    let (windows, _) = reference_window_values(partitions, query.spec, query.lateness_ms);
    let mut lines: Vec<(String, usize)> = windows
        .into_iter()
        .map(|((start, end, key), values)| {
            let mut agg = Agg::of(values[0]);
            let mut hll = Hll::of(values[0]);
            for &v in &values[1..] {
                agg.add(v);
                hll.insert(v);
            }
            let exact = values.iter().collect::<BTreeSet<_>>().len();
            let mut line = format!("{start},{end},").into_bytes();
            write_csv_field(&mut line, &key).unwrap();
            let sketches = SketchColumns {
                distinct: Some(hll.estimate()),
                top: None,
            };
            query.aggregates.format_columns(&agg, sketches, &mut line);
            (String::from_utf8(line).unwrap(), exact)
        })
        .collect();
    lines.sort();
    lines
}

fn query(spec: WindowSpec, lateness_ms: u64, aggregates: Aggregates, emit: Emit) -> WindowQuery {
    WindowQuery {
        granularity_ms: 250,
        emit,
        aggregates,
        ..WindowQuery::generic(spec, lateness_ms)
    }
}

/// Rebuilds every window's lines from change lines (keys without commas or
/// quotes): per window end in order, a line with count 0 removes its key,
/// any other sets it.
pub fn rebuild(changes: &[String], size_ms: u64, slide_ms: u64) -> Vec<String> {
    let mut by_end: BTreeMap<u64, Vec<Vec<&str>>> = BTreeMap::new();
    for line in changes {
        let fields: Vec<&str> = line.split(',').collect();
        by_end
            .entry(fields[1].parse().unwrap())
            .or_default()
            .push(fields);
    }
    let (Some(&first), Some(&last)) = (by_end.keys().next(), by_end.keys().next_back()) else {
        return Vec::new();
    };
    let mut window: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut lines = Vec::new();
    let mut end = first;
    while end <= last {
        for fields in by_end.get(&end).into_iter().flatten() {
            let columns: Vec<String> = fields[3..].iter().map(|&f| f.to_owned()).collect();
            if columns[0] == "0" {
                assert!(
                    window.remove(fields[2]).is_some(),
                    "{} left twice",
                    fields[2]
                );
            } else {
                assert_ne!(window.get(fields[2]), Some(&columns), "an unchanged row");
                window.insert(fields[2].to_owned(), columns);
            }
        }
        for (key, columns) in &window {
            let start = end.saturating_sub(size_ms);
            lines.push(format!("{start},{end},{key},{}", columns.join(",")));
        }
        end += slide_ms;
    }
    assert!(window.is_empty(), "keys never left: {window:?}");
    lines.sort();
    lines
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn distinct_counts_match_the_sketch_of_the_exact_values(
        partitions in partitions_strategy(),
        spec in fixed_window_strategy(),
        lateness_ms in prop_oneof![Just(0u64), Just(500), Just(1_000_000)],
        aggregates in aggregates_strategy(),
        batch_records in prop_oneof![Just(1usize), Just(1_000)],
    ) {
        let query = query(spec, lateness_ms, aggregates, Emit::All);
        let expected = expected_lines(&partitions, query);
        for (line, exact) in &expected {
            let estimate = line.rsplit(',').next().unwrap();
            prop_assert_eq!(estimate, exact.to_string(), "{}", line);
        }
        let expected: Vec<String> = expected.into_iter().map(|(line, _)| line).collect();
        for workers in [1, 2, 4] {
            let got = run_in_memory(&partitions, query, workers, batch_records)
                .map_err(TestCaseError::fail)?;
            prop_assert_eq!(&got.lines, &expected, "{} on {} workers", spec, workers);
            prop_assert!(got.rows.is_empty());
        }
    }

    #[test]
    fn windows_rebuilt_from_distinct_changes_equal_every_window(
        partitions in partitions_strategy(),
        spec in fixed_window_strategy(),
        lateness_ms in prop_oneof![Just(0u64), Just(1_000_000)],
        aggregates in prop_oneof![
            Just("count,distinct"),
            Just("count,max"),
            Just("count,sum,min,max,distinct"),
        ],
    ) {
        // Keys a plain split can parse.
        let partitions: Partitions = partitions
            .into_iter()
            .map(|p| {
                p.into_iter()
                    .map(|(ts, key, value)| (ts, key.replace([',', '"'], "_"), value))
                    .collect()
            })
            .collect();
        // With a subset of the columns (sketches or not), a row is written
        // only when a written column changes.
        let aggregates: Aggregates = aggregates.parse().expect("valid aggregates");
        let all = query(spec, lateness_ms, aggregates, Emit::All);
        let expected: Vec<String> =
            expected_lines(&partitions, all).into_iter().map(|(line, _)| line).collect();
        let changes = query(spec, lateness_ms, aggregates, Emit::Changes);
        let slide_ms = spec.slide_ms().expect("fixed windows");
        for workers in [1, 2, 4] {
            let got = run_in_memory(&partitions, changes, workers, 1_000)
                .map_err(TestCaseError::fail)?;
            prop_assert_eq!(
                rebuild(&got.lines, spec.size_ms(), slide_ms),
                expected.clone(),
                "{} on {} workers", spec, workers
            );
        }
    }
}

#[test]
fn many_values_per_window_are_estimated_within_the_bound() {
    // 3 keys, values from a range of 20 000 per key and window: dense sketches.
    let partitions: Partitions = (0..2u64)
        .map(|p| {
            (0..60_000u64)
                .map(|i| {
                    (
                        i / 10 + p,
                        format!("k{}", i % 3),
                        (i * 7 + p * 13) as i64 % 20_000,
                    )
                })
                .collect()
        })
        .collect();
    let spec: WindowSpec = "sliding:4s/1s".parse().unwrap();
    let aggregates: Aggregates = "count,distinct".parse().unwrap();
    let query = WindowQuery {
        granularity_ms: 1_000,
        aggregates,
        ..WindowQuery::generic(spec, 1_000_000)
    };
    let expected = expected_lines(&partitions, query);
    let got = run_in_memory(&partitions, query, 2, 512).unwrap();
    let lines: Vec<String> = expected.iter().map(|(line, _)| line.clone()).collect();
    assert_eq!(got.lines, lines);
    for (line, exact) in &expected {
        let estimate: f64 = line.rsplit(',').next().unwrap().parse().unwrap();
        let error = (estimate - *exact as f64).abs() / *exact as f64;
        assert!(error < 4.0 * 0.0163, "{line}: exact {exact}");
    }
    assert!(
        expected.iter().any(|(_, exact)| *exact > 5_000),
        "dense sketches were exercised"
    );
}
