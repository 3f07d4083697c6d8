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

use weir::gen::SplitMix64;

use crate::support::{assert_success, run_weir, sorted_rows, weir};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn gen_input(dir: &Path, events: u64) {
    let out = run_weir(&[
        "gen",
        "zipf",
        "--events",
        &events.to_string(),
        "--partitions",
        "4",
        "--keys",
        "3000",
        "--rate",
        "20000",
        "--late-fraction",
        "0.002",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_success(&out, "weir gen");
}

fn run_args(input: &str, data: &str, out: &str, workers: u64) -> Vec<String> {
    [
        "run",
        "--input",
        input,
        "--data-dir",
        data,
        "--out",
        out,
        "--window",
        "sliding:20s/5s",
        "--lateness",
        "2s",
        "--until-end",
        "--workers",
        &workers.to_string(),
        "--checkpoint-interval",
        "20ms",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Runs the job in `dirs` until it completes, killing each attempt (engine
/// and sidecar: the whole process group) after a random delay, with a
/// random worker count per attempt. Returns the number of kills.
fn crash_until_done(input: &str, data: &str, out: &str, rng: &mut SplitMix64) -> u64 {
    for kills in 0.. {
        assert!(kills < 200, "the run never completed");
        let workers = 1 + rng.below(3);
        let child = weir()
            .args(run_args(input, data, out, workers))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting weir");
        std::thread::sleep(Duration::from_millis(20 + rng.below(900)));
        let pid = child.id();
        let _ = Command::new("kill")
            .args(["-9", "--", &format!("-{pid}")])
            .status();
        let output = child.wait_with_output().unwrap();
        if output.status.success() {
            return kills;
        }
        // Killed: SIGKILL is the only acceptable way to fail.
        assert_eq!(
            output.status.signal(),
            Some(9),
            "attempt {kills} failed by itself:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    unreachable!("the loop returns or panics")
}

#[test]
fn kill_minus_nine_of_engine_and_sidecar_gives_exactly_once_output() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_input(&input, 1_500_000);
    let input = input.to_str().unwrap();

    let reference_out = tmp.path().join("ref-out");
    let reference_data = tmp.path().join("ref-data");
    let mut reference_args = run_args(
        input,
        reference_data.to_str().unwrap(),
        reference_out.to_str().unwrap(),
        2,
    );
    reference_args.push("--no-checkpoint".to_owned());
    let reference = weir().args(&reference_args).output().unwrap();
    assert_success(&reference, "failure-free run");
    let expected_windows = sorted_rows(&reference_out, "windows");
    let expected_late = sorted_rows(&reference_out, "late");
    assert!(
        expected_windows.len() > 10_000,
        "too little output: {}",
        expected_windows.len()
    );
    assert!(
        !expected_late.is_empty(),
        "the input should have late events"
    );

    let target_kills = env_or("WEIR_CRASH_KILLS", 20);
    let seed = env_or("WEIR_CRASH_SEED", 7);
    let mut rng = SplitMix64::new(seed);
    let (mut kills, mut rounds) = (0, 0);
    while kills < target_kills {
        // Each round: a fresh data dir and output, crashed until it completes.
        rounds += 1;
        let data = tmp.path().join(format!("data-{rounds}"));
        let out = tmp.path().join(format!("out-{rounds}"));
        let (data, out) = (data.to_str().unwrap(), out.to_str().unwrap());
        kills += crash_until_done(input, data, out, &mut rng);
        // Rerunning a completed run, on another worker count, changes nothing.
        let rerun = weir().args(run_args(input, data, out, 3)).output().unwrap();
        assert_success(&rerun, "rerun after completion");
        let out = Path::new(out);
        assert_eq!(
            sorted_rows(out, "windows"),
            expected_windows,
            "round {rounds}: window rows differ (seed {seed})"
        );
        assert_eq!(
            sorted_rows(out, "late"),
            expected_late,
            "round {rounds}: late rows differ (seed {seed})"
        );
    }
    eprintln!("{kills} kills over {rounds} rounds (seed {seed})");
}
