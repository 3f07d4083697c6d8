//! The sidecar's copier to the cold tier: a thread that copies the newest
//! committed checkpoint it was offered (older ones it did not reach are
//! skipped: the slot holds one record, so the copier can never fall behind
//! by more than one copy, and a commit never waits for it). A failed copy
//! is retried with backoff (100 ms doubling to [`MAX_RETRY_BACKOFF`]) while
//! the engine goes on committing locally; once the store answers again the
//! newest checkpoint is copied.
//!
//! Between checkpoints, every [`LOG_SHIP_INTERVAL`], it ships the input
//! log appended since ([`super::log_ship`]), so that a region lost between
//! two checkpoints loses at most that much of the input.
//!
//! The copier claims the next epoch of the store when it starts
//! ([`super::epoch`]; a data dir that never wrote to a store whose newest
//! epoch's writer still beats is refused, [`super::heartbeat`]), beats for
//! it, and writes only under that epoch's prefix; once a newer epoch is
//! claimed (a standby took over) it stops for good and says so in its
//! figures, and the sidecar refuses to commit.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::heartbeat::{refuse_if_live, Heartbeat, LIVENESS_WAIT};
use super::source::LocalSource;
use super::{cold_contents, copy_checkpoint, epoch, log_ship, Blob, ColdContents, CopyError};
use crate::checkpoint::format::CommitRecord;

/// How often an idle copier checks whether a newer writer claimed the store.
const FENCE_POLL: Duration = Duration::from_secs(2);
/// How often an idle copier ships the log appended since its last round
/// (between checkpoints, so that little of the input is only local).
const LOG_SHIP_INTERVAL: Duration = Duration::from_millis(200);
/// The longest wait between two attempts at a failing copy.
const MAX_RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// Which store a copier writes: the data dir remembers the epoch it
/// claimed in each ([`epoch::LOCAL_EPOCH_FILES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopierRole {
    /// `--cold-store`.
    Cold,
    /// `--replica`.
    Replica,
}

impl CopierRole {
    /// The data dir's file of the epoch claimed in this role's store.
    pub fn epoch_file(self) -> &'static str {
        match self {
            Self::Cold => epoch::LOCAL_EPOCH_FILES[0],
            Self::Replica => epoch::LOCAL_EPOCH_FILES[1],
        }
    }
}

/// What the copier shows (metrics).
#[derive(Debug, Default)]
pub struct ColdFigures {
    /// The newest checkpoint id in the cold tier (0: none).
    pub checkpoint_id: AtomicU64,
    /// The newest checkpoint id committed locally and offered.
    pub offered_id: AtomicU64,
    /// Copies that failed (each retried).
    pub failures: AtomicU64,
    /// Log records shipped to the cold tier.
    pub log_records: AtomicU64,
    /// Bytes of log chunks shipped.
    pub log_bytes: AtomicU64,
    /// The epoch this copier claimed.
    pub epoch: AtomicU64,
    /// The newer epoch that fenced this copier off (0: none).
    pub fenced_by: AtomicU64,
}

impl ColdFigures {
    fn add_shipped(&self, shipped: log_ship::Shipped) {
        self.log_records
            .fetch_add(shipped.records, Ordering::Relaxed);
        self.log_bytes.fetch_add(shipped.bytes, Ordering::Relaxed);
    }

    /// The newer epoch that fenced the copier off, if one did.
    pub fn fenced_by(&self) -> Option<u64> {
        Some(self.fenced_by.load(Ordering::Acquire)).filter(|&e| e != 0)
    }
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
    heartbeat: Mutex<Option<Heartbeat>>,
}

impl ColdCopier {
    /// Starts copying checkpoints of the store in `local_dir`, and the log
    /// in `log_dir`, read through `source` (shared with the sidecar's other
    /// copier), to `blob` as `role`: refuses a data dir fenced off the
    /// store, then claims the next epoch, fenced at `fence_checkpoint_id`
    /// (the newest local checkpoint), as `writer`, under the tier lock.
    pub fn start(
        blob: Box<dyn Blob>,
        (local_dir, log_dir, source): (PathBuf, PathBuf, Arc<LocalSource>),
        (role, fence_checkpoint_id): (CopierRole, u64),
        writer: &str,
    ) -> Result<Self, String> {
        let url = blob.describe();
        let tier_lock = epoch::lock_tier(&local_dir)?;
        let observed = epoch::check_not_fenced(&local_dir, blob.as_ref())?;
        if observed > 0 && epoch::local_epoch(&local_dir, &url)?.is_none() {
            // Someone else wrote this store: is it still running?
            refuse_if_live(blob.as_ref(), observed, LIVENESS_WAIT)?;
        }
        let claim = epoch::claim_epoch_after(blob.as_ref(), observed, fence_checkpoint_id, writer)?;
        epoch::record_local_epoch(&local_dir, role.epoch_file(), &url, claim.epoch)?;
        drop(tier_lock);
        tracing::info!(
            %url,
            epoch = claim.epoch,
            fence_checkpoint_id,
            "claimed a cold tier epoch"
        );
        let blob: Arc<dyn Blob> = Arc::from(blob);
        let heartbeat = Heartbeat::start(Arc::clone(&blob), claim.epoch)?;
        let slot = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let figures = Arc::new(ColdFigures::default());
        figures.epoch.store(claim.epoch, Ordering::Relaxed);
        let thread = {
            let (slot, figures) = (Arc::clone(&slot), Arc::clone(&figures));
            std::thread::Builder::new()
                .name("cold-copier".into())
                .spawn(move || {
                    let dirs = (local_dir.as_path(), log_dir.as_path());
                    copy_loop(blob.as_ref(), (dirs, &source), &slot, &figures);
                })
                .map_err(|e| format!("spawning the cold copier: {e}"))?
        };
        Ok(Self {
            slot,
            figures,
            url,
            thread: Mutex::new(Some(thread)),
            heartbeat: Mutex::new(Some(heartbeat)),
        })
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.url
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
            && self.figures.fenced_by().is_none()
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
        self.heartbeat
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        done
    }
}

fn copy_loop(
    blob: &dyn Blob,
    (dirs, source): ((&std::path::Path, &std::path::Path), &LocalSource),
    slot: &(Mutex<Slot>, Condvar),
    figures: &ColdFigures,
) {
    let (_, log_dir) = dirs;
    let epoch = figures.epoch.load(Ordering::Relaxed);
    let mut copied: Option<ColdContents> = None;
    let mut last_fence_check = Instant::now();
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
                    break Some(record);
                }
                if let Some(record) = retry.take() {
                    break Some(record);
                }
                let (guard, waited) = ready
                    .wait_timeout(slot, LOG_SHIP_INTERVAL)
                    .unwrap_or_else(PoisonError::into_inner);
                slot = guard;
                if waited.timed_out() {
                    break None;
                }
            }
        };
        let Some(record) = record else {
            // Idle: ship the log appended since, into the epoch as listed
            // by the last good copy (after a failure, the next copy lists
            // it again first).
            if let Some(contents) = copied.as_mut() {
                let keep_from = contents.least_resume_offset();
                let into = (epoch, log_dir, keep_from);
                match log_ship::ship_log(blob, into, &mut contents.log, source) {
                    Ok(shipped) => figures.add_shipped(shipped),
                    Err(reason) => {
                        figures.failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(url = %blob.describe(), %reason, "shipping the log failed");
                        copied = None;
                    }
                }
            }
            // A takeover must still stop this writer (its sidecar refuses
            // to commit once the figures say so). A store that does not
            // answer is the next copy's business.
            if last_fence_check.elapsed() < FENCE_POLL {
                continue;
            }
            last_fence_check = Instant::now();
            match epoch::newest_epoch(blob) {
                Ok(newest_epoch) if newest_epoch > epoch => {
                    fenced(blob, epoch, newest_epoch, figures);
                    return;
                }
                _ => continue,
            }
        };
        let result = match copied.as_mut() {
            Some(contents) => copy_checkpoint(blob, dirs, &record, contents, source),
            None => cold_contents(blob, epoch)
                .map_err(|e| CopyError::Failed(e.to_string()))
                .and_then(|mut contents| {
                    let copy = copy_checkpoint(blob, dirs, &record, &mut contents, source);
                    copied = Some(contents);
                    copy
                }),
        };
        match result {
            Ok(shipped) => {
                figures.add_shipped(shipped);
                figures
                    .checkpoint_id
                    .store(record.checkpoint_id, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
            }
            Err(CopyError::Fenced { newest_epoch }) => {
                fenced(blob, epoch, newest_epoch, figures);
                return;
            }
            Err(CopyError::Failed(reason)) => {
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

/// Says, loudly and in the figures, that a newer writer fenced this one off.
fn fenced(blob: &dyn Blob, epoch: u64, newest_epoch: u64, figures: &ColdFigures) {
    tracing::error!(
        url = %blob.describe(),
        epoch,
        newest_epoch,
        "fenced off the cold tier: a newer writer claimed it (a standby took over); \
         this copier stops and the sidecar refuses further commits"
    );
    figures.fenced_by.store(newest_epoch, Ordering::Release);
}

#[cfg(test)]
mod tests {
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
}
