//! A real NATS server with JetStream (Debian's `nats-server`, which
//! `scripts/test-all` installs) on loopback: `weir ingest --from
//! nats://…` killed with `kill -9` again and again while a producer keeps
//! publishing, then a broker restart during a tail. The log must hold each
//! message exactly once, in stream order, the malformed ones in the
//! dead-letter file exactly once, and the window output must equal a run on
//! a file of the same messages. Without the binary the tests are skipped,
//! unless `WEIR_REQUIRE_NATS` is set (as `scripts/test-all` does).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use weir::log::format::parse_segment_file_name;
use weir::log::partition_dir;
use weir::metrics::dir_usage;
use weir::nats::jetstream::JetStream;

use crate::sources::{
    check_exactly_once, is_malformed, kill_while_producing, message, position, server_binary,
    wait_until, windows_of_a_log_run, windows_of_the_same_messages_from_files, Killed,
    PROGRESS_DEADLINE,
};
use crate::support::{assert_success, free_ports, http_get, log_run_args, output_within, weir};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `kill -9` rounds, each with a part of the stream published meanwhile.
const KILLS: u64 = 12;
const PART: u64 = 2_500;
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
    wait_until(
        Duration::from_millis(50),
        || {
            // JetStream answers (a missing stream is an answer).
            JetStream::connect(&addr(port), REQUEST_TIMEOUT)
                .is_ok_and(|mut js| js.stream_state("PROBE").is_err_and(|e| !e.is_transient()))
        },
        || {
            format!(
                "nats-server did not come up; see {}",
                store.with_extension("log").display()
            )
        },
    );
    server
}

/// A server with stream `EV` on subject `ev`.
pub(crate) fn server_with_stream(binary: &Path, port: u16, store: &Path) -> Killed {
    let server = start_server(binary, port, store);
    JetStream::connect(&addr(port), REQUEST_TIMEOUT)
        .unwrap()
        .create_stream("EV", &["ev"])
        .unwrap();
    server
}

pub(crate) fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

pub(crate) fn publish(port: u16, from: u64, to: u64, chunk: u64) {
    let mut js = JetStream::connect(&addr(port), REQUEST_TIMEOUT).unwrap();
    let mut i = from;
    while i < to {
        let end = (i + chunk).min(to);
        let payloads: Vec<Vec<u8>> = (i..end).map(message).collect();
        js.publish_acked("ev", &payloads).unwrap();
        i = end;
    }
}

/// Checks the log and the dead letters against messages `0..n` (stream
/// sequence = index + 1).
fn check_nats(data: &Path, n: u64) {
    let messages: Vec<u64> = (0..n).collect();
    let dead = data.join("dead-letter/events-source.csv");
    check_exactly_once(data, 0, &messages, &dead, |_, i| i + 1);
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
    let Some(binary) = server_binary("nats-server", "NATS") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let _server = server_with_stream(&binary, port, &tmp.path().join("store"));
    let data = tmp.path().join("data");
    kill_while_producing(
        tmp.path(),
        &data,
        1,
        KILLS,
        |extra| ingest(port, &data, extra),
        move |part| publish(port, part * PART, (part + 1) * PART, 100),
    );
    let n = KILLS * PART;
    let out = output_within(
        ingest(port, &data, &["--until-caught-up"]).stdin(Stdio::null()),
        PROGRESS_DEADLINE,
    );
    assert_success(&out, "ingest --until-caught-up");
    check_nats(&data, n);
    let p = position(&data, 0).unwrap();
    assert_eq!((p.source_seq, p.messages), (n, n));

    let windows = windows_of_a_log_run(&data, &tmp.path().join("out-stream"), &[]);
    assert_eq!(
        windows,
        windows_of_the_same_messages_from_files(tmp.path(), &[(0..n).collect()])
    );
}

#[test]
fn weir_run_from_a_stream_equals_the_run_from_a_file() {
    let Some(binary) = server_binary("nats-server", "NATS") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let _server = server_with_stream(&binary, ports[0], &tmp.path().join("store"));
    let n = 10_000;
    publish(ports[0], 0, n, 1_000);
    let data = tmp.path().join("data");
    let url = format!("nats://{}/EV", addr(ports[0]));
    let windows = windows_of_a_log_run(&data, &tmp.path().join("out-stream"), &["--from", &url]);
    assert_eq!(
        windows,
        windows_of_the_same_messages_from_files(tmp.path(), &[(0..n).collect()])
    );
    check_nats(&data, n);
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
    let Some(binary) = server_binary("nats-server", "NATS") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let store = tmp.path().join("store");
    let mut server = server_with_stream(&binary, port, &store);
    publish(port, 0, 2_000, 500);
    let data = tmp.path().join("data");
    let metrics_port = free_ports(1)[0];
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut tail = Killed(
        ingest(
            port,
            &data,
            &["--reconnect-limit", "120s", "--metrics-addr", &metrics_addr],
        )
        .stderr(std::fs::File::create(tmp.path().join("ingest.log")).unwrap())
        .spawn()
        .unwrap(),
    );
    let wait_for_seq = |seq: u64| {
        wait_until(
            Duration::from_millis(20),
            || position(&data, 0).is_some_and(|p| p.source_seq >= seq),
            || format!("no progress to {seq}"),
        );
    };
    wait_for_seq(2_000);
    drop(server);
    server = start_server(&binary, port, &store);
    publish(port, 2_000, 4_000, 500);
    wait_for_seq(4_000);
    // The endpoint shows the committed figures of this process.
    let (status, body) = http_get(metrics_addr.parse().unwrap(), "/metrics").expect("metrics");
    assert_eq!(status, 200);
    let sample = |name: &str| -> u64 {
        let line = body
            .lines()
            .find(|l| l.starts_with(&format!("weir_{name}{{")))
            .unwrap_or_else(|| panic!("no {name} in {body}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let malformed = (0..4_000).filter(|&i| is_malformed(i)).count() as u64;
    assert_eq!(sample("source_dead_letters_total"), malformed);
    assert_eq!(sample("source_messages_total"), 4_000);
    assert_eq!(sample("source_committed_sequence"), 4_000);
    assert!(sample("source_reconnects_total") >= 1);
    assert!(
        tail.0.try_wait().unwrap().is_none(),
        "the tailing ingest exited"
    );
    drop(tail);
    drop(server);
    check_nats(&data, 4_000);
    let log = std::fs::read_to_string(tmp.path().join("ingest.log")).unwrap();
    assert!(log.contains("reconnecting"), "{log}");
}

/// A server that keeps its connections but answers nothing (stopped with
/// `SIGSTOP`) ends a tailing source once its reconnect limit has passed,
/// with the reason; what it had read stays in the log exactly once.
#[test]
fn a_server_that_stops_answering_ends_the_source() {
    let Some(binary) = server_binary("nats-server", "NATS") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let store = tmp.path().join("store");
    let server = server_with_stream(&binary, port, &store);
    publish(port, 0, 1_000, 500);
    let data = tmp.path().join("data");
    let stderr_path = tmp.path().join("ingest.log");
    let mut tail = Killed(
        ingest(port, &data, &["--reconnect-limit", "2s"])
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until(
        Duration::from_millis(20),
        || position(&data, 0).is_some_and(|p| p.source_seq >= 1_000),
        || "no progress to 1000".to_owned(),
    );
    let signal = |name: &str| {
        let pid = server.0.id().to_string();
        let status = Command::new("kill").args([name, &pid]).status().unwrap();
        assert!(status.success(), "kill {name} {pid}");
    };
    signal("-STOP");
    // Silence is noticed after 10 s of unanswered pulls, then reconnecting
    // (whose connections hang too) gives up after 2 s.
    let mut exit = None;
    wait_until(
        Duration::from_millis(100),
        || {
            exit = tail.0.try_wait().unwrap();
            exit.is_some()
        },
        || "the source kept waiting on a silent server".to_owned(),
    );
    signal("-CONT");
    assert!(!exit.unwrap().success());
    let log = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(
        log.contains("no answer to the pulls of stream EV") && log.contains("gave up reconnecting"),
        "{log}"
    );
    drop(tail);
    drop(server);
    check_nats(&data, 1_000);
}

#[test]
fn unreachable_servers_and_missing_streams_are_named() {
    let Some(binary) = server_binary("nats-server", "NATS") else {
        return;
    };
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
}

#[test]
fn a_full_log_pauses_the_source_and_drops_nothing() {
    let Some(binary) = server_binary("nats-server", "NATS") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let _server = server_with_stream(&binary, port, &tmp.path().join("store"));
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
    let log_bytes = || dir_usage(&segments, |name| parse_segment_file_name(name).is_some()).1;
    wait_until(
        Duration::from_millis(10),
        || log_bytes() >= limit_bytes,
        || "no progress".to_owned(),
    );
    // Paused: what it read is committed, and it reads no further.
    std::thread::sleep(Duration::from_millis(500));
    let held = position(&data, 0).expect("committed before pausing");
    assert!(held.source_seq < n, "read everything despite the limit");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        position(&data, 0).unwrap().source_seq,
        held.source_seq,
        "kept reading"
    );
    drop(paused);
    let out = output_within(
        ingest(port, &data, &["--until-caught-up"]).stdin(Stdio::null()),
        PROGRESS_DEADLINE,
    );
    assert_success(&out, "ingest after the pause");
    check_nats(&data, n);
}

/// Whether this machine lets an unprivileged user namespace mount a tmpfs
/// (`unshare -Urm`): the disk-full test's small disk. Without it the test
/// is skipped, unless `WEIR_REQUIRE_USERNS` is set (as `scripts/test-all`
/// does).
fn can_mount_a_small_disk() -> bool {
    let ok = Command::new("unshare")
        .args(["-Urm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("WEIR_REQUIRE_USERNS").is_none(),
            "WEIR_REQUIRE_USERNS is set but `unshare -Urm` cannot mount a tmpfs"
        );
        eprintln!("SKIPPED: `unshare -Urm` cannot mount a tmpfs here");
    }
    ok
}

/// In a mount namespace, the data dir on a 4 MiB tmpfs that a filler leaves
/// 256 KiB of; the ingest pauses on the full disk (its warning is waited
/// for, in bounded rounds), the filler is removed, the ingest catches up
/// and the data dir is copied out to `$OUT`.
const DISK_FULL_SCRIPT: &str = r#"
set -e
mount -t tmpfs -o size=4m weir-small-disk "$DISK"
dd if=/dev/zero of="$DISK/filler" bs=64k 2>/dev/null || true
truncate -s -256K "$DISK/filler"
"$WEIR" ingest --from "$FROM" --data-dir "$DISK/data" --until-caught-up >"$LOGS/stdout" 2>"$LOGS/stderr" &
pid=$!
rounds=0
until grep -q "the log's disk is full" "$LOGS/stderr"; do
  rounds=$((rounds + 1))
  if [ "$rounds" -gt 600 ]; then kill "$pid"; echo "no pause seen" >&2; exit 3; fi
  sleep 0.1
done
rm "$DISK/filler"
wait "$pid"
cp -a "$DISK/data" "$OUT"
"#;

#[test]
fn a_full_disk_pauses_the_source_and_drops_nothing() {
    let Some(binary) = server_binary("nats-server", "NATS") else {
        return;
    };
    if !can_mount_a_small_disk() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let _server = server_with_stream(&binary, port, &tmp.path().join("store"));
    let n = 20_000;
    publish(port, 0, n, 1_000);
    let (disk, logs, data) = (
        tmp.path().join("disk"),
        tmp.path().join("logs"),
        tmp.path().join("data"),
    );
    std::fs::create_dir(&disk).unwrap();
    std::fs::create_dir(&logs).unwrap();
    let out = output_within(
        Command::new("unshare")
            .args(["-Urm", "sh", "-c", DISK_FULL_SCRIPT])
            .env("DISK", &disk)
            .env("LOGS", &logs)
            .env("OUT", &data)
            .env("WEIR", env!("CARGO_BIN_EXE_weir"))
            .env("FROM", format!("nats://{}/EV", addr(port)))
            .stdin(Stdio::null()),
        PROGRESS_DEADLINE * 2,
    );
    let stderr = std::fs::read_to_string(logs.join("stderr")).unwrap_or_default();
    assert_success(
        &out,
        &format!("the ingest on a small disk; its log:\n{stderr}"),
    );
    check_nats(&data, n);
    let p = position(&data, 0).unwrap();
    assert_eq!((p.source_seq, p.messages), (n, n));
    // It did pause (so the disk was full mid-stream), and says so.
    let summary = std::fs::read_to_string(logs.join("stdout")).unwrap();
    assert!(stderr.contains("nothing read is lost"), "{stderr}");
    assert!(!summary.contains(" 0 pauses"), "{summary}");
    assert!(summary.contains(&format!("{n} messages read")), "{summary}");
}
