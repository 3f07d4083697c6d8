//! A stream source's dead-letter file shipped beside its partition's log,
//! so a standby that continues the stream has the rows of the malformed
//! messages the primary committed (they are not in the log).
//!
//! Only the committed bytes are shipped: the file up to the
//! `dead_letter_len_bytes` of the partition's `POSITION` that is put after
//! them (bytes past it are cut when the source restarts, and written again
//! as its messages are read again). Committed bytes never change, so each
//! round ships only what the committed length grew by, as a **piece**
//! `<file>.<from:020>-<to:020>.<crc32c:08x>.dead` of the bytes
//! `from..to`. A file with [`MAX_PIECES_PER_FILE`] pieces is shipped whole
//! as one piece `0..len` at its next growth, and its other pieces are
//! deleted after it is put, so the store holds a bounded number of objects
//! per file whatever the run's length. A standby reads the pieces that
//! cover the file from byte 0 (the longest at each step), checks each
//! one's length and checksum, and writes the file whole.
//!
//! Only the default files (`<data>/dead-letter/<topic>-source-<p>.csv` of
//! a Kafka source, `<topic>-source.csv` of a NATS source) are known to the
//! sidecar; a file put elsewhere by `--dead-letter` is not shipped, and
//! the sidecar says so once per partition.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::super::Blob;
use super::PartitionKey;
use crate::ingest::stream::dead_letter::{
    default_file_name, default_partition_file_name, DEAD_LETTER_DIR_NAME,
};
use crate::ingest::stream::position::SourcePosition;
use crate::storage::durable::{create_dir_all_durably, write_file_atomically};

/// The pieces a file may have before it is shipped whole.
pub const MAX_PIECES_PER_FILE: usize = 16;
const SUFFIX: &str = ".dead";

/// Bytes `from..to` of a dead-letter file, with their CRC32C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Piece {
    from: u64,
    to: u64,
    crc32c: u32,
}

/// What one epoch of the store holds of the dead-letter files.
#[derive(Clone, Debug, Default)]
pub(super) struct ShippedDeadLetters {
    /// Pieces by file name.
    pieces: BTreeMap<String, Vec<Piece>>,
    /// Partitions whose dead letters are not at a default path (told once).
    elsewhere: BTreeSet<PartitionKey>,
}

/// The data dir's dead-letter directory, beside its log directory.
pub(super) fn dead_letter_dir(log_dir: &Path) -> PathBuf {
    log_dir
        .parent()
        .unwrap_or(Path::new("."))
        .join(DEAD_LETTER_DIR_NAME)
}

fn piece_name(file: &str, piece: Piece) -> String {
    format!(
        "{file}.{:020}-{:020}.{:08x}{SUFFIX}",
        piece.from, piece.to, piece.crc32c
    )
}

/// A file name the sidecar ships and a standby writes: one plain name.
fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The file and piece an object name of the log prefix stands for, if it
/// is a piece.
pub(super) fn parse_piece(name: &str) -> Option<(String, Piece)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let mut parts = stem.rsplitn(3, '.');
    let crc32c = u32::from_str_radix(parts.next()?, 16).ok()?;
    let (from, to) = parts.next()?.split_once('-')?;
    let file = parts.next()?;
    let piece = Piece {
        from: from.parse().ok()?,
        to: to.parse().ok()?,
        crc32c,
    };
    (valid_file_name(file) && piece.from < piece.to).then(|| (file.to_owned(), piece))
}

impl ShippedDeadLetters {
    /// Notes a piece listed in the store.
    pub(super) fn listed(&mut self, file: String, piece: Piece) {
        let pieces = self.pieces.entry(file).or_default();
        pieces.push(piece);
        pieces.sort_unstable();
    }

    /// The end of the bytes the pieces of `file` cover from 0.
    fn shipped_len_bytes(&self, file: &str) -> u64 {
        self.pieces.get(file).map_or(0, |p| cover(p).1)
    }
}

/// The pieces covering a file from byte 0, the longest first at each step,
/// and the end they reach.
fn cover(pieces: &[Piece]) -> (Vec<Piece>, u64) {
    let mut chosen = Vec::new();
    let mut end = 0;
    while let Some(next) = pieces.iter().filter(|p| p.from == end).max_by_key(|p| p.to) {
        chosen.push(*next);
        end = next.to;
    }
    (chosen, end)
}

/// The default dead-letter file of a partition that exists, if one does.
fn default_file(dir: &Path, (topic, partition): &PartitionKey) -> Option<String> {
    [
        default_partition_file_name(topic, *partition),
        default_file_name(topic),
    ]
    .into_iter()
    .find(|name| dir.join(name).is_file())
}

/// Ships the committed bytes of `key`'s dead-letter file that the store
/// lacks: up to the dead-letter length of `position` (the partition's
/// `POSITION` bytes, read before the file and put after the pieces).
/// Returns the bytes put.
pub(super) fn ship_dead_letters(
    blob: &dyn Blob,
    (prefix, log_dir): (&str, &Path),
    (key, position): (&PartitionKey, &[u8]),
    shipped: &mut ShippedDeadLetters,
) -> Result<u64, String> {
    let committed = SourcePosition::decode(position)
        .map_err(|(offset, reason)| {
            format!("{}/{}/POSITION at byte {offset}: {reason}", key.0, key.1)
        })?
        .dead_letter_len_bytes;
    if committed == 0 {
        return Ok(0);
    }
    let dir = dead_letter_dir(log_dir);
    let Some(file) = default_file(&dir, key) else {
        if shipped.elsewhere.insert(key.clone()) {
            tracing::warn!(
                topic = %key.0,
                partition = key.1,
                "the partition's dead letters are not in {}; they are not shipped",
                dir.display()
            );
        }
        return Ok(0);
    };
    let shipped_end = shipped.shipped_len_bytes(&file);
    if shipped_end >= committed {
        return Ok(0);
    }
    let pieces = shipped.pieces.entry(file.clone()).or_default();
    let whole = pieces.len() >= MAX_PIECES_PER_FILE;
    let from = if whole { 0 } else { shipped_end };
    let bytes = read_range(&dir.join(&file), from, committed)?;
    let piece = Piece {
        from,
        to: committed,
        crc32c: crc32c::crc32c(&bytes),
    };
    blob.put(&format!("{prefix}/{}", piece_name(&file, piece)), &bytes)
        .map_err(|e| e.to_string())?;
    if whole {
        // After the whole file is in the store: a failure between the two
        // leaves pieces that the whole one covers.
        for old in std::mem::take(pieces) {
            blob.delete(&format!("{prefix}/{}", piece_name(&file, old)))
                .map_err(|e| e.to_string())?;
        }
    }
    pieces.push(piece);
    Ok(bytes.len() as u64)
}

/// Bytes `from..to` of `path`, which must hold them.
fn read_range(path: &Path, from: u64, to: u64) -> Result<Vec<u8>, String> {
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(failed)?;
    let len = file.metadata().map_err(failed)?.len();
    if len < to {
        return Err(format!(
            "{}: {len} bytes, shorter than the {to} its POSITION commits",
            path.display()
        ));
    }
    file.seek(SeekFrom::Start(from)).map_err(failed)?;
    let mut bytes = vec![0; usize::try_from(to - from).map_err(|e| e.to_string())?];
    file.read_exact(&mut bytes).map_err(failed)?;
    Ok(bytes)
}

/// Writes each dead-letter file whose pieces are `listed` (object key,
/// file, piece) into the dead-letter directory beside `log_dir`, whole,
/// each piece checked; a file that exists locally is replaced if
/// `replace`, else left alone. Returns the bytes written.
pub(super) fn fetch_dead_letters(
    blob: &dyn Blob,
    prefix: &str,
    listed: Vec<(String, Piece)>,
    (log_dir, replace): (&Path, bool),
) -> Result<u64, String> {
    let mut by_file: BTreeMap<String, Vec<Piece>> = BTreeMap::new();
    for (file, piece) in listed {
        by_file.entry(file).or_default().push(piece);
    }
    let dir = dead_letter_dir(log_dir);
    let mut written = 0;
    for (file, pieces) in by_file {
        let path = dir.join(&file);
        if path.exists() && !replace {
            continue;
        }
        let (chosen, end) = cover(&pieces);
        if let Some(beyond) = pieces.iter().find(|p| p.to > end) {
            return Err(format!(
                "{prefix}/{}: the pieces before byte {end} of {file} are missing",
                piece_name(&file, *beyond)
            ));
        }
        let mut bytes = Vec::with_capacity(usize::try_from(end).unwrap_or(0));
        for piece in chosen {
            let key = format!("{prefix}/{}", piece_name(&file, piece));
            let got = blob
                .get(&key)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{key} is missing"))?;
            if got.len() as u64 != piece.to - piece.from || crc32c::crc32c(&got) != piece.crc32c {
                return Err(format!(
                    "{key}: {} bytes that do not match the length and checksum in its name",
                    got.len()
                ));
            }
            bytes.extend_from_slice(&got);
        }
        create_dir_all_durably(&dir).map_err(|e| e.to_string())?;
        write_file_atomically(&path, &bytes).map_err(|e| e.to_string())?;
        written += end;
    }
    Ok(written)
}
