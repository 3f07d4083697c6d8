//! A real NATS server with JetStream (Debian's `nats-server`, which
//! `scripts/test-all` installs) on loopback: `weir ingest --from
//! nats://…` killed with `kill -9` again and again while a producer keeps
//! publishing, then a broker restart during a tail. The log must hold each
//! message exactly once, in stream order, the malformed ones in the
//! dead-letter file exactly once, and the window output must equal a run on
//! a file of the same messages. Without the binary the tests are skipped,
//! unless `WEIR_REQUIRE_NATS` is set (as `scripts/test-all` does).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir::event::{decode_record, LogRecord};
use weir::ingest::stream::position::SourcePosition;
use weir::log::{partition_dir, PartitionReader};
use weir::nats::jetstream::JetStream;

use crate::support::{
    assert_success, free_ports, log_run_args, output_within, run_weir, sorted_rows, weir,
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `kill -9` rounds, each with a part of the stream published meanwhile.
const KILLS: u64 = 12;
const PART: u64 = 2_500;
/// A fail-safe for waits on progress, not a speed assumption.
const PROGRESS_DEADLINE: Duration = Duration::from_secs(20);

/// Kills and reaps a child process when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nats_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var_os("WEIR_REQUIRE_NATS").is_none(),
            "WEIR_REQUIRE_NATS is set but there is no nats-server binary \
             (scripts/test-all installs Debian's `nats-server` package)"
        );
        eprintln!("SKIPPED: no nats-server binary (scripts/test-all installs it)");
    }
    found
}

/// Starts a JetStream server on `port` storing in `store`, and waits until
/// it answers JetStream API requests.
fn start_server(binary: &Path, port: u16, store: &Path) -> Killed {
    let log = std::fs::File::create(store.with_extension("log")).unwrap();
    let child = Command::new(binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-sd")
        .arg(store)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting nats-server");
    let server = Killed(child);
    let started = Instant::now();
    loop {
        if let Ok(mut js) = JetStream::connect(&addr(port), REQUEST_TIMEOUT) {
            // JetStream answers (a missing stream is an answer).
            if js.stream_state("PROBE").is_err_and(|e| !e.is_transient()) {
                return server;
            }
        }
        assert!(
            started.elapsed() < PROGRESS_DEADLINE,
            "nats-server did not come up; see {}",
            store.with_extension("log").display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Message `i`: a `ts,key,value` row, or (every 97th) a malformed one.
fn message(i: u64) -> Vec<u8> {
    if i % 97 == 13 {
        return format!("not a row {i}").into_bytes();
    }
    let ts = 1_000 + i * 10 + (i * 7_919 % 13) * 40;
    format!("{ts},k{},{}", i * 31 % 50, i % 1_000).into_bytes()
}

fn publish(port: u16, from: u64, to: u64, chunk: u64) {
    let mut js = JetStream::connect(&addr(port), REQUEST_TIMEOUT).unwrap();
    let mut i = from;
    while i < to {
        let end = (i + chunk).min(to);
        let payloads: Vec<Vec<u8>> = (i..end).map(message).collect();
        js.publish_acked("ev", &payloads).unwrap();
        i = end;
    }
}

fn position(data: &Path) -> Option<SourcePosition> {
    let bytes =
        std::fs::read(partition_dir(&data.join("log"), "events", 0).join("POSITION")).ok()?;
    Some(SourcePosition::decode(&bytes).unwrap())
}

/// Checks the log and the dead letters against messages `0..n` (stream
/// sequence = index + 1).
fn check_exactly_once(data: &Path, n: u64) {
    let mut reader =
        PartitionReader::open(&partition_dir(&data.join("log"), "events", 0), 0).unwrap();
    let mut rows = Vec::new();
    while let Some((_, payload)) = reader.next().unwrap() {
        if let LogRecord::Event(e) = decode_record(payload).unwrap() {
            rows.push(format!("{},{},{}", e.ts, e.key, e.value).into_bytes());
        }
    }
    let expected: Vec<Vec<u8>> = (0..n)
        .map(message)
        .filter(|m| !m.starts_with(b"not"))
        .collect();
    assert_eq!(rows.len(), expected.len(), "records in the log");
    assert!(
        rows == expected,
        "the log differs from the stream's valid messages in order"
    );
    let dead = std::fs::read_to_string(data.join("dead-letter/events-source.csv")).unwrap();
    let seqs: Vec<u64> = dead
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    let bad: Vec<u64> = (0..n).filter(|i| i % 97 == 13).map(|i| i + 1).collect();
    assert_eq!(seqs, bad, "dead-lettered sequences");
}

/// Records in the log after the committed offset.
fn uncommitted_records(data: &Path) -> u64 {
    let dir = partition_dir(&data.join("log"), "events", 0);
    let committed = position(data).map_or(0, |p| p.log_next_offset);
    let Ok(mut reader) = PartitionReader::open(&dir, committed) else {
        return 0;
    };
    let mut n = 0;
    while let Ok(Some(_)) = reader.next() {
        n += 1;
    }
    n
}

fn ingest(port: u16, data: &Path, extra: &[&str]) -> Command {
    let mut c = weir();
    c.args(["ingest", "--from", &format!("nats://{}/EV", addr(port))])
        .arg("--data-dir")
        .arg(data)
        .args(extra);
    c
}

#[test]
fn each_message_once_across_kill_9_while_producing() {
    let Some(binary) = nats_binary() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let _server = start_server(&binary, port, &tmp.path().join("store"));
    JetStream::connect(&addr(port), REQUEST_TIMEOUT)
        .unwrap()
        .create_stream("EV", &["ev"])
        .unwrap();
    // The producer publishes a part of the stream each time an ingest
    // starts, so messages keep coming while it is killed.
    let (go, parts) = std::sync::mpsc::channel::<u64>();
    let producer = std::thread::spawn(move || {
        for part in parts {
            publish(port, part * PART, (part + 1) * PART, 100);
        }
    });
    let data = tmp.path().join("data");
    let mut seed = 0x9e37_79b9_u64;
    let mut kills_with_a_tail = 0;
    for kill in 0..KILLS {
        let stderr_path = tmp.path().join(format!("ingest-{kill}.log"));
        let child = Killed(
            ingest(
                port,
                &data,
                &[
                    "--commit-interval",
                    if kill % 3 == 0 { "1s" } else { "20ms" },
                ],
            )
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
        );
        go.send(kill).unwrap();
        // Its pid exists from here. Every other round first waits until
        // records were appended after the committed offset (the case a
        // restart must match), then all kill at a pseudo-random moment.
        if kill % 2 == 0 {
            let started = Instant::now();
            while uncommitted_records(&data) == 0 {
                assert!(
                    started.elapsed() < PROGRESS_DEADLINE,
                    "ingest made no progress: {}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        std::thread::sleep(Duration::from_millis((seed >> 33) % 200));
        drop(child);
        let tail = uncommitted_records(&data);
        kills_with_a_tail += u32::from(tail > 0);
        eprintln!(
            "kill {kill}: committed {:?}, {tail} records after it",
            position(&data).map(|p| p.source_seq)
        );
    }
    drop(go);
    producer.join().unwrap();
    assert!(kills_with_a_tail > 0, "no kill left records to match");
    let n = KILLS * PART;
    let out = output_within(
        ingest(port, &data, &["--until-caught-up"]).stdin(Stdio::null()),
        PROGRESS_DEADLINE,
    );
    assert_success(&out, "ingest --until-caught-up");
    check_exactly_once(&data, n);
    let p = position(&data).unwrap();
    assert_eq!((p.source_seq, p.messages), (n, n));

    let windows = windows_of_a_log_run(&data, &tmp.path().join("out-stream"), &[]);
    assert_eq!(
        windows,
        windows_of_the_same_messages_from_a_file(tmp.path(), n)
    );
}

/// The window rows of the tests' query run over `data`'s log to its end.
fn windows_of_a_log_run(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut extra = extra.to_vec();
    extra.push("--no-checkpoint");
    let args = log_run_args(data, out, 2, &extra);
    let run = output_within(weir().args(&args), PROGRESS_DEADLINE);
    assert_success(&run, "weir run");
    let windows = sorted_rows(out, "windows");
    assert!(!windows.is_empty());
    windows
}

/// The same, with the valid messages among `0..n` ingested from a file.
fn windows_of_the_same_messages_from_a_file(tmp: &Path, n: u64) -> Vec<String> {
    let file_data = tmp.join("file-data");
    let csv = tmp.join("messages.csv");
    let mut text = String::from("ts,key,value\n");
    for m in (0..n).map(message).filter(|m| !m.starts_with(b"not")) {
        text.push_str(std::str::from_utf8(&m).unwrap());
        text.push('\n');
    }
    std::fs::write(&csv, text).unwrap();
    let ingested = run_weir(&[
        "ingest",
        csv.to_str().unwrap(),
        "--data-dir",
        file_data.to_str().unwrap(),
    ]);
    assert_success(&ingested, "file ingest");
    windows_of_a_log_run(&file_data, &tmp.join("out-file"), &[])
}

#[test]
fn weir_run_from_a_stream_equals_the_run_from_a_file() {
    let Some(binary) = nats_binary() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let _server = start_server(&binary, ports[0], &tmp.path().join("store"));
    JetStream::connect(&addr(ports[0]), REQUEST_TIMEOUT)
        .unwrap()
        .create_stream("EV", &["ev"])
        .unwrap();
    let n = 10_000;
    publish(ports[0], 0, n, 1_000);
    let data = tmp.path().join("data");
    let url = format!("nats://{}/EV", addr(ports[0]));
    let windows = windows_of_a_log_run(&data, &tmp.path().join("out-stream"), &["--from", &url]);
    assert_eq!(
        windows,
        windows_of_the_same_messages_from_a_file(tmp.path(), n)
    );
    check_exactly_once(&data, n);
    // A source that cannot start fails the run, naming the server.
    let url = format!("nats://{}/EV", addr(ports[1]));
    let args = log_run_args(
        &tmp.path().join("d2"),
        &tmp.path().join("o2"),
        1,
        &["--from", &url, "--no-checkpoint"],
    );
    let out = output_within(weir().args(&args), PROGRESS_DEADLINE);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&url) && stderr.contains("cannot connect"),
        "{stderr}"
    );
}

#[test]
fn a_broker_restart_during_a_tail_loses_nothing() {
    let Some(binary) = nats_binary() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let store = tmp.path().join("store");
    let mut server = start_server(&binary, port, &store);
    JetStream::connect(&addr(port), REQUEST_TIMEOUT)
        .unwrap()
        .create_stream("EV", &["ev"])
        .unwrap();
    publish(port, 0, 2_000, 500);
    let data = tmp.path().join("data");
    let mut tail = Killed(
        ingest(port, &data, &["--reconnect-limit", "120s"])
            .stderr(std::fs::File::create(tmp.path().join("ingest.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let wait_for_seq = |seq: u64| {
        let started = Instant::now();
        while position(&data).is_none_or(|p| p.source_seq < seq) {
            assert!(
                started.elapsed() < PROGRESS_DEADLINE,
                "no progress to {seq}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for_seq(2_000);
    drop(server);
    server = start_server(&binary, port, &store);
    publish(port, 2_000, 4_000, 500);
    wait_for_seq(4_000);
    assert!(
        tail.0.try_wait().unwrap().is_none(),
        "the tailing ingest exited"
    );
    drop(tail);
    drop(server);
    check_exactly_once(&data, 4_000);
    let log = std::fs::read_to_string(tmp.path().join("ingest.log")).unwrap();
    assert!(log.contains("reconnecting"), "{log}");
}

#[test]
fn unreachable_servers_and_missing_streams_are_named() {
    let Some(binary) = nats_binary() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let data = tmp.path().join("data");
    let out = output_within(&mut ingest(ports[0], &data, &[]), PROGRESS_DEADLINE);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("nats://127.0.0.1:{}", ports[0]))
            && stderr.contains("cannot connect"),
        "{stderr}"
    );
    let _server = start_server(&binary, ports[1], &tmp.path().join("store"));
    let out = output_within(&mut ingest(ports[1], &data, &[]), PROGRESS_DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("stream \"EV\" does not exist"), "{stderr}");
    let out = run_weir(&["ingest", "--from", "kafka://127.0.0.1:9092/t"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("kafka://"));
}

#[test]
fn a_full_log_pauses_the_source_and_drops_nothing() {
    let Some(binary) = nats_binary() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let _server = start_server(&binary, port, &tmp.path().join("store"));
    JetStream::connect(&addr(port), REQUEST_TIMEOUT)
        .unwrap()
        .create_stream("EV", &["ev"])
        .unwrap();
    let n = 20_000;
    publish(port, 0, n, 1_000);
    let data = tmp.path().join("data");
    let limit_bytes = 64 << 10;
    let paused = Killed(
        ingest(port, &data, &["--max-log-bytes", "64KiB"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let segments = partition_dir(&data.join("log"), "events", 0);
    let log_bytes = || -> u64 {
        std::fs::read_dir(&segments).map_or(0, |entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
                .map(|e| e.metadata().unwrap().len())
                .sum()
        })
    };
    let started = Instant::now();
    while log_bytes() < limit_bytes {
        assert!(started.elapsed() < PROGRESS_DEADLINE, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
    // Paused: what it read is committed, and it reads no further.
    std::thread::sleep(Duration::from_millis(500));
    let held = position(&data).expect("committed before pausing");
    assert!(held.source_seq < n, "read everything despite the limit");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        position(&data).unwrap().source_seq,
        held.source_seq,
        "kept reading"
    );
    drop(paused);
    let out = output_within(
        ingest(port, &data, &["--until-caught-up"]).stdin(Stdio::null()),
        PROGRESS_DEADLINE,
    );
    assert_success(&out, "ingest after the pause");
    check_exactly_once(&data, n);
}
