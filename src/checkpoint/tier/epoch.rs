//! Epochs of the cold tier: which writer owns it, and which of its commit
//! records a reader may use. This is the fencing that keeps a stale
//! primary from corrupting what a standby took over.
//!
//! A writer (a sidecar with `--cold-store`) starts by claiming the next
//! epoch: it creates `epochs/<epoch:020>` only if no such object exists
//! (`If-None-Match: *`; a hard link for `file://`), so of two racing
//! claimers one wins and the other claims the one after. The claim names
//! its *fence*: the newest checkpoint the claimer holds (for a standby, the
//! one it took over). Each epoch writes under its own prefix
//! `e<epoch:020>/`, so a stale writer never overwrites or deletes what a
//! newer epoch wrote or references; and a reader takes epoch `E`'s records
//! only up to the smallest fence of the epochs after `E`: whatever a fenced
//! writer copies after the takeover is ignored (refused) even if it lands.
//!
//! The writer checks before each commit record that no newer epoch exists,
//! and stops once one does (its sidecar then refuses to commit). The data
//! dir remembers the epoch its sidecar claimed (`checkpoints/COLD_EPOCH`):
//! a primary restarted after a standby claimed a newer epoch is refused at
//! its start.

use std::path::Path;
use std::time::Duration;

use super::{Blob, BlobError};
use crate::checkpoint::store::TIER_LOCK_FILE_NAME;
use crate::storage::durable::lock_file_within;
use crate::storage::kv_text::{decode_kv, encode_kv};

/// The claims' prefix.
pub const EPOCHS_PREFIX: &str = "epochs";
/// The data dir's records of the epochs it claimed (in the checkpoint
/// store's directory): as the cold tier's writer, as the replica's, and as
/// a standby taking over.
pub const LOCAL_EPOCH_FILES: [&str; 3] = ["COLD_EPOCH", "REPLICA_EPOCH", "TAKEOVER_EPOCH"];
const CLAIM_KIND: &str = "weir-cold-epoch";
const LOCAL_KIND: &str = "weir-cold-writer";
/// The version written (2: a `release` line names the writer); 1 and 2
/// are read.
const FORMAT_VERSION: u32 = 2;

/// One epoch's claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochClaim {
    /// The epoch (from 1).
    pub epoch: u64,
    /// Records of earlier epochs with larger ids are not to be used.
    pub fence_checkpoint_id: u64,
    /// Who claimed it (process and data dir), for messages.
    pub writer: String,
}

fn claim_key(epoch: u64) -> String {
    format!("{EPOCHS_PREFIX}/{epoch:020}")
}

/// The prefix under which epoch `epoch` writes.
pub fn epoch_prefix(epoch: u64) -> String {
    format!("e{epoch:020}")
}

fn encode_claim(claim: &EpochClaim) -> Vec<u8> {
    encode_kv(
        CLAIM_KIND,
        FORMAT_VERSION,
        &[
            ("epoch", claim.epoch.to_string()),
            ("fence_checkpoint_id", claim.fence_checkpoint_id.to_string()),
            ("writer", claim.writer.replace('\n', " ")),
        ],
    )
}

fn decode_claim(key: &str, bytes: &[u8]) -> Result<EpochClaim, String> {
    let at = |(offset, reason): (u64, String)| format!("{key}: at byte {offset}: {reason}");
    let fields = decode_kv(bytes, CLAIM_KIND, FORMAT_VERSION).map_err(at)?;
    Ok(EpochClaim {
        epoch: fields.number("epoch").map_err(at)?,
        fence_checkpoint_id: fields.number("fence_checkpoint_id").map_err(at)?,
        writer: fields.field("writer").map_err(at)?.1.to_owned(),
    })
}

fn epochs_listed(blob: &dyn Blob) -> Result<Vec<u64>, BlobError> {
    super::numbered_keys(blob, EPOCHS_PREFIX)
}

/// The newest claimed epoch (0: none). One listing, nothing read.
pub fn newest_epoch(blob: &dyn Blob) -> Result<u64, BlobError> {
    Ok(epochs_listed(blob)?.last().copied().unwrap_or(0))
}

/// Every claim in the store, oldest first. A claim that does not decode is
/// an error naming it (it may be the fence that matters).
pub fn read_claims(blob: &dyn Blob) -> Result<Vec<EpochClaim>, String> {
    let mut claims = Vec::new();
    for epoch in epochs_listed(blob).map_err(|e| e.to_string())? {
        let key = claim_key(epoch);
        // A claim deleted meanwhile belonged to an epoch being dropped.
        if let Some(bytes) = blob.get(&key).map_err(|e| e.to_string())? {
            let claim = decode_claim(&key, &bytes)?;
            if claim.epoch != epoch {
                return Err(format!("{key}: names epoch {}", claim.epoch));
            }
            claims.push(claim);
        }
    }
    if claims.is_empty() && !blob.list("commits").map_err(|e| e.to_string())?.is_empty() {
        return Err(format!(
            "{} holds a cold tier of layout 1 (commit records under commits/, no epochs), \
             which this weir ({}) does not read: give the job a new store",
            blob.describe(),
            env!("CARGO_PKG_VERSION")
        ));
    }
    Ok(claims)
}

/// Claims epoch `observed_newest + 1`, fenced at `fence_checkpoint_id`,
/// where `observed_newest` is the newest epoch the caller saw *before* it
/// read what it decides on (the store's records, or that it is not
/// fenced). If another writer claimed any epoch since, this claim fails
/// instead of moving on: the caller's decision may be stale (a second
/// standby, or a primary restarting during a takeover), so it stops.
pub fn claim_epoch_after(
    blob: &dyn Blob,
    observed_newest: u64,
    fence_checkpoint_id: u64,
    writer: &str,
) -> Result<EpochClaim, String> {
    let claim = EpochClaim {
        epoch: observed_newest + 1,
        fence_checkpoint_id,
        writer: writer.to_owned(),
    };
    if blob
        .put_new(&claim_key(claim.epoch), &encode_claim(&claim))
        .map_err(|e| e.to_string())?
    {
        return Ok(claim);
    }
    let newest = read_claims(blob)?.pop();
    Err(format!(
        "{}: epoch {} was claimed meanwhile by {}: another writer is taking this job over; \
         not claiming",
        blob.describe(),
        claim.epoch,
        newest.map_or_else(|| "another writer".to_owned(), |c| c.writer)
    ))
}

/// The commit records a reader may use, newest first, as `(epoch, id)`:
/// each epoch's records, newest epoch first, up to the fences of the
/// epochs after it.
pub fn usable_records(blob: &dyn Blob) -> Result<Vec<(u64, u64)>, String> {
    let mut usable = Vec::new();
    let mut limit = u64::MAX;
    for claim in read_claims(blob)?.iter().rev() {
        let mut ids = super::record_ids(blob, claim.epoch).map_err(|e| e.to_string())?;
        ids.retain(|&id| id <= limit);
        usable.extend(ids.into_iter().rev().map(|id| (claim.epoch, id)));
        limit = limit.min(claim.fence_checkpoint_id);
    }
    Ok(usable)
}

/// The stores this data dir claimed epochs in, as `(file, url, epoch)`.
pub fn local_epochs(store_dir: &Path) -> Result<Vec<(&'static str, String, u64)>, String> {
    let mut found = Vec::new();
    for file in LOCAL_EPOCH_FILES {
        let path = store_dir.join(file);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let at = |(offset, reason): (u64, String)| {
            format!("{}: at byte {offset}: {reason}", path.display())
        };
        let fields = decode_kv(&bytes, LOCAL_KIND, FORMAT_VERSION).map_err(at)?;
        let url = fields.field("url").map_err(at)?.1.to_owned();
        found.push((file, url, fields.number("epoch").map_err(at)?));
    }
    Ok(found)
}

/// The newest epoch this data dir claimed in the store at `url`, if it
/// claimed one there.
pub fn local_epoch(store_dir: &Path, url: &str) -> Result<Option<u64>, String> {
    Ok(local_epochs(store_dir)?
        .into_iter()
        .filter(|(_, u, _)| u == url)
        .map(|(_, _, epoch)| epoch)
        .max())
}

/// Records in `file` (one of [`LOCAL_EPOCH_FILES`]) that this data dir
/// claimed `epoch` in `url`.
pub fn record_local_epoch(
    store_dir: &Path,
    file: &str,
    url: &str,
    epoch: u64,
) -> Result<(), String> {
    let path = store_dir.join(file);
    let bytes = encode_kv(
        LOCAL_KIND,
        FORMAT_VERSION,
        &[("url", url.to_owned()), ("epoch", epoch.to_string())],
    );
    crate::storage::durable::write_file_atomically(&path, &bytes).map_err(|e| e.to_string())
}

/// Refuses a data dir that claimed epoch `E` of `blob` when a newer
/// epoch was claimed since: another writer (a standby) took the job over,
/// and this one is stale.
///
/// Returns the newest epoch it saw (0: none), for [`claim_epoch_after`].
pub fn check_not_fenced(store_dir: &Path, blob: &dyn Blob) -> Result<u64, String> {
    let url = blob.describe();
    // Read first: an unreachable store or refused credentials are errors
    // here, at a run's start, even for a data dir that never claimed.
    let claims = read_claims(blob)?;
    let newest_epoch = claims.last().map_or(0, |c| c.epoch);
    let Some(mine) = local_epoch(store_dir, &url)? else {
        return Ok(newest_epoch);
    };
    match claims.last() {
        Some(newest) if newest.epoch > mine => Err(format!(
            "fenced off {url}: this data dir ({}) wrote its epoch {mine}, and epoch {} was \
             claimed since by {} (taking over at checkpoint {}): another writer runs this job \
             now. To make this machine a standby, start it with an empty data dir and \
             --restore-from {url}",
            store_dir.display(),
            newest.epoch,
            newest.writer,
            newest.fence_checkpoint_id
        )),
        _ => Ok(newest_epoch),
    }
}

/// The longest [`lock_tier`] waits: another process's repair of a large
/// checkpoint from the cold tier holds the lock for as long as it fetches.
pub const TIER_LOCK_WAIT: Duration = Duration::from_secs(600);
const TIER_LOCK_POLL: Duration = Duration::from_millis(10);

/// Takes the data dir's tier lock (`TIER_LOCK` in the checkpoint store's
/// directory), waiting up to [`TIER_LOCK_WAIT`]. The processes of a
/// cluster share one data dir: each checks for a fence and repairs from
/// the cold tier under it, and the sidecar claims an epoch and records
/// it locally under it, so no process sees a claim without its local
/// record (and refuses its own data dir as fenced off), and two repairs
/// never write the same files at once. Released when the file is dropped.
/// Never taken twice by one process at once (flock is per open file: a
/// second `lock_tier` would wait for the first for [`TIER_LOCK_WAIT`]).
pub fn lock_tier(store_dir: &Path) -> Result<std::fs::File, String> {
    tier_lock_within(store_dir, TIER_LOCK_WAIT)?.ok_or_else(|| {
        format!(
            "{}: held by another process for over {} s",
            store_dir.join(TIER_LOCK_FILE_NAME).display(),
            TIER_LOCK_WAIT.as_secs()
        )
    })
}

/// As [`lock_tier`], without waiting: `None` while another process holds it.
pub fn try_lock_tier(store_dir: &Path) -> Result<Option<std::fs::File>, String> {
    tier_lock_within(store_dir, Duration::ZERO)
}

fn tier_lock_within(store_dir: &Path, wait: Duration) -> Result<Option<std::fs::File>, String> {
    std::fs::create_dir_all(store_dir).map_err(|e| format!("{}: {e}", store_dir.display()))?;
    let path = store_dir.join(TIER_LOCK_FILE_NAME);
    lock_file_within(&path, (wait, TIER_LOCK_POLL), || {})
        .map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tier::FileBlob;

    /// A claim made on a fresh look at the store.
    fn claim_next_epoch(blob: &dyn Blob, fence: u64, writer: &str) -> Result<EpochClaim, String> {
        claim_epoch_after(blob, newest_epoch(blob).unwrap(), fence, writer)
    }

    #[test]
    fn claims_are_exclusive_and_fences_hide_a_stale_writers_records() {
        let dir = tempfile::tempdir().unwrap();
        let blob = FileBlob::open(&dir.path().join("cold")).unwrap();
        assert!(usable_records(&blob).unwrap().is_empty());
        let first = claim_next_epoch(&blob, 0, "primary").unwrap();
        assert_eq!(first.epoch, 1);
        let put = |epoch: u64, id: u64| {
            blob.put(
                &format!("{}/commits/{id:020}", epoch_prefix(epoch)),
                b"record",
            )
            .unwrap();
        };
        for id in 3..=5 {
            put(1, id);
        }
        // A standby takes over checkpoint 4; the stale primary goes on to 6.
        let second = claim_next_epoch(&blob, 4, "standby").unwrap();
        assert_eq!((second.epoch, second.fence_checkpoint_id), (2, 4));
        put(1, 6);
        assert_eq!(usable_records(&blob).unwrap(), [(1, 4), (1, 3)]);
        put(2, 4);
        put(2, 5);
        assert_eq!(
            usable_records(&blob).unwrap(),
            [(2, 5), (2, 4), (1, 4), (1, 3)]
        );
        // The store refuses a second claim of an epoch; a claim decided on
        // a stale look (epoch 1 newest) is refused, not moved on.
        assert!(!blob.put_new(&claim_key(2), &encode_claim(&first)).unwrap());
        let stale = claim_epoch_after(&blob, 1, 6, "late standby").unwrap_err();
        assert!(
            stale.contains("epoch 2 was claimed meanwhile by standby"),
            "{stale}"
        );
        assert_eq!(claim_next_epoch(&blob, 0, "third").unwrap().epoch, 3);
        assert!(usable_records(&blob).unwrap().is_empty());
        assert_eq!(read_claims(&blob).unwrap()[1], second);
    }

    #[test]
    fn a_restarted_stale_writer_is_refused_and_a_damaged_claim_named() {
        let dir = tempfile::tempdir().unwrap();
        let blob = FileBlob::open(&dir.path().join("cold")).unwrap();
        let store_dir = dir.path().join("checkpoints");
        std::fs::create_dir_all(&store_dir).unwrap();
        assert_eq!(check_not_fenced(&store_dir, &blob).unwrap(), 0);
        let mine = claim_next_epoch(&blob, 0, "primary").unwrap();
        record_local_epoch(
            &store_dir,
            LOCAL_EPOCH_FILES[0],
            &blob.describe(),
            mine.epoch,
        )
        .unwrap();
        check_not_fenced(&store_dir, &blob).unwrap();
        assert_eq!(local_epoch(&store_dir, "file:///elsewhere").unwrap(), None);
        claim_next_epoch(&blob, 9, "pid 7, data dir /standby").unwrap();
        let refused = check_not_fenced(&store_dir, &blob).unwrap_err();
        assert!(
            refused.contains("epoch 2 was claimed since by pid 7, data dir /standby"),
            "{refused}"
        );
        let key = claim_key(2);
        let mut bytes = blob.get(&key).unwrap().unwrap();
        bytes[20] ^= 1;
        blob.put(&key, &bytes).unwrap();
        let damaged = read_claims(&blob).unwrap_err();
        assert!(
            damaged.contains(&key) && damaged.contains("checksum"),
            "{damaged}"
        );
    }

    #[test]
    fn a_store_of_the_first_layout_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let blob = FileBlob::open(&dir.path().join("cold")).unwrap();
        blob.put("commits/00000000000000000001", b"old").unwrap();
        assert!(read_claims(&blob).unwrap_err().contains("layout 1"));
    }
}
