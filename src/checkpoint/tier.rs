//! The cold tier of the checkpoint store (`--cold-store URL`): committed
//! checkpoints copied, in commit order, to a blob store, and read back when
//! the local copy is missing or damaged.
//!
//! Layout in the store: `checkpoints/<data file name>` (the local file's
//! bytes, checked against its commit record's size and CRC32C before it is
//! copied) and `commits/<checkpoint id:020>` (one commit record, framed as
//! in the commit stream, with the stream's header first). A record is put
//! only after every file it names is in the store, so a reader never sees
//! a partial checkpoint; the newest [`COLD_RECORDS_KEPT`] records are kept
//! and the files none of them names are deleted.
//!
//! Restore ([`repair_from_cold`]): when the newest local checkpoint does
//! not verify (a data file missing or damaged), its files are fetched from
//! the cold copy of the same record, checked, and written into the local
//! store; when the local store has no commit stream at all, the newest
//! cold checkpoint is brought back whole. Either way loudly.

mod copier;
mod file_blob;
mod s3_blob;

use std::collections::BTreeSet;
use std::path::Path;

pub use copier::{ColdCopier, ColdFigures};
pub use file_blob::FileBlob;
pub use s3_blob::S3Blob;

use crate::checkpoint::format::{
    encode_commit_frame, encode_commits_header, scan_commits, CommitRecord,
};
use crate::checkpoint::store::{read_commits, CheckpointStore, StoreError};

/// Commit records kept in the cold tier (with the files they name).
pub const COLD_RECORDS_KEPT: usize = 3;
const FILES_PREFIX: &str = "checkpoints";
const COMMITS_PREFIX: &str = "commits";

/// A blob store: whole objects by key, each put atomic.
pub trait Blob: Send + Sync + std::fmt::Debug {
    /// Stores `bytes` as `key`, replacing any object there; durable on return.
    fn put(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError>;
    /// The object `key`, or `None`.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError>;
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

fn record_key(checkpoint_id: u64) -> String {
    format!("{COMMITS_PREFIX}/{checkpoint_id:020}")
}

fn file_key(name: &str) -> String {
    format!("{FILES_PREFIX}/{name}")
}

/// The object of one commit record: the stream header and its frame.
fn encode_cold_record(record: &CommitRecord) -> Vec<u8> {
    let mut bytes = encode_commits_header().to_vec();
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

/// What the cold tier holds: its records' ids and its files' names.
#[derive(Clone, Debug, Default)]
pub struct ColdContents {
    /// Record ids, ascending.
    pub records: Vec<u64>,
    /// Data file names.
    pub files: BTreeSet<String>,
}

/// Lists the cold tier.
pub fn cold_contents(blob: &dyn Blob) -> Result<ColdContents, BlobError> {
    let id_of = |key: &str| key.rsplit('/').next().and_then(|n| n.parse::<u64>().ok());
    let mut records: Vec<u64> = blob
        .list(COMMITS_PREFIX)?
        .iter()
        .filter_map(|k| id_of(k))
        .collect();
    records.sort_unstable();
    let files = blob
        .list(FILES_PREFIX)?
        .iter()
        .filter_map(|k| k.rsplit('/').next().map(str::to_owned))
        .collect();
    Ok(ColdContents { records, files })
}

/// Copies `record`'s files that `copied` does not list (read from
/// `local_dir`, checked against the record) and then the record; then drops
/// what no kept record needs. Updates `copied`.
pub fn copy_checkpoint(
    blob: &dyn Blob,
    local_dir: &Path,
    record: &CommitRecord,
    copied: &mut ColdContents,
) -> Result<(), String> {
    for meta in &record.files {
        if copied.files.contains(&meta.name) {
            continue;
        }
        let path = local_dir.join(&meta.name);
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        crate::checkpoint::format::verify_data_file(&bytes, meta)
            .map_err(|e| format!("{}: not copied: {e}", path.display()))?;
        blob.put(&file_key(&meta.name), &bytes)
            .map_err(|e| e.to_string())?;
        copied.files.insert(meta.name.clone());
    }
    blob.put(
        &record_key(record.checkpoint_id),
        &encode_cold_record(record),
    )
    .map_err(|e| e.to_string())?;
    copied.records.push(record.checkpoint_id);
    copied.records.sort_unstable();
    copied.records.dedup();
    drop_unneeded(blob, copied).map_err(|e| e.to_string())
}

/// Deletes the records older than the newest [`COLD_RECORDS_KEPT`], then
/// the files no kept record names (records first: a kept record never
/// names a deleted file).
fn drop_unneeded(blob: &dyn Blob, copied: &mut ColdContents) -> Result<(), BlobError> {
    let keep_from = copied.records.len().saturating_sub(COLD_RECORDS_KEPT);
    for &id in &copied.records[..keep_from] {
        blob.delete(&record_key(id))?;
    }
    copied.records.drain(..keep_from);
    let mut needed = BTreeSet::new();
    for &id in &copied.records {
        let key = record_key(id);
        if let Some(bytes) = blob.get(&key)? {
            if let Ok(record) = decode_cold_record(&key, &bytes) {
                needed.extend(record.files.into_iter().map(|f| f.name));
            }
        }
    }
    let unneeded: Vec<String> = copied.files.difference(&needed).cloned().collect();
    for name in unneeded {
        blob.delete(&file_key(&name))?;
        copied.files.remove(&name);
    }
    Ok(())
}

/// Makes the newest checkpoint of `local_dir` usable from the cold tier
/// when its own files are missing or damaged (see the module doc); returns
/// what it did, one line each, for the run's warnings.
pub fn repair_from_cold(local_dir: &Path, blob: &dyn Blob) -> Result<Vec<String>, StoreError> {
    let store_err = |e: String| StoreError::Cold {
        url: blob.describe(),
        reason: e,
    };
    // Reaching the store at all is checked first: a bad URL or refused
    // credentials fail the run at its start.
    blob.list(COMMITS_PREFIX)
        .map_err(|e| store_err(e.to_string()))?;
    let local = read_commits(local_dir)?;
    let mut notes = Vec::new();
    if local.is_empty() {
        let contents = cold_contents(blob).map_err(|e| store_err(e.to_string()))?;
        for &id in contents.records.iter().rev() {
            match fetch_whole(local_dir, blob, id, false) {
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
        let damaged: Vec<_> = record
            .files
            .iter()
            .filter(|meta| crate::checkpoint::store::verify_file(local_dir, meta).is_err())
            .collect();
        if damaged.is_empty() {
            return Ok(notes);
        }
        let key = record_key(record.checkpoint_id);
        let cold = match blob.get(&key) {
            Ok(Some(bytes)) => decode_cold_record(&key, &bytes),
            Ok(None) => Err(format!("{key} is not in the cold tier")),
            Err(e) => Err(e.to_string()),
        };
        let result = cold.and_then(|cold| {
            if cold != *record {
                return Err(format!("{key} differs from the local record"));
            }
            let mut store = CheckpointStore::open(local_dir).map_err(|e| e.to_string())?;
            for meta in &damaged {
                let bytes = fetch_file(blob, meta)?;
                store
                    .restore_data_file(meta, &bytes)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        });
        match result {
            Ok(()) => {
                notes.push(format!(
                    "checkpoint {}: {} damaged or missing file(s) restored from the cold tier {}",
                    record.checkpoint_id,
                    damaged.len(),
                    blob.describe()
                ));
                return Ok(notes);
            }
            Err(reason) => notes.push(format!(
                "checkpoint {}: damaged locally and not restorable from the cold tier: {reason}",
                record.checkpoint_id
            )),
        }
    }
    Ok(notes)
}

/// A data file from the cold tier, checked against `meta`.
fn fetch_file(
    blob: &dyn Blob,
    meta: &crate::checkpoint::format::FileMeta,
) -> Result<Vec<u8>, String> {
    let key = file_key(&meta.name);
    let bytes = blob
        .get(&key)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{key} is missing"))?;
    crate::checkpoint::format::verify_data_file(&bytes, meta).map_err(|e| format!("{key}: {e}"))?;
    Ok(bytes)
}

/// What [`take_over_from_cold`] did: the checkpoint taken over as
/// `(id, cut)` (`None`: the cold tier has no usable one), and why each
/// newer one was unusable.
pub type TakeOver = (Option<(u64, u64)>, Vec<String>);

/// A standby taking over (`weir run --restore-from URL`): the newest cold
/// checkpoint that verifies becomes the first of `local_dir`'s (empty)
/// store, without its output lengths: the standby writes its own output,
/// the rows after that checkpoint, while the rows before it are those the
/// failed primary committed. Returns its `(id, cut)`, or `None` if the
/// cold tier has no usable checkpoint; each unusable one is in the notes.
pub fn take_over_from_cold(local_dir: &Path, blob: &dyn Blob) -> Result<TakeOver, StoreError> {
    let store_err = |e: String| StoreError::Cold {
        url: blob.describe(),
        reason: e,
    };
    let local = read_commits(local_dir)?;
    if let Some(last) = local.last() {
        return Err(store_err(format!(
            "{} already holds checkpoints (the newest: {}): a standby takes over into an empty data directory",
            local_dir.display(),
            last.checkpoint_id
        )));
    }
    let contents = cold_contents(blob).map_err(|e| store_err(e.to_string()))?;
    let mut notes = Vec::new();
    for &id in contents.records.iter().rev() {
        match fetch_whole(local_dir, blob, id, true) {
            Ok(cut) => return Ok((Some((id, cut)), notes)),
            Err(reason) => notes.push(format!("cold checkpoint {id} unusable: {reason}")),
        }
    }
    Ok((None, notes))
}

/// Brings cold checkpoint `id` into the empty local store: its files, then
/// its record (without its output lengths if `own_output`) as the first of
/// a new commit stream. Returns its cut.
fn fetch_whole(
    local_dir: &Path,
    blob: &dyn Blob,
    id: u64,
    own_output: bool,
) -> Result<u64, String> {
    let key = record_key(id);
    let bytes = blob
        .get(&key)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{key} is missing"))?;
    let mut record = decode_cold_record(&key, &bytes)?;
    if own_output {
        record.outputs.clear();
    }
    let cut = record.cut_time;
    let files: Vec<Vec<u8>> = record
        .files
        .iter()
        .map(|meta| fetch_file(blob, meta))
        .collect::<Result<_, _>>()?;
    let mut store = CheckpointStore::open(local_dir).map_err(|e| e.to_string())?;
    for (meta, bytes) in record.files.iter().zip(&files) {
        store
            .restore_data_file(meta, bytes)
            .map_err(|e| e.to_string())?;
    }
    store.commit(record).map_err(|e| e.to_string())?;
    Ok(cut)
}
