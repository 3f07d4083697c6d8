//! `weir run --input` reads new files while it ingests them (decision 72):
//! the same rows as a run that ingests first, on random files (some of
//! many chunks) and worker counts; no checkpoint before the files are in;
//! a bad row late in a file fails the run with its `file:line`, commits
//! nothing and leaves the log with the files before it; a tailing run
//! ingests first.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use weir::checkpoint::store::read_commits;
use weir::log::list_partitions;

use crate::support::{assert_success, output_within, sorted_rows, weir};

/// A file of `rows` events `step_ms` apart over `keys` keys, every 11th
/// one `back_ms` back in time (late under a lateness below it).
fn file(dir: &Path, name: &str, (rows, step_ms, keys, back_ms): (u64, u64, u64, u64)) -> PathBuf {
    let mut text = String::from("ts,key,value\n");
    for i in 0..rows {
        let ts = (1_000 + i * step_ms).saturating_sub(if i % 11 == 10 { back_ms } else { 0 });
        writeln!(text, "{ts},k{},{}", (i * 7) % keys, i as i64 % 101 - 50).unwrap();
    }
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `weir run` of a sliding 4 s / 1 s query (lateness 2 s) over `inputs`
/// to their end; `extra` arguments after.
fn run(
    data: &Path,
    out: &Path,
    inputs: &[PathBuf],
    workers: usize,
    extra: &[&str],
) -> std::process::Output {
    let mut args: Vec<String> = [
        "run",
        "--window",
        "sliding:4s/1s",
        "--lateness",
        "2s",
        "--until-end",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(["--workers".to_owned(), workers.to_string()]);
    args.extend(["--data-dir".to_owned(), data.display().to_string()]);
    args.extend(["--out".to_owned(), out.display().to_string()]);
    args.push("--input".to_owned());
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    // Bounded: a run that hangs fails the test with its log.
    output_within(weir().args(&args), Duration::from_secs(240))
}

/// The window rows and late rows of `out`, sorted.
fn rows(out: &Path) -> (Vec<String>, Vec<String>) {
    (sorted_rows(out, "windows"), sorted_rows(out, "late"))
}

/// What a run that reads its files while it ingests them logs.
const OVERLAPPED: &str = "ingesting the input files while the run reads them";

/// Asserts that `output` (of a run with new files) overlapped its ingest.
fn assert_overlapped(output: &std::process::Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(OVERLAPPED), "{stderr}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    /// Files of very different spans of event time (a worker pauses a
    /// partition far ahead of the slowest output, so the files' threads
    /// must not wait on each other), some late events, 1 to 3 workers.
    #[test]
    fn an_overlapped_run_equals_a_run_that_ingests_first(
        specs in prop::collection::vec(
            (prop_oneof![0u64..4_000, 30_000u64..60_000], 1u64..400, 1u64..50, 0u64..6_000),
            1..6,
        ),
        workers in 1usize..4,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let inputs: Vec<PathBuf> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| file(tmp.path(), &format!("f{i}.csv"), *spec))
            .collect();
        let (first_out, overlapped_out) = (tmp.path().join("o1"), tmp.path().join("o2"));
        let first = run(&tmp.path().join("d1"), &first_out, &inputs, workers, &["--ingest-first"]);
        assert_success(&first, "weir run --ingest-first");
        let overlapped = run(&tmp.path().join("d2"), &overlapped_out, &inputs, workers, &[]);
        assert_success(&overlapped, "weir run (overlapped)");
        assert_overlapped(&overlapped);
        let stderr = String::from_utf8_lossy(&overlapped.stderr);
        prop_assert!(
            specs.iter().all(|s| s.0 == 0) || !rows(&first_out).0.is_empty(),
            "no output to compare"
        );
        prop_assert_eq!(rows(&overlapped_out), rows(&first_out), "{}", stderr);
    }
}

/// A run with checkpoints every 10 ms over a file whose last row is bad:
/// it reads the file's rows while they are ingested, cuts no checkpoint
/// before the ingest ends, and fails with the bad row's `file:line`, so
/// nothing of the file is committed.
#[test]
fn no_checkpoint_covers_a_file_whose_ingest_then_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = 400_000;
    let good = file(tmp.path(), "good.csv", (rows, 5, 1_000, 0));
    let bad = file(tmp.path(), "bad.csv", (rows, 5, 1_000, 0));
    let mut text = std::fs::read_to_string(&bad).unwrap();
    text.push_str("99,k,not-a-number\n");
    std::fs::write(&bad, text).unwrap();
    let data = tmp.path().join("data");
    let output = run(
        &data,
        &tmp.path().join("out"),
        &[good, bad.clone()],
        2,
        &["--checkpoint-interval", "10ms"],
    );
    assert!(!output.status.success());
    assert_overlapped(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:{}:", bad.display(), rows + 2)),
        "{stderr}"
    );
    // The log holds the good file, and nothing of the bad one.
    let topic = data.join("log/events");
    assert_eq!(
        list_partitions(&data.join("log"), "events").unwrap(),
        vec![0]
    );
    assert!(!topic.join("1.tmp").exists());
    let commits = read_commits(&data.join("checkpoints")).unwrap();
    let cuts: Vec<u64> = commits.iter().map(|c| c.cut_time).collect();
    assert!(
        cuts.is_empty(),
        "checkpoints committed at cuts {cuts:?}\n{stderr}"
    );
    // Over the good file alone, the same run commits its checkpoints once
    // the file is in.
    let data = tmp.path().join("data-good");
    let output = run(
        &data,
        &tmp.path().join("out-good"),
        &[file(tmp.path(), "only-good.csv", (rows, 5, 1_000, 0))],
        2,
        &["--checkpoint-interval", "10ms"],
    );
    assert_success(&output, "weir run");
    assert_overlapped(&output);
    assert!(!read_commits(&data.join("checkpoints")).unwrap().is_empty());
}

/// A tailing run (no `--until-end`) ingests its files before it runs: a
/// worker ahead of a written, idle partition would wait for input that
/// never comes, and the file it reads would never be written.
#[test]
fn a_tailing_run_ingests_first() {
    let tmp = tempfile::tempdir().unwrap();
    let input = file(tmp.path(), "f.csv", (1_000, 10, 5, 0));
    let data = tmp.path().join("data");
    let stderr_path = tmp.path().join("stderr");
    let mut child = weir()
        .args([
            "run",
            "--window",
            "tumbling:1s",
            "--no-checkpoint",
            "--data-dir",
        ])
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("out"))
        .arg("--input")
        .arg(&input)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    // Tailing never ends: wait (bounded) for the file to be in the log.
    let deadline = Instant::now() + Duration::from_secs(120);
    while list_partitions(&data.join("log"), "events").map_or(true, |p| p.is_empty()) {
        assert!(child.try_wait().unwrap().is_none(), "the run ended");
        assert!(Instant::now() < deadline, "the file was not ingested");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(!stderr.contains(OVERLAPPED), "{stderr}");
}
