//! `--emit changes` against `--emit all`: the windows a consumer rebuilds
//! from the changes (README, "Output") equal the reference's rows, on
//! random inputs, for tumbling and sliding windows on 1, 2 and 4 workers;
//! and the rows of a run with changes survive `kill -9` restarts unchanged.

use std::collections::BTreeMap;

use proptest::prelude::*;
use weir::job::WindowQuery;
use weir::memory::run_in_memory;
use weir_dataflows::emit::Emit;
use weir_dataflows::reference::reference;
use weir_dataflows::{Agg, WindowRow, WindowSpec};

use crate::oracle::partitions_strategy;

/// Rebuilds every window from change rows: window ends in order, one slide
/// apart; a count-0 row removes its key, any other row sets it.
fn rebuild(changes: &[WindowRow], size_ms: u64, slide_ms: u64) -> Vec<WindowRow> {
    let mut by_end: BTreeMap<u64, Vec<&WindowRow>> = BTreeMap::new();
    for row in changes {
        by_end.entry(row.window_end).or_default().push(row);
    }
    let (Some(&first), Some(&last)) = (by_end.keys().next(), by_end.keys().next_back()) else {
        return Vec::new();
    };
    let mut window: BTreeMap<String, Agg> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut end = first;
    while end <= last {
        for row in by_end.get(&end).into_iter().flatten() {
            if row.agg.count == 0 {
                assert!(
                    window.remove(row.key.as_str()).is_some(),
                    "{} left twice",
                    row.key
                );
            } else {
                assert_ne!(
                    window.get(row.key.as_str()),
                    Some(&row.agg),
                    "an unchanged row"
                );
                window.insert(row.key.to_string(), row.agg);
            }
        }
        rows.extend(window.iter().map(|(key, agg)| WindowRow {
            window_start: end.saturating_sub(size_ms),
            window_end: end,
            key: key.as_str().into(),
            agg: *agg,
        }));
        end += slide_ms;
    }
    assert!(window.is_empty(), "keys never left: {window:?}");
    rows.sort();
    rows
}

pub fn fixed_window_strategy() -> impl Strategy<Value = WindowSpec> {
    prop_oneof![
        (1u64..5).prop_map(|k| WindowSpec::Tumbling { size_ms: k * 1_000 }),
        (1u64..5, prop_oneof![Just(250u64), Just(1_000)]).prop_map(|(k, slide_ms)| {
            WindowSpec::Sliding {
                size_ms: k * slide_ms,
                slide_ms,
            }
        }),
        // Many panes, like 1 h / 1 s: the two-stack queues over long windows.
        prop_oneof![Just(60u64), Just(3_600)].prop_map(|panes| WindowSpec::Sliding {
            size_ms: panes * 250,
            slide_ms: 250,
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn windows_rebuilt_from_changes_equal_every_window(
        partitions in partitions_strategy(),
        spec in fixed_window_strategy(),
        lateness_ms in prop_oneof![Just(0u64), Just(500), Just(1_000_000)],
        batch_records in prop_oneof![Just(1usize), Just(1_000)],
    ) {
        let expected = reference(&partitions, spec, lateness_ms);
        let slide_ms = spec.slide_ms().expect("fixed windows");
        let query = WindowQuery {
            spec,
            granularity_ms: 250,
            lateness_ms,
            nexmark: None,
            emit: Emit::Changes,
            aggregates: weir_dataflows::aggregates::Aggregates::default(),
        };
        for workers in [1, 2, 4] {
            let got = run_in_memory(&partitions, query, workers, batch_records)
                .map_err(TestCaseError::fail)?;
            prop_assert_eq!(&got.late, &expected.late);
            prop_assert_eq!(
                rebuild(&got.rows, spec.size_ms(), slide_ms),
                expected.rows.clone(),
                "{} on {} workers", spec, workers
            );
        }
    }
}
