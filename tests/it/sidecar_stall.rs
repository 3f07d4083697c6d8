//! A slow or stopped sidecar (issue 13 item 4, decision 27): with the
//! sidecar stopped (`SIGSTOP`) the sources stop reading and the tap's buffer
//! stays under its bound, the stall is reported (log and metric), and after
//! `SIGCONT` the run finishes with exactly the rows of a failure-free run. A
//! sidecar the engine started, killed with `SIGKILL`, ends the run with a
//! message telling the user to rerun, and the rerun is exactly once; one
//! run by hand (`--sidecar`) and restarted by hand after a `SIGKILL`
//! continues the run, exactly once.
//!
//! The sidecar is stopped as soon as the engine has connected, so the run
//! cannot end before the stop lands, whatever the machine's speed. Every
//! wait is on a condition with a deadline; the stall lasts a few samples of
//! the metrics endpoint, ten checkpoint intervals.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::kill_clock::{sidecar_pattern, wait_for_process};
use crate::support::{assert_success, free_ports, gen_input, output_within, sorted_rows, weir};

/// The tap bound of the stalled run, MiB (`--max-tap-buffer-mb`).
const TAP_BOUND_MIB: u64 = 1;
/// What the tap may hold once the sources stopped: the bound plus what the
/// sources had released before they stopped (the panes a busy machine let
/// pile up in the combiner, of the 3,000 keys per worker: under 1 MiB),
/// doubled for the buffer's capacity, which grows by doubling whatever
/// filled it (seen under a loaded test run: 3.4 MiB, over a ceiling that
/// doubled the bound alone).
const TAP_CEILING_BYTES: u64 = (2 * (TAP_BOUND_MIB + 1)) << 20;
/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(120);

fn run_args(input: &Path, data: &Path, out: &Path) -> Vec<String> {
    [
        "run",
        "--input",
        input.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--window",
        "sliding:20s/5s",
        "--lateness",
        "2s",
        "--until-end",
        "--workers",
        "2",
        "--checkpoint-interval",
        "50ms",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The value of the unlabelled metric `name` in the engine's exposition.
fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `check` until it holds; fails the test if `child` exits first or
/// the deadline passes.
fn wait_until(child: &mut Child, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("the run ended ({status}) before {what}:\n{stderr}");
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("timed out waiting for {what}; the run's stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid of the run's sidecar (which exists: see `wait_for_process`).
fn sidecar_pid(data: &Path) -> String {
    let out = Command::new("pgrep")
        .args(["-f", &sidecar_pattern(data)])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&out.stdout);
    pids.lines().next().expect("a sidecar pid").to_owned()
}

fn signal(pid: &str, sig: &str) {
    let status = Command::new("kill").args([sig, pid]).status().unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// Continues a stopped sidecar and kills the run if the test fails midway,
/// so no stopped process outlives it.
struct Cleanup<'a> {
    sidecar: Option<String>,
    child: &'a mut Child,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.sidecar.take() {
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
        }
        if std::thread::panicking() {
            let _ = self.child.kill();
        }
    }
}

/// Waits for `child` to exit, at most [`DEADLINE`]; returns its stderr.
fn finish(mut child: Child) -> (std::process::ExitStatus, String) {
    // Drained meanwhile: a run blocked on a full stderr pipe would never end.
    let mut stderr = child.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = reader.join().unwrap_or_default();
            panic!("the run did not finish within {DEADLINE:?}; its stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().expect("stderr reader"))
}

struct Fixture {
    /// Events in the input.
    events: u64,
    tmp: tempfile::TempDir,
    input: std::path::PathBuf,
    windows: Vec<String>,
    late: Vec<String>,
}

/// Input and the rows of a failure-free run over it.
fn fixture(events: u64) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_input(&input, events);
    let out = tmp.path().join("ref-out");
    let mut args = run_args(&input, &tmp.path().join("ref-data"), &out);
    args.push("--no-checkpoint".to_owned());
    assert_success(
        &weir().args(&args).output().unwrap(),
        "the failure-free run",
    );
    Fixture {
        events,
        windows: sorted_rows(&out, "windows"),
        late: sorted_rows(&out, "late"),
        tmp,
        input,
    }
}

fn assert_exactly_once(f: &Fixture, out: &Path) {
    assert_eq!(sorted_rows(out, "windows"), f.windows, "window rows differ");
    assert_eq!(sorted_rows(out, "late"), f.late, "late rows differ");
}

/// A run over `f`'s input whose sidecar is stopped as soon as the engine
/// has connected to it (its metrics endpoint answers only then), held: the
/// stall reported and the sources stopped. Returns the run, its metrics
/// address and its sidecar's pid.
fn start_held_run(
    f: &Fixture,
    data: &Path,
    out: &Path,
    extra: &[&str],
) -> (Child, SocketAddr, String) {
    let port = free_ports(1)[0];
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = weir()
        .args(run_args(&f.input, data, out))
        .args(["--metrics-addr", &addr.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_for_process(&mut child, &sidecar_pattern(data)),
        "the run ended before its sidecar appeared"
    );
    let pid = sidecar_pid(data);
    wait_until(&mut child, "the metrics endpoint", || {
        metric(addr, "weir_events_in_total").is_some()
    });
    // The first cut comes one interval later: the run cannot end first.
    signal(&pid, "-STOP");
    let mut cleanup = Cleanup {
        sidecar: Some(pid.clone()),
        child: &mut child,
    };
    // Held, or (on a machine slow to announce cuts) done reading before
    // the fourth uncommitted cut: either way nothing more is read.
    #[allow(clippy::cast_precision_loss)]
    let all_read = f.events as f64;
    wait_until(cleanup.child, "the stall and the hold", || {
        metric(addr, "weir_sidecar_stalled") == Some(1.0)
            && (metric(addr, "weir_sources_held") == Some(1.0)
                || metric(addr, "weir_events_in_total") == Some(all_read))
    });
    cleanup.sidecar = None;
    drop(cleanup);
    (child, addr, pid)
}

#[test]
fn a_stopped_sidecar_holds_the_sources_is_reported_and_the_output_stays_exactly_once() {
    let f = fixture(1_500_000);
    let (data, out) = (f.tmp.path().join("data"), f.tmp.path().join("out"));
    let bound = TAP_BOUND_MIB.to_string();
    let (mut child, addr, pid) = start_held_run(&f, &data, &out, &["--max-tap-buffer-mb", &bound]);
    let mut cleanup = Cleanup {
        sidecar: Some(pid.clone()),
        child: &mut child,
    };
    // A source held by the tap bound reads again if a cut drains the tap
    // (one more may be announced while fewer than 4 are uncommitted), so
    // wait until nothing is read for ten intervals in a row: then no cut can
    // come and nothing can commit.
    let mut recent: Vec<Option<f64>> = Vec::new();
    wait_until(cleanup.child, "the sources to settle", || {
        std::thread::sleep(Duration::from_millis(50));
        recent.push(metric(addr, "weir_events_in_total"));
        let tail = &recent[recent.len().saturating_sub(10)..];
        #[allow(clippy::cast_precision_loss)]
        let all_read = tail[0] == Some(f.events as f64);
        tail.len() == 10
            && tail.iter().all(|e| e.is_some() && *e == tail[0])
            && (metric(addr, "weir_sources_held") == Some(1.0) || all_read)
    });
    // Several checkpoint intervals of stall: nothing more is read, the tap
    // stays under its bound, the stall stays reported.
    let events_held = metric(addr, "weir_events_in_total").unwrap();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            metric(addr, "weir_events_in_total"),
            Some(events_held),
            "a source read while held"
        );
        let tap = metric(addr, "weir_tap_buffer_bytes").unwrap();
        assert!(
            tap <= TAP_CEILING_BYTES as f64,
            "the tap holds {tap} bytes, over {TAP_CEILING_BYTES}"
        );
        assert_eq!(metric(addr, "weir_sidecar_stalled"), Some(1.0));
    }
    signal(&pid, "-CONT");
    cleanup.sidecar = None;
    drop(cleanup);

    let (status, stderr) = finish(child);
    assert!(status.success(), "the run failed after SIGCONT:\n{stderr}");
    assert!(stderr.contains("stalled"), "no stall was logged:\n{stderr}");
    assert_exactly_once(&f, &out);
}

#[test]
fn a_killed_sidecar_fails_the_run_with_rerun_advice_and_the_rerun_is_exactly_once() {
    let f = fixture(1_500_000);
    let (data, out) = (f.tmp.path().join("data"), f.tmp.path().join("out"));
    // Held first, so that the kill lands while the run is in progress.
    let (child, _addr, pid) = start_held_run(&f, &data, &out, &[]);
    signal(&pid, "-KILL");
    let (status, stderr) = finish(child);
    assert!(!status.success(), "the run survived its sidecar's SIGKILL");
    assert!(
        stderr.contains("rerun the same command"),
        "the failure does not say what to do:\n{stderr}"
    );
    // The same command again: it restores the newest committed checkpoint
    // (if any was committed before the stop) and finishes.
    let rerun = output_within(weir().args(run_args(&f.input, &data, &out)), DEADLINE);
    assert_success(&rerun, "the rerun");
    assert_exactly_once(&f, &out);
}

/// Kills the sidecars a test started by hand, however it ends.
struct Sidecars(Vec<Child>);

impl Drop for Sidecars {
    fn drop(&mut self) {
        for sidecar in &mut self.0 {
            let _ = Command::new("kill")
                .args(["-CONT", &sidecar.id().to_string()])
                .status();
            let _ = sidecar.kill();
            let _ = sidecar.wait();
        }
    }
}

/// A sidecar run by hand (`weir sidecar`, not the engine's own), once its
/// socket exists.
fn start_sidecar_by_hand(data: &Path) -> Child {
    let socket = data.join("sidecar.sock");
    let _ = std::fs::remove_file(&socket);
    let mut sidecar = weir()
        .args(["sidecar", "--data-dir", data.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            sidecar.try_wait().unwrap().is_none(),
            "the sidecar exited before listening"
        );
        assert!(started.elapsed() < DEADLINE, "the sidecar never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    sidecar
}

#[test]
fn a_sidecar_run_by_hand_killed_and_restarted_continues_the_run_exactly_once() {
    let f = fixture(1_500_000);
    let (data, out) = (f.tmp.path().join("data"), f.tmp.path().join("out"));
    std::fs::create_dir_all(&data).unwrap();
    let mut sidecars = Sidecars(vec![start_sidecar_by_hand(&data)]);
    let socket = format!("unix:{}", data.join("sidecar.sock").display());
    let port = free_ports(1)[0];
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = weir()
        .args(run_args(&f.input, &data, &out))
        .args(["--sidecar", &socket, "--metrics-addr", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Stopped as soon as the engine is connected, so the kill lands while
    // the run is in progress whatever the machine's speed.
    wait_until(&mut child, "the metrics endpoint", || {
        metric(addr, "weir_events_in_total").is_some()
    });
    let first = sidecars.0[0].id().to_string();
    signal(&first, "-STOP");
    wait_until(&mut child, "the stall", || {
        metric(addr, "weir_sidecar_stalled") == Some(1.0)
    });
    signal(&first, "-KILL");
    let _ = sidecars.0[0].wait();
    // The engine keeps running without its sidecar (reconnecting) ...
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended when its sidecar was killed"
        );
    }
    // ... and continues once the operator starts the sidecar again.
    sidecars.0.push(start_sidecar_by_hand(&data));
    let (status, stderr) = finish(child);
    assert!(status.success(), "the run failed:\n{stderr}");
    assert!(
        stderr.contains("reconnected to the checkpoint sidecar"),
        "{stderr}"
    );
    assert_exactly_once(&f, &out);
}
