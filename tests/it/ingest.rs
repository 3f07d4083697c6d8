//! Integration tests of `ingest_files`: idempotence, atomicity on a bad
//! line, empty files, and the events read back from the log; and of
//! `weir run --input` over files with the same content.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use weir::csv_input::CsvErrorReason;
use weir::csv_input::RowSchema;
use weir::event::{decode_event, Event};
use weir::ingest::{ingest_files, ingest_files_with_threads, IngestErrorKind};
use weir::log::{list_partitions, partition_dir, LogConfig, PartitionReader};

use crate::support::{assert_success, run_weir, sorted_rows};

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// Every file under `dir` with its content: the whole on-disk state.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.insert(p.strip_prefix(root).unwrap().join(""), Vec::new());
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_owned(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn events(log_dir: &Path, topic: &str, partition: u32) -> Vec<Event> {
    let mut r = PartitionReader::open(&partition_dir(log_dir, topic, partition), 0).unwrap();
    let mut out = Vec::new();
    while let Some((_, payload)) = r.next().unwrap() {
        out.push(decode_event(payload).unwrap().to_event());
    }
    out
}

fn ev(ts: u64, key: &str, value: i64) -> Event {
    Event {
        ts,
        key: key.to_owned(),
        value,
    }
}

/// Small segments so that a partition spans several.
fn cfg() -> LogConfig {
    LogConfig {
        segment_size_bytes: 200,
        index_interval_bytes: 64,
        ..LogConfig::default()
    }
}

fn big_csv(rows: u64) -> String {
    let mut s = String::from("ts,key,value\n");
    for i in 0..rows {
        writeln!(s, "{i},\"k,{}\",{}", i % 7, i as i64 - 50).unwrap();
    }
    s
}

#[test]
fn ingesting_twice_does_not_duplicate() {
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("log");
    let a = write(tmp.path(), "a.csv", &big_csv(100));
    let b = write(
        tmp.path(),
        "b.csv",
        "ts,key,value\r\n5,x,1\r\n6,\"y \"\"q\"\"\",-2\r\n",
    );
    let first = ingest_files(&log_dir, "in", &[a.clone(), b.clone()], &cfg()).unwrap();
    let summary = |r: &weir::ingest::IngestReport| {
        r.files
            .iter()
            .map(|f| (f.partition, f.records, f.skipped))
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(&first), vec![(0, 100, false), (1, 2, false)]);
    let state = snapshot(&log_dir);

    // Again, in another order: nothing changes.
    let second = ingest_files(&log_dir, "in", &[b.clone(), a.clone()], &cfg()).unwrap();
    assert_eq!(summary(&second), vec![(1, 2, true), (0, 100, true)]);
    assert_eq!(snapshot(&log_dir), state);
    assert_eq!(list_partitions(&log_dir, "in").unwrap(), vec![0, 1]);

    // A copy of `a` under another name is another file: another partition.
    let a_copy = write(tmp.path(), "a-copy.csv", &big_csv(100));
    let third = ingest_files(&log_dir, "in", &[b, a, a_copy.clone()], &cfg()).unwrap();
    assert_eq!(
        summary(&third),
        vec![(1, 2, true), (0, 100, true), (2, 100, false)]
    );
    let again = ingest_files(&log_dir, "in", &[a_copy], &cfg()).unwrap();
    assert_eq!(summary(&again), vec![(2, 100, true)]);
    assert_eq!(list_partitions(&log_dir, "in").unwrap(), vec![0, 1, 2]);
    assert_eq!(events(&log_dir, "in", 2), events(&log_dir, "in", 0));

    let expect_a: Vec<Event> = (0..100)
        .map(|i| ev(i, &format!("k,{}", i % 7), i as i64 - 50))
        .collect();
    assert_eq!(events(&log_dir, "in", 0), expect_a);
    assert_eq!(
        events(&log_dir, "in", 1),
        vec![ev(5, "x", 1), ev(6, "y \"q\"", -2)]
    );
}

#[test]
fn a_bad_line_leaves_the_log_as_before_that_file() {
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("log");
    let a = write(tmp.path(), "a.csv", &big_csv(30));
    let mut bad_content = big_csv(40);
    bad_content.push_str("41,k,4x2\n42,k,1\n");
    let bad = write(tmp.path(), "bad.csv", &bad_content);
    let c = write(tmp.path(), "c.csv", "ts,key,value\n1,c,1\n");

    // Reference state: only `a` ingested.
    let reference_dir = tmp.path().join("reference");
    ingest_files(&reference_dir, "in", std::slice::from_ref(&a), &cfg()).unwrap();

    let err =
        ingest_files(&log_dir, "in", &[a.clone(), bad.clone(), c.clone()], &cfg()).unwrap_err();
    assert_eq!(err.completed.files.len(), 1);
    assert_eq!(err.completed.files[0].path, a);
    match &err.kind {
        IngestErrorKind::Csv(e) => {
            assert_eq!(e.path, bad);
            assert_eq!(e.line, 42, "header + 40 rows, then the bad one");
            assert!(matches!(
                e.reason,
                CsvErrorReason::BadNumber {
                    column: "value",
                    ..
                }
            ));
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("1 earlier file(s) complete"));
    assert_eq!(snapshot(&log_dir), snapshot(&reference_dir));

    // Retrying with the same bad file changes nothing either.
    assert!(ingest_files(&log_dir, "in", &[a.clone(), bad.clone()], &cfg()).is_err());
    assert_eq!(snapshot(&log_dir), snapshot(&reference_dir));

    // Once fixed, the rest goes in after `a`.
    write(tmp.path(), "bad.csv", &big_csv(41));
    let report = ingest_files(&log_dir, "in", &[a, bad, c], &cfg()).unwrap();
    let parts: Vec<_> = report
        .files
        .iter()
        .map(|f| (f.partition, f.records, f.skipped))
        .collect();
    assert_eq!(parts, vec![(0, 30, true), (1, 41, false), (2, 1, false)]);
    assert_eq!(events(&log_dir, "in", 2), vec![ev(1, "c", 1)]);
}

/// Files written by several threads at once are numbered, committed and
/// laid out exactly as by one; a bad file among them leaves exactly the
/// files before it ingested, however many threads were writing.
#[test]
fn parallel_ingest_equals_one_thread_and_stops_at_a_bad_file() {
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = [30u64, 5, 0, 44, 12, 9]
        .iter()
        .enumerate()
        .map(|(i, &rows)| write(tmp.path(), &format!("f{i}.csv"), &big_csv(rows)))
        .collect();
    let ingest = |log_dir: &Path, files: &[PathBuf], threads: usize| {
        ingest_files_with_threads(log_dir, "in", RowSchema::Generic, files, &cfg(), threads)
    };
    let one = tmp.path().join("one");
    ingest(&one, &files, 1).unwrap();
    for threads in [2, 3, 8] {
        let log_dir = tmp.path().join(format!("t{threads}"));
        let report = ingest(&log_dir, &files, threads).unwrap();
        let partitions: Vec<u32> = report.files.iter().map(|f| f.partition).collect();
        assert_eq!(partitions, vec![0, 1, 2, 3, 4, 5]);
        assert_eq!(snapshot(&log_dir), snapshot(&one), "{threads} threads");
    }
    let mut with_bad = files.clone();
    let mut bad_content = big_csv(20);
    bad_content.push_str("20,k,x\n");
    with_bad[3] = write(tmp.path(), "bad.csv", &bad_content);
    let reference = tmp.path().join("reference");
    ingest(&reference, &files[..3], 1).unwrap();
    for threads in [1, 2, 8] {
        let log_dir = tmp.path().join(format!("bad{threads}"));
        let err = ingest(&log_dir, &with_bad, threads).unwrap_err();
        assert_eq!(err.completed.files.len(), 3, "{threads} threads");
        assert!(
            matches!(&err.kind, IngestErrorKind::Csv(e) if e.path == with_bad[3] && e.line == 22),
            "{err}"
        );
        assert_eq!(
            snapshot(&log_dir),
            snapshot(&reference),
            "{threads} threads"
        );
    }
}

#[test]
fn a_bad_first_file_leaves_no_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("log");
    let bad = write(tmp.path(), "bad.csv", "ts,key,value\n1,a,1\n2,\"open,3\n");
    let err = ingest_files(&log_dir, "in", &[bad], &cfg()).unwrap_err();
    assert!(err.completed.files.is_empty());
    assert!(
        matches!(err.kind, IngestErrorKind::Csv(ref e) if e.line == 3),
        "{err}"
    );
    assert!(list_partitions(&log_dir, "in").unwrap().is_empty());
    let left: Vec<_> = snapshot(&log_dir).into_keys().collect();
    assert_eq!(
        left,
        vec![PathBuf::from("in/"), PathBuf::from("in/MANIFEST")]
    );
}

#[test]
fn an_empty_file_makes_an_empty_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let log_dir = tmp.path().join("log");
    let empty = write(tmp.path(), "empty.csv", "ts,key,value\n");
    let a = write(tmp.path(), "a.csv", "ts,key,value\n1,a,1");
    let report = ingest_files(&log_dir, "in", &[empty.clone(), a], &cfg()).unwrap();
    assert_eq!(report.files[0].records, 0);
    assert_eq!(report.files[1].partition, 1);
    assert_eq!(list_partitions(&log_dir, "in").unwrap(), vec![0, 1]);
    assert!(events(&log_dir, "in", 0).is_empty());
    let again = ingest_files(&log_dir, "in", std::slice::from_ref(&empty), &cfg()).unwrap();
    assert!(again.files[0].skipped);
    // Another empty file is another (empty) partition.
    let other = write(tmp.path(), "other-empty.csv", "ts,key,value\n");
    let report = ingest_files(&log_dir, "in", &[empty, other], &cfg()).unwrap();
    let parts: Vec<_> = report
        .files
        .iter()
        .map(|f| (f.partition, f.records, f.skipped))
        .collect();
    assert_eq!(parts, vec![(0, 0, true), (2, 0, false)]);
    assert_eq!(list_partitions(&log_dir, "in").unwrap(), vec![0, 1, 2]);
}

/// Window rows: `(window_start, window_end, key) -> (count, sum, min, max)`.
type Windows = BTreeMap<(u64, u64, String), (i64, i64, i64, i64)>;

/// `weir run --until-end` over `inputs` in `data`, writing to `out`; the
/// window rows.
fn run_windows(data: &Path, out: &Path, inputs: &[&Path]) -> Windows {
    let mut args = vec![
        "run".to_owned(),
        "--window".to_owned(),
        "tumbling:10s".to_owned(),
        "--workers".to_owned(),
        "2".to_owned(),
        "--until-end".to_owned(),
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--out".to_owned(),
        out.display().to_string(),
        "--input".to_owned(),
    ];
    args.extend(inputs.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_success(&run_weir(&args), "weir run");
    let mut rows = BTreeMap::new();
    for line in sorted_rows(out, "windows") {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 7, "{line}");
        let n = |i: usize| f[i].parse::<i64>().unwrap();
        let key = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].to_owned(),
        );
        assert!(
            rows.insert(key, (n(3), n(4), n(5), n(6))).is_none(),
            "{line}"
        );
    }
    rows
}

#[test]
fn files_with_the_same_content_are_distinct_partitions_of_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut content = String::from("ts,key,value\n");
    for i in 0..90i64 {
        writeln!(content, "{},k{},{i}", i * 400, i % 4).unwrap();
    }
    let a = write(tmp.path(), "a.csv", &content);
    let b = write(tmp.path(), "b.csv", &content);
    let empty_0 = write(tmp.path(), "empty-0.csv", "ts,key,value\n");
    let empty_1 = write(tmp.path(), "empty-1.csv", "ts,key,value\n");

    let one = run_windows(&tmp.path().join("d1"), &tmp.path().join("o1"), &[&a]);
    assert!(one.len() > 4, "several windows and keys: {one:?}");
    let doubled: BTreeMap<_, _> = one
        .iter()
        .map(|(k, &(count, sum, min, max))| (k.clone(), (2 * count, 2 * sum, min, max)))
        .collect();

    let data = tmp.path().join("d2");
    let inputs: [&Path; 4] = [&a, &b, &empty_0, &empty_1];
    let two = run_windows(&data, &tmp.path().join("o2"), &inputs);
    assert_eq!(two, doubled, "two files with the same rows count twice");
    assert_eq!(
        list_partitions(&data.join("log"), "events").unwrap(),
        vec![0, 1, 2, 3],
        "four files, four partitions (the two empty ones too)"
    );

    // The same command again: nothing is ingested twice, the output is the same.
    let again = run_windows(&data, &tmp.path().join("o2"), &inputs);
    assert_eq!(again, doubled);
    assert_eq!(
        list_partitions(&data.join("log"), "events").unwrap(),
        vec![0, 1, 2, 3]
    );
}

/// `weir run --input` (files ingested in parallel, topics at once): the
/// rows equal those of a run over the same files ingested beforehand by
/// `weir ingest`, and a bad file fails the run with its `file:line`,
/// leaving the log with exactly the files before it.
#[test]
fn a_run_over_input_files_equals_ingest_then_run_and_a_bad_file_fails_it() {
    let tmp = tempfile::tempdir().unwrap();
    let plain_csv = |rows: u64, step_ms: u64| {
        let mut s = String::from("ts,key,value\n");
        for i in 0..rows {
            writeln!(s, "{},k{},{}", i * step_ms, i % 7, i as i64 - 50).unwrap();
        }
        s
    };
    let files: Vec<PathBuf> = (0..5u64)
        .map(|i| {
            write(
                tmp.path(),
                &format!("f{i}.csv"),
                &plain_csv(400 + 37 * i, 90 + i),
            )
        })
        .collect();
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let before = tmp.path().join("before");
    let ingested = run_weir(&[
        "ingest",
        "--data-dir",
        before.to_str().unwrap(),
        files[0].to_str().unwrap(),
        files[1].to_str().unwrap(),
        files[2].to_str().unwrap(),
        files[3].to_str().unwrap(),
        files[4].to_str().unwrap(),
    ]);
    assert_success(&ingested, "weir ingest");
    let expected = run_windows(&before, &tmp.path().join("out-before"), &refs);
    let overlapped = run_windows(
        &tmp.path().join("during"),
        &tmp.path().join("out-during"),
        &refs,
    );
    assert_eq!(overlapped, expected);

    let mut bad_content = big_csv(30);
    bad_content.push_str("31,k,one\n");
    let bad = write(tmp.path(), "bad.csv", &bad_content);
    let data = tmp.path().join("bad-run");
    let output = run_weir(&[
        "run",
        "--window",
        "tumbling:10s",
        "--until-end",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        tmp.path().join("out-bad").to_str().unwrap(),
        "--input",
        files[0].to_str().unwrap(),
        bad.to_str().unwrap(),
        files[1].to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{}:32:", bad.display())),
        "{stderr}"
    );
    let reference = tmp.path().join("reference");
    ingest_files(
        &reference.join("log"),
        "events",
        &files[..1],
        &cfg_default(),
    )
    .unwrap();
    let log = |dir: &Path| snapshot(&dir.join("log")).into_keys().collect::<Vec<_>>();
    assert_eq!(log(&data), log(&reference));
}

fn cfg_default() -> LogConfig {
    LogConfig::default()
}
