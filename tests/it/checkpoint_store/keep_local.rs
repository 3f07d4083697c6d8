//! `--keep-local N`: garbage collection keeps the files of the newest N
//! commits, and what it keeps stays restorable.

use weir::checkpoint::store::{newest_usable, CheckpointStore, RETAINED_CHECKPOINTS};

use super::{names, part_updates, record, FP};

/// Commits checkpoints 1..=`last`, each naming only its own delta (as
/// after a compaction per checkpoint), into a store keeping `keep`; returns
/// the delta files left on disk.
fn deltas_left(keep: usize, last: u64) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = CheckpointStore::open(dir).unwrap();
    store.keep_local(keep);
    for id in 1..=last {
        let delta = store.write_delta(id, 0, &mut part_updates(id, 0)).unwrap();
        store.commit(record(id, vec![delta])).unwrap();
    }
    drop(store);
    // Each kept checkpoint restores on its own once the newer ones are gone.
    let mut kept: Vec<String> = names(dir)
        .into_iter()
        .filter(|n| n.starts_with("delta-"))
        .collect();
    kept.sort();
    for (i, name) in kept.iter().enumerate().rev() {
        let (r, _) = newest_usable(dir, FP).unwrap().unwrap();
        assert_eq!(r.checkpoint_id, last - (kept.len() - 1 - i) as u64);
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    kept
}

#[test]
fn the_newest_n_commits_keep_their_files() {
    let delta = |id: u64| format!("delta-{id:020}-000000.bin");
    assert_eq!(RETAINED_CHECKPOINTS, 2);
    assert_eq!(deltas_left(RETAINED_CHECKPOINTS, 6), [delta(5), delta(6)]);
    assert_eq!(deltas_left(4, 6), [delta(3), delta(4), delta(5), delta(6)]);
    // Fewer commits than kept: nothing goes.
    assert_eq!(deltas_left(5, 3), [delta(1), delta(2), delta(3)]);
}

#[test]
#[should_panic(expected = "keep_local 1 out of range")]
fn fewer_than_two_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    CheckpointStore::open(tmp.path()).unwrap().keep_local(1);
}

#[test]
fn opening_the_store_keeps_what_a_larger_keep_local_kept() {
    // A run with `--keep-local 4` committed 6 checkpoints; the next run's
    // restore may fall back to checkpoint 3 before its sidecar opens the
    // store and sets the count again: the open must not prune to 2.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = CheckpointStore::open(dir).unwrap();
    store.keep_local(4);
    for id in 1..=6 {
        let delta = store.write_delta(id, 0, &mut part_updates(id, 0)).unwrap();
        store.commit(record(id, vec![delta])).unwrap();
    }
    drop(store);
    let deltas = || {
        names(dir)
            .into_iter()
            .filter(|n| n.starts_with("delta-"))
            .count()
    };
    assert_eq!(deltas(), 4);
    let mut store = CheckpointStore::open(dir).unwrap();
    assert_eq!(deltas(), 4, "the open pruned the older checkpoints");
    // The count set after the open applies from the next commit.
    store.keep_local(3);
    let delta = store.write_delta(7, 0, &mut part_updates(7, 0)).unwrap();
    store.commit(record(7, vec![delta])).unwrap();
    assert_eq!(deltas(), 3);
}
