//! `weir explain` on a run with late events and `kill -9` restarts: for
//! random rows, the events it lists are in the log where it says, and
//! aggregate to the reference's row; the late ones it lists are exactly the
//! reference's and the output's late rows of that key and window. Then the
//! requests it must refuse, each with its reason.

use std::path::Path;

use weir::event::{decode_record, LogRecord};
use weir::gen::SplitMix64;
use weir::log::{list_partitions, partition_dir, PartitionReader};
use weir_dataflows::reference::{reference, reference_window_values};
use weir_dataflows::WindowSpec;

use crate::kill_clock::{crash_until_done, timed, KillClock};
use crate::support::{assert_success, gen_input, run_weir, sorted_rows, weir};

/// Rows explained per test run.
const ROWS_CHECKED: usize = 12;
/// Rounds of crashed runs tried until one had a kill land.
const MAX_ROUNDS: u64 = 4;
const WINDOW: &str = "sliding:20s/5s";
const LATENESS_MS: u64 = 2_000;

/// A checkpointed run of `window` (lateness 2 s) with `extra` options.
fn run_args(
    (input, data, out): (&Path, &Path, &Path),
    workers: u64,
    window: &str,
    extra: &[&str],
) -> Vec<String> {
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    let mut args: Vec<String> = vec![
        "run".into(),
        "--input".into(),
        path(input),
        "--data-dir".into(),
        path(data),
        "--out".into(),
        path(out),
    ];
    args.extend(
        [
            "--window",
            window,
            "--lateness",
            "2s",
            "--until-end",
            "--checkpoint-interval",
            "20ms",
            "--workers",
            &workers.to_string(),
        ]
        .map(str::to_owned),
    );
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

/// The events of topic `events` per partition, in log order.
fn log_events(data: &Path) -> Vec<Vec<(u64, String, i64)>> {
    let log = data.join("log");
    let mut partitions = Vec::new();
    for p in list_partitions(&log, "events").unwrap() {
        assert_eq!(p as usize, partitions.len(), "partitions 0..n");
        let mut reader = PartitionReader::open(&partition_dir(&log, "events", p), 0).unwrap();
        let mut events = Vec::new();
        while let Some((_, payload)) = reader.next().unwrap() {
            match decode_record(payload).unwrap() {
                LogRecord::Event(e) => events.push((e.ts, e.key.to_owned(), e.value)),
                LogRecord::Idle { .. } => panic!("a file-fed log has no idle markers"),
            }
        }
        partitions.push(events);
    }
    partitions
}

/// `weir explain --data-dir DATA --out OUT ROW FLAG`: CSV rows after the header.
fn explain_csv(data: &Path, out: &Path, row: &str, flag: &str) -> Vec<String> {
    let output = weir()
        .args(["explain", "--data-dir"])
        .arg(data)
        .arg("--out")
        .arg(out)
        .args([row, flag])
        .output()
        .unwrap();
    assert_success(&output, &format!("explain {row} {flag}"));
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("partition,offset,ts,key,value"));
    lines.map(str::to_owned).collect()
}

/// `(partition, offset, ts, key, value)` of an explain CSV row (keys here
/// need no quoting).
fn parse_event(line: &str) -> (usize, usize, u64, String, i64) {
    let f: Vec<&str> = line.split(',').collect();
    assert_eq!(f.len(), 5, "{line}");
    (
        f[0].parse().unwrap(),
        f[1].parse().unwrap(),
        f[2].parse().unwrap(),
        f[3].to_owned(),
        f[4].parse().unwrap(),
    )
}

#[test]
fn explained_rows_are_their_events_across_kill_9_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_input(&input, 300_000);
    let (reference_data, reference_out) = (tmp.path().join("ref-data"), tmp.path().join("ref-out"));
    let (done, took) = timed(|| {
        run_weir(
            &run_args(
                (&input, &reference_data, &reference_out),
                2,
                WINDOW,
                &["--no-checkpoint"],
            )
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        )
    });
    assert_success(&done, "failure-free run");
    let mut clock = KillClock::new(11, took);
    // Rounds on fresh directories until one had a kill land.
    let (mut data, mut out, mut kills) = (tmp.path().join("data"), tmp.path().join("out"), 0);
    for round in 0..MAX_ROUNDS {
        data = tmp.path().join(format!("data-{round}"));
        out = tmp.path().join(format!("out-{round}"));
        kills += crash_until_done(&mut clock, |workers| {
            run_args((&input, &data, &out), workers, WINDOW, &[])
        });
        if kills > 0 {
            break;
        }
    }
    assert!(kills > 0, "no kill landed in {MAX_ROUNDS} rounds");
    eprintln!("{kills} kill(s) landed");
    assert_eq!(
        sorted_rows(&out, "windows"),
        sorted_rows(&reference_out, "windows")
    );

    let partitions = log_events(&data);
    let spec: WindowSpec = WINDOW.parse().unwrap();
    let expected = reference(&partitions, spec, LATENESS_MS);
    let (values, _) = reference_window_values(&partitions, spec, LATENESS_MS);
    assert!(
        !expected.late.is_empty(),
        "the input should have late events"
    );
    let late_rows = sorted_rows(&out, "late");
    let rows = sorted_rows(&out, "windows");
    // Rows of keys with late events first (so some checked rows have late
    // events), then random ones.
    let mut rng = SplitMix64::new(5);
    let mut picked: Vec<&String> = Vec::new();
    for late in expected.late.iter().step_by(expected.late.len() / 4 + 1) {
        let window_start = late.ts - late.ts % 5_000;
        let prefix = format!("{window_start},{},{},", window_start + 20_000, late.key);
        picked.extend(rows.iter().find(|r| r.starts_with(&prefix)));
    }
    while picked.len() < ROWS_CHECKED {
        picked.push(&rows[rng.below(rows.len() as u64) as usize]);
    }
    let mut late_seen = 0;
    for row in picked {
        let fields: Vec<&str> = row.split(',').collect();
        let (start, end, key) = (
            fields[0].parse::<u64>().unwrap(),
            fields[1].parse::<u64>().unwrap(),
            fields[2].to_owned(),
        );
        let events: Vec<_> = explain_csv(&data, &out, row, "--events")
            .iter()
            .map(|l| parse_event(l))
            .collect();
        // Each event is where it says in the log, of the row's key and window,
        // listed once.
        let mut at: Vec<(usize, usize)> = events.iter().map(|e| (e.0, e.1)).collect();
        at.sort_unstable();
        at.dedup();
        assert_eq!(at.len(), events.len(), "{row}: an event listed twice");
        for (p, offset, ts, k, value) in &events {
            assert_eq!(partitions[*p][*offset], (*ts, k.clone(), *value), "{row}");
            assert!(
                k == &key && (start..end).contains(ts),
                "{row}: {p}@{offset}"
            );
        }
        // They are the reference's accepted values, which give the row.
        let mut listed: Vec<i64> = events.iter().map(|e| e.4).collect();
        let mut accepted = values[&(start, end, key.clone())].clone();
        listed.sort_unstable();
        accepted.sort_unstable();
        assert_eq!(listed, accepted, "{row}");
        let reference_row = expected
            .rows
            .iter()
            .find(|r| r.window_start == start && r.key.as_str() == key)
            .unwrap();
        let agg = &reference_row.agg;
        assert_eq!(
            format!(
                "{start},{end},{key},{},{},{},{}",
                agg.count, agg.sum, agg.min, agg.max
            ),
            *row
        );
        // The late ones are exactly the output's late rows of that key and
        // window.
        let mut late = explain_csv(&data, &out, row, "--late");
        late.sort();
        let in_window = |line: &&String| {
            let e = parse_event(line);
            e.3 == key && (start..end).contains(&e.2)
        };
        let expected_late: Vec<String> = late_rows.iter().filter(in_window).cloned().collect();
        assert_eq!(late, expected_late, "{row}");
        late_seen += late.len();
    }
    assert!(late_seen > 0, "no checked row had late events");

    // The summary names the committing checkpoint.
    let summary = weir()
        .args(["explain", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .arg(&rows[0])
        .output()
        .unwrap();
    assert_success(&summary, "explain summary");
    let text = String::from_utf8_lossy(&summary.stdout);
    assert!(text.contains("commit   checkpoint "), "{text}");
    assert!(text.contains("check    count, sum, min, max"), "{text}");
}

#[test]
fn rows_it_cannot_explain_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_input(&input, 20_000);
    let run = |name: &str, window: &str| {
        let (data, out) = (
            tmp.path().join(format!("data-{name}")),
            tmp.path().join(format!("out-{name}")),
        );
        let args = run_args((&input, &data, &out), 2, window, &[]);
        let done = run_weir(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_success(&done, name);
        (data, out)
    };
    let (data, out) = run("sliding", WINDOW);
    let (tumbling_data, _) = run("tumbling", "tumbling:10s");
    let row = sorted_rows(&out, "windows").remove(0);
    let key = row.split(',').nth(2).unwrap().to_owned();
    let refused = |data: &Path, out: &Path, args: &[&str], reason: &str| {
        let output = weir()
            .args(["explain", "--data-dir"])
            .arg(data)
            .arg("--out")
            .arg(out)
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} explained");
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    };
    let changed = format!("{row}0");
    refused(&data, &out, &[&changed], "is not in");
    refused(
        &data,
        &out,
        &["--window", "0", "--key", "no-such-key"],
        "unknown key",
    );
    refused(
        &data,
        &out,
        &["--window", "5", "--key", &key],
        "none of a window starting at 5",
    );
    refused(
        &tumbling_data,
        &out,
        &[&row],
        "not a window of tumbling:10s",
    );
    refused(tmp.path(), &out, &[&row], "no QUERY file");
    refused(&data, tmp.path(), &[&row], "no windows-<worker>.csv");
    // The same query on another log: the row does not follow from it.
    let other_input = tmp.path().join("other-input");
    std::fs::create_dir(&other_input).unwrap();
    std::fs::write(
        other_input.join("0.csv"),
        format!("ts,key,value\n{},{key},1\n", row.split(',').next().unwrap()),
    )
    .unwrap();
    let other_data = tmp.path().join("data-other");
    let other_out = tmp.path().join("out-other");
    let args = run_args((&other_input, &other_data, &other_out), 1, WINDOW, &[]);
    assert_success(
        &run_weir(&args.iter().map(String::as_str).collect::<Vec<_>>()),
        "the other run",
    );
    refused(
        &other_data,
        &out,
        &[&row],
        "does not follow from this data directory's log",
    );
    // And the row itself explains.
    let output = weir()
        .args(["explain", "--data-dir"])
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .args(["--window", row.split(',').next().unwrap(), "--key", &key])
        .output()
        .unwrap();
    assert_success(&output, "explain --window --key");
    assert!(String::from_utf8_lossy(&output.stdout).contains(&row));
}
