//! Reading checkpoints back from the cold tier: repairing a damaged local
//! checkpoint, bringing a lost store back whole, and a standby's takeover.
//! Only the records [`epoch::usable_records`] allows are read, so nothing
//! a fenced writer copied after a takeover is ever restored.

use std::path::Path;

use super::fetch::fetch_files;
use super::{decode_cold_record, epoch, record_key, Blob};
use crate::checkpoint::format::{CommitRecord, FileMeta};
use crate::checkpoint::store::{read_commits, verify_file, CheckpointStore, StoreError};

fn store_error(blob: &dyn Blob) -> impl Fn(String) -> StoreError + '_ {
    move |reason| StoreError::Cold {
        url: blob.describe(),
        reason,
    }
}

/// The cold record `id` of `epoch`.
fn read_record(blob: &dyn Blob, (epoch, id): (u64, u64)) -> Result<CommitRecord, String> {
    let key = record_key(epoch, id);
    match blob.get(&key) {
        Ok(Some(bytes)) => decode_cold_record(&key, &bytes),
        Ok(None) => Err(format!("{key} is missing")),
        Err(e) => Err(e.to_string()),
    }
}

/// The newest usable commit record of the cold tier, with its epoch (for
/// tools and tests: what a standby would take over, before verifying its
/// files).
pub fn newest_cold_record(blob: &dyn Blob) -> Result<Option<(u64, CommitRecord)>, String> {
    match epoch::usable_records(blob)?.first() {
        Some(&(epoch, id)) => Ok(Some((epoch, read_record(blob, (epoch, id))?))),
        None => Ok(None),
    }
}

/// Makes the newest checkpoint of `local_dir` usable from the cold tier
/// when its own files are missing or damaged (see the module doc); returns
/// what it did, one line each, for the run's warnings.
pub fn repair_from_cold(local_dir: &Path, blob: &dyn Blob) -> Result<Vec<String>, StoreError> {
    let store_err = store_error(blob);
    // Reaching the store at all is checked first: a bad URL or refused
    // credentials fail the run at its start; then a stale writer is
    // refused before it reads or writes anything.
    let usable = epoch::usable_records(blob).map_err(&store_err)?;
    // A cluster's processes repair one after the other: the later ones
    // find the files in place.
    let _tier_lock = epoch::lock_tier(local_dir).map_err(&store_err)?;
    epoch::check_not_fenced(local_dir, blob).map_err(&store_err)?;
    let local = read_commits(local_dir)?;
    let mut notes = Vec::new();
    if local.is_empty() {
        for &(epoch, id) in &usable {
            match fetch_whole(local_dir, blob, (epoch, id)) {
                Ok(_) => {
                    notes.push(format!(
                        "no local checkpoints: checkpoint {id} brought back from the cold tier {}",
                        blob.describe()
                    ));
                    return Ok(notes);
                }
                Err(reason) => notes.push(format!("cold checkpoint {id} unusable: {reason}")),
            }
        }
        return Ok(notes);
    }
    for record in local.iter().rev() {
        let damaged: Vec<FileMeta> = record
            .files
            .iter()
            .filter(|meta| verify_file(local_dir, meta).is_err())
            .cloned()
            .collect();
        if damaged.is_empty() {
            return Ok(notes);
        }
        let copies: Vec<(u64, u64)> = usable
            .iter()
            .copied()
            .filter(|&(_, id)| id == record.checkpoint_id)
            .collect();
        let mut reasons = Vec::new();
        for &(epoch, id) in &copies {
            let repaired = read_record(blob, (epoch, id)).and_then(|cold| {
                if cold != *record {
                    return Err(format!(
                        "epoch {epoch}'s copy differs from the local record"
                    ));
                }
                let store = CheckpointStore::open(local_dir).map_err(|e| e.to_string())?;
                fetch_files(&store, blob, epoch, &damaged)
            });
            match repaired {
                Ok(()) => {
                    notes.push(format!(
                        "checkpoint {id}: {} damaged or missing file(s) restored from the cold tier {}",
                        damaged.len(),
                        blob.describe()
                    ));
                    return Ok(notes);
                }
                Err(reason) => reasons.push(reason),
            }
        }
        if copies.is_empty() {
            reasons.push("the cold tier has no usable copy of it".into());
        }
        notes.push(format!(
            "checkpoint {}: damaged locally and not restorable from the cold tier: {}",
            record.checkpoint_id,
            reasons.join("; ")
        ));
    }
    Ok(notes)
}

/// What [`take_over_from_cold`] did: the checkpoint taken over as
/// `(id, cut)` (`None`: the cold tier has no usable one), and why each
/// newer one was unusable.
pub type TakeOver = (Option<(u64, u64)>, Vec<String>);

/// A standby taking over (`weir run --restore-from URL`): the newest usable
/// cold checkpoint that verifies becomes the first of `local_dir`'s
/// (empty) store, without its output lengths: the standby writes its own
/// output, the rows after that checkpoint, while the rows before it are
/// those the failed primary committed. Returns its `(id, cut)`, or `None`
/// if the cold tier has no usable checkpoint; each unusable one is in the
/// notes. The log the primary shipped with it is written into `log_dir`
/// (replacing partitions a killed attempt left), and the next epoch is
/// claimed, fenced at that checkpoint: the failed primary is fenced off.
pub fn take_over_from_cold(
    local_dir: &Path,
    log_dir: &Path,
    blob: &dyn Blob,
) -> Result<TakeOver, StoreError> {
    let store_err = store_error(blob);
    let _tier_lock = epoch::lock_tier(local_dir).map_err(&store_err)?;
    let local = read_commits(local_dir)?;
    if let Some(last) = local.last() {
        return Err(store_err(not_empty(local_dir, last.checkpoint_id)));
    }
    // The newest epoch before anything is read: the claim below is of the
    // one after it, and fails if any writer claimed meanwhile.
    let observed = epoch::newest_epoch(blob).map_err(|e| store_err(e.to_string()))?;
    let usable = epoch::usable_records(blob).map_err(&store_err)?;
    let mut notes = Vec::new();
    for &(epoch, id) in &usable {
        // Its files first (written, not committed), then the log it
        // resumes from, then the claim, and only then the record: a kill
        // before the commit leaves no checkpoint, so the takeover runs again.
        let (mut store, mut record) = match stage_whole(local_dir, blob, (epoch, id)) {
            Ok(staged) => staged,
            Err(reason) => {
                notes.push(format!("cold checkpoint {id} unusable: {reason}"));
                continue;
            }
        };
        record.outputs.clear();
        let resume = (
            record.partitions.len(),
            record.least_resume_offset().unwrap_or(0),
        );
        let fetched = super::log_ship::fetch_log(blob, epoch, log_dir, (resume, true))
            .map_err(|e| store_err(format!("fetching the shipped log: {e}")))?;
        notes.extend(fetched.notes);
        if !fetched.partitions.is_empty() {
            notes.push(format!(
                "fetched the shipped log ({} records): {}",
                fetched.records,
                fetched.partitions.join(", ")
            ));
        }
        if fetched.dead_letter_bytes > 0 {
            notes.push(format!(
                "fetched the shipped dead-letter files ({} bytes)",
                fetched.dead_letter_bytes
            ));
        }
        // Fence the failed primary off before this run emits anything:
        // whatever it copies from now on is ignored, and its sidecar
        // refuses to commit.
        let writer = format!(
            "a standby (pid {}, data dir {})",
            std::process::id(),
            local_dir.display()
        );
        let claim = epoch::claim_epoch_after(blob, observed, id, &writer).map_err(&store_err)?;
        epoch::record_local_epoch(
            local_dir,
            epoch::LOCAL_EPOCH_FILES[2],
            &blob.describe(),
            claim.epoch,
        )
        .map_err(&store_err)?;
        notes.push(format!(
            "claimed epoch {} of {}: writers of older epochs are fenced off",
            claim.epoch,
            blob.describe()
        ));
        let cut = record.cut_time;
        store.commit(record).map_err(|e| store_err(e.to_string()))?;
        return Ok((Some((id, cut)), notes));
    }
    Ok((None, notes))
}

/// A standby cluster's process other than 0: waits for process 0's
/// [`take_over_from_cold`] from `blob` into the shared `local_dir` to
/// commit, and returns the checkpoint it took over as `(id, cut)`.
/// Checked under the tier lock, which a takeover holds throughout, so
/// nothing half taken over is seen. Gives up once the lock has been free
/// with nothing taken over for `idle_limit` (process 0 failed, or never
/// started), or after [`epoch::TIER_LOCK_WAIT`] in all. A data dir holding
/// checkpoints that no takeover from this store recorded is refused at
/// once, as process 0 refuses it.
pub fn await_peer_takeover(
    local_dir: &Path,
    blob: &dyn Blob,
    idle_limit: std::time::Duration,
) -> Result<(u64, u64), StoreError> {
    let store_err = store_error(blob);
    let url = blob.describe();
    let started = std::time::Instant::now();
    let mut last_busy = started;
    loop {
        match epoch::try_lock_tier(local_dir).map_err(&store_err)? {
            None => last_busy = std::time::Instant::now(),
            Some(_tier_lock) => {
                let local = read_commits(local_dir)?;
                if let Some(last) = local.last() {
                    // Exactly the one record a takeover commits (the
                    // sidecar commits no other before every process said
                    // hello): more, or no record of a takeover from this
                    // store, is a data dir of an earlier run.
                    let taken_over = local.len() == 1
                        && epoch::local_epochs(local_dir)
                            .map_err(&store_err)?
                            .iter()
                            .any(|(file, u, _)| *file == epoch::LOCAL_EPOCH_FILES[2] && *u == url);
                    if !taken_over {
                        return Err(store_err(not_empty(local_dir, last.checkpoint_id)));
                    }
                    return Ok((last.checkpoint_id, last.cut_time));
                }
            }
        }
        if last_busy.elapsed() >= idle_limit {
            return Err(store_err(format!(
                "process 0 took nothing over into {} (waited {} s; its own output says why)",
                local_dir.display(),
                started.elapsed().as_secs()
            )));
        }
        if started.elapsed() >= epoch::TIER_LOCK_WAIT {
            return Err(store_err(format!(
                "process 0 did not finish taking over into {} within {} s",
                local_dir.display(),
                epoch::TIER_LOCK_WAIT.as_secs()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn not_empty(local_dir: &Path, newest_id: u64) -> String {
    format!(
        "{} already holds checkpoints (the newest: {newest_id}): a standby takes over into an \
         empty data directory",
        local_dir.display()
    )
}

/// Brings cold checkpoint `id` of `epoch` into the empty local store: its
/// files, then its record as the first of a new commit stream. Returns its
/// cut.
fn fetch_whole(local_dir: &Path, blob: &dyn Blob, (epoch, id): (u64, u64)) -> Result<u64, String> {
    let (mut store, record) = stage_whole(local_dir, blob, (epoch, id))?;
    let cut = record.cut_time;
    store.commit(record).map_err(|e| e.to_string())?;
    Ok(cut)
}

/// The record `id` of `epoch` and its files, fetched and checked into the
/// local store, the record not committed yet.
fn stage_whole(
    local_dir: &Path,
    blob: &dyn Blob,
    (epoch, id): (u64, u64),
) -> Result<(CheckpointStore, CommitRecord), String> {
    let record = read_record(blob, (epoch, id))?;
    let store = CheckpointStore::open(local_dir).map_err(|e| e.to_string())?;
    fetch_files(&store, blob, epoch, &record.files)?;
    Ok((store, record))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::checkpoint::tier::FileBlob;

    /// Commits checkpoint `id` (no files) into the store in `dir`.
    fn commit(dir: &Path, id: u64) {
        let mut store = CheckpointStore::open(dir).unwrap();
        store
            .commit(CommitRecord {
                checkpoint_id: id,
                cut_time: id * 10,
                query_fingerprint: 1,
                workers_total: 1,
                files: Vec::new(),
                partitions: Vec::new(),
                outputs: Vec::new(),
                timing: None,
            })
            .unwrap();
    }

    #[test]
    fn a_peer_waits_for_the_takeover_and_refuses_what_no_takeover_left() {
        let tmp = tempfile::tempdir().unwrap();
        let blob = FileBlob::open(&tmp.path().join("cold")).unwrap();
        let url = blob.describe();
        let idle = Duration::from_millis(100);

        // Nothing taken over and nobody at it: given up once idle.
        let empty = tmp.path().join("empty");
        let error = await_peer_takeover(&empty, &blob, idle).unwrap_err();
        assert!(error.to_string().contains("took nothing over"), "{error}");

        // A checkpoint no takeover from this store recorded.
        let primary = tmp.path().join("primary");
        commit(&primary, 4);
        let error = await_peer_takeover(&primary, &blob, idle).unwrap_err();
        assert!(
            error.to_string().contains("already holds checkpoints"),
            "{error}"
        );

        // Process 0 at work (the lock held) longer than the idle limit,
        // then its takeover committed: waited for and returned.
        let standby = tmp.path().join("standby");
        let held = epoch::try_lock_tier(&standby).unwrap().unwrap();
        let taking_over = {
            let (standby, url) = (standby.clone(), url.clone());
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(400));
                epoch::record_local_epoch(&standby, epoch::LOCAL_EPOCH_FILES[2], &url, 2).unwrap();
                commit(&standby, 7);
                drop(held);
            })
        };
        assert_eq!(await_peer_takeover(&standby, &blob, idle).unwrap(), (7, 70));
        taking_over.join().unwrap();

        // A standby's data dir with a second checkpoint is an earlier run's.
        commit(&standby, 8);
        let error = await_peer_takeover(&standby, &blob, idle).unwrap_err();
        assert!(
            error.to_string().contains("already holds checkpoints"),
            "{error}"
        );
        // As is a takeover recorded from another store.
        let other = tmp.path().join("other");
        commit(&other, 3);
        epoch::record_local_epoch(&other, epoch::LOCAL_EPOCH_FILES[2], "file:///elsewhere", 1)
            .unwrap();
        let error = await_peer_takeover(&other, &blob, idle).unwrap_err();
        assert!(
            error.to_string().contains("already holds checkpoints"),
            "{error}"
        );
    }
}
