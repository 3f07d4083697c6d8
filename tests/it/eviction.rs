//! Window state is retired as windows close: over a long run with a stable
//! key set, the records held in arrangements stay bounded by the open
//! windows, not by the number of windows seen. Tumbling windows arrange
//! nothing at all (decision 21): each pane is merged and emitted at its close.

use weir::job::WindowQuery;
use weir::memory::run_in_memory;

fn stable_keys_over_many_windows(windows: u64) -> Vec<Vec<(u64, String, i64)>> {
    const KEYS: u64 = 20;
    (0..2u64)
        .map(|p| {
            (0..windows * 10)
                .map(|i| (i * 100 + p, format!("key{}", (i + p) % KEYS), 1))
                .collect()
        })
        .collect()
}

fn peak_records(windows: u64, spec: &str) -> (i64, usize) {
    let spec = spec.parse().unwrap();
    let query = WindowQuery {
        spec,
        granularity_ms: 1_000,
        lateness_ms: 0,
        nexmark: None,
    };
    // Small batches: the frontier advances often, as in a long streaming run.
    let got = run_in_memory(&stable_keys_over_many_windows(windows), query, 2, 64).unwrap();
    (got.peak_arranged_records, got.rows.len())
}

#[test]
fn arranged_records_stay_flat_as_windows_close() {
    for spec in ["sliding:2s/1s", "sliding:4s/1s"] {
        let (short_peak, short_rows) = peak_records(300, spec);
        let (long_peak, long_rows) = peak_records(3_000, spec);
        assert!(
            long_rows > 9 * short_rows,
            "{spec}: {long_rows} vs {short_rows}"
        );
        // Without eviction the long run would hold ~10x the records of the short one.
        assert!(short_peak > 0, "{spec}: the gauge saw no arrangement");
        assert!(
            long_peak <= 2 * short_peak,
            "{spec}: arranged records grew with the number of windows: {short_peak} -> {long_peak}"
        );
        // 20 keys, at most size/slide + 2 panes each per arrangement, two workers' worth.
        assert!(long_peak < 20 * 12 * 4, "{spec}: peak {long_peak} records");
    }
}

#[test]
fn tumbling_windows_arrange_nothing() {
    let (peak, rows) = peak_records(300, "tumbling:1s");
    // One row per (window, key) present in the input.
    let present: std::collections::BTreeSet<(u64, String)> = stable_keys_over_many_windows(300)
        .into_iter()
        .flatten()
        .map(|(ts, key, _)| (ts / 1_000, key))
        .collect();
    assert_eq!(rows, present.len());
    assert_eq!(peak, 0, "tumbling windows built an arrangement");
}
