//! What the stream source tests (`nats`, `kafka`) share: the messages,
//! finding and stopping server processes, reading back a partition, its
//! `POSITION` and dead letters, and the window run compared with a run on
//! files of the same messages.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use weir::event::{decode_record, LogRecord};
use weir::ingest::stream::position::SourcePosition;
use weir::log::{partition_dir, PartitionReader};

use crate::support::{assert_success, log_run_args, output_within, run_weir, sorted_rows, weir};

/// A fail-safe for waits on progress, not a speed assumption.
pub const PROGRESS_DEADLINE: Duration = Duration::from_secs(60);

/// Polls `done` every `poll` until it holds; fails with `what()` after
/// [`PROGRESS_DEADLINE`] (a fail-safe, not a speed assumption).
pub fn wait_until(poll: Duration, mut done: impl FnMut() -> bool, what: impl Fn() -> String) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed() < PROGRESS_DEADLINE, "{}", what());
        std::thread::sleep(poll);
    }
}

/// Kills and reaps a child process when dropped (also when a test fails).
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The server binary `name` (from `$<env>_BIN`, `PATH` or `/usr/sbin`), or
/// `None` (the test is skipped) unless `WEIR_REQUIRE_<env>` is set, as
/// `scripts/test-all` does: then its absence fails the test.
pub fn server_binary(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(format!("{env}_BIN")) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let require = format!("WEIR_REQUIRE_{env}");
        assert!(
            std::env::var_os(&require).is_none(),
            "{require} is set but there is no {name} binary (scripts/test-all installs it)"
        );
        eprintln!("SKIPPED: no {name} binary (scripts/test-all installs it)");
    }
    found
}

/// Message `i`: a `ts,key,value` row, or (every 97th) a malformed one.
pub fn message(i: u64) -> Vec<u8> {
    if is_malformed(i) {
        return format!("not a row {i}").into_bytes();
    }
    let ts = 1_000 + i * 10 + (i * 7_919 % 13) * 40;
    format!("{ts},k{},{}", i * 31 % 50, i % 1_000).into_bytes()
}

/// Whether [`message`] `i` is malformed.
pub fn is_malformed(i: u64) -> bool {
    i % 97 == 13
}

/// The committed `POSITION` of `partition` of topic `events`.
pub fn position(data: &Path, partition: u32) -> Option<SourcePosition> {
    let dir = partition_dir(&data.join("log"), "events", partition);
    let bytes = std::fs::read(dir.join("POSITION")).ok()?;
    Some(SourcePosition::decode(&bytes).unwrap())
}

/// The events of `partition` of topic `events`, as `ts,key,value` rows.
pub fn log_rows(data: &Path, partition: u32) -> Vec<Vec<u8>> {
    let dir = partition_dir(&data.join("log"), "events", partition);
    let mut reader = PartitionReader::open(&dir, 0).unwrap();
    let mut rows = Vec::new();
    while let Some((_, payload)) = reader.next().unwrap() {
        if let LogRecord::Event(e) = decode_record(payload).unwrap() {
            rows.push(format!("{},{},{}", e.ts, e.key, e.value).into_bytes());
        }
    }
    rows
}

/// Checks that `partition` holds the valid ones of `messages` (indices
/// into [`message`]) once each, in order, and that its dead-letter file
/// `dead_letters` holds the malformed ones, with their sequences
/// (`seq_of`), once each.
pub fn check_exactly_once(
    data: &Path,
    partition: u32,
    messages: &[u64],
    dead_letters: &Path,
    seq_of: impl Fn(usize, u64) -> u64,
) {
    let rows = log_rows(data, partition);
    let expected: Vec<Vec<u8>> = messages
        .iter()
        .filter(|&&i| !is_malformed(i))
        .map(|&i| message(i))
        .collect();
    assert_eq!(
        rows.len(),
        expected.len(),
        "records in partition {partition}"
    );
    assert!(
        rows == expected,
        "partition {partition} differs from the source's valid messages in order"
    );
    let dead = std::fs::read_to_string(dead_letters).unwrap();
    let seqs: Vec<u64> = dead
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    let bad: Vec<u64> = messages
        .iter()
        .enumerate()
        .filter(|(_, &i)| is_malformed(i))
        .map(|(at, &i)| seq_of(at, i))
        .collect();
    assert_eq!(
        seqs, bad,
        "dead-lettered sequences of partition {partition}"
    );
}

/// Records in `partition` after its committed offset.
pub fn uncommitted_records(data: &Path, partition: u32) -> u64 {
    let dir = partition_dir(&data.join("log"), "events", partition);
    let committed = position(data, partition).map_or(0, |p| p.log_next_offset);
    let Ok(mut reader) = PartitionReader::open(&dir, committed) else {
        return 0;
    };
    let mut n = 0;
    while let Ok(Some(_)) = reader.next() {
        n += 1;
    }
    n
}

/// The window rows of the tests' query run over `data`'s log to its end.
pub fn windows_of_a_log_run(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut extra = extra.to_vec();
    extra.push("--no-checkpoint");
    let args = log_run_args(data, out, 2, &extra);
    let run = output_within(weir().args(&args), PROGRESS_DEADLINE);
    assert_success(&run, "weir run");
    let windows = sorted_rows(out, "windows");
    assert!(!windows.is_empty());
    windows
}

/// The same, with the valid ones of each of `partitions` (indices into
/// [`message`]) written to a file, the files ingested in order (file `p`
/// becomes partition `p`, so lateness is decided on the same sequences).
pub fn windows_of_the_same_messages_from_files(tmp: &Path, partitions: &[Vec<u64>]) -> Vec<String> {
    let file_data = tmp.join("file-data");
    let mut args = vec!["ingest".to_owned()];
    for (p, messages) in partitions.iter().enumerate() {
        let csv = tmp.join(format!("messages-{p}.csv"));
        let mut text = String::from("ts,key,value\n");
        for &i in messages.iter().filter(|&&i| !is_malformed(i)) {
            text.push_str(std::str::from_utf8(&message(i)).unwrap());
            text.push('\n');
        }
        std::fs::write(&csv, text).unwrap();
        args.push(csv.display().to_string());
    }
    args.extend(["--data-dir".to_owned(), file_data.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_success(&run_weir(&args), "file ingest");
    windows_of_a_log_run(&file_data, &tmp.join("out-file"), &[])
}

/// Messages committed into partition 0 over all runs.
fn committed_messages(data: &Path) -> u64 {
    position(data, 0).map_or(0, |p| p.messages)
}

/// `kill -9` rounds of an ingest: each starts `ingest(extra args)`, has
/// `produce_part(round)` publish a part of the source meanwhile (on a
/// producer thread), and kills it at a pseudo-random moment; every other
/// round first waits for the process to commit more of partition 0, one
/// round in three commits only every second, and of those the odd ones
/// first wait for records appended after the committed offset (the case a
/// restart must match). Returns once the producer has published every part;
/// fails unless some kill left records to match.
pub fn kill_while_producing(
    tmp: &Path,
    data: &Path,
    partitions: u32,
    rounds: u64,
    ingest: impl Fn(&[&str]) -> std::process::Command,
    produce_part: impl Fn(u64) + Send + 'static,
) {
    let (go, parts) = std::sync::mpsc::channel::<u64>();
    let producer = std::thread::spawn(move || {
        for part in parts {
            produce_part(part);
        }
    });
    let mut seed = 0x9e37_79b9_u64;
    let mut kills_with_a_tail = 0;
    for kill in 0..rounds {
        let log = tmp.join(format!("ingest-{kill}.log"));
        let before = committed_messages(data);
        let interval = if kill % 3 == 0 { "1s" } else { "20ms" };
        let child = Killed(
            ingest(&["--commit-interval", interval])
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        go.send(kill).unwrap();
        // Its pid exists from here. Even rounds wait until this process has
        // committed more of partition 0 (so rounds progress and kills also
        // land after commits), then all kill at a pseudo-random moment.
        // Rounds 3, 9, ... (committing every second) wait instead for
        // records appended after the committed offset: a kill then leaves
        // records a restart must match.
        let progressed = |kill: u64| {
            if kill.is_multiple_of(2) {
                committed_messages(data) > before
            } else {
                kill % 6 != 3 || uncommitted_records(data, 0) > 0
            }
        };
        wait_until(
            Duration::from_millis(2),
            || progressed(kill),
            || {
                format!(
                    "ingest made no progress: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            },
        );
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        std::thread::sleep(Duration::from_millis((seed >> 33) % 200));
        drop(child);
        let tail: u64 = (0..partitions).map(|p| uncommitted_records(data, p)).sum();
        kills_with_a_tail += u32::from(tail > 0);
        eprintln!(
            "kill {kill}: partition 0 committed {:?}, {tail} records after the committed offsets",
            position(data, 0).map(|p| p.source_seq)
        );
    }
    drop(go);
    producer.join().unwrap();
    assert!(kills_with_a_tail > 0, "no kill left records to match");
}
