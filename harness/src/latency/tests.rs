//! Tests of the latency run: the recorder and the run's summaries.

use super::*;

fn row(window_end: u64) -> WindowRow {
    WindowRow {
        window_start: window_end - 1_000,
        window_end,
        key: "k".into(),
        agg: weir_dataflows::Agg::of(1),
    }
}

#[test]
fn latency_is_emit_time_minus_window_end_plus_lateness_after_the_warmup() {
    let recorder = Recorder::new(500);
    recorder.measured_from_ms.store(10_000, Ordering::Relaxed);
    // Emitted at 12.0 s: window ending 9 s is warm-up; windows ending at
    // 10 s and 11 s are 1.5 s and 0.5 s late (lateness 0.5 s).
    let rows = [row(9_000), row(10_000), row(11_000)];
    recorder.record_batch(12_000_000, &mut rows.iter());
    let (run, second) = recorder.stats.lock().unwrap().clone();
    let run = run.percentiles();
    assert_eq!(run.count, 2);
    assert!((run.max - 1_500.0).abs() < 1.0, "{run:?}");
    assert!((run.p50 - 500.0).abs() < 1.0, "{run:?}");
    // The time series sees the warm-up row too: 2.5 s.
    assert_eq!(second.percentiles().count, 3);
    assert!((second.percentiles().max - 2_500.0).abs() < 2.0);
    assert_eq!(recorder.rows.load(Ordering::Relaxed), 3);
    assert_eq!(recorder.newest_window_end.load(Ordering::Relaxed), 11_000);
    // After the load stops, rows are counted, not recorded.
    recorder.stopped.store(true, Ordering::Relaxed);
    recorder.record_batch(12_000_000, &mut [row(20_000)].iter());
    assert_eq!(recorder.stats.lock().unwrap().0.percentiles().count, 2);
    assert_eq!(recorder.rows.load(Ordering::Relaxed), 4);
}
