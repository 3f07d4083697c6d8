//! The command line on bad input: a clear error naming the file and line, a
//! non-zero exit, and a log left exactly as it was before the bad file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support::{assert_success, run_weir, sorted_rows};

/// Every file under `dir` with its bytes: the state of a log directory.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    if !dir.exists() {
        return files;
    }
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

fn ingest(data: &Path, files: &[&Path]) -> std::process::Output {
    let mut args = vec![
        "ingest".to_owned(),
        "--data-dir".to_owned(),
        data.display().to_string(),
    ];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_weir(&args)
}

#[test]
fn malformed_lines_are_refused_with_file_and_line_and_leave_the_log_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let good = tmp.path().join("good.csv");
    std::fs::write(&good, "ts,key,value\n1000,a,1\n2000,b,2\n").unwrap();
    assert_success(&ingest(&data, &[&good]), "ingest of a good file");
    let before = snapshot(&data.join("log"));

    let cases: [(&str, &[u8], &str); 4] = [
        (
            "bad-number.csv",
            b"ts,key,value\n1000,a,1\n2000,b,x2\n",
            ":3",
        ),
        ("columns.csv", b"ts,key,value\n1000,a,1,9\n", ":2"),
        (
            "utf8.csv",
            b"ts,key,value\n1000,a,1\n1001,b,2\n1002,\xff\xfe,3\n",
            ":4",
        ),
        ("negative-ts.csv", b"ts,key,value\n-5,a,1\n", ":2"),
    ];
    for (name, bytes, line) in cases {
        let bad = tmp.path().join(name);
        std::fs::write(&bad, bytes).unwrap();
        let out = ingest(&data, &[&bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} was accepted");
        assert!(
            stderr.contains(&format!("{name}{line}")),
            "{name}: error does not name file and line: {stderr}"
        );
        assert_eq!(
            snapshot(&data.join("log")),
            before,
            "{name}: the log changed"
        );
    }
}

#[test]
fn ingesting_the_same_file_twice_does_not_duplicate_events() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, "ts,key,value\n1000,a,1\n2000,a,2\n12000,a,3\n").unwrap();
    let run = |out: &Path| {
        let out = run_weir(&[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--window",
            "tumbling:10s",
            "--until-end",
            "--workers",
            "1",
            "--no-checkpoint",
        ]);
        assert_success(&out, "weir run");
    };
    run(&tmp.path().join("out1"));
    run(&tmp.path().join("out2"));
    let rows = sorted_rows(&tmp.path().join("out2"), "windows");
    assert_eq!(
        rows,
        vec![
            "0,10000,a,2,3,1,2".to_owned(),
            "10000,20000,a,1,3,3,3".to_owned()
        ]
    );
    assert_eq!(rows, sorted_rows(&tmp.path().join("out1"), "windows"));
}

/// Issue 15 item 3: with no `--input`, a data dir whose log holds
/// partitions is the input, not the demo; files from `weir ingest` are read
/// to their end without `--until-end`.
#[test]
fn a_run_without_input_reads_what_the_log_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, "ts,key,value\n1000,a,1\n2000,a,2\n12000,b,3\n").unwrap();
    assert_success(&ingest(&data, &[&input]), "ingest");
    let out = tmp.path().join("out");
    let run = run_weir(&[
        "run",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--window",
        "tumbling:10s",
        "--workers",
        "2",
        "--no-checkpoint",
    ]);
    assert_success(&run, "weir run on the log");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("no --input: running on the log") && stderr.contains("to their end"),
        "{stderr}"
    );
    assert!(!data.join("demo").exists(), "the demo was generated");
    assert_eq!(
        sorted_rows(&out, "windows"),
        vec![
            "0,10000,a,2,3,1,2".to_owned(),
            "10000,20000,b,1,3,3,3".to_owned()
        ]
    );
    // A Nexmark query on a log without its tables: a clear error.
    let q5 = run_weir(&[
        "run",
        "--query",
        "q5",
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--until-end",
        "--no-checkpoint",
    ]);
    assert!(!q5.status.success());
    assert!(
        String::from_utf8_lossy(&q5.stderr).contains("has no partitions"),
        "{}",
        String::from_utf8_lossy(&q5.stderr)
    );
}

#[test]
fn bad_arguments_are_refused() {
    for args in [
        &["run", "--window", "sliding:10s/3s"][..],
        &["run", "--window", "tumbling:10s", "--granularity", "3s"],
        &["run", "--processes", "2", "--process", "0"],
        &["run", "--input", "/nonexistent/weir-input.csv"],
    ] {
        let out = run_weir(args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(!out.stderr.is_empty(), "{args:?}: no error message");
    }
}

#[test]
fn a_stream_source_is_refused_in_a_cluster_saying_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "127.0.0.1:1\n127.0.0.1:2\n").unwrap();
    let out = run_weir(&[
        "run",
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
        "--from",
        "nats://127.0.0.1:1/S",
        "--processes",
        "2",
        "--process",
        "1",
        "--hostfile",
        hosts.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--from is for single-process runs"),
        "{stderr}"
    );
    assert!(
        stderr.contains("weir ingest --from nats://127.0.0.1:1/S"),
        "{stderr}"
    );
}

#[test]
fn keep_local_outside_its_range_is_refused_with_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for args in [
        &["run", "--data-dir", data, "--keep-local", "65"][..],
        &["sidecar", "--data-dir", data, "--keep-local", "1"],
    ] {
        let out = run_weir(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("outside 2..=64"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn window_options_that_cannot_apply_are_refused_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let input = tmp.path().join("in.csv");
    std::fs::write(&input, "ts,key,value\n1000,a,1\n").unwrap();
    let (input, data_arg) = (input.to_str().unwrap(), data.to_str().unwrap());
    let cases: [(&[&str], &str); 21] = [
        (&["--emit", "sometimes"], "unknown emit mode"),
        (
            &["--window", "session:5s", "--emit", "changes"],
            "tumbling and sliding",
        ),
        (
            &["--query", "q5", "--emit", "changes"],
            "generic window query",
        ),
        (&["--window", "sliding:2000000s/1s"], "over the limit"),
        (
            &["--aggregates", "count,median"],
            "unknown aggregate \"median\" (known: count, sum, min, max, distinct, topk)",
        ),
        (
            &["--aggregates", "topk", "--topk", "0"],
            "--topk must be between 1 and 1000",
        ),
        (
            &["--aggregates", "topk", "--topk", "1001"],
            "--topk must be between 1 and 1000",
        ),
        (&["--topk", "5"], "add topk to --aggregates"),
        (
            &["--window", "session:5s", "--aggregates", "count,topk"],
            "not sessions",
        ),
        (&["--query", "q5", "--topk", "3"], "generic window query"),
        (&["--aggregates", "count,count"], "count is given twice"),
        (
            &["--window", "session:5s", "--aggregates", "distinct"],
            "not sessions",
        ),
        (
            &["--query", "q5", "--aggregates", "count,distinct"],
            "generic window query",
        ),
        (
            &["--aggregates", "sum,distinct", "--emit", "changes"],
            "needs count",
        ),
        (&["--memory-budget", "1GB"], "unknown size unit \"GB\""),
        (
            &["--memory-budget", "512KiB"],
            "below the minimum of 2097152 bytes (1MiB per worker, --workers 2)",
        ),
        (
            &["--memory-budget", "3MiB", "--workers", "4"],
            "below the minimum of 4194304 bytes",
        ),
        (
            &["--memory-budget", "1GiB", "--window", "tumbling:10s"],
            "applies to sliding windows",
        ),
        (
            &["--memory-budget", "1GiB", "--window", "session:5s"],
            "applies to sliding windows",
        ),
        (
            &["--memory-budget", "1GiB", "--aggregates", "count,distinct"],
            "does not spill yet",
        ),
        (&["--memory-budget", "1GiB", "--query", "q5"], "not q5"),
    ];
    for (extra, reason) in cases {
        let mut args = vec![
            "run",
            "--input",
            input,
            "--data-dir",
            data_arg,
            "--until-end",
        ];
        args.extend_from_slice(extra);
        let out = run_weir(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} was accepted");
        assert!(
            stderr.contains(reason),
            "{extra:?}: unclear error: {stderr}"
        );
        assert!(
            !data.join("log").exists(),
            "{extra:?}: something was ingested"
        );
    }
}

/// A log an appender wrote (no ingest manifest) is tailed; after a run that
/// read it to its end and committed its final checkpoint, a tailing run
/// would skip everything appended since, so it is refused with what to do.
#[test]
fn tailing_a_log_whose_last_run_finished_is_refused() {
    use weir::event::encode_event;
    use weir::log::{partition_dir, LogConfig, PartitionWriter};
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let dir = partition_dir(&data.join("log"), weir::run::EVENTS_TOPIC, 0);
    let mut writer = PartitionWriter::open(&dir, LogConfig::default()).unwrap();
    let mut payload = Vec::new();
    for ts in [1_000, 2_000, 12_000] {
        payload.clear();
        encode_event(ts, "a", 1, &mut payload);
        writer.append(&payload).unwrap();
    }
    writer.sync().unwrap();
    let out = tmp.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--window",
            "tumbling:10s",
            "--workers",
            "1",
        ];
        args.extend_from_slice(extra);
        run_weir(&args)
    };
    assert_success(&run(&["--until-end"]), "a run to the end of the log");
    assert_eq!(
        sorted_rows(&out, "windows"),
        vec![
            "0,10000,a,2,2,1,1".to_owned(),
            "10000,20000,a,1,1,1,1".to_owned()
        ]
    );
    let tailing = run(&[]);
    let stderr = String::from_utf8_lossy(&tailing.stderr);
    assert!(
        !tailing.status.success(),
        "a tailing run was started: {stderr}"
    );
    assert!(
        stderr.contains("committed its final checkpoint") && stderr.contains("checkpoints"),
        "{stderr}"
    );
}
