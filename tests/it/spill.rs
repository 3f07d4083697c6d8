//! Sliding windows under a memory budget (`--memory-budget`, decision 35):
//! with panes moved to disk as they enter (budget 0) or when a small budget
//! is passed, the rows equal the reference's on random inputs, on 1, 2 and
//! 4 workers; from the command line too, where a budget that cannot apply
//! is refused before anything runs.

use proptest::prelude::*;
use weir::job::WindowQuery;
use weir::memory::run_in_memory_with_spill;
use weir_dataflows::pane_store::SpillConfig;
use weir_dataflows::reference::reference;
use weir_dataflows::WindowSpec;

use crate::oracle::{many_windows_input, partitions_strategy, Partitions};

fn sliding_query(spec: WindowSpec, lateness_ms: u64) -> WindowQuery {
    WindowQuery {
        granularity_ms: 250,
        ..WindowQuery::generic(spec, lateness_ms)
    }
}

fn check(
    partitions: &Partitions,
    query: WindowQuery,
    workers: usize,
    budget_bytes: usize,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let spill = SpillConfig {
        dir: dir.path().join("state"),
        budget_bytes,
    };
    let expected = reference(partitions, query.spec, query.lateness_ms);
    let got = run_in_memory_with_spill(partitions, query, workers, 64, spill)
        .map_err(TestCaseError::fail)?;
    prop_assert_eq!(
        &got.late,
        &expected.late,
        "late events differ ({:?})",
        query
    );
    prop_assert_eq!(
        &got.rows,
        &expected.rows,
        "rows differ ({:?}, {} workers)",
        query,
        workers
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn sliding_windows_under_a_memory_budget_match_reference(
        partitions in partitions_strategy(),
        panes in prop_oneof![Just(2u64), Just(4), Just(60), Just(3_600)],
        lateness_ms in prop_oneof![Just(0u64), Just(1_000), Just(1_000_000)],
        budget_bytes in prop_oneof![Just(0usize), Just(2_000)],
    ) {
        let spec = WindowSpec::Sliding { size_ms: panes * 250, slide_ms: 250 };
        for workers in [1, 2, 4] {
            check(&partitions, sliding_query(spec, lateness_ms), workers, budget_bytes)?;
        }
    }
}

#[test]
fn a_long_run_with_every_pane_on_disk_matches_reference() {
    // 40 keys, 2 000 windows of 60 panes: every pane is written as it
    // enters, rewritten at each flip and read back when it leaves.
    let partitions = many_windows_input();
    let spec: WindowSpec = "sliding:30s/500ms".parse().unwrap();
    let query = WindowQuery {
        granularity_ms: 100,
        ..sliding_query(spec, 50)
    };
    let expected = reference(&partitions, spec, query.lateness_ms);
    let dir = tempfile::tempdir().unwrap();
    let spill = SpillConfig {
        dir: dir.path().join("state"),
        budget_bytes: 0,
    };
    let got = run_in_memory_with_spill(&partitions, query, 2, 512, spill).unwrap();
    assert_eq!(got.late, expected.late);
    assert!(got.rows == expected.rows, "rows differ");
}

/// A budget smaller than what cannot go to disk (each live key's columns)
/// is said to be passed, with the peak and the budget, once a run ends;
/// a budget the state fits in is not.
#[test]
fn a_budget_the_key_columns_exceed_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("csv");
    let generated = crate::support::run_weir(&[
        "gen",
        "zipf",
        "--events",
        "100000",
        "--keys",
        "50000",
        "--exponent",
        "0",
        "--rate",
        "1000",
        "--partitions",
        "1",
        "--out",
        csv.to_str().unwrap(),
    ]);
    crate::support::assert_success(&generated, "weir gen zipf");
    let run = |budget: &str| {
        let out = dir.path().join(format!("out-{budget}"));
        let output = crate::support::run_weir(&[
            "run",
            "--query",
            "window",
            "--window",
            "sliding:60s/10s",
            "--workers",
            "1",
            "--no-checkpoint",
            "--until-end",
            "--memory-budget",
            budget,
            "--input",
            csv.to_str().unwrap(),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        crate::support::assert_success(&output, "weir run");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    // 50K keys: ~5 MB of key columns, above 1 MiB.
    let stderr = run("1MiB");
    assert!(
        stderr.contains("warning: the windows' state peaked at")
            && stderr.contains("above --memory-budget 1.0 MiB"),
        "{stderr}"
    );
    assert!(!run("1GiB").contains("above --memory-budget"));
}
