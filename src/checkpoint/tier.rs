//! The cold tier of the checkpoint store (`--cold-store URL`): committed
//! checkpoints copied, in commit order, to a blob store, and read back when
//! the local copy is missing or damaged, or by a standby taking over.
//!
//! Layout in the store (formats.md §12): `epochs/<epoch:020>`, one claim
//! per writer ([`epoch`]: the fencing); and under each epoch's prefix
//! `e<epoch:020>/`, `checkpoints/<data file name>` (the local file's bytes,
//! checked against its commit record's size and CRC32C before it is
//! copied) and `commits/<checkpoint id:020>` (one commit record, framed as
//! in the commit stream, with the stream's header first). A record is put
//! only after every file it names is in its epoch's prefix, so a reader
//! never sees a partial checkpoint; an epoch keeps its newest
//! [`COLD_RECORDS_KEPT`] records and deletes the files none of them names,
//! and once its first record is in, the older epochs' objects.
//!
//! Restore ([`repair_from_cold`], [`take_over_from_cold`]): when the
//! newest local checkpoint does not verify (a data file missing or
//! damaged), its files are fetched from a cold copy of the same record,
//! checked, and written into the local store; when the local store has no
//! commit stream at all, the newest usable cold checkpoint is brought back
//! whole. Either way loudly.

mod copier;
pub mod epoch;
mod fetch;
mod file_blob;
pub mod heartbeat;
pub mod log_ship;
mod restore;
mod s3_blob;
pub mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

pub use copier::{ColdCopier, ColdFigures, CopierRole};
pub use file_blob::FileBlob;
pub use restore::{
    await_peer_takeover, newest_cold_record, repair_from_cold, take_over_from_cold, TakeOver,
};
pub use s3_blob::S3Blob;

use crate::checkpoint::format::{
    encode_commit_frame, encode_commits_header, scan_commits, CommitRecord,
};

/// Commit records kept in the cold tier (with the files they name).
pub const COLD_RECORDS_KEPT: usize = 3;
const FILES_PREFIX: &str = "checkpoints";
const COMMITS_PREFIX: &str = "commits";

/// A blob store: whole objects by key, each put atomic.
pub trait Blob: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` as `key`, replacing any object there; durable on return.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError>;
    /// Stores `bytes` as `key` only if there is no object `key`: `false`
    /// (and nothing written) if there is. Of two racing callers, one wins.
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<bool, BlobError>;
    /// The object `key`, or `None`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError>;
    /// The bytes `range` of the object `key`, or `None` if there is no
    /// such object. A range past the object's end gives fewer bytes or an
    /// error, depending on the store (S3 refuses one that starts past it);
    /// callers check the length. Restores read large files in ranges,
    /// several at once. By default the whole object is read and cut.
    fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Vec<u8>>, BlobError> {
        Ok(self.get(key)?.map(|bytes| {
            let end = usize::try_from(range.end)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let start = usize::try_from(range.start).unwrap_or(usize::MAX).min(end);
            bytes[start..end].to_vec()
        }))
    }
    /// The keys directly under `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError>;
    /// Deletes `key` (absent is fine).
    fn delete(&self, key: &str) -> Result<(), BlobError>;
    /// The store's URL, for messages.
    fn describe(&self) -> String;
}

/// A blob store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BlobError {
    /// A usage error: the URL is not one this binary reaches.
    #[error("cold store {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A key that is not a relative path of plain names.
    #[error("invalid object key {0:?}")]
    BadKey(String),
    /// The store could not be read or written.
    #[error("cold store: {what}: {reason}")]
    Io {
        /// The operation.
        what: String,
        /// The cause.
        reason: String,
    },
}

/// Opens the cold store at `url`: `file:///ABSOLUTE/PATH` (a directory,
/// created if missing) or `s3://BUCKET[/PREFIX]` ([`S3Blob`]).
pub fn open_cold_store(url: &str) -> Result<Box<dyn Blob>, BlobError> {
    let bad = |reason: &str| BlobError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("expected file:///PATH or s3://BUCKET[/PREFIX]"));
    };
    match scheme {
        "file" if rest.starts_with('/') => Ok(Box::new(FileBlob::open(Path::new(rest))?)),
        "file" => Err(bad("the path must be absolute: file:///PATH")),
        "s3" => Ok(Box::new(S3Blob::open(url)?)),
        _ => Err(bad("expected file:///PATH or s3://BUCKET[/PREFIX]")),
    }
}

/// Refuses a key that is not a relative path of plain names
/// (`[A-Za-z0-9._-]+` parts, no `.` or `..`): keys never come from peers,
/// and a store never writes outside its root or prefix.
fn check_key(key: &str) -> Result<(), BlobError> {
    let valid = !key.is_empty()
        && key.split('/').all(|part| {
            !part.is_empty()
                && part != "."
                && part != ".."
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        });
    if valid {
        Ok(())
    } else {
        Err(BlobError::BadKey(key.to_owned()))
    }
}

fn record_key(epoch: u64, checkpoint_id: u64) -> String {
    format!(
        "{}/{COMMITS_PREFIX}/{checkpoint_id:020}",
        epoch::epoch_prefix(epoch)
    )
}

fn file_key(epoch: u64, name: &str) -> String {
    format!("{}/{FILES_PREFIX}/{name}", epoch::epoch_prefix(epoch))
}

/// The object of one commit record: the stream header and its frame.
fn encode_cold_record(record: &CommitRecord) -> Vec<u8> {
    let mut bytes = encode_commits_header();
    bytes.extend_from_slice(&encode_commit_frame(record));
    bytes
}

fn decode_cold_record(key: &str, bytes: &[u8]) -> Result<CommitRecord, String> {
    let scan = scan_commits(bytes).map_err(|e| format!("{key}: {e}"))?;
    match (scan.records.as_slice(), scan.torn) {
        ([record], None) => Ok(record.clone()),
        (_, Some(torn)) => Err(format!("{key}: cut short: {torn}")),
        (records, None) => Err(format!("{key}: {} records, not one", records.len())),
    }
}

/// What one epoch of the cold tier holds: its records' ids and its files'
/// names.
#[derive(Clone, Debug, Default)]
pub struct ColdContents {
    /// The epoch.
    pub epoch: u64,
    /// Its records by id (`None`: the object does not decode; no reader
    /// uses it).
    pub records: BTreeMap<u64, Option<CommitRecord>>,
    /// Data file names.
    pub files: BTreeSet<String>,
    /// Whether the older epochs' objects are gone.
    pub older_dropped: bool,
    /// What it holds of the log.
    pub log: log_ship::ShippedLog,
}

/// The numbers that name the objects directly under `prefix` (epochs,
/// checkpoint ids), ascending; other names are skipped.
fn numbered_keys(blob: &dyn Blob, prefix: &str) -> Result<Vec<u64>, BlobError> {
    let mut numbers: Vec<u64> = blob
        .list(prefix)?
        .iter()
        .filter_map(|k| k.rsplit('/').next().and_then(|n| n.parse().ok()))
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// The commit record ids of epoch `epoch`, ascending.
fn record_ids(blob: &dyn Blob, epoch: u64) -> Result<Vec<u64>, BlobError> {
    numbered_keys(
        blob,
        &format!("{}/{COMMITS_PREFIX}", epoch::epoch_prefix(epoch)),
    )
}

/// Lists epoch `epoch` of the cold tier.
pub fn cold_contents(blob: &dyn Blob, epoch: u64) -> Result<ColdContents, BlobError> {
    let prefix = epoch::epoch_prefix(epoch);
    let mut records = BTreeMap::new();
    for id in record_ids(blob, epoch)? {
        let key = record_key(epoch, id);
        let record = blob.get(&key)?;
        records.insert(id, record.and_then(|b| decode_cold_record(&key, &b).ok()));
    }
    let files = blob
        .list(&format!("{prefix}/{FILES_PREFIX}"))?
        .iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_owned))
        .collect();
    let log = log_ship::shipped_log(blob, epoch).map_err(|reason| BlobError::Io {
        what: format!("listing the shipped log of epoch {epoch}"),
        reason,
    })?;
    Ok(ColdContents {
        epoch,
        records,
        files,
        older_dropped: false,
        log,
    })
}

/// Why a copy did not happen.
#[derive(Debug)]
pub enum CopyError {
    /// A newer epoch was claimed: this writer is fenced off for good.
    Fenced {
        /// The newest epoch.
        newest_epoch: u64,
    },
    /// Anything else: retried.
    Failed(String),
}

/// Copies `record`'s files that `copied` does not list (read from
/// `local_dir`, checked against the record) into `copied`'s epoch, then,
/// unless a newer epoch was claimed, the record; then drops what no kept
/// record needs. Updates `copied`; returns the log it shipped
/// ([`log_ship`]). Files are read through `source`, once for all copiers.
pub fn copy_checkpoint(
    blob: &dyn Blob,
    (local_dir, log_dir): (&Path, &Path),
    record: &CommitRecord,
    copied: &mut ColdContents,
    source: &source::LocalSource,
) -> Result<log_ship::Shipped, CopyError> {
    let failed = |e: String| CopyError::Failed(e);
    let epoch = copied.epoch;
    let not_fenced = || match epoch::newest_epoch(blob) {
        Ok(newest_epoch) if newest_epoch > epoch => Err(CopyError::Fenced { newest_epoch }),
        Ok(_) => Ok(()),
        Err(e) => Err(failed(e.to_string())),
    };
    for meta in &record.files {
        if copied.files.contains(&meta.name) {
            continue;
        }
        let path = local_dir.join(&meta.name);
        let key = source::SourceKey::File(meta.name.clone(), meta.crc32c);
        let read = source.get_or_read(key, |buffer| {
            std::fs::File::open(&path)
                .and_then(|mut file| std::io::Read::read_to_end(&mut file, buffer))
                .map_err(|e| failed(format!("{}: {e}", path.display())))?;
            crate::checkpoint::format::verify_data_file(buffer, meta)
                .map_err(|e| failed(format!("{}: not copied: {e}", path.display())))?;
            Ok(0)
        })?;
        blob.put(&file_key(epoch, &meta.name), &read.bytes)
            .map_err(|e| failed(e.to_string()))?;
        source.recycle(read);
        copied.files.insert(meta.name.clone());
    }
    // The log the checkpoint resumes from, up to what is complete now.
    let keep_from = copied.least_resume_offset();
    let shipped = log_ship::ship_log(blob, (epoch, log_dir, keep_from), &mut copied.log, source)
        .map_err(failed)?;
    not_fenced()?;
    blob.put(
        &record_key(epoch, record.checkpoint_id),
        &encode_cold_record(record),
    )
    .map_err(|e| failed(e.to_string()))?;
    // Put after a claim raced the check above: the record is not used
    // (it is past the new epoch's fence), and this writer must not delete
    // the older epochs, which may hold the only usable records.
    not_fenced()?;
    copied
        .records
        .insert(record.checkpoint_id, Some(record.clone()));
    drop_unneeded(blob, copied).map_err(|e| failed(e.to_string()))?;
    if !copied.older_dropped {
        drop_older_epochs(blob, epoch).map_err(|e| failed(e.to_string()))?;
        copied.older_dropped = true;
    }
    Ok(shipped)
}

/// Deletes the records older than the newest [`COLD_RECORDS_KEPT`], then
/// the files no kept record names (records first: a kept record never
/// names a deleted file).
fn drop_unneeded(blob: &dyn Blob, copied: &mut ColdContents) -> Result<(), BlobError> {
    let epoch = copied.epoch;
    while copied.records.len() > COLD_RECORDS_KEPT {
        let Some((id, _)) = copied.records.pop_first() else {
            break;
        };
        blob.delete(&record_key(epoch, id))?;
    }
    let needed: BTreeSet<&String> = copied
        .records
        .values()
        .flatten()
        .flat_map(|record| record.files.iter().map(|f| &f.name))
        .collect();
    let unneeded: Vec<String> = copied
        .files
        .iter()
        .filter(|name| !needed.contains(name))
        .cloned()
        .collect();
    for name in unneeded {
        blob.delete(&file_key(epoch, &name))?;
        copied.files.remove(&name);
    }
    Ok(())
}

impl ColdContents {
    /// The least offset any kept record resumes a partition from (the
    /// shipped log below it is not needed; `u64::MAX` with no record).
    pub fn least_resume_offset(&self) -> u64 {
        self.records
            .values()
            .flatten()
            .filter_map(CommitRecord::least_resume_offset)
            .min()
            .unwrap_or(u64::MAX)
    }
}

/// Deletes the objects of the epochs before `epoch` (records, then files,
/// then the claim), once `epoch` holds a record: readers no longer need
/// them, and a fenced writer's later puts there are ignored anyway.
fn drop_older_epochs(blob: &dyn Blob, epoch: u64) -> Result<(), BlobError> {
    for older in epoch::read_claims(blob)
        .map_err(|reason| BlobError::Io {
            what: "reading the epoch claims".into(),
            reason,
        })?
        .iter()
        .map(|c| c.epoch)
        .filter(|&e| e < epoch)
    {
        let prefix = epoch::epoch_prefix(older);
        for part in [COMMITS_PREFIX, FILES_PREFIX, log_ship::LOG_PREFIX] {
            for key in blob.list(&format!("{prefix}/{part}"))? {
                blob.delete(&key)?;
            }
        }
        blob.delete(&format!("{prefix}/{}", heartbeat::HEARTBEAT))?;
        blob.delete(&format!("{}/{older:020}", epoch::EPOCHS_PREFIX))?;
    }
    Ok(())
}
