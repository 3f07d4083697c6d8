//! Log shipping: the input log copied to the cold tier beside the
//! checkpoints, so a standby elsewhere replays what the primary read after
//! its newest checkpoint without the primary's inputs.
//!
//! Before each commit record, the copier ships every log partition's
//! complete records that its epoch does not hold yet, as **chunks** under
//! `e<epoch>/log/`: `<topic>.<partition>.<first:020>-<end:020>.seg`, each a
//! valid log segment (formats.md §1) whose base offset is `first` and which
//! holds the records `first..end`, at most [`MAX_CHUNK_BYTES`] each. A
//! record is in a chunk only once it is complete in the local log, and a
//! complete record never changes (a stream source's restart matches what
//! follows its `POSITION`, byte for byte), so a chunk never needs to be
//! copied again. The topics' `MANIFEST`, the partitions' `INGEST` markers
//! and a stream source's `POSITION` go beside them (`<topic>.MANIFEST`,
//! `<topic>.<p>.INGEST`, `<topic>.<p>.POSITION`; a `POSITION` read before
//! the chunks and put after them, so it never counts a record the store
//! does not hold: a standby's stream source continues from it) when
//! they change, and so do the committed bytes of a stream source's
//! dead-letter file ([`dead_letters`]). Chunks wholly below both the local log's first offset
//! (retention deleted those segments) and every offset a commit record
//! kept in the store resumes from (a restore that falls back to an older
//! record replays from there) are deleted.
//!
//! A standby ([`fetch_log`]) writes the chunks of the epoch it takes over
//! into its log as segments, verified record by record; the chunks of a
//! partition are contiguous by construction, and a gap (local retention ran
//! ahead of a long store outage) keeps only the run after it.

use std::collections::BTreeMap;
use std::path::Path;

use self::dead_letters::{fetch_dead_letters, parse_piece, ship_dead_letters, ShippedDeadLetters};
use super::source::{LocalSource, SourceKey};
use super::{epoch::epoch_prefix, Blob};
use crate::ingest::stream::position::SourcePosition;
use crate::log::format::{encode_segment_header, list_segments, segment_path};
use crate::log::{list_partitions, partition_dir, scan_segment, validate_topic, PartitionReader};
use crate::storage::durable::{create_dir_all_durably, write_file_atomically};

/// The largest chunk object.
pub const MAX_CHUNK_BYTES: usize = 64 << 20;
/// The log's part of an epoch's prefix.
pub(super) const LOG_PREFIX: &str = "log";
const MANIFEST: &str = "MANIFEST";
const INGEST: &str = "INGEST";
const POSITION: &str = "POSITION";
/// The partitions' metadata files shipped beside their chunks.
const PARTITION_META: [&str; 2] = [INGEST, POSITION];

mod dead_letters;

/// One chunk: records `first..end` of a partition.
type Chunk = (u64, u64);
type PartitionKey = (String, u32);

/// What one epoch of the cold tier holds of the log.
#[derive(Clone, Debug, Default)]
pub struct ShippedLog {
    chunks: BTreeMap<PartitionKey, Vec<Chunk>>,
    /// Metadata objects shipped, with the CRC32C of their bytes.
    meta: BTreeMap<String, u32>,
    dead_letters: ShippedDeadLetters,
}

/// What one round of shipping did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Shipped {
    /// Records shipped.
    pub records: u64,
    /// Bytes of chunks (and dead-letter pieces) put.
    pub bytes: u64,
}

fn log_prefix(epoch: u64) -> String {
    format!("{}/{LOG_PREFIX}", epoch_prefix(epoch))
}

fn chunk_name(topic: &str, partition: u32, (first, end): Chunk) -> String {
    format!("{topic}.{partition}.{first:020}-{end:020}.seg")
}

/// A parsed object name of the log prefix.
enum LogObject {
    Chunk(PartitionKey, Chunk),
    Manifest(String),
    /// `INGEST` or `POSITION` of a partition.
    PartitionMeta(PartitionKey, &'static str),
}

fn parse_object(name: &str) -> Option<LogObject> {
    if let Some(topic) = name.strip_suffix(&format!(".{MANIFEST}")) {
        return Some(LogObject::Manifest(topic.to_owned()));
    }
    for file in PARTITION_META {
        if let Some(stem) = name.strip_suffix(&format!(".{file}")) {
            let (topic, partition) = stem.rsplit_once('.')?;
            let key = (topic.to_owned(), partition.parse().ok()?);
            return Some(LogObject::PartitionMeta(key, file));
        }
    }
    let stem = name.strip_suffix(".seg")?;
    let mut parts = stem.rsplitn(3, '.');
    let range = parts.next()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?;
    let (first, end) = range.split_once('-')?;
    let chunk = (first.parse().ok()?, end.parse().ok()?);
    (chunk.0 < chunk.1).then(|| LogObject::Chunk((topic.to_owned(), partition), chunk))
}

/// Lists what epoch `epoch` holds of the log.
pub fn shipped_log(blob: &dyn Blob, epoch: u64) -> Result<ShippedLog, String> {
    let mut shipped = ShippedLog::default();
    for key in blob.list(&log_prefix(epoch)).map_err(|e| e.to_string())? {
        let name = key.rsplit('/').next().unwrap_or_default();
        if let Some(LogObject::Chunk(partition, chunk)) = parse_object(name) {
            shipped.chunks.entry(partition).or_default().push(chunk);
        } else if let Some((file, piece)) = parse_piece(name) {
            shipped.dead_letters.listed(file, piece);
        }
    }
    for chunks in shipped.chunks.values_mut() {
        chunks.sort_unstable();
    }
    Ok(shipped)
}

/// The topics of the log under `log_dir` (directories with valid names).
fn topics(log_dir: &Path) -> Result<Vec<String>, String> {
    let entries = match std::fs::read_dir(log_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", log_dir.display())),
    };
    let mut topics: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|t| validate_topic(t).is_ok())
        .collect();
    topics.sort();
    Ok(topics)
}

/// The bytes of the metadata file `path`, if there is one.
fn read_meta(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Puts metadata `bytes` as `name` unless they are shipped unchanged.
fn ship_meta(
    blob: &dyn Blob,
    epoch: u64,
    (name, bytes): (String, Option<Vec<u8>>),
    shipped: &mut ShippedLog,
) -> Result<(), String> {
    let Some(bytes) = bytes else {
        return Ok(());
    };
    let crc = crc32c::crc32c(&bytes);
    if shipped.meta.get(&name) != Some(&crc) {
        blob.put(&format!("{}/{name}", log_prefix(epoch)), &bytes)
            .map_err(|e| e.to_string())?;
        shipped.meta.insert(name, crc);
    }
    Ok(())
}

/// Ships the log under `log_dir` (see the module doc), reading each chunk
/// through `source` (once for all copiers). Chunks that end at or below
/// `keep_from` (the least offset a record kept in the store resumes from)
/// and below the local log are deleted.
pub fn ship_log(
    blob: &dyn Blob,
    (epoch, log_dir, keep_from): (u64, &Path, u64),
    shipped: &mut ShippedLog,
    source: &LocalSource,
) -> Result<Shipped, String> {
    let mut done = Shipped::default();
    for topic in topics(log_dir)? {
        let topic_dir = log_dir.join(&topic);
        let manifest = read_meta(&topic_dir.join(MANIFEST))?;
        ship_meta(
            blob,
            epoch,
            (format!("{topic}.{MANIFEST}"), manifest),
            shipped,
        )?;
        for partition in list_partitions(log_dir, &topic).map_err(|e| e.to_string())? {
            let dir = partition_dir(log_dir, &topic, partition);
            // Read before the log: a stream's `POSITION` never counts a
            // record the chunks shipped next do not hold (it is written
            // after its records), and it is put after them.
            let metas = PARTITION_META
                .iter()
                .map(|file| {
                    let name = format!("{topic}.{partition}.{file}");
                    Ok((name, read_meta(&dir.join(file))?))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let key = (topic.clone(), partition);
            let limits = (epoch, MAX_CHUNK_BYTES, keep_from);
            let shipped_now = ship_partition(blob, limits, (&dir, &key), shipped, source)?;
            done.records += shipped_now.records;
            done.bytes += shipped_now.bytes;
            if let Some(position) = metas.iter().find_map(|(name, bytes)| {
                name.ends_with(&format!(".{POSITION}"))
                    .then_some(bytes.as_deref())
                    .flatten()
            }) {
                let prefix = log_prefix(epoch);
                done.bytes += ship_dead_letters(
                    blob,
                    (&prefix, log_dir),
                    (&key, position),
                    &mut shipped.dead_letters,
                )?;
            }
            for meta in metas {
                ship_meta(blob, epoch, meta, shipped)?;
            }
        }
    }
    Ok(done)
}

fn ship_partition(
    blob: &dyn Blob,
    (epoch, max_chunk_bytes, keep_from): (u64, usize, u64),
    (dir, key): (&Path, &PartitionKey),
    shipped: &mut ShippedLog,
    source: &LocalSource,
) -> Result<Shipped, String> {
    let Some(&first_local) = list_segments(dir).map_err(|e| e.to_string())?.first() else {
        return Ok(Shipped::default());
    };
    let prefix = log_prefix(epoch);
    let chunks = shipped.chunks.entry(key.clone()).or_default();
    // Chunks that neither the local log nor a kept record reaches are not
    // needed; a gap (shipped end below the local start) starts a new run.
    let shipped_end = chunks.last().map_or(0, |c| c.1);
    let obsolete: Vec<Chunk> = chunks
        .iter()
        .copied()
        .filter(|c| c.1 <= first_local.min(keep_from) || shipped_end < first_local)
        .collect();
    for chunk in &obsolete {
        blob.delete(&format!("{prefix}/{}", chunk_name(&key.0, key.1, *chunk)))
            .map_err(|e| e.to_string())?;
        chunks.retain(|c| c != chunk);
    }
    let mut first = chunks.last().map_or(first_local, |c| c.1).max(first_local);
    let mut done = Shipped::default();
    loop {
        let source_key = SourceKey::Chunk(key.0.clone(), key.1, first);
        let read = source.get_or_read(source_key, |buffer| {
            read_chunk(dir, first, max_chunk_bytes, buffer).map_err(|e| e.to_string())
        })?;
        let end = read.end;
        if end == first {
            return Ok(done);
        }
        blob.put(
            &format!("{prefix}/{}", chunk_name(&key.0, key.1, (first, end))),
            &read.bytes,
        )
        .map_err(|e| e.to_string())?;
        chunks.push((first, end));
        done.records += end - first;
        done.bytes += read.bytes.len() as u64;
        let full = read.bytes.len() >= max_chunk_bytes;
        source.recycle(read);
        if !full {
            // The end of the data: what a writer appends meanwhile waits
            // for the next round (else each put, as long as an fsync, cut
            // a chunk of the few records appended during it).
            return Ok(done);
        }
        first = end;
    }
}

/// Reads the complete records of the partition in `dir` from offset
/// `first` into `bytes` as a segment based at `first`, up to about
/// `max_bytes`; returns the offset after the last record read.
fn read_chunk(
    dir: &Path,
    first: u64,
    max_bytes: usize,
    bytes: &mut Vec<u8>,
) -> Result<u64, crate::log::LogError> {
    let mut reader = PartitionReader::open(dir, first)?;
    bytes.extend_from_slice(&encode_segment_header(first));
    while bytes.len() < max_bytes {
        // The frame as the local segment holds it (verified by the
        // reader): no checksum computed again.
        let Some((_, frame)) = reader.next_frame()? else {
            break;
        };
        bytes.extend_from_slice(frame);
    }
    let end = reader.next_offset();
    if end == first {
        bytes.clear();
    }
    Ok(end)
}

/// What [`fetch_log`] brought back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    /// Partitions written, as `topic/partition: first..end`.
    pub partitions: Vec<String>,
    /// Records written.
    pub records: u64,
    /// Bytes of dead-letter files written.
    pub dead_letter_bytes: u64,
    /// Why some chunks were left out.
    pub notes: Vec<String>,
}

/// Writes the log that epoch `epoch` of the cold tier holds into the log
/// under `log_dir`, each chunk verified record by record; a partition (or
/// metadata file) that exists locally is replaced if `replace`, else left
/// alone with a note (a takeover replaces: what a killed attempt left is
/// not the log of the checkpoint it takes now). `resume` is what the
/// checkpoint to continue from says: how many partitions it lists and
/// their least resume offset. When it lists as many partitions as the
/// shipped log has, it lists each of them (a run reads every partition of
/// its topics), and the chunks that end at or below that offset are left
/// out: nothing resumes before it. Otherwise everything is fetched (a
/// partition a checkpoint does not list resumes at 0), and so is every
/// partition with a stream `POSITION` (its restart reads from there).
pub fn fetch_log(
    blob: &dyn Blob,
    epoch: u64,
    log_dir: &Path,
    (resume, replace): ((usize, u64), bool),
) -> Result<Fetched, String> {
    let prefix = log_prefix(epoch);
    let mut fetched = Fetched::default();
    let mut chunks: BTreeMap<PartitionKey, Vec<Chunk>> = BTreeMap::new();
    let mut meta = Vec::new();
    let mut dead_letter_pieces = Vec::new();
    // The stream partitions' `POSITION` objects: key and partition.
    let mut positions = Vec::new();
    for key in blob.list(&prefix).map_err(|e| e.to_string())? {
        let name = key.rsplit('/').next().unwrap_or_default().to_owned();
        match parse_object(&name) {
            Some(LogObject::Chunk(partition, chunk)) => {
                chunks.entry(partition).or_default().push(chunk);
            }
            Some(LogObject::Manifest(topic)) => {
                meta.push((key, log_dir.join(topic).join(MANIFEST)));
            }
            Some(LogObject::PartitionMeta((topic, p), file)) => {
                let path = partition_dir(log_dir, &topic, p).join(file);
                if file == POSITION {
                    positions.push((key.clone(), (topic, p)));
                }
                meta.push((key, path));
            }
            None => dead_letter_pieces.extend(parse_piece(&name)),
        }
    }
    let from_offset = if resume.0 == chunks.len() {
        resume.1
    } else {
        0
    };
    // A stream partition's `POSITION` may be behind the checkpoint's
    // resume offset (the engine reads records before the source commits
    // them), and its restart reads the log from the position: all of it.
    let with_position: std::collections::BTreeSet<&PartitionKey> =
        positions.iter().map(|(_, partition)| partition).collect();
    // The dead letters first, all checked against the shipped `POSITION`s
    // before any partition is replaced.
    // (Their bytes are kept: they are written with the other metadata.)
    let mut committed = Vec::new();
    let mut position_bytes = BTreeMap::new();
    for (key, partition) in &positions {
        if let Some(bytes) = blob.get(key).map_err(|e| e.to_string())? {
            let position = SourcePosition::decode(&bytes)
                .map_err(|(offset, reason)| format!("{key} at byte {offset}: {reason}"))?;
            committed.push((partition.clone(), position.dead_letter_len_bytes));
            position_bytes.insert(key.clone(), bytes);
        }
    }
    let (dead_letter_bytes, notes) = fetch_dead_letters(
        blob,
        &prefix,
        (dead_letter_pieces, &committed),
        (log_dir, replace),
    )?;
    fetched.dead_letter_bytes = dead_letter_bytes;
    fetched.notes.extend(notes);
    for ((topic, partition), mut list) in chunks {
        let from_offset = if with_position.contains(&(topic.clone(), partition)) {
            0
        } else {
            from_offset
        };
        validate_topic(&topic).map_err(|e| e.to_string())?;
        let dir = partition_dir(log_dir, &topic, partition);
        if dir.exists() && !replace {
            fetched.notes.push(format!(
                "{}: exists locally; its shipped log is not fetched",
                dir.display()
            ));
            continue;
        }
        list.sort_unstable();
        // (The last chunk stays in any case: the partition exists, up to
        // its end.)
        let needed_from = list
            .iter()
            .position(|c| c.1 > from_offset)
            .unwrap_or(list.len() - 1);
        list.drain(..needed_from);
        // The run after the last gap.
        let start = list
            .windows(2)
            .rposition(|w| w[0].1 != w[1].0)
            .map_or(0, |i| i + 1);
        if start > 0 {
            fetched.notes.push(format!(
                "{topic}/{partition}: the shipped log has a gap before offset {}; fetched from there",
                list[start].0
            ));
        }
        let tmp = dir.with_extension("tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        create_dir_all_durably(&tmp).map_err(|e| e.to_string())?;
        for &(first, end) in &list[start..] {
            let key = format!("{prefix}/{}", chunk_name(&topic, partition, (first, end)));
            let bytes = blob
                .get(&key)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{key} is missing"))?;
            let path = segment_path(&tmp, first);
            write_file_atomically(&path, &bytes).map_err(|e| e.to_string())?;
            let scan = scan_segment(&path, first, u64::MAX).map_err(|e| format!("{key}: {e}"))?;
            if scan.records != end - first || scan.partial_bytes > 0 {
                return Err(format!(
                    "{key}: holds {} complete records and {} stray bytes, not records {first}..{end}",
                    scan.records, scan.partial_bytes
                ));
            }
            fetched.records += end - first;
        }
        if dir.exists() {
            fetched
                .notes
                .push(format!("{}: replaced by the shipped log", dir.display()));
            crate::storage::durable::remove_dir_all_durably(&dir).map_err(|e| e.to_string())?;
        }
        crate::storage::durable::rename_durably(&tmp, &dir).map_err(|e| e.to_string())?;
        fetched.partitions.push(format!(
            "{topic}/{partition}: {}..{}",
            list[start].0,
            list.last().map_or(0, |c| c.1)
        ));
    }
    for (key, path) in meta {
        if (path.exists() && !replace) || !path.parent().is_some_and(Path::exists) {
            continue;
        }
        let bytes = match position_bytes.remove(&key) {
            Some(bytes) => Some(bytes),
            None => blob.get(&key).map_err(|e| e.to_string())?,
        };
        if let Some(bytes) = bytes {
            write_file_atomically(&path, &bytes).map_err(|e| e.to_string())?;
        }
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests;
