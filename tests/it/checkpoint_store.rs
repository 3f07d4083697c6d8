//! The checkpoint store (`weir::checkpoint::store`): torn commit tails
//! repaired at every cut, every flipped byte detected (an error or a
//! fallback, never different updates), compaction, garbage collection, the
//! writer lock, usage errors; golden files in [`golden`]; crashes at every
//! failpoint in [`failpoints`].

mod compaction;
mod failpoints;
mod fallback;
mod golden;
mod keep_local;
mod range_reads;

use std::path::Path;

use weir::checkpoint::format::{
    consolidate, push_updates, CommitRecord, FileMeta, OutputLength, PartitionResume,
    PersistedUpdate, COMMITS_FILE_NAME,
};
use weir::checkpoint::store::{
    load_checkpoint, newest_usable, read_commits, visit_checkpoint_groups, CheckpointStore,
    StoreError, UsageError,
};

/// The query fingerprint of every test checkpoint.
const FP: u64 = 0xfeed_f00d;

fn upd(key_group: u16, data: &str, time: u64, diff: i64) -> PersistedUpdate {
    PersistedUpdate {
        key_group,
        data: data.as_bytes().to_vec(),
        time,
        diff,
    }
}

/// A commit record for checkpoint `id` with `files`.
fn record(id: u64, files: Vec<FileMeta>) -> CommitRecord {
    CommitRecord {
        checkpoint_id: id,
        cut_time: id * 10 + 10,
        query_fingerprint: FP,
        workers_total: 2,
        files,
        partitions: vec![PartitionResume {
            partition: 0,
            resume_offset: id * 100,
            max_ts_before: Some(id * 10 + 9),
        }],
        outputs: vec![OutputLength {
            file_name: "windows.csv".to_owned(),
            length_bytes: id * 1000,
        }],
        timing: None,
    }
}

/// Part `part` (0 or 1) of checkpoint `id`'s changes: new keys at times in
/// `[10 id, 10 id + 10)`, a retraction of an earlier update, and a hot key.
fn part_updates(id: u64, part: u32) -> Vec<PersistedUpdate> {
    let t = id * 10;
    if part == 0 {
        (0..4u16)
            .map(|k| upd(k * 40, &format!("key-{k}-{}", id % 3), t + u64::from(k), 1))
            .chain([upd(0, "key-0-0", 0, 1)])
            .collect()
    } else {
        let mut u = vec![upd(255, "hot", t, i64::try_from(id).unwrap())];
        if id > 1 {
            u.push(upd(0, &format!("key-0-{}", (id - 1) % 3), t - 10, -1));
        }
        u
    }
}

/// The state of checkpoint `id`: every part of checkpoints `1..=id`,
/// consolidated.
fn expected_state(id: u64) -> Vec<PersistedUpdate> {
    let mut all: Vec<_> = (1..=id)
        .flat_map(|i| [part_updates(i, 0), part_updates(i, 1)])
        .flatten()
        .collect();
    consolidate(&mut all);
    all
}

/// Writes and commits checkpoint `id` as an incremental chain: the previous
/// commit's files (compacted into a base file when `id % 3 == 0`) plus two
/// delta parts.
fn write_checkpoint(store: &mut CheckpointStore, id: u64) -> CommitRecord {
    let mut files = if id.is_multiple_of(3) {
        store.compact(id, 0, false).unwrap()
    } else {
        store
            .commits()
            .last()
            .map(|c| c.files.clone())
            .unwrap_or_default()
    };
    for part in 0..2 {
        let mut updates = part_updates(id, part);
        files.push(store.write_delta(id, part, &mut updates).unwrap());
    }
    let r = record(id, files);
    store.commit(r.clone()).unwrap();
    r
}

fn store_with(dir: &Path, checkpoints: u64) -> Vec<CommitRecord> {
    let mut store = CheckpointStore::open(dir).unwrap();
    (1..=checkpoints)
        .map(|id| write_checkpoint(&mut store, id))
        .collect()
}

fn all(_: u16) -> bool {
    true
}

/// The sorted names of the files in `dir`.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Asserts that `newest_usable` picks checkpoint `id` (without warnings)
/// and that it loads as [`expected_state`].
fn assert_restores(dir: &Path, id: u64) {
    let (r, warnings) = newest_usable(dir, FP).unwrap().expect("a checkpoint");
    assert_eq!(r.checkpoint_id, id, "warnings: {warnings:?}");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        load_checkpoint(dir, &r, all, 0).unwrap(),
        expected_state(id)
    );
}

/// The updates [`visit_checkpoint_groups`] hands out, consolidated.
fn visited(
    dir: &Path,
    r: &CommitRecord,
    groups: impl Fn(u16) -> bool,
    horizon: u64,
) -> Result<Vec<PersistedUpdate>, StoreError> {
    let mut out = Vec::new();
    visit_checkpoint_groups(dir, r, groups, horizon, &mut push_updates(&mut out))?;
    consolidate(&mut out);
    Ok(out)
}

#[test]
fn checkpoints_round_trip_with_key_groups_and_horizon() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = CheckpointStore::open(dir).unwrap();
    let mut records = Vec::new();
    for id in 1..=4 {
        let r = write_checkpoint(&mut store, id);
        let state = expected_state(id);
        assert_eq!(load_checkpoint(dir, &r, all, 0).unwrap(), state);
        // A worker owning some key groups, restoring above a horizon.
        let mine = |g: u16| g.is_multiple_of(80);
        let expected: Vec<_> = state
            .iter()
            .filter(|u| mine(u.key_group) && u.time >= 20)
            .cloned()
            .collect();
        assert_eq!(load_checkpoint(dir, &r, mine, 20).unwrap(), expected);
        // The restore path reads only those groups' byte ranges.
        assert_eq!(visited(dir, &r, mine, 20).unwrap(), expected);
        assert_eq!(visited(dir, &r, all, 0).unwrap(), state);
        records.push(r);
    }
    drop(store);
    assert_eq!(read_commits(dir).unwrap(), records);
    assert_eq!(CheckpointStore::open(dir).unwrap().commits(), records);
    assert_restores(dir, 4);
}

#[test]
fn torn_commit_tail_is_repaired_at_every_cut() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = CheckpointStore::open(dir).unwrap();
    let records: Vec<_> = (1..=2).map(|id| write_checkpoint(&mut store, id)).collect();
    let stream = dir.join(COMMITS_FILE_NAME);
    let last_start = std::fs::metadata(&stream).unwrap().len();
    let third = write_checkpoint(&mut store, 3);
    drop(store);
    let full = std::fs::read(&stream).unwrap();
    for cut in last_start + 1..full.len() as u64 {
        std::fs::write(&stream, &full[..cut as usize]).unwrap();
        assert_eq!(read_commits(dir).unwrap(), records, "cut at {cut}");
        assert_restores(dir, 2);
        let mut store = CheckpointStore::open(dir).unwrap();
        assert_eq!(store.commits(), records);
        assert_eq!(std::fs::metadata(&stream).unwrap().len(), last_start);
        // The files of the lost commit are still there (not committed, so
        // not garbage): committing the same record again works.
        store.commit(third.clone()).unwrap();
        drop(store);
        assert_eq!(std::fs::read(&stream).unwrap(), full, "cut at {cut}");
    }
}

/// Flips one byte at a time in each file of a three-checkpoint store and
/// checks that the damage is always caught: a corrupt commit stream is an
/// error naming it and the offset; a damaged data file makes
/// `newest_usable` fall back (with a warning naming the file) or fail, and
/// whatever it returns loads exactly the expected state.
#[test]
fn every_flipped_byte_is_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let records = store_with(dir, 3);
    let mut mask = 0x5du8;
    for name in names(dir).into_iter().filter(|n| n != "LOCK") {
        let path = dir.join(&name);
        let original = std::fs::read(&path).unwrap();
        for i in 0..original.len() {
            mask = mask.rotate_left(3) | 1;
            let mut bad = original.clone();
            bad[i] ^= mask;
            std::fs::write(&path, &bad).unwrap();
            check_flip(dir, &records, &name, i);
        }
        std::fs::write(&path, &original).unwrap();
    }
    assert_restores(dir, 3);
}

fn check_flip(dir: &Path, records: &[CommitRecord], name: &str, at: usize) {
    let ctx = format!("flip in {name} at {at}");
    if name == COMMITS_FILE_NAME {
        match read_commits(dir) {
            Err(StoreError::Corrupt {
                path, byte_offset, ..
            }) => {
                assert_eq!(path, dir.join(name), "{ctx}");
                assert!(byte_offset <= at as u64, "{ctx}: reported at {byte_offset}");
            }
            other => panic!("{ctx}: {other:?}"),
        }
        assert!(newest_usable(dir, FP).is_err(), "{ctx}");
        assert!(matches!(
            CheckpointStore::open(dir),
            Err(StoreError::Corrupt { .. })
        ));
        return;
    }
    let users: Vec<&CommitRecord> = records
        .iter()
        .filter(|r| r.files.iter().any(|f| f.name == name))
        .collect();
    for r in &users {
        match load_checkpoint(dir, r, all, 0) {
            Err(StoreError::Corrupt { path, .. }) => assert_eq!(path, dir.join(name), "{ctx}"),
            other => panic!("{ctx}: checkpoint {}: {other:?}", r.checkpoint_id),
        }
    }
    let newest_damaged = users.iter().any(|r| r.checkpoint_id == 3);
    match newest_usable(dir, FP) {
        Ok(Some((r, warnings))) => {
            assert!(
                !users.contains(&&r),
                "{ctx}: picked damaged {}",
                r.checkpoint_id
            );
            assert_eq!(newest_damaged, !warnings.is_empty(), "{ctx}: {warnings:?}");
            assert!(
                warnings.iter().all(|w| w.contains(name)),
                "{ctx}: {warnings:?}"
            );
            let state = load_checkpoint(dir, &r, all, 0).unwrap();
            assert_eq!(state, expected_state(r.checkpoint_id), "{ctx}");
        }
        Err(StoreError::NoUsableCheckpoint { reasons, .. }) => {
            // Only when the damaged file is shared by every checkpoint whose
            // files are kept (the oldest may have been collected).
            assert!(users.len() >= 2, "{ctx}: {reasons:?}");
            assert!(reasons[0].contains(name), "{ctx}: {reasons:?}");
        }
        other => panic!("{ctx}: {other:?}"),
    }
}

#[test]
fn compaction_drops_old_updates_and_consolidates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = CheckpointStore::open(dir).unwrap();
    let mut files = Vec::new();
    for id in 1..=3 {
        let mut u = part_updates(id, 0);
        u.extend(part_updates(id, 1));
        files.push(store.write_delta(id, 0, &mut u).unwrap());
        store.commit(record(id, files.clone())).unwrap();
    }
    let horizon = 21;
    let base = store.compact(4, horizon, false).unwrap();
    assert_eq!(base.len(), 1);
    assert_eq!(base[0].name, "base-00000000000000000004.bin");
    let expected: Vec<_> = expected_state(3)
        .into_iter()
        .filter(|u| u.time >= horizon)
        .collect();
    // Something was dropped and something cancelled, or this proves little.
    let loaded_all = load_checkpoint(dir, store.commits().last().unwrap(), all, 0).unwrap();
    assert!(loaded_all.iter().any(|u| u.time < horizon));
    assert!(
        expected_state(3).len()
            < (1..=3)
                .map(|i| part_updates(i, 0).len() + part_updates(i, 1).len())
                .sum()
    );
    // The base file alone holds exactly the state at or after the horizon.
    let only_base = record(4, base.clone());
    assert_eq!(load_checkpoint(dir, &only_base, all, 0).unwrap(), expected);
    assert!(base[0].min_time >= horizon);
    let total: u64 = files.iter().map(|f| f.size_bytes).sum();
    assert!(
        base[0].size_bytes < total,
        "{} >= {total}",
        base[0].size_bytes
    );
    // Committed with this checkpoint's own delta; the old deltas become
    // garbage once two newer commits no longer need them.
    let mut u = part_updates(4, 0);
    let mut files4 = base;
    files4.push(store.write_delta(4, 0, &mut u).unwrap());
    store.commit(record(4, files4.clone())).unwrap();
    let mut state4: Vec<_> = expected.into_iter().chain(part_updates(4, 0)).collect();
    consolidate(&mut state4);
    let r4 = store.commits().last().unwrap().clone();
    assert_eq!(load_checkpoint(dir, &r4, all, 0).unwrap(), state4);
    store.commit(record(5, files4)).unwrap();
    assert_eq!(
        names(dir),
        [
            "LOCK",
            "base-00000000000000000004.bin",
            COMMITS_FILE_NAME,
            "delta-00000000000000000004-000000.bin"
        ]
    );
}

#[test]
fn garbage_collection_keeps_the_last_two_commits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = CheckpointStore::open(dir).unwrap();
    let delta = |store: &mut CheckpointStore, id| {
        store.write_delta(id, 0, &mut part_updates(id, 0)).unwrap()
    };
    let d1 = delta(&mut store, 1);
    store.commit(record(1, vec![d1.clone()])).unwrap();
    let d2 = delta(&mut store, 2);
    store.commit(record(2, vec![d2.clone()])).unwrap();
    let d3 = delta(&mut store, 3);
    let pending = delta(&mut store, 5);
    for junk in [
        "delta-00000000000000000001-000009.bin.tmp",
        "base-00000000000000000004.bin.tmp",
        "commits.log.tmp",
        "notes.txt",
        "base-1.bin",
    ] {
        std::fs::write(dir.join(junk), b"junk").unwrap();
    }
    // Checkpoint 3 still needs checkpoint 1's file. The last two commits
    // (2 and 3) keep theirs, the pending checkpoint 5 its file; temp files
    // of the store go, other files stay.
    store
        .commit(record(3, vec![d1.clone(), d3.clone()]))
        .unwrap();
    let kept = |files: &[&FileMeta]| {
        let mut v: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
        v.extend(["LOCK", COMMITS_FILE_NAME, "base-1.bin", "notes.txt"].map(String::from));
        v.sort();
        v
    };
    assert_eq!(names(dir), kept(&[&d1, &d2, &d3, &pending]));
    let d4 = delta(&mut store, 4);
    store.commit(record(4, vec![d4.clone()])).unwrap();
    assert_eq!(names(dir), kept(&[&d1, &d3, &d4, &pending]));
    store
        .commit(record(6, vec![d4.clone(), pending.clone()]))
        .unwrap();
    assert_eq!(names(dir), kept(&[&d4, &pending]));
    // The checkpoints whose files were collected are skipped on restore.
    drop(store);
    let (r, warnings) = newest_usable(dir, FP).unwrap().unwrap();
    assert_eq!((r.checkpoint_id, warnings.len()), (6, 0));
    std::fs::remove_file(dir.join(&pending.name)).unwrap();
    let (r, warnings) = newest_usable(dir, FP).unwrap().unwrap();
    assert_eq!(r.checkpoint_id, 4);
    assert!(warnings[0].contains(&pending.name), "{warnings:?}");
}

#[test]
fn a_second_writer_is_refused_but_readers_are_not() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut first = CheckpointStore::open(dir).unwrap();
    write_checkpoint(&mut first, 1);
    match CheckpointStore::open(dir) {
        Err(e @ StoreError::Locked { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("LOCK") && msg.contains("another writer"),
                "{msg}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_restores(dir, 1);
    drop(first);
    let mut second = CheckpointStore::open(dir).unwrap();
    write_checkpoint(&mut second, 2);
    drop(second);
    assert_restores(dir, 2);
}

#[test]
fn a_writer_waits_for_the_lock_of_one_that_is_going_away() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let first = CheckpointStore::open(&dir).unwrap();
    // Without a wait the lock is refused at once.
    assert!(matches!(
        CheckpointStore::open(&dir),
        Err(StoreError::Locked { .. })
    ));
    // The holder lets go while the second writer waits (as a sidecar killed
    // with `kill -9` does once its last fsync returns).
    let holder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(100));
        drop(first);
    });
    let mut second =
        CheckpointStore::open_waiting(&dir, std::time::Duration::from_secs(60)).unwrap();
    holder.join().unwrap();
    write_checkpoint(&mut second, 1);
    drop(second);
    assert_restores(&dir, 1);
}

#[test]
fn newest_usable_without_commits_and_with_another_query() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert!(newest_usable(&dir.join("missing"), FP).unwrap().is_none());
    drop(CheckpointStore::open(dir).unwrap());
    assert!(newest_usable(dir, FP).unwrap().is_none());
    store_with(dir, 1);
    let e = newest_usable(dir, FP + 1).unwrap_err();
    assert!(matches!(
        e,
        StoreError::FingerprintMismatch { expected, found: FP, checkpoint_id: 1, .. } if expected == FP + 1
    ));
    assert!(e.to_string().contains("fingerprint"), "{e}");
}

fn usage<T: std::fmt::Debug>(r: Result<T, StoreError>) -> UsageError {
    match r {
        Err(StoreError::Usage(u)) => u,
        other => panic!("{other:?}"),
    }
}

#[test]
fn misuse_is_a_usage_error_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = CheckpointStore::open(dir).unwrap();
    assert_eq!(
        usage(store.compact(1, 0, false)),
        UsageError::NothingToCompact
    );
    let r1 = write_checkpoint(&mut store, 1);
    let before = names(dir);
    let stream_before = std::fs::read(dir.join(COMMITS_FILE_NAME)).unwrap();
    assert!(matches!(
        usage(store.write_delta(1, 5, &mut part_updates(1, 0))),
        UsageError::AlreadyCommitted { given: 1, last: 1 }
    ));
    assert!(matches!(
        usage(store.compact(1, 0, false)),
        UsageError::AlreadyCommitted { .. }
    ));
    assert!(matches!(
        usage(store.commit(r1.clone())),
        UsageError::IdNotIncreasing { given: 1, last: 1 }
    ));
    assert!(matches!(
        usage(store.write_delta(2, 0, &mut vec![upd(256, "x", 1, 1)])),
        UsageError::KeyGroupOutOfRange { key_group: 256 }
    ));
    let mut missing = record(2, r1.files.clone());
    missing.files.push(FileMeta {
        name: "delta-00000000000000000002-000000.bin".to_owned(),
        ..r1.files[0].clone()
    });
    assert!(matches!(
        usage(store.commit(missing)),
        UsageError::MissingFile { .. }
    ));
    let mut bad_output = record(2, vec![]);
    bad_output.outputs[0].file_name = "../escape".to_owned();
    assert!(matches!(
        usage(store.commit(bad_output)),
        UsageError::InvalidRecord { .. }
    ));
    let mut traversal = record(2, vec![]);
    traversal.files.push(FileMeta {
        name: "../commits.log".to_owned(),
        ..r1.files[0].clone()
    });
    assert!(matches!(
        usage(store.commit(traversal.clone())),
        UsageError::InvalidRecord { .. }
    ));
    assert!(matches!(
        load_checkpoint(dir, &traversal, all, 0),
        Err(StoreError::Usage(UsageError::InvalidRecord { .. }))
    ));
    let mut wrong_size = record(2, r1.files.clone());
    wrong_size.files[0].size_bytes += 1;
    assert!(matches!(
        store.commit(wrong_size),
        Err(StoreError::Corrupt { .. })
    ));
    assert_eq!(store.commits(), [r1]);
    assert_eq!(names(dir), before);
    assert_eq!(
        std::fs::read(dir.join(COMMITS_FILE_NAME)).unwrap(),
        stream_before
    );
}

#[test]
fn the_commit_stream_stays_bounded_on_a_long_run() {
    use weir::checkpoint::store::{RETAINED_COMMIT_RECORDS, TRIM_COMMITS_AT_RECORDS};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut store = CheckpointStore::open(dir).unwrap();
    let total = 3 * TRIM_COMMITS_AT_RECORDS as u64 + 5;
    let mut largest_bytes = 0;
    for id in 1..=total {
        store.commit(record(id, Vec::new())).unwrap();
        largest_bytes = largest_bytes.max(
            std::fs::metadata(dir.join(COMMITS_FILE_NAME))
                .unwrap()
                .len(),
        );
        assert!(store.commits().len() < TRIM_COMMITS_AT_RECORDS);
    }
    drop(store);
    // Bounded: never more than the records before a trim.
    let one_record = std::fs::metadata(dir.join(COMMITS_FILE_NAME))
        .unwrap()
        .len()
        / 100;
    assert!(largest_bytes < (TRIM_COMMITS_AT_RECORDS as u64 + 1) * (one_record + 64));
    let kept = read_commits(dir).unwrap();
    assert!(kept.len() >= RETAINED_COMMIT_RECORDS, "kept {}", kept.len());
    assert_eq!(
        kept.last().unwrap(),
        &record(total, Vec::new()),
        "the newest record survives"
    );
    // Reopened, it continues from the newest id.
    let mut store = CheckpointStore::open(dir).unwrap();
    store.commit(record(total + 1, Vec::new())).unwrap();
    assert!(matches!(
        store.commit(record(total, Vec::new())),
        Err(StoreError::Usage(_))
    ));
}
