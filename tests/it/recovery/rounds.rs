//! Rounds of `kill -9` for each window shape and emit mode: every round is
//! crashed until it completes and compared with a failure-free run.

use super::{
    assert_kills_landed, assert_matches_reference, crash_until_done, env_or, fixture,
    run_args_with_window, Fixture,
};
use crate::kill_clock::{timed, KillClock};
use crate::support::{assert_success, sorted_rows, weir};

/// Kills runs of `window` until `target` kills happened (each round ends
/// with a completed run; at most [`KillClock::max_rounds`] rounds) and
/// compares every round with a failure-free run.
fn crash_rounds(f: &Fixture, query: &[&str], target: u64, seed: u64) {
    // Each test has its own directory: the tag only names the runs, and is
    // short enough for the sidecar's socket path (at most 107 bytes).
    let mut tag = query.join("-").replace([':', '/', ' ', ','], "-");
    tag.truncate(24);
    let reference_out = f.tmp.path().join(format!("{tag}-ref-out"));
    let reference_data = f.tmp.path().join(format!("{tag}-ref-data"));
    let mut args = run_args_with_window(
        &f.input,
        reference_data.to_str().unwrap(),
        reference_out.to_str().unwrap(),
        2,
        query,
    );
    args.push("--no-checkpoint".to_owned());
    let (output, reference) = timed(|| weir().args(&args).output().unwrap());
    assert_success(&output, "failure-free run");
    let (windows, late) = (
        sorted_rows(&reference_out, "windows"),
        sorted_rows(&reference_out, "late"),
    );
    let mut clock = KillClock::new(seed, reference);
    let (mut kills, mut rounds) = (0, 0);
    while kills < target && rounds < KillClock::max_rounds(target) {
        rounds += 1;
        let data = f.tmp.path().join(format!("{tag}-data-{rounds}"));
        let out = f.tmp.path().join(format!("{tag}-out-{rounds}"));
        kills += crash_until_done(
            &f.input,
            data.to_str().unwrap(),
            out.to_str().unwrap(),
            query,
            &mut clock,
        );
        assert_matches_reference(&out, &windows, &late, &format!("{query:?} round {rounds}"));
    }
    assert_kills_landed(kills, rounds);
}

#[test]
fn tumbling_windows_recover_exactly_once_from_resume_points_alone() {
    // Tumbling windows persist no partials (a cut closes every window below
    // it): a restore is resume offsets and output lengths only.
    let f = fixture(1_500_000);
    let target = env_or("WEIR_CRASH_KILLS", 20) / 2;
    crash_rounds(
        &f,
        &["--window", "tumbling:10s"],
        target,
        env_or("WEIR_CRASH_SEED", 17),
    );
}

#[test]
fn session_windows_recover_exactly_once_from_their_open_sessions() {
    // Sessions persist the changes to the open sessions; a restore feeds
    // them back in as partials.
    let f = fixture(1_500_000);
    let target = env_or("WEIR_CRASH_KILLS", 20) / 2;
    crash_rounds(
        &f,
        &["--window", "session:3s"],
        target,
        env_or("WEIR_CRASH_SEED", 19),
    );
}

#[test]
fn sliding_windows_emitting_changes_recover_exactly_once() {
    // The window before a cut is restored too: the next one's changes are
    // computed against it.
    let f = fixture(1_500_000);
    let target = env_or("WEIR_CRASH_KILLS", 20) / 2;
    crash_rounds(
        &f,
        &["--window", "sliding:20s/5s", "--emit", "changes"],
        target,
        env_or("WEIR_CRASH_SEED", 23),
    );
}

#[test]
fn tumbling_windows_emitting_changes_recover_exactly_once() {
    // Short windows, so that the Zipf tail's keys come and go (count-0
    // rows) and a restore without the window before the cut would differ.
    let f = fixture(1_500_000);
    let target = env_or("WEIR_CRASH_KILLS", 20) / 2;
    crash_rounds(
        &f,
        &["--window", "tumbling:1s", "--emit", "changes"],
        target,
        env_or("WEIR_CRASH_SEED", 29),
    );
}

/// `kill -9` rounds of a sliding window with sketch columns `args` and
/// `--emit changes`: pane partials with sketches are persisted and restored
/// (their bytes in the checkpoint), and the window before the cut is
/// rebuilt from them; every row must come out as in a run without a crash.
fn sketch_rounds(args: &[&str], seed: u64) {
    let f = fixture(1_500_000);
    let target = env_or("WEIR_CRASH_KILLS", 20) / 2;
    let mut all = vec!["--window", "sliding:20s/5s", "--emit", "changes"];
    all.extend_from_slice(args);
    crash_rounds(&f, &all, target, env_or("WEIR_CRASH_SEED", seed));
}

#[test]
fn windows_with_top_values_recover_exactly_once() {
    // A pane keeps its top values once all its partials are in, restored
    // or replayed.
    sketch_rounds(&["--aggregates", "count,distinct,topk", "--topk", "3"], 37);
}

#[test]
fn sliding_windows_with_distinct_counts_recover_exactly_once() {
    sketch_rounds(&["--aggregates", "count,sum,min,max,distinct"], 31);
}

#[test]
fn sliding_windows_under_a_memory_budget_recover_exactly_once() {
    // 3 MiB over 1 to 3 workers: panes move to disk. A run without the
    // budget writes the same rows; a restarted run empties its spill
    // directory and rebuilds the windows from the checkpoint.
    let f = fixture(1_500_000);
    let window = ["--window", "sliding:2m/100ms"];
    let budget = ["--window", "sliding:2m/100ms", "--memory-budget", "3MiB"];
    let mut rows = Vec::new();
    for (name, query) in [("in-memory", &window[..]), ("budget", &budget[..])] {
        let data = f.tmp.path().join(format!("{name}-data"));
        let out = f.tmp.path().join(format!("{name}-out"));
        let mut args = run_args_with_window(
            &f.input,
            data.to_str().unwrap(),
            out.to_str().unwrap(),
            2,
            query,
        );
        args.push("--no-checkpoint".to_owned());
        let output = weir().args(&args).output().unwrap();
        assert_success(&output, name);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            stdout.contains("files written"),
            name == "budget",
            "{name}: {stdout}"
        );
        rows.push((sorted_rows(&out, "windows"), sorted_rows(&out, "late")));
    }
    assert!(rows[0] == rows[1], "the budget changed the output");
    // Half the kills of the other rounds: every round rewrites 1,200 panes
    // on disk (85 s in a debug build for 10 kills).
    let target = env_or("WEIR_CRASH_KILLS", 20) / 4;
    crash_rounds(&f, &budget, target, env_or("WEIR_CRASH_SEED", 41));
}
