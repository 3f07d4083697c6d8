//! Compaction one key group at a time (`compact_files`), in the background
//! (`start_compaction` / `finished_compaction`): the base file is byte for
//! byte the file of a plain whole-state merge, a group over the budget is
//! refused, and garbage collection leaves a running compaction's files
//! alone.

use proptest::prelude::*;
use weir::checkpoint::format::{
    consolidate, consolidate_as_of_cut, encode_data_file, DataFileId, PersistedUpdate,
};
use weir::checkpoint::store::{
    compact_files, load_checkpoint, read_commits, CheckpointStore, StoreError,
    DEFAULT_COMPACTION_BUDGET_BYTES,
};

use super::{all, record, upd, write_checkpoint};

/// The plain merge: every update of every file in memory, trimmed to the
/// horizon, consolidated, encoded in one piece.
fn whole_state_base(
    dir: &std::path::Path,
    id: u64,
    horizon: u64,
    as_of_cut: bool,
) -> (Vec<u8>, u32) {
    let last = read_commits(dir).unwrap().pop().unwrap();
    let mut state = load_checkpoint(dir, &last, all, horizon).unwrap();
    if as_of_cut {
        consolidate_as_of_cut(&mut state);
    }
    let (bytes, meta) = encode_data_file(DataFileId::base(id), &state);
    (bytes, meta.crc32c)
}

/// Commits `parts` as checkpoints 1, 2, ... (each part one delta file of
/// its own checkpoint, on top of the previous commit's files).
fn commit_parts(dir: &std::path::Path, parts: &[Vec<PersistedUpdate>]) {
    let mut store = CheckpointStore::open(dir).unwrap();
    let mut files = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let id = i as u64 + 1;
        let mut updates = part.clone();
        files.push(store.write_delta(id, 0, &mut updates).unwrap());
        store.commit(record(id, files.clone())).unwrap();
    }
}

fn arb_update() -> impl Strategy<Value = PersistedUpdate> {
    (
        prop_oneof![Just(0u16), Just(7), Just(255), 0u16..256],
        "[a-c]{0,3}",
        0u64..40,
        -2i64..3,
    )
        .prop_map(|(g, data, time, diff)| upd(g, &data, time, diff))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn the_streamed_base_file_is_the_whole_state_merge(
        parts in prop::collection::vec(prop::collection::vec(arb_update(), 0..60), 1..5),
        horizon in 0u64..45,
        as_of_cut in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        commit_parts(dir.path(), &parts);
        let out_id = parts.len() as u64 + 1;
        let (want, want_crc) = whole_state_base(dir.path(), out_id, horizon, as_of_cut);
        let last = read_commits(dir.path()).unwrap().pop().unwrap();
        let meta = compact_files(
            dir.path(),
            &last,
            DataFileId::base(out_id),
            (horizon, as_of_cut),
            DEFAULT_COMPACTION_BUDGET_BYTES,
        )
        .unwrap();
        let got = std::fs::read(dir.path().join(&meta.name)).unwrap();
        prop_assert_eq!(meta.size_bytes, got.len() as u64);
        prop_assert_eq!(meta.crc32c, want_crc);
        prop_assert!(got == want, "the streamed file differs from the plain merge");
        // And it loads as the state it stands for.
        let mut expected: Vec<PersistedUpdate> = parts.concat();
        expected.retain(|u| u.time >= horizon);
        if as_of_cut {
            consolidate_as_of_cut(&mut expected);
        } else {
            consolidate(&mut expected);
        }
        let mut base_record = record(out_id, vec![meta]);
        base_record.checkpoint_id = out_id;
        prop_assert_eq!(load_checkpoint(dir.path(), &base_record, all, 0).unwrap(), expected);
    }
}

#[test]
fn a_key_group_over_the_budget_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let parts = vec![
        (0..100)
            .map(|i| upd(3, &format!("k{i:03}"), 1, 1))
            .collect(),
        vec![upd(9, "small", 1, 1)],
    ];
    commit_parts(dir.path(), &parts);
    let last = read_commits(dir.path()).unwrap().pop().unwrap();
    let err = compact_files(dir.path(), &last, DataFileId::base(3), (0, false), 2_000)
        .expect_err("group 3 needs more than 2,000 bytes");
    match &err {
        StoreError::CompactionOverBudget {
            key_group,
            needed_bytes,
            budget_bytes,
            ..
        } => {
            assert_eq!(*key_group, 3);
            assert!(*needed_bytes > 2_000);
            assert_eq!(*budget_bytes, 2_000);
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(err.to_string().contains("--memory-budget"), "{err}");
    // A budget that fits one group at a time suffices, though the whole
    // state is larger.
    let fits = compact_files(dir.path(), &last, DataFileId::base(3), (0, false), 16_000).unwrap();
    assert!(fits.size_bytes > 0);
}

#[test]
fn a_background_compaction_enters_the_next_record_and_survives_garbage_collection() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = CheckpointStore::open(dir.path()).unwrap();
    // Checkpoints 1 and 2 (write_checkpoint compacts only at multiples of 3).
    write_checkpoint(&mut store, 1);
    let second = write_checkpoint(&mut store, 2);
    assert!(store.finished_compaction().is_none(), "nothing started");
    assert!(store.start_compaction(&second, (0, false), DEFAULT_COMPACTION_BUDGET_BYTES));
    assert!(
        !store.start_compaction(&second, (0, false), DEFAULT_COMPACTION_BUDGET_BYTES),
        "one at a time"
    );
    // Commits and their garbage collection go on while it runs.
    let mut files = second.files.clone();
    for part in 0..2 {
        let mut updates = vec![upd(part as u16, "later", 30, 1)];
        files.push(store.write_delta(3, part, &mut updates).unwrap());
    }
    store.commit(record(3, files.clone())).unwrap();
    let done = loop {
        if let Some(done) = store.finished_compaction() {
            break done.unwrap();
        }
        std::thread::yield_now();
    };
    assert_eq!(done.compacted_id, 2);
    assert_eq!(done.base.name, "base-00000000000000000002.bin");
    assert_eq!(done.replaces.len(), second.files.len());
    let next = done.apply(&files).expect("record 3 builds on record 2");
    assert_eq!(next.len(), 3, "the base file and checkpoint 3's two deltas");
    let mut with_base = next.clone();
    for part in 0..2 {
        let mut updates = vec![upd(9, "last", 40, 1)];
        with_base.push(store.write_delta(4, part, &mut updates).unwrap());
    }
    store.commit(record(4, with_base.clone())).unwrap();
    // The state is the same either way.
    let before = load_checkpoint(dir.path(), &record(3, files), all, 0).unwrap();
    let now = load_checkpoint(dir.path(), &record(4, with_base), all, 0).unwrap();
    let mut expected = before;
    expected.extend([upd(9, "last", 40, 2)]);
    consolidate(&mut expected);
    assert_eq!(now, expected);
    // A result whose files are gone from the record does not apply.
    assert!(done.apply(&next[1..]).is_none());
}

#[test]
fn closing_the_store_stops_a_running_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = CheckpointStore::open(dir.path()).unwrap();
    write_checkpoint(&mut store, 1);
    let second = write_checkpoint(&mut store, 2);
    assert!(store.start_compaction(&second, (0, false), DEFAULT_COMPACTION_BUDGET_BYTES));
    drop(store);
    // Reopening collects whatever it left (a temp file, or an unreferenced
    // base file) and the last commit still restores.
    let store = CheckpointStore::open(dir.path()).unwrap();
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with("base-")),
        "left over: {names:?}"
    );
    let last = store.commits().last().unwrap();
    assert_eq!(
        load_checkpoint(dir.path(), last, all, 0).unwrap(),
        super::expected_state(2)
    );
}
