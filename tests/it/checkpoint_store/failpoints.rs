//! Crashes at every failpoint of the checkpoint store.
//!
//! Each case prepares a store in this process, then re-runs this test
//! binary (`std::env::current_exe()`) filtered to [`failpoint_child`] with
//! `WEIR_FAILPOINT=<point>`; the child writes one more checkpoint and aborts
//! at the point. Afterwards `newest_usable` must return the last complete
//! checkpoint, and the store must reopen, clean up and go on. The child
//! test does nothing unless [`CHILD_DIR_ENV`] is set.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use weir::checkpoint::format::{DataFileId, TEMP_SUFFIX};
use weir::checkpoint::store::{read_commits, CheckpointStore, FAILPOINTS, FAILPOINT_ENV};

use super::{assert_restores, names, store_with, write_checkpoint};

/// Set (to a store directory) only in the child process.
const CHILD_DIR_ENV: &str = "WEIR_TEST_CHECKPOINT_CHILD_DIR";
/// The child test's full name.
const CHILD_TEST: &str = "checkpoint_store::failpoints::failpoint_child";

/// In a child process only: writes and commits the store's next
/// checkpoint (compacting when its id is a multiple of 3).
#[test]
fn failpoint_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let mut store = CheckpointStore::open(Path::new(&dir)).unwrap();
    let next = store.commits().last().map_or(1, |c| c.checkpoint_id + 1);
    write_checkpoint(&mut store, next);
}

fn run_child(dir: &Path, failpoint: Option<&str>) -> Output {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir);
    match failpoint {
        Some(point) => cmd.env(FAILPOINT_ENV, point),
        None => cmd.env_remove(FAILPOINT_ENV),
    };
    cmd.output().unwrap()
}

/// The data files in `dir` that garbage collection would delete: of
/// checkpoints up to the newest committed one, referenced by neither of the
/// last two commits.
fn garbage(dir: &Path) -> Vec<String> {
    let commits = read_commits(dir).unwrap();
    let newest = commits.last().map_or(0, |c| c.checkpoint_id);
    let retained: Vec<&str> = commits
        .iter()
        .rev()
        .take(2)
        .flat_map(|c| c.files.iter().map(|f| f.name.as_str()))
        .collect();
    names(dir)
        .into_iter()
        .filter(|n| {
            DataFileId::parse(n).is_some_and(|id| id.checkpoint_id <= newest)
                && !retained.contains(&n.as_str())
        })
        .collect()
}

/// Crashes while writing checkpoint `prepared + 1` (a compacting one when
/// `prepared + 1` is a multiple of 3) at each failpoint. `commit_collects`:
/// whether that checkpoint's commit makes files garbage.
fn crash_at_every_failpoint(prepared: u64, commit_collects: bool) {
    let crashing = prepared + 1;
    for point in FAILPOINTS {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        store_with(dir, prepared);
        let out = run_child(dir, Some(point));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(6),
            "{point}: {:?}\n{stderr}",
            out.status
        );
        assert!(
            stderr.contains(&format!("failpoint `{point}` reached")),
            "{stderr}"
        );

        let durable = if point == "after-commit" {
            crashing
        } else {
            prepared
        };
        assert_restores(dir, durable);
        let left = names(dir);
        let temp = left.iter().any(|n| n.ends_with(TEMP_SUFFIX));
        let temp_expected = matches!(point, "after-delta-write" | "after-delta-fsync");
        assert_eq!(temp, temp_expected, "{point}: {left:?}");
        let uncollected = !garbage(dir).is_empty();
        assert_eq!(
            uncollected,
            point == "after-commit" && commit_collects,
            "{point}: {left:?}"
        );

        // Reopening removes temp files; what the crash kept garbage
        // collection from deleting stays until the next commit (the open
        // does not know the `--keep-local` its caller sets after it).
        let mut store = CheckpointStore::open(dir).unwrap();
        assert_eq!(store.commits().len() as u64, durable, "{point}");
        assert_eq!(!garbage(dir).is_empty(), uncollected, "{point}");
        assert!(
            !names(dir).iter().any(|n| n.ends_with(TEMP_SUFFIX)),
            "{point}"
        );
        // And the store goes on (rewriting any pending file of the crash),
        // collecting at its first commit; pending files stay.
        write_checkpoint(&mut store, durable + 1);
        assert!(garbage(dir).is_empty(), "{point}: {:?}", names(dir));
        write_checkpoint(&mut store, durable + 2);
        drop(store);
        assert_restores(dir, durable + 2);
    }
}

#[test]
fn crash_while_writing_deltas_and_committing() {
    // Checkpoint 4 appends two deltas to the chain 1-2 compacted into
    // base-3; its commit makes the files of checkpoints 1 and 2 garbage.
    crash_at_every_failpoint(3, true);
}

#[test]
fn crash_while_compacting() {
    // Checkpoint 3 starts with a compaction into base-3: the first write
    // that reaches a delta failpoint is the base file.
    crash_at_every_failpoint(2, false);
}

#[test]
fn the_child_without_a_failpoint_completes() {
    let tmp = tempfile::tempdir().unwrap();
    store_with(tmp.path(), 2);
    let out = run_child(tmp.path(), None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_restores(tmp.path(), 3);
}
