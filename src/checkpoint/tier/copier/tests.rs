//! The copier's tests: an outage retried until the copy catches up, fencing
//! by a newer epoch, and the liveness watch of a data dir new to a store.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::*;
use crate::checkpoint::format::{CommitRecord, PersistedUpdate};
use crate::checkpoint::store::CheckpointStore;
use crate::checkpoint::tier::{cold_contents, BlobError, FileBlob, COLD_RECORDS_KEPT};

/// A file blob that fails every call while `down` is set: an object
/// store that went away.
#[derive(Debug)]
struct Outage {
    inner: FileBlob,
    down: Arc<AtomicBool>,
}

impl Outage {
    fn check(&self) -> Result<(), BlobError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(BlobError::Io {
                what: "the store".into(),
                reason: "connection refused".into(),
            });
        }
        Ok(())
    }
}

impl Blob for Outage {
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        self.check()?;
        self.inner.put(key, bytes)
    }
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool, BlobError> {
        self.check()?;
        self.inner.put_new(key, bytes)
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
        self.check()?;
        self.inner.get(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
        self.check()?;
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.check()?;
        self.inner.delete(key)
    }
    fn describe(&self) -> String {
        "outage://".into()
    }
}

fn commit(store: &mut CheckpointStore, id: u64) -> CommitRecord {
    let mut files = store
        .commits()
        .last()
        .map(|c| c.files.clone())
        .unwrap_or_default();
    let mut updates = vec![PersistedUpdate {
        key_group: 7,
        data: format!("key-{id}").into_bytes(),
        time: id,
        diff: 1,
    }];
    files.push(store.write_delta(id, 0, &mut updates).unwrap());
    let record = CommitRecord {
        checkpoint_id: id,
        cut_time: id * 10,
        query_fingerprint: 1,
        workers_total: 1,
        files,
        partitions: Vec::new(),
        outputs: Vec::new(),
        timing: None,
    };
    store.commit(record.clone()).unwrap();
    record
}

/// Polls `done` for up to a minute (a fail-safe, not a speed assumption).
fn eventually(done: impl Fn() -> bool) -> bool {
    let started = Instant::now();
    while !done() {
        if started.elapsed() > Duration::from_secs(60) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

/// The store and log directories of a data dir's checkpoint store, and
/// a source of its own.
fn dirs(local: &std::path::Path) -> (PathBuf, PathBuf, Arc<LocalSource>) {
    (
        local.to_owned(),
        local.with_file_name("log"),
        LocalSource::new(1),
    )
}

#[test]
fn an_outage_is_retried_and_the_copy_catches_up_to_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("checkpoints");
    let mut store = CheckpointStore::open(&local).unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let blob = Outage {
        inner: FileBlob::open(&dir.path().join("cold")).unwrap(),
        down: Arc::clone(&down),
    };
    let copier =
        ColdCopier::start(Box::new(blob), dirs(&local), (CopierRole::Cold, 0), "test").unwrap();
    copier.offer(&commit(&mut store, 1));
    assert!(eventually(|| copier
        .figures
        .checkpoint_id
        .load(Ordering::Relaxed)
        == 1));

    // The store goes away; local commits go on and are offered.
    down.store(true, Ordering::Relaxed);
    for id in 2..=6 {
        copier.offer(&commit(&mut store, id));
    }
    assert!(eventually(|| copier
        .figures
        .failures
        .load(Ordering::Relaxed)
        >= 2));
    assert_eq!(copier.figures.checkpoint_id.load(Ordering::Relaxed), 1);

    // Back: the newest checkpoint gets there, whole.
    down.store(false, Ordering::Relaxed);
    assert!(eventually(|| copier
        .figures
        .checkpoint_id
        .load(Ordering::Relaxed)
        == 6));
    assert!(copier.finish(Duration::from_secs(60)));
    let cold = FileBlob::open(&dir.path().join("cold")).unwrap();
    let contents = cold_contents(&cold, 1).unwrap();
    assert_eq!(contents.records.keys().last(), Some(&6));
    assert!(contents.records.len() <= COLD_RECORDS_KEPT);
    let newest = store.commits().last().unwrap().clone();
    let names: std::collections::BTreeSet<String> =
        newest.files.iter().map(|f| f.name.clone()).collect();
    assert!(
        names.is_subset(&contents.files),
        "{names:?} {:?}",
        contents.files
    );
    // A restore from it works: no local store at all.
    drop(store);
    std::fs::remove_dir_all(&local).unwrap();
    let notes = crate::checkpoint::tier::repair_from_cold(&local, &cold).unwrap();
    assert!(notes[0].contains("checkpoint 6 brought back"), "{notes:?}");
    let back = crate::checkpoint::store::read_commits(&local).unwrap();
    assert_eq!(back, vec![newest]);
}

#[test]
fn a_newer_epoch_fences_the_copier_off_and_its_later_copies_are_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("checkpoints");
    let cold_root = dir.path().join("cold");
    let mut store = CheckpointStore::open(&local).unwrap();
    let copier = ColdCopier::start(
        Box::new(FileBlob::open(&cold_root).unwrap()),
        dirs(&local),
        (CopierRole::Cold, 0),
        "primary",
    )
    .unwrap();
    // One at a time: the slot keeps only the newest offer.
    for id in 1..=2 {
        copier.offer(&commit(&mut store, id));
        assert!(eventually(|| copier
            .figures
            .checkpoint_id
            .load(Ordering::Relaxed)
            == id));
    }

    // A standby takes over checkpoint 2 and claims epoch 2.
    let cold = FileBlob::open(&cold_root).unwrap();
    let newest = epoch::newest_epoch(&cold).unwrap();
    epoch::claim_epoch_after(&cold, newest, 2, "standby").unwrap();
    copier.offer(&commit(&mut store, 3));
    assert!(eventually(|| copier.figures.fenced_by().is_some()));
    assert_eq!(copier.figures.fenced_by(), Some(2));
    assert!(
        !copier.finish(Duration::from_secs(60)),
        "checkpoint 3 is not copied"
    );
    // Checkpoint 3 was never put, and would not be used if it had been.
    assert_eq!(
        crate::checkpoint::tier::epoch::usable_records(&cold).unwrap(),
        [(1, 2), (1, 1)]
    );
    // The stale primary restarted is refused.
    let refused = ColdCopier::start(
        Box::new(cold),
        dirs(&local),
        (CopierRole::Replica, 3),
        "primary",
    )
    .unwrap_err();
    assert!(refused.contains("fenced off"), "{refused}");
}

/// A copier beating for the data dir `<dir>/running` into the store
/// `<dir>/cold`, which holds its checkpoint 1; and that data dir.
fn live_writer(dir: &Path) -> (ColdCopier, PathBuf) {
    let running = dir.join("running/checkpoints");
    let mut store = CheckpointStore::open(&running).unwrap();
    let blob = Box::new(FileBlob::open(&dir.join("cold")).unwrap());
    let copier = ColdCopier::start(blob, dirs(&running), (CopierRole::Cold, 0), "running");
    let copier = copier.unwrap();
    copier.offer(&commit(&mut store, 1));
    (copier, running)
}

#[test]
fn a_data_dir_that_never_wrote_does_not_fence_a_live_writer_off() {
    let dir = tempfile::tempdir().unwrap();
    let cold_root = dir.path().join("cold");
    let open = || Box::new(FileBlob::open(&cold_root).unwrap());
    let (copier, _) = live_writer(dir.path());
    // A wiped data dir (or another job) started on the same store.
    let wiped = dir.path().join("wiped/checkpoints");
    std::fs::create_dir_all(&wiped).unwrap();
    let refused =
        ColdCopier::start(open(), dirs(&wiped), (CopierRole::Cold, 0), "wiped").unwrap_err();
    assert!(refused.contains("is alive"), "{refused}");
    assert!(copier.finish(Duration::from_secs(60)));
    assert_eq!(copier.figures.fenced_by(), None);
    // Once the writer is gone, the same data dir may claim.
    let next = ColdCopier::start(open(), dirs(&wiped), (CopierRole::Cold, 0), "wiped").unwrap();
    assert_eq!(next.figures.epoch.load(Ordering::Relaxed), 2);
    next.finish(Duration::from_secs(1));
}

#[test]
fn a_data_dir_that_wrote_there_claims_again_without_watching() {
    // Its own writer still beats (a restart before the old sidecar's
    // end was noticed): watching would see the beats and refuse.
    let dir = tempfile::tempdir().unwrap();
    let (first, running) = live_writer(dir.path());
    let blob = Box::new(FileBlob::open(&dir.path().join("cold")).unwrap());
    let again = ColdCopier::start(blob, dirs(&running), (CopierRole::Cold, 1), "b").unwrap();
    assert_eq!(again.figures.epoch.load(Ordering::Relaxed), 2);
    again.finish(Duration::from_secs(1));
    first.finish(Duration::from_secs(1));
}
