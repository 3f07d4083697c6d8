//! The sidecar's copier to the cold tier: a thread that copies the newest
//! committed checkpoint it was offered (older ones it did not reach are
//! skipped: the slot holds one record, so the copier can never fall behind
//! by more than one copy, and a commit never waits for it). A failed copy
//! is retried with backoff (100 ms doubling to [`MAX_RETRY_BACKOFF`]) while
//! the engine goes on committing locally; once the store answers again the
//! newest checkpoint is copied.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{cold_contents, copy_checkpoint, Blob, ColdContents};
use crate::checkpoint::format::CommitRecord;

/// The longest wait between two attempts at a failing copy.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// What the copier shows (metrics).
#[derive(Debug, Default)]
pub struct ColdFigures {
    /// The newest checkpoint id in the cold tier (0: none).
    pub checkpoint_id: AtomicU64,
    /// The newest checkpoint id committed locally and offered.
    pub offered_id: AtomicU64,
    /// Copies that failed (each retried).
    pub failures: AtomicU64,
}

#[derive(Debug, Default)]
struct Slot {
    newest: Option<CommitRecord>,
    stopping: bool,
}

/// A running copier.
#[derive(Debug)]
pub struct ColdCopier {
    slot: Arc<(Mutex<Slot>, Condvar)>,
    /// Its figures.
    pub figures: Arc<ColdFigures>,
    url: String,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl ColdCopier {
    /// Starts copying checkpoints of `local_dir` to `blob`.
    pub fn start(blob: Box<dyn Blob>, local_dir: PathBuf) -> Self {
        let slot = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let figures = Arc::new(ColdFigures::default());
        let url = blob.describe();
        let thread = {
            let (slot, figures) = (Arc::clone(&slot), Arc::clone(&figures));
            std::thread::Builder::new()
                .name("cold-copier".into())
                .spawn(move || copy_loop(blob.as_ref(), &local_dir, &slot, &figures))
                .expect("spawning the cold copier")
        };
        Self {
            slot,
            figures,
            url,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Hands the copier a newly committed checkpoint (replacing one it has
    /// not started on).
    pub fn offer(&self, record: &CommitRecord) {
        self.figures
            .offered_id
            .store(record.checkpoint_id, Ordering::Relaxed);
        let (lock, ready) = &*self.slot;
        lock.lock().unwrap_or_else(PoisonError::into_inner).newest = Some(record.clone());
        ready.notify_one();
    }

    /// Waits up to `deadline` for the newest offered checkpoint to be in the
    /// cold tier, then stops the copier; whether it got there.
    pub fn finish(&self, deadline: Duration) -> bool {
        let started = Instant::now();
        let offered = self.figures.offered_id.load(Ordering::Relaxed);
        while self.figures.checkpoint_id.load(Ordering::Relaxed) < offered
            && started.elapsed() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let done = self.figures.checkpoint_id.load(Ordering::Relaxed) >= offered;
        if !done {
            tracing::warn!(
                url = %self.url,
                offered,
                "the newest checkpoint did not reach the cold tier before the sidecar stopped"
            );
        }
        let (lock, ready) = &*self.slot;
        lock.lock().unwrap_or_else(PoisonError::into_inner).stopping = true;
        ready.notify_one();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        done
    }
}

fn copy_loop(
    blob: &dyn Blob,
    local_dir: &std::path::Path,
    slot: &(Mutex<Slot>, Condvar),
    figures: &ColdFigures,
) {
    let mut copied: Option<ColdContents> = None;
    let mut backoff = Duration::from_millis(100);
    // The record of a failed copy, tried again after the backoff unless a
    // newer one is offered first (a failure may be a local file that a
    // newer commit's garbage collection removed: retrying it is pointless).
    let mut retry: Option<CommitRecord> = None;
    loop {
        let record = {
            let (lock, ready) = slot;
            let mut slot = lock.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if slot.stopping {
                    return;
                }
                if let Some(record) = slot.newest.take() {
                    retry = None;
                    break record;
                }
                if let Some(record) = retry.take() {
                    break record;
                }
                slot = ready.wait(slot).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let result = match copied.as_mut() {
            Some(contents) => copy_checkpoint(blob, local_dir, &record, contents),
            None => cold_contents(blob)
                .map_err(|e| e.to_string())
                .and_then(|mut contents| {
                    let copy = copy_checkpoint(blob, local_dir, &record, &mut contents);
                    copied = Some(contents);
                    copy
                }),
        };
        match result {
            Ok(()) => {
                figures
                    .checkpoint_id
                    .store(record.checkpoint_id, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
            }
            Err(reason) => {
                figures.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    url = %blob.describe(),
                    checkpoint_id = record.checkpoint_id,
                    %reason,
                    retry_ms = backoff.as_millis() as u64,
                    "copy to the cold tier failed; retrying"
                );
                // What the store holds is unknown now: list it again.
                copied = None;
                retry = Some(record);
                let (lock, ready) = slot;
                let guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
                let (guard, _) = ready
                    .wait_timeout_while(guard, backoff, |s| !s.stopping && s.newest.is_none())
                    .unwrap_or_else(PoisonError::into_inner);
                drop(guard);
                backoff = (backoff * 2).min(MAX_RETRY_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
        let copier = ColdCopier::start(Box::new(blob), local.clone());
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
        let contents = cold_contents(&cold).unwrap();
        assert_eq!(contents.records.last(), Some(&6));
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
}
