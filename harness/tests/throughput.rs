//! `weir-harness throughput --nexmark`: every run row reports the stream rate
//! (all generated events) and, beside it, the events the query read and
//! their rate.

use std::path::PathBuf;
use std::process::Command;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("weir-harness-{name}-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir).expect("emptying the scratch dir");
    }
    dir
}

#[test]
fn nexmark_throughput_rows_report_events_read_beside_the_stream_rate() {
    let dir = scratch("throughput");
    let out = Command::new(env!("CARGO_BIN_EXE_weir-harness"))
        .args(["throughput", "--nexmark", "q8", "--events", "20000"])
        .args(["--workers", "1,2", "--repeat", "1"])
        .arg("--work-dir")
        .arg(dir.join("work"))
        .arg("--results")
        .arg(dir.join("results"))
        .output()
        .expect("running weir-harness");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("summary.json")).unwrap();
    let runs = summary["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 2);
    for run in runs {
        let best = run["best_elapsed_s"].as_f64().unwrap();
        let workers = run["workers"].as_f64().unwrap();
        // The stream rate counts every generated event ...
        let stream = run["throughput_events_per_s"].as_f64().unwrap();
        assert!((stream - 20_000.0 / best).abs() <= 1e-6 * stream, "{run}");
        let per_worker = run["throughput_events_per_s_per_worker"].as_f64().unwrap();
        assert!(
            (per_worker - stream / workers).abs() <= 1e-6 * stream,
            "{run}"
        );
        // ... the read rate only persons and auctions: 4 of every 50 events.
        assert_eq!(run["events_read"].as_u64(), Some(1_600), "{run}");
        let read = run["events_read_per_s"].as_f64().unwrap();
        assert!((read - 1_600.0 / best).abs() <= 1e-6 * read, "{run}");
        let read_per_worker = run["events_read_per_s_per_worker"].as_f64().unwrap();
        assert!(
            (read_per_worker - read / workers).abs() <= 1e-6 * read,
            "{run}"
        );
    }
    assert!(stderr.contains("over 1600 events read"), "{stderr}");
    std::fs::remove_dir_all(&dir).expect("removing the scratch dir");
}
