//! The window query against the reference implementation, on random inputs
//! with out-of-order, late and duplicate times, skewed keys and empty
//! partitions, for tumbling, sliding and session windows on 1, 2 and 4 workers.

use proptest::prelude::*;
use weir::job::WindowQuery;
use weir::memory::run_in_memory;
use weir_dataflows::reference::reference;
use weir_dataflows::WindowSpec;

pub type Partitions = Vec<Vec<(u64, String, i64)>>;

fn key_strategy() -> impl Strategy<Value = String> {
    // Skewed: "hot" most of the time, then a handful of others, rarely an odd one.
    prop_oneof![
        6 => Just("hot".to_owned()),
        3 => (0..6u8).prop_map(|k| format!("k{k}")),
        1 => "[a-z,\" ]{0,4}",
    ]
}

fn partition_strategy() -> impl Strategy<Value = Vec<(u64, String, i64)>> {
    let event = (
        -12i64..16,
        key_strategy(),
        prop_oneof![8 => -50i64..50, 1 => Just(i64::MIN), 1 => Just(i64::MAX)],
    );
    (0u64..40, prop::collection::vec(event, 0..50)).prop_map(|(start, steps)| {
        // Times walk forward with backward jumps, in 250 ms units so that
        // duplicates and window edges are common.
        let mut unit = start as i64;
        steps
            .into_iter()
            .map(|(step, key, value)| {
                unit = (unit + step).max(0);
                ((unit as u64) * 250, key, value)
            })
            .collect()
    })
}

pub fn partitions_strategy() -> impl Strategy<Value = Partitions> {
    prop::collection::vec(partition_strategy(), 0..6)
}

fn query_strategy() -> impl Strategy<Value = WindowQuery> {
    let spec = prop_oneof![
        (1u64..5).prop_map(|k| WindowSpec::Tumbling { size_ms: k * 1_000 }),
        (1u64..4, prop_oneof![Just(500u64), Just(1_000)]).prop_map(|(k, slide_ms)| {
            WindowSpec::Sliding {
                size_ms: k * slide_ms,
                slide_ms,
            }
        }),
        prop_oneof![Just(250u64), Just(1_000), Just(3_000)]
            .prop_map(|gap_ms| WindowSpec::Session { gap_ms }),
        // Windows of many panes, like 1 h / 1 s: the pane store's
        // subtract-on-leave and two-stack min/max over long queues.
        prop_oneof![Just(60u64), Just(3_600)].prop_map(|panes| WindowSpec::Sliding {
            size_ms: panes * 250,
            slide_ms: 250,
        }),
    ];
    let lateness = prop_oneof![Just(0u64), Just(500), Just(2_000), Just(1_000_000)];
    (spec, lateness, any::<bool>()).prop_map(|(spec, lateness_ms, fine)| WindowQuery {
        spec,
        // Either the default granularity or the finest one the inputs use.
        granularity_ms: if fine {
            250
        } else {
            spec.default_granularity_ms()
        },
        lateness_ms,
        nexmark: None,
        emit: weir_dataflows::emit::Emit::All,
        aggregates: weir_dataflows::aggregates::Aggregates::default(),
    })
}

fn check(
    partitions: &Partitions,
    query: WindowQuery,
    workers: usize,
    batch_records: usize,
) -> Result<(), TestCaseError> {
    let expected = reference(partitions, query.spec, query.lateness_ms);
    let got =
        run_in_memory(partitions, query, workers, batch_records).map_err(TestCaseError::fail)?;
    prop_assert_eq!(
        &got.late,
        &expected.late,
        "late events differ ({:?}, {} workers)",
        query,
        workers
    );
    prop_assert_eq!(
        &got.rows,
        &expected.rows,
        "window rows differ ({:?}, {} workers)",
        query,
        workers
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn window_query_matches_reference(
        partitions in partitions_strategy(),
        query in query_strategy(),
        batch_records in prop_oneof![Just(1usize), Just(3), Just(1_000)],
    ) {
        for workers in [1, 2, 4] {
            check(&partitions, query, workers, batch_records)?;
        }
    }
}

#[test]
fn empty_input_gives_no_rows() {
    let query = WindowQuery {
        spec: "tumbling:1s".parse().unwrap(),
        granularity_ms: 1_000,
        lateness_ms: 0,
        nexmark: None,
        emit: weir_dataflows::emit::Emit::All,
        aggregates: weir_dataflows::aggregates::Aggregates::default(),
    };
    let got = run_in_memory(&[vec![], vec![]], query, 2, 10).unwrap();
    assert!(got.rows.is_empty() && got.late.is_empty());
}

/// Three partitions of 20,000 events over 40 keys and 2,000 s.
pub fn many_windows_input() -> Partitions {
    (0..3u64)
        .map(|p| {
            (0..20_000u64)
                .map(|i| {
                    (
                        i * 100 + p * 37,
                        format!("key{}", (i * 7 + p) % 40),
                        (i % 13) as i64 - 6,
                    )
                })
                .collect()
        })
        .collect()
}

#[test]
fn a_long_run_over_many_windows_matches_reference() {
    // 40 keys, 2 000 windows: catches state that is not retired between windows.
    let partitions = many_windows_input();
    for spec in [
        "tumbling:1s",
        "sliding:3s/1s",
        "sliding:30s/500ms",
        "session:150ms",
    ] {
        let spec: WindowSpec = spec.parse().unwrap();
        let query = WindowQuery {
            spec,
            granularity_ms: spec.default_granularity_ms().min(100),
            lateness_ms: 50,
            nexmark: None,
            emit: weir_dataflows::emit::Emit::All,
            aggregates: weir_dataflows::aggregates::Aggregates::default(),
        };
        let expected = reference(&partitions, spec, query.lateness_ms);
        let got = run_in_memory(&partitions, query, 2, 512).unwrap();
        assert_eq!(got.late, expected.late, "{spec}");
        assert_eq!(got.rows, expected.rows, "{spec}");
    }
}

#[test]
fn windows_of_more_keys_than_one_activation_gives_match_reference() {
    // 150 000 keys in each of two windows: more rows than an operator gives
    // per activation (64K), for every fixed-window operator and emit mode.
    let partitions: Partitions = (0..2u64)
        .map(|p| {
            (0..150_000u64)
                .map(|i| {
                    (
                        p * 1_000 + (i % 2) * 10_000,
                        format!("k{i}"),
                        (i % 7) as i64,
                    )
                })
                .collect()
        })
        .collect();
    for spec in ["tumbling:10s", "sliding:20s/10s"] {
        let spec: WindowSpec = spec.parse().unwrap();
        let query = WindowQuery::generic(spec, 1_000_000);
        let expected = reference(&partitions, spec, query.lateness_ms);
        let got = run_in_memory(&partitions, query, 2, 4_096).unwrap();
        assert_eq!(got.rows.len(), expected.rows.len(), "{spec}");
        assert!(got.rows == expected.rows, "{spec}: rows differ");
    }
}
