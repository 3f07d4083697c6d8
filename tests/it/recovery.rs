//! Exactly-once output across real crashes: the engine's process group
//! (engine + its sidecar) is killed with SIGKILL at random moments and the
//! same command rerun; the final output must equal a failure-free run's, as
//! a multiset of rows.
//!
//! `WEIR_CRASH_KILLS` sets the number of kills (default 20);
//! `WEIR_CRASH_SEED` the seed of the kill moments.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::kill_clock::{
    kill_group, sidecar_pattern, sleep_while_running, timed, wait_for_process, KillClock,
    MAX_KILLS_PER_ROUND,
};
use crate::support::{assert_success, checkpoint_every_slide, gen_input, sorted_rows, weir};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_args(input: &str, data: &str, out: &str, workers: u64) -> Vec<String> {
    run_args_with_window(input, data, out, workers, &["--window", "sliding:20s/5s"])
}

/// The arguments of a checkpointed run; `query` gives the window and any
/// other query options (e.g. `--window tumbling:10s --emit changes`).
fn run_args_with_window(
    input: &str,
    data: &str,
    out: &str,
    workers: u64,
    query: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--input",
        input,
        "--data-dir",
        data,
        "--out",
        out,
        "--lateness",
        "2s",
        "--until-end",
        "--workers",
        &workers.to_string(),
        "--checkpoint-interval",
        "20ms",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(query.iter().map(|a| (*a).to_owned()));
    args
}

/// [`crate::kill_clock::crash_until_done`] of `weir run` over `input`.
fn crash_until_done(
    input: &str,
    data: &str,
    out: &str,
    query: &[&str],
    clock: &mut KillClock,
) -> u64 {
    crate::kill_clock::crash_until_done(clock, |workers| {
        run_args_with_window(input, data, out, workers, query)
    })
}

#[test]
fn kill_minus_nine_of_engine_and_sidecar_gives_exactly_once_output() {
    let f = fixture(1_500_000);
    assert!(
        f.windows.len() > 10_000,
        "too little output: {}",
        f.windows.len()
    );
    assert!(!f.late.is_empty(), "the input should have late events");
    let target_kills = env_or("WEIR_CRASH_KILLS", 20);
    let seed = env_or("WEIR_CRASH_SEED", 7);
    let mut clock = KillClock::new(seed, f.reference);
    let (mut kills, mut rounds) = (0, 0);
    while kills < target_kills && rounds < KillClock::max_rounds(target_kills) {
        // Each round: a fresh data dir and output, crashed until it completes.
        rounds += 1;
        let data = f.tmp.path().join(format!("data-{rounds}"));
        let out = f.tmp.path().join(format!("out-{rounds}"));
        let (data, out) = (data.to_str().unwrap(), out.to_str().unwrap());
        kills += crash_until_done(
            &f.input,
            data,
            out,
            &["--window", "sliding:20s/5s"],
            &mut clock,
        );
        // Rerunning a completed run, on another worker count, changes nothing.
        let rerun = weir()
            .args(run_args(&f.input, data, out, 3))
            .output()
            .unwrap();
        assert_success(&rerun, "rerun after completion");
        assert_matches_reference(
            Path::new(out),
            &f.windows,
            &f.late,
            &format!("round {rounds} (seed {seed})"),
        );
    }
    assert_kills_landed(kills, rounds);
    eprintln!("{kills} kills over {rounds} rounds (seed {seed})");
}

/// Fails a kill test none of whose kills landed: it tested nothing.
fn assert_kills_landed(kills: u64, rounds: u64) {
    assert!(
        kills > 0,
        "no kill landed in {rounds} rounds: every run finished before its kill moment"
    );
}

/// Runs `args` to completion and checks the output against the reference.
fn assert_matches_reference(
    out: &Path,
    expected_windows: &[String],
    expected_late: &[String],
    what: &str,
) {
    assert_eq!(
        sorted_rows(out, "windows"),
        expected_windows,
        "{what}: window rows differ"
    );
    assert_eq!(
        sorted_rows(out, "late"),
        expected_late,
        "{what}: late rows differ"
    );
}

/// Runs `args` with `failpoint` armed but without `--until-end`, so the run
/// never finishes on its own: the open windows keep state at every cut, a
/// delta file is certainly written and the failpoint is certainly reached
/// (a run that ends first may only commit a final checkpoint with no delta).
/// Fails the test if the run is still going after a minute.
fn run_into_failpoint(args: &[String], failpoint: &str) -> std::process::Output {
    let child = weir()
        .args(args.iter().filter(|a| *a != "--until-end"))
        .env("WEIR_FAILPOINT", failpoint)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(child.wait_with_output()));
    if let Ok(output) = finished.recv_timeout(Duration::from_secs(60)) {
        output.unwrap()
    } else {
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{pid}")])
            .status();
        // The killed run's output, to tell a run that never got there from
        // one that failed and did not exit.
        let stderr = finished
            .recv_timeout(Duration::from_secs(10))
            .ok()
            .and_then(Result::ok)
            .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_default();
        panic!("{failpoint}: the failpoint was never reached; the run's stderr:\n{stderr}");
    }
}

/// The input and the failure-free output every crash test compares with.
struct Fixture {
    tmp: tempfile::TempDir,
    input: String,
    windows: Vec<String>,
    late: Vec<String>,
    /// How long the failure-free run took on this machine.
    reference: std::time::Duration,
}

fn fixture(events: u64) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_input(&input, events);
    let input = input.to_str().unwrap().to_owned();
    let reference_out = tmp.path().join("ref-out");
    let reference_data = tmp.path().join("ref-data");
    let mut args = run_args(
        &input,
        reference_data.to_str().unwrap(),
        reference_out.to_str().unwrap(),
        2,
    );
    args.push("--no-checkpoint".to_owned());
    let (output, reference) = timed(|| weir().args(&args).output().unwrap());
    assert_success(&output, "failure-free run");
    Fixture {
        reference,
        windows: sorted_rows(&reference_out, "windows"),
        late: sorted_rows(&reference_out, "late"),
        tmp,
        input,
    }
}

#[test]
fn a_sidecar_crash_at_each_commit_step_loses_nothing() {
    let f = fixture(300_000);
    for failpoint in weir::checkpoint::store::FAILPOINTS {
        let data = f.tmp.path().join(format!("data-{failpoint}"));
        let out = f.tmp.path().join(format!("out-{failpoint}"));
        let args = run_args(&f.input, data.to_str().unwrap(), out.to_str().unwrap(), 2);
        let crashed = run_into_failpoint(&args, failpoint);
        assert!(
            !crashed.status.success(),
            "{failpoint}: the run survived its sidecar's crash"
        );
        let stderr = String::from_utf8_lossy(&crashed.stderr);
        assert!(
            stderr.contains("sidecar"),
            "{failpoint}: unclear error: {stderr}"
        );
        assert_success(
            &weir().args(&args).output().unwrap(),
            "rerun after the sidecar crash",
        );
        assert_matches_reference(&out, &f.windows, &f.late, failpoint);
    }
}

#[test]
fn a_sidecar_that_exits_before_listening_fails_the_run_at_once() {
    // `WEIR_BIN` names the binary started as the sidecar: one that exits at
    // once stands for a sidecar killed while starting. The run must say so
    // rather than retry the connection for its full timeout.
    let f = fixture(10_000);
    let (data, out) = (f.tmp.path().join("data"), f.tmp.path().join("out"));
    let args = run_args(&f.input, data.to_str().unwrap(), out.to_str().unwrap(), 2);
    let failed = weir()
        .args(&args)
        .env("WEIR_BIN", "false")
        .output()
        .unwrap();
    assert!(!failed.status.success(), "ran without its sidecar");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("the sidecar it started exited") && stderr.contains("before listening"),
        "unclear error: {stderr}"
    );
}

#[test]
fn an_adaptive_cadence_commits_checkpoints_and_the_same_output() {
    let f = fixture(300_000);
    let (data, out) = (f.tmp.path().join("data"), f.tmp.path().join("out"));
    let mut args = run_args(&f.input, data.to_str().unwrap(), out.to_str().unwrap(), 2);
    args.extend(["--checkpoint-cadence", "adaptive"].map(str::to_owned));
    assert_success(&weir().args(&args).output().unwrap(), "adaptive run");
    assert_matches_reference(&out, &f.windows, &f.late, "adaptive cadence");
    let report = weir()
        .args(["inspect", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert_success(&report, "inspect");
    let text = String::from_utf8_lossy(&report.stdout);
    let committed: u64 = text
        .lines()
        .find_map(|l| {
            l.split_once(" committed")?
                .0
                .rsplit(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no checkpoint count in: {text}"));
    // At least the final one. Whether regular cuts commit too depends on
    // how long the run lasts in wall-clock time (a fast machine read this
    // input in well under the first interval, and the test failed): the
    // cadence's decisions are unit-tested in `src/checkpoint/cadence.rs`.
    assert!(committed >= 1, "{committed} checkpoints: {text}");
}

#[test]
fn sidecar_only_kills_lose_nothing() {
    let f = fixture(1_500_000);
    let target = env_or("WEIR_CRASH_KILLS", 20);
    let mut clock = KillClock::new(env_or("WEIR_CRASH_SEED", 11), f.reference);
    let (mut kills, mut rounds) = (0, 0);
    while kills < target && rounds < KillClock::max_rounds(target) {
        rounds += 1;
        let data = f.tmp.path().join(format!("data-{rounds}"));
        let out = f.tmp.path().join(format!("out-{rounds}"));
        let args = run_args(&f.input, data.to_str().unwrap(), out.to_str().unwrap(), 2);
        // The sidecar's command line names this round's data dir.
        let pattern = sidecar_pattern(&data);
        for attempt in 0.. {
            let mut child = weir()
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // The sidecar starts after ingest: the kill moment is drawn
            // only once it exists.
            let killed = attempt < MAX_KILLS_PER_ROUND
                && wait_for_process(&mut child, &pattern)
                && sleep_while_running(&mut child, clock.next_delay())
                && Command::new("pkill")
                    .args(["-9", "-f", &pattern])
                    .status()
                    .unwrap()
                    .success();
            let output = child.wait_with_output().unwrap();
            if output.status.success() {
                break;
            }
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                killed && stderr.contains("sidecar"),
                "attempt {attempt} failed by itself:\n{stderr}"
            );
            kills += 1;
        }
        assert_matches_reference(&out, &f.windows, &f.late, &format!("round {rounds}"));
    }
    assert_kills_landed(kills, rounds);
}

#[test]
fn kill_minus_nine_of_a_two_process_cluster_gives_exactly_once_output() {
    let f = fixture(1_500_000);
    let target = env_or("WEIR_CRASH_KILLS", 20);
    let mut clock = KillClock::new(env_or("WEIR_CRASH_SEED", 13), f.reference);
    let (mut kills, mut rounds) = (0, 0);
    while kills < target && rounds < KillClock::max_rounds(target) {
        rounds += 1;
        let data = f.tmp.path().join(format!("cluster-data-{rounds}"));
        let out = f.tmp.path().join(format!("cluster-out-{rounds}"));
        for attempt in 0.. {
            let ports = crate::support::free_ports(2);
            let hostfile = f.tmp.path().join(format!("hosts-{rounds}-{attempt}"));
            let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
            std::fs::write(&hostfile, hosts.join("\n")).unwrap();
            let mut group = 0;
            let mut children = Vec::new();
            for process in 0..2u32 {
                let mut args = run_args(&f.input, data.to_str().unwrap(), out.to_str().unwrap(), 2);
                args.extend(
                    [
                        "--processes",
                        "2",
                        "--process",
                        &process.to_string(),
                        "--hostfile",
                    ]
                    .map(str::to_owned),
                );
                args.push(hostfile.to_str().unwrap().to_owned());
                let child = weir()
                    .args(&args)
                    .process_group(group)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                if group == 0 {
                    group = child.id() as i32;
                }
                children.push(child);
            }
            // Both processes exist once spawned; a cluster also connects
            // its processes first, so its kill moments reach further.
            let delay = clock.next_delay() + clock.next_delay();
            if attempt < MAX_KILLS_PER_ROUND && sleep_while_running(&mut children[0], delay) {
                kill_group(group as u32);
            }
            let outputs: Vec<_> = children
                .into_iter()
                .map(|c| c.wait_with_output().unwrap())
                .collect();
            if outputs.iter().all(|o| o.status.success()) {
                break;
            }
            for o in &outputs {
                assert!(
                    o.status.success() || o.status.signal() == Some(9),
                    "attempt {attempt}: a process failed by itself:\n{}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            kills += 1;
        }
        assert_matches_reference(
            &out,
            &f.windows,
            &f.late,
            &format!("cluster round {rounds}"),
        );
    }
    assert_kills_landed(kills, rounds);
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_loudly_and_loses_nothing() {
    let f = fixture(3_000_000);
    let data = f.tmp.path().join("data-damaged");
    let out = f.tmp.path().join("out-damaged");
    let mut args = run_args(&f.input, data.to_str().unwrap(), out.to_str().unwrap(), 2);
    checkpoint_every_slide(&mut args);
    // Mid-run checkpoints: none is cut while the run's own ingest goes on
    // (decision 72).
    args.push("--ingest-first".into());
    let checkpoints = data.join("checkpoints");
    // Stop the run (kill -9 of engine and sidecar) once a few mid-run
    // checkpoints exist: each of them adds a delta file, and GC keeps the
    // files of the last two, so the previous checkpoint is intact.
    let child = weir()
        .args(&args)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let enough = |commits: &[weir::checkpoint::format::CommitRecord]| {
        commits.len() >= 3 && commits.iter().all(|c| c.cut_time != u64::MAX)
    };
    let started = std::time::Instant::now();
    let mut child = child;
    while !weir::checkpoint::store::read_commits(&checkpoints).is_ok_and(|c| enough(&c)) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it had 3 mid-run checkpoints"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no mid-run checkpoints"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let pid = child.id();
    let _ = Command::new("kill")
        .args(["-9", "--", &format!("-{pid}")])
        .status();
    let _ = child.wait_with_output();
    let commits = weir::checkpoint::store::read_commits(&checkpoints).unwrap();
    assert!(
        enough(&commits),
        "the run finished before it could be stopped"
    );
    let (newest, fallback) = (&commits[commits.len() - 1], &commits[commits.len() - 2]);
    // Damage a data file that only the newest checkpoint needs.
    let victim = newest
        .files
        .iter()
        .find(|f| !fallback.files.iter().any(|p| p.name == f.name))
        .expect("a mid-run checkpoint adds a delta file");
    assert!(
        fallback
            .files
            .iter()
            .all(|f| checkpoints.join(&f.name).is_file()),
        "the fallback checkpoint {} lost files to GC",
        fallback.checkpoint_id
    );
    let path = checkpoints.join(&victim.name);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let rerun = weir().args(&args).output().unwrap();
    assert_success(&rerun, "rerun after damage");
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(
        stderr.contains("WARNING") && stderr.contains(&victim.name),
        "no loud fallback: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&rerun.stdout);
    assert!(
        stdout.contains(&format!(
            "restored from     checkpoint {} ",
            fallback.checkpoint_id
        )),
        "did not restore checkpoint {}: {stdout}",
        fallback.checkpoint_id
    );
    assert_matches_reference(&out, &f.windows, &f.late, "after fallback");
}

#[test]
fn a_checkpoint_of_another_query_is_refused() {
    let f = fixture(50_000);
    let data = f.tmp.path().join("data-fingerprint");
    let out = f.tmp.path().join("out-fingerprint");
    let args = run_args(&f.input, data.to_str().unwrap(), out.to_str().unwrap(), 2);
    assert_success(&weir().args(&args).output().unwrap(), "first run");
    let mut other = args.clone();
    let window = other.iter().position(|a| a == "--window").unwrap() + 1;
    other[window] = "tumbling:10s".to_owned();
    let refused = weir().args(&other).output().unwrap();
    assert!(
        !refused.status.success(),
        "a checkpoint of another query was used"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("fingerprint"), "unclear refusal: {stderr}");
    // Nothing committed was touched: the original query still restores.
    assert_success(
        &weir().args(&args).output().unwrap(),
        "rerun of the original query",
    );
    assert_matches_reference(&out, &f.windows, &f.late, "after a refused run");
}

mod failures;
mod rounds;
