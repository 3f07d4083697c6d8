//! The cold tier (`--cold-store file:///PATH`): committed checkpoints are
//! copied there, commit record last; a run whose local checkpoints are
//! lost (after `kill -9`) or damaged restores from it, loudly, and its
//! output still equals a failure-free run's.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use weir::checkpoint::store::read_commits;
use weir::checkpoint::tier::{cold_contents, open_cold_store, COLD_RECORDS_KEPT};

use crate::kill_clock::{kill_group, sleep_while_running, timed, KillClock};
use crate::sources::PROGRESS_DEADLINE;
use crate::support::{assert_success, gen_input, run_weir, sorted_rows, weir};

/// Kill rounds, each followed by the loss of the local checkpoints.
const KILLS: u64 = 4;

fn run_args(input: &Path, data: &Path, out: &Path, cold: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "--input".into(),
        input.display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--window".into(),
        "sliding:20s/5s".into(),
        "--lateness".into(),
        "2s".into(),
        "--until-end".into(),
        "--checkpoint-interval".into(),
        "20ms".into(),
    ];
    match cold {
        Some(cold) => args.extend(["--cold-store".into(), format!("file://{}", cold.display())]),
        None => args.push("--no-checkpoint".into()),
    }
    args
}

fn weir_args(args: &[String]) -> std::process::Output {
    run_weir(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn lost_and_damaged_local_checkpoints_restore_from_the_cold_tier() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_input(&input, 1_000_000);
    let reference = tmp.path().join("ref-out");
    let (done, took) = timed(|| {
        weir_args(&run_args(
            &input,
            &tmp.path().join("ref-data"),
            &reference,
            None,
        ))
    });
    assert_success(&done, "failure-free run");
    let expected = sorted_rows(&reference, "windows");
    let (data, out, cold) = (
        tmp.path().join("data"),
        tmp.path().join("out"),
        tmp.path().join("cold"),
    );
    let args = run_args(&input, &data, &out, Some(&cold));
    let checkpoints = data.join("checkpoints");

    // Killed runs, each once the cold tier holds a checkpoint (or it ended
    // first), then losing its local checkpoints: the next restores from
    // what reached the cold tier.
    let mut clock = KillClock::new(3, took);
    let mut brought_back = 0;
    let cold_commits = cold.join("commits");
    let in_cold = || std::fs::read_dir(&cold_commits).is_ok_and(|mut d| d.next().is_some());
    for _ in 0..KILLS {
        let mut child = weir()
            .args(&args)
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while !in_cold() && child.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < PROGRESS_DEADLINE,
                "no checkpoint reached the cold tier"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if sleep_while_running(&mut child, clock.next_delay() / 4) {
            kill_group(child.id());
        }
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        brought_back += usize::from(stderr.contains("brought back from the cold tier"));
        if output.status.success() {
            break;
        }
        let _ = std::fs::remove_dir_all(&checkpoints);
    }
    let done = weir_args(&args);
    assert_success(&done, "the run after the kills");
    assert_eq!(
        sorted_rows(&out, "windows"),
        expected,
        "after losing checkpoints"
    );

    // The cold tier holds the newest checkpoint (the sidecar waits for its
    // copy before it exits) and at most the newest few.
    let blob = open_cold_store(&format!("file://{}", cold.display())).unwrap();
    let contents = cold_contents(blob.as_ref()).unwrap();
    let local = read_commits(&checkpoints).unwrap();
    let newest = local.last().unwrap();
    assert_eq!(contents.records.last(), Some(&newest.checkpoint_id));
    assert!(contents.records.len() <= COLD_RECORDS_KEPT);

    // The local checkpoints gone after a complete run: brought back.
    std::fs::remove_dir_all(&checkpoints).unwrap();
    let rerun = weir_args(&args);
    assert_success(&rerun, "rerun with no local checkpoints");
    let stderr = String::from_utf8_lossy(&rerun.stderr);
    assert!(
        stderr.contains("brought back from the cold tier"),
        "{stderr}"
    );
    assert_eq!(sorted_rows(&out, "windows"), expected);
    assert!(
        brought_back > 0,
        "no killed run restored from the cold tier"
    );

    // A damaged local file of the newest checkpoint: read from the cold tier.
    let newest = read_commits(&checkpoints).unwrap().pop().unwrap();
    {
        let file = newest
            .files
            .first()
            .expect("the newest checkpoint has data files");
        let path = checkpoints.join(&file.name);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let rerun = weir_args(&args);
        assert_success(&rerun, "rerun with a damaged local file");
        let stderr = String::from_utf8_lossy(&rerun.stderr);
        assert!(stderr.contains("restored from the cold tier"), "{stderr}");
        assert_eq!(sorted_rows(&out, "windows"), expected);
    }
}

#[test]
fn cold_store_urls_it_cannot_reach_are_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_input(&input, 1_000);
    for (url, reason) in [
        ("s3://bucket/job", "s3:// is not supported yet"),
        ("file://relative/path", "must be absolute"),
        ("/no/scheme", "expected file:///PATH"),
    ] {
        let mut args = run_args(
            &input,
            &tmp.path().join("data"),
            &tmp.path().join("out"),
            None,
        );
        args.pop();
        args.extend(["--cold-store".into(), url.into()]);
        let output = weir_args(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{url}");
        assert!(stderr.contains(reason), "{url}: {stderr}");
    }
}
