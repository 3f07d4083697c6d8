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
        let observed = epoch::check_not_fenced(&local_dir, blob.as_ref())?;
        if observed > 0 && epoch::local_epoch(&local_dir, &url)?.is_none() {
            // Someone else wrote this store: is it still running? (Watched
            // before the tier lock: the cluster's other processes wait on it.)
            refuse_if_live(blob.as_ref(), observed, LIVENESS_WAIT)?;
        }
        let tier_lock = epoch::lock_tier(&local_dir)?;
        if epoch::check_not_fenced(&local_dir, blob.as_ref())? != observed {
            return Err(format!(
                "{url}: another writer claimed it while this one started"
            ));
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
mod tests;
