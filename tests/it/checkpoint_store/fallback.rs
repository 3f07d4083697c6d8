//! Compaction after a restore fell back from the newest commit: the new
//! base merges the checkpoint the run builds on, not the newest one.

use weir::checkpoint::store::{load_checkpoint, CheckpointStore};

use super::{all, expected_state, part_updates, record};

#[test]
fn compaction_onto_an_older_base_merges_that_base_only() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = CheckpointStore::open(dir).unwrap();
    let mut files = Vec::new();
    for id in 1..=2 {
        let mut updates = part_updates(id, 0);
        updates.extend(part_updates(id, 1));
        files.push(store.write_delta(id, 0, &mut updates).unwrap());
        store.commit(record(id, files.clone())).unwrap();
    }
    assert_ne!(expected_state(1), expected_state(2));
    // The run restored checkpoint 1 (say 2's files did not verify).
    let base = store.commits()[0].clone();
    let compacted = store.compact_onto(3, &base, 0, false).unwrap();
    let state = load_checkpoint(dir, &record(3, compacted), all, 0).unwrap();
    assert_eq!(state, expected_state(1));
}
