//! A damaged cold tier: the files of its newest checkpoint flipped (or
//! deleted) in the store. A run that lost its local checkpoints, and a
//! standby taking over, each fall back to an older cold checkpoint, saying
//! which one was unusable and why, and their output is still exactly once.

use std::collections::HashSet;
use std::path::Path;

use weir::checkpoint::format::CommitRecord;
use weir::checkpoint::store::read_commits;
use weir::checkpoint::tier::epoch::{epoch_prefix, usable_records};
use weir::checkpoint::tier::{open_cold_store, Blob};

use crate::cold_tier::{assert_failover_rows, failover_setup, run_args, standby_args, weir_env};
use crate::support::{assert_success, checkpoint_every_slide, sorted_rows};

/// Flips a byte in the middle of the object `key`.
fn flip(blob: &dyn Blob, key: &str) {
    let mut bytes = blob.get(key).unwrap().expect("the copy of a kept file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    blob.put(key, &bytes).unwrap();
}

/// Deletes the object `key`.
fn delete(blob: &dyn Blob, key: &str) {
    assert!(blob.get(key).unwrap().is_some(), "{key} is not there");
    blob.delete(key).unwrap();
}

/// Runs the query to its end with the cold tier at `url`, then damages
/// each file of the newest cold checkpoint that the oldest one kept does
/// not also name. Returns the primary's commit records and the id of the
/// damaged checkpoint.
fn run_then_damage_the_newest(
    (input, data, out): (&Path, &Path, &Path),
    url: &str,
    damage: fn(&dyn Blob, &str),
) -> (Vec<CommitRecord>, u64) {
    let mut args = run_args(input, data, out, Some(url));
    checkpoint_every_slide(&mut args);
    // Checkpoints all through the run: none is cut while the run's own
    // ingest goes on (decision 72).
    args.push("--ingest-first".into());
    let done = weir_env(&args, &[]);
    assert_success(&done, "the primary");
    let blob = open_cold_store(url).unwrap();
    let usable = usable_records(blob.as_ref()).unwrap();
    assert!(
        usable.len() >= 2,
        "too few cold checkpoints to fall back: {usable:?}"
    );
    let local = read_commits(&data.join("checkpoints")).unwrap();
    let files_of = |id: u64| -> Vec<String> {
        let record = local
            .iter()
            .find(|r| r.checkpoint_id == id)
            .expect("a local copy");
        record.files.iter().map(|f| f.name.clone()).collect()
    };
    let (epoch, newest) = usable[0];
    let oldest_files: HashSet<String> = files_of(usable[usable.len() - 1].1).into_iter().collect();
    let own: Vec<String> = files_of(newest)
        .into_iter()
        .filter(|name| !oldest_files.contains(name))
        .collect();
    assert!(
        !own.is_empty(),
        "checkpoint {newest} names no file of its own"
    );
    for name in &own {
        damage(
            blob.as_ref(),
            &format!("{}/checkpoints/{name}", epoch_prefix(epoch)),
        );
    }
    (local, newest)
}

/// Checks that `done` named checkpoint `damaged` unusable and then used
/// an older one, whose id follows `used` in its output; returns that id.
fn fell_back(done: &std::process::Output, damaged: u64, used: &str) -> u64 {
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(
        stderr.contains(&format!("WARNING: cold checkpoint {damaged} unusable: ")),
        "{stderr}"
    );
    let id = stderr
        .split(used)
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|id| id.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {used:?} in: {stderr}"));
    assert!(id < damaged, "{stderr}");
    id
}

#[test]
fn a_run_that_lost_its_checkpoints_falls_back_past_a_damaged_cold_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, reference, _, url) = failover_setup(tmp.path());
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    let (_, damaged) = run_then_damage_the_newest((&input, &data, &out), &url, flip);

    std::fs::remove_dir_all(data.join("checkpoints")).unwrap();
    let rerun = weir_env(&run_args(&input, &data, &out, Some(&url)), &[]);
    assert_success(&rerun, "the rerun");
    fell_back(&rerun, damaged, "no local checkpoints: checkpoint ");
    assert_eq!(
        sorted_rows(&out, "windows"),
        sorted_rows(&reference, "windows")
    );
    assert_eq!(sorted_rows(&out, "late"), sorted_rows(&reference, "late"));
}

#[test]
fn a_standby_falls_back_past_a_cold_checkpoint_with_missing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, reference, _, url) = failover_setup(tmp.path());
    let primary_out = tmp.path().join("primary-out");
    let primary_data = tmp.path().join("primary-data");
    let (primary, damaged) =
        run_then_damage_the_newest((&input, &primary_data, &primary_out), &url, delete);

    let standby_out = tmp.path().join("standby-out");
    let done = weir_env(
        &standby_args(&tmp.path().join("standby-data"), &standby_out, &url),
        &[],
    );
    assert_success(&done, "the standby");
    let taken = fell_back(&done, damaged, "standby: took over checkpoint ");
    let record = primary
        .iter()
        .find(|r| r.checkpoint_id == taken)
        .expect("the checkpoint taken over is one the primary committed");
    assert_failover_rows((&primary_out, record), &standby_out, &reference);
}
