//! Runs that fail part way — a full disk while checkpointing, a worker
//! that panics, a full disk while spilling window state — stop with a
//! clear error instead of hanging, and a rerun resumes exactly once.

use super::{
    assert_matches_reference, fixture, run_args, run_args_with_window, run_into_failpoint,
};
use crate::support::{assert_success, sorted_rows, weir};

#[test]
fn a_full_disk_stops_the_run_clearly_and_a_rerun_resumes() {
    let f = fixture(1_500_000);
    let data = f.tmp.path().join("data-full");
    let out = f.tmp.path().join("out-full");
    let args = run_args(&f.input, data.to_str().unwrap(), out.to_str().unwrap(), 2);
    let failed = run_into_failpoint(&args, weir::checkpoint::store::DISK_FULL_FAILPOINT);
    assert!(!failed.status.success(), "the run ignored a full disk");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("No space left on device"),
        "unclear error: {stderr}"
    );
    // Space is back: the same command resumes and the output is exact.
    assert_success(
        &weir().args(&args).output().unwrap(),
        "rerun after the disk was freed",
    );
    assert_matches_reference(&out, &f.windows, &f.late, "after a full disk");
}

#[test]
fn a_worker_that_panics_fails_the_run_instead_of_hanging_it_and_a_rerun_resumes() {
    // The last of two workers panics after its first step (failpoint): the
    // other must not wait for it forever; the run fails naming the panic.
    let f = fixture(1_500_000);
    let data = f.tmp.path().join("data-panic");
    let out = f.tmp.path().join("out-panic");
    let args = run_args(&f.input, data.to_str().unwrap(), out.to_str().unwrap(), 2);
    let failed = run_into_failpoint(&args, "worker-panic");
    assert!(
        !failed.status.success(),
        "a panicking worker went unnoticed"
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("worker 1 panicked: failpoint worker-panic reached"),
        "unclear error: {stderr}"
    );
    assert_success(&weir().args(&args).output().unwrap(), "rerun");
    assert_matches_reference(&out, &f.windows, &f.late, "after a worker panicked");
}

#[test]
fn a_full_disk_while_spilling_stops_the_run_clearly_and_a_rerun_resumes() {
    // A sliding window under --memory-budget whose spill write fails with
    // ENOSPC: the run stops naming the file, nothing committed is lost, and
    // the rerun's output equals a run without a budget.
    let f = fixture(1_500_000);
    let window = ["--window", "sliding:60s/250ms"];
    let (ref_data, ref_out) = (
        f.tmp.path().join("ref-w-data"),
        f.tmp.path().join("ref-w-out"),
    );
    let mut reference = run_args_with_window(
        &f.input,
        ref_data.to_str().unwrap(),
        ref_out.to_str().unwrap(),
        2,
        &window,
    );
    reference.push("--no-checkpoint".to_owned());
    assert_success(&weir().args(&reference).output().unwrap(), "reference run");
    let (data, out) = (
        f.tmp.path().join("data-spill"),
        f.tmp.path().join("out-spill"),
    );
    let mut query = window.to_vec();
    query.extend(["--memory-budget", "2MiB"]);
    let args = run_args_with_window(
        &f.input,
        data.to_str().unwrap(),
        out.to_str().unwrap(),
        2,
        &query,
    );
    let failed = run_into_failpoint(&args, weir_dataflows::pane_store::SPILL_DISK_FULL_FAILPOINT);
    assert!(!failed.status.success(), "the run ignored a full disk");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("No space left on device")
            && stderr.contains("window state spill file")
            && stderr.contains("rerun"),
        "unclear error: {stderr}"
    );
    // What the failed run left is listed (and deleted by the next run).
    let inspect = weir()
        .args(["inspect", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&inspect.stdout);
    assert!(
        listing.contains("window state spill files") && listing.contains("worker-0:"),
        "{listing}"
    );
    assert_success(
        &weir().args(&args).output().unwrap(),
        "rerun after the disk was freed",
    );
    assert_matches_reference(
        &out,
        &sorted_rows(&ref_out, "windows"),
        &sorted_rows(&ref_out, "late"),
        "after a full disk while spilling",
    );
}
