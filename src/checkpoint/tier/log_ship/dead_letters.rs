//! A stream source's dead-letter file shipped beside its partition's log,
//! so a standby that continues the stream has the rows of the malformed
//! messages the primary committed (they are not in the log).
//!
//! Only the committed bytes are shipped: the file up to the
//! `dead_letter_len_bytes` of the partition's `POSITION` that is put after
//! them (bytes past it are cut when the source restarts, and written again
//! as its messages are read again). Committed bytes never change, so each
//! round ships only what the committed length grew by, as **pieces**
//! `<file>.<from:020>-<to:020>.<crc32c:08x>.dead` of the bytes `from..to`,
//! each at most [`MAX_PIECE_BYTES`]. Once a file has
//! [`MAX_SMALL_PIECES`] pieces smaller than that, its next growth ships
//! everything from the first small one on again, in full-size pieces, and
//! the pieces it covers are deleted after the new ones are put: the store
//! holds a bounded number of small objects per file, and each byte is put
//! again only while it sits in a small piece. Before a growth is shipped
//! the last piece is compared with the local file; a file rewritten under
//! the source (truncated, replaced) is shipped whole again, with a
//! warning. Nothing about a dead-letter file stops the round that ships the
//! log: a file that cannot be read as committed is skipped, with a warning
//! once per sidecar run and file.
//!
//! A standby reads the pieces that cover a file from byte 0 (the longest
//! at each step), checks each one's length and checksum, and streams them
//! into the file; it refuses, naming it, a damaged piece or a gap, and
//! warns when the pieces end before the length its partition's shipped
//! `POSITION` commits (the sidecar skipped a file it could not read as
//! committed: the log is whole, and no older checkpoint has those rows).
//!
//! Only the default files (`<data>/dead-letter/<topic>-source-<p>.csv` of
//! a Kafka source, `<topic>-source.csv` of a NATS source) are known to the
//! sidecar; a file put elsewhere by `--dead-letter` is not shipped, and
//! the sidecar says so once per partition.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::super::Blob;
use super::PartitionKey;
use crate::ingest::stream::dead_letter::{
    default_file_name, default_partition_file_name, DEAD_LETTER_DIR_NAME,
};
use crate::ingest::stream::position::SourcePosition;
use crate::storage::durable::{create_dir_all_durably, rename_durably};

/// A partition and the dead-letter length its `POSITION` commits.
pub(super) type Committed = (PartitionKey, u64);

/// The largest piece.
pub const MAX_PIECE_BYTES: u64 = 64 << 20;
/// The pieces smaller than [`MAX_PIECE_BYTES`] a file may have before they
/// are shipped again as full-size ones.
pub const MAX_SMALL_PIECES: usize = 16;
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
    /// What was told once: partitions whose dead letters are not at a
    /// default path, files that could not be shipped.
    told: BTreeSet<String>,
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
    let canonical = piece_name(file, piece) == name;
    (canonical
        && valid_file_name(file)
        && piece.from < piece.to
        && piece.to - piece.from <= MAX_PIECE_BYTES)
        .then(|| (file.to_owned(), piece))
}

impl ShippedDeadLetters {
    /// Notes a piece listed in the store.
    pub(super) fn listed(&mut self, file: String, piece: Piece) {
        let pieces = self.pieces.entry(file).or_default();
        pieces.push(piece);
        pieces.sort_unstable();
    }

    /// Warns about `what` once per sidecar run.
    fn tell_once(&mut self, what: &str, message: &str) {
        if self.told.insert(what.to_owned()) {
            tracing::warn!(%what, "{message}");
        }
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
/// Returns the bytes put; fails only when the store does (a local file
/// that cannot be shipped is skipped with a warning).
pub(super) fn ship_dead_letters(
    blob: &dyn Blob,
    (prefix, log_dir): (&str, &Path),
    (key, position): (&PartitionKey, &[u8]),
    shipped: &mut ShippedDeadLetters,
) -> Result<u64, String> {
    let committed = match SourcePosition::decode(position) {
        Ok(position) => position.dead_letter_len_bytes,
        Err((offset, reason)) => {
            let what = format!("{}/{}/POSITION at byte {offset}: {reason}", key.0, key.1);
            shipped.tell_once(&what, "its dead letters are not shipped");
            return Ok(0);
        }
    };
    if committed == 0 {
        return Ok(0);
    }
    let dir = dead_letter_dir(log_dir);
    let Some(file) = default_file(&dir, key) else {
        let what = format!("{}/{}", key.0, key.1);
        shipped.tell_once(
            &what,
            &format!(
                "the partition's dead letters are not in {}; they are not shipped",
                dir.display()
            ),
        );
        return Ok(0);
    };
    let path = dir.join(&file);
    let (covered, end) = cover(shipped.pieces.get(&file).map_or(&[][..], Vec::as_slice));
    if end == committed {
        return Ok(0);
    }
    let from = match check_local(&path, committed, &covered) {
        Ok(true) => restart_from(&covered, end),
        Ok(false) => {
            tracing::warn!(
                path = %path.display(),
                "the dead-letter file no longer begins with what was shipped \
                 (rewritten under the source?): shipping it whole again"
            );
            0
        }
        Err(reason) => {
            shipped.tell_once(
                &path.display().to_string(),
                &format!("{reason}; not shipped"),
            );
            return Ok(0);
        }
    };
    let mut put = 0;
    let mut new = Vec::new();
    let mut at = from;
    while at < committed {
        let to = committed.min(at + MAX_PIECE_BYTES);
        let bytes = match read_range(&path, at, to) {
            Ok(bytes) => bytes,
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "dead letters not shipped");
                break;
            }
        };
        let piece = Piece {
            from: at,
            to,
            crc32c: crc32c::crc32c(&bytes),
        };
        blob.put(&format!("{prefix}/{}", piece_name(&file, piece)), &bytes)
            .map_err(|e| e.to_string())?;
        new.push(piece);
        put += bytes.len() as u64;
        at = to;
    }
    let pieces = shipped.pieces.entry(file.clone()).or_default();
    if at < committed {
        // Read failed part way: the new pieces stay listed (a standby
        // passes over what does not continue its cover).
        pieces.extend(new);
        return Ok(put);
    }
    // After the new pieces are in the store: a failure before the deletes
    // leaves pieces that the new ones cover, which a standby passes over.
    let kept: Vec<Piece> = covered
        .iter()
        .copied()
        .filter(|p| p.to <= from)
        .chain(new)
        .collect();
    for old in pieces.iter().filter(|p| !kept.contains(p)) {
        blob.delete(&format!("{prefix}/{}", piece_name(&file, *old)))
            .map_err(|e| e.to_string())?;
    }
    *pieces = kept;
    Ok(put)
}

/// Whether the local file still holds, as committed, what the store has
/// of it (its last covering piece compared): `Err` when it cannot be read
/// as committed.
fn check_local(path: &Path, committed: u64, covered: &[Piece]) -> Result<bool, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if len < committed {
        return Err(format!(
            "{}: {len} bytes, shorter than the {committed} its POSITION commits",
            path.display()
        ));
    }
    let Some(last) = covered.last() else {
        return Ok(true);
    };
    if last.to > committed {
        return Ok(false);
    }
    let bytes = read_range(path, last.from, last.to)?;
    Ok(crc32c::crc32c(&bytes) == last.crc32c)
}

/// Where a growth ships from: the end of what is covered, or the first of
/// [`MAX_SMALL_PIECES`] small pieces (they are shipped again full-size).
fn restart_from(covered: &[Piece], end: u64) -> u64 {
    let small: Vec<&Piece> = covered
        .iter()
        .filter(|p| p.to - p.from < MAX_PIECE_BYTES)
        .collect();
    if small.len() >= MAX_SMALL_PIECES {
        small[0].from
    } else {
        end
    }
}

/// Bytes `from..to` of `path`, which must hold them.
fn read_range(path: &Path, from: u64, to: u64) -> Result<Vec<u8>, String> {
    let failed = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(failed)?;
    file.seek(SeekFrom::Start(from)).map_err(failed)?;
    let mut bytes = vec![0; usize::try_from(to - from).map_err(|e| e.to_string())?];
    file.read_exact(&mut bytes).map_err(failed)?;
    Ok(bytes)
}

/// Writes each dead-letter file whose pieces are `listed` (file, piece)
/// into the dead-letter directory beside `log_dir`, streamed piece by
/// piece, each checked; a file that exists locally is replaced if
/// `replace`, else left alone. `committed` lists what each partition's
/// shipped `POSITION` commits: a file that ends before it is refused.
/// Returns the bytes written and notes.
pub(super) fn fetch_dead_letters(
    blob: &dyn Blob,
    prefix: &str,
    (listed, committed): (Vec<(String, Piece)>, &[Committed]),
    (log_dir, replace): (&Path, bool),
) -> Result<(u64, Vec<String>), String> {
    let mut by_file: BTreeMap<String, Vec<Piece>> = BTreeMap::new();
    for (file, piece) in listed {
        by_file.entry(file).or_default().push(piece);
    }
    let mut notes = Vec::new();
    for ((topic, partition), len) in committed {
        let len = *len;
        if len == 0 {
            continue;
        }
        let names = [
            default_partition_file_name(topic, *partition),
            default_file_name(topic),
        ];
        match names.iter().find(|n| by_file.contains_key(*n)) {
            None => notes.push(format!(
                "{topic}/{partition}: its POSITION commits {len} bytes of dead letters that \
                 the store does not hold (a --dead-letter file elsewhere is not shipped)"
            )),
            Some(name) => {
                let end = cover(&by_file[name]).1;
                if end < len {
                    // Not a reason to refuse the takeover (the log is
                    // whole, and no older checkpoint has these rows): said
                    // loudly.
                    notes.push(format!(
                        "{prefix}: the pieces of {name} end at byte {end}, before the {len} \
                         that {topic}/{partition}'s POSITION commits: the dead letters after \
                         byte {end} are lost"
                    ));
                }
            }
        }
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
        create_dir_all_durably(&dir).map_err(|e| e.to_string())?;
        let tmp = dir.join(format!(".{file}.tmp"));
        let failed = |e: std::io::Error| format!("{}: {e}", tmp.display());
        let mut out = std::fs::File::create(&tmp).map_err(failed)?;
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
            out.write_all(&got).map_err(failed)?;
        }
        out.sync_all().map_err(failed)?;
        drop(out);
        rename_durably(&tmp, &path).map_err(|e| e.to_string())?;
        written += end;
    }
    Ok((written, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn piece(from: u64, to: u64) -> Piece {
        Piece {
            from,
            to,
            crc32c: 0,
        }
    }

    #[test]
    fn small_pieces_are_shipped_again_from_the_first_once_there_are_sixteen() {
        // Two full-size pieces, then small ones.
        let mut covered = vec![
            piece(0, MAX_PIECE_BYTES),
            piece(MAX_PIECE_BYTES, 2 * MAX_PIECE_BYTES),
        ];
        let mut end = 2 * MAX_PIECE_BYTES;
        for _ in 0..MAX_SMALL_PIECES - 1 {
            covered.push(piece(end, end + 10));
            end += 10;
        }
        assert_eq!(restart_from(&covered, end), end);
        covered.push(piece(end, end + 10));
        end += 10;
        assert_eq!(restart_from(&covered, end), 2 * MAX_PIECE_BYTES);
        assert_eq!(cover(&covered), (covered.clone(), end));
    }

    #[test]
    fn the_cover_takes_the_longest_piece_at_each_step_and_stops_at_a_gap() {
        let pieces = [
            piece(0, 10),
            piece(0, 30),
            piece(10, 20),
            piece(30, 40),
            piece(50, 60),
        ];
        assert_eq!(cover(&pieces), (vec![piece(0, 30), piece(30, 40)], 40));
        assert_eq!(cover(&[]), (Vec::new(), 0));
    }

    #[test]
    fn only_canonical_names_of_bounded_pieces_parse() {
        let name = piece_name("events-source-0.csv", piece(5, 9));
        assert_eq!(
            parse_piece(&name),
            Some(("events-source-0.csv".to_owned(), piece(5, 9)))
        );
        for bad in [
            "events-source-0.csv.+0000000000000000005-00000000000000000009.00000000.dead",
            "events-source-0.csv.00000000000000000005-00000000000000000009.0.dead",
            "../x.00000000000000000005-00000000000000000009.00000000.dead",
            "x.00000000000000000009-00000000000000000005.00000000.dead",
        ] {
            assert_eq!(parse_piece(bad), None, "{bad}");
        }
        let huge = piece_name("x", piece(0, MAX_PIECE_BYTES + 1));
        assert_eq!(parse_piece(&huge), None);
    }
}
