//! Fetching a checkpoint's files from the cold tier into the local store,
//! on [`FETCH_THREADS`] threads. Whole files, one request each, while the
//! files are many enough to share the threads; a file larger than a
//! thread's share of the bytes (one base file of a gigabyte) is read in
//! that many ranges at once instead of by one request. Ranges only where
//! they add parallelism: each costs a request, and an S3 server may read
//! the whole object to answer one (moto's does: a 17-file checkpoint of
//! 1 GB read in 8 MiB ranges took over twice as long, decision 62). Each
//! file is checked against its commit record and written once all its
//! ranges are in. (Ranges stop at the recorded size: an object longer than
//! its record is refused when read whole and has its recorded bytes
//! restored when read in ranges; either way exactly those, checked.)

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{file_key, Blob};
use crate::checkpoint::format::FileMeta;
use crate::checkpoint::store::CheckpointStore;

/// Requests (and files written) at once: the store's latency hides behind
/// the others.
pub const FETCH_THREADS: usize = 4;
/// The smallest range worth a request of its own.
pub const MIN_RANGE_BYTES: u64 = 8 << 20;
/// The largest range one request reads. Memory: the files being assembled
/// (about [`FETCH_THREADS`], the largest file's size for one read in
/// ranges) plus at most this much per thread in flight.
pub const MAX_RANGE_BYTES: u64 = 256 << 20;

/// The range size for fetching `metas`: a thread's share of their bytes,
/// within [`MIN_RANGE_BYTES`] and [`MAX_RANGE_BYTES`]. Files up to it are
/// read whole.
fn range_bytes_for(metas: &[FileMeta]) -> u64 {
    let total: u64 = metas.iter().map(|m| m.size_bytes).sum();
    total
        .div_ceil(FETCH_THREADS as u64)
        .clamp(MIN_RANGE_BYTES, MAX_RANGE_BYTES)
}

/// Sets its flag when dropped during a panic: the other fetch threads stop
/// taking pieces once one of them failed, by error or by panic.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

/// One request: a range of one file.
struct Piece {
    file: usize,
    range: Range<u64>,
}

/// A file being assembled: its bytes, and how many of its pieces are
/// still to come.
struct Assembly {
    bytes: Vec<u8>,
    pieces_left: usize,
}

/// The pieces of `metas`, file after file (so files complete in order and
/// few are assembled at once), and how many each file has.
fn pieces_of(metas: &[FileMeta], range_bytes: u64) -> (Vec<Piece>, Vec<usize>) {
    let mut pieces = Vec::new();
    let mut counts = Vec::with_capacity(metas.len());
    for (file, meta) in metas.iter().enumerate() {
        let size = meta.size_bytes;
        let count = size.div_ceil(range_bytes).max(1);
        for i in 0..count {
            let start = i * range_bytes;
            pieces.push(Piece {
                file,
                range: start..size.min(start + range_bytes),
            });
        }
        counts.push(usize::try_from(count).expect("a file's pieces fit in usize"));
    }
    (pieces, counts)
}

/// Fetches `metas` of `epoch` into `store`, each checked, on up to
/// [`FETCH_THREADS`] threads (see the module doc); the first failure is
/// returned.
pub fn fetch_files(
    store: &CheckpointStore,
    blob: &dyn Blob,
    epoch: u64,
    metas: &[FileMeta],
) -> Result<(), String> {
    fetch_in_ranges(store, blob, epoch, metas, range_bytes_for(metas))
}

/// [`fetch_files`] in ranges of at most `range_bytes`.
fn fetch_in_ranges(
    store: &CheckpointStore,
    blob: &dyn Blob,
    epoch: u64,
    metas: &[FileMeta],
    range_bytes: u64,
) -> Result<(), String> {
    let (pieces, counts) = pieces_of(metas, range_bytes);
    let assemblies: Vec<Mutex<Option<Assembly>>> = metas.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let fetch = || -> Result<(), String> {
        let _stop_on_panic = StopOnPanic(&failed);
        loop {
            if failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(piece) = pieces.get(next.fetch_add(1, Ordering::Relaxed)) else {
                return Ok(());
            };
            let meta = &metas[piece.file];
            let result = fetch_piece(
                blob,
                epoch,
                meta,
                piece,
                (&assemblies[piece.file], counts[piece.file]),
            )
            .and_then(|complete| match complete {
                // Checked against `meta` once, by the store as it writes it.
                Some(bytes) => store
                    .restore_data_file(meta, &bytes)
                    .map_err(|e| format!("{}: {e}", file_key(epoch, &meta.name))),
                None => Ok(()),
            });
            if result.is_err() {
                failed.store(true, Ordering::Relaxed);
                return result;
            }
        }
    };
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..FETCH_THREADS.min(pieces.len()))
            .map(|_| scope.spawn(fetch))
            .collect();
        // Every thread joined before the first error is returned.
        let results: Vec<Result<(), String>> = threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a fetch thread panicked".into()))
            })
            .collect();
        results.into_iter().collect()
    })
}

/// Reads `piece` into its file's assembly; returns the file's bytes once
/// this was its last piece.
fn fetch_piece(
    blob: &dyn Blob,
    epoch: u64,
    meta: &FileMeta,
    piece: &Piece,
    (assembly, pieces): (&Mutex<Option<Assembly>>, usize),
) -> Result<Option<Vec<u8>>, String> {
    let key = file_key(epoch, &meta.name);
    let expected = piece.range.end - piece.range.start;
    let bytes = if pieces == 1 {
        // A file of one piece: one plain read, whatever its size claims.
        blob.get(&key)
    } else {
        blob.get_range(&key, piece.range.clone())
    }
    .map_err(|e| e.to_string())?
    .ok_or_else(|| format!("{key} is missing"))?;
    if pieces == 1 {
        return Ok(Some(bytes));
    }
    if bytes.len() as u64 != expected {
        return Err(format!(
            "{key}: bytes {:?} read as {} bytes: the object is not the {} bytes its record names",
            piece.range,
            bytes.len(),
            meta.size_bytes
        ));
    }
    let mut slot = assembly
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let file = slot.get_or_insert_with(|| Assembly {
        bytes: vec![0; usize::try_from(meta.size_bytes).expect("a file fits in memory")],
        pieces_left: pieces,
    });
    let start = usize::try_from(piece.range.start).expect("in memory");
    file.bytes[start..start + bytes.len()].copy_from_slice(&bytes);
    file.pieces_left -= 1;
    if file.pieces_left > 0 {
        return Ok(None);
    }
    Ok(slot.take().map(|file| file.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::format::PersistedUpdate;
    use crate::checkpoint::tier::FileBlob;

    fn meta(name: &str, size_bytes: u64) -> FileMeta {
        FileMeta {
            name: name.to_owned(),
            size_bytes,
            crc32c: 0,
            min_time: 0,
            max_time: 0,
        }
    }

    #[test]
    fn pieces_cover_each_file_once_in_order() {
        const RANGE: u64 = MIN_RANGE_BYTES;
        let sizes = [0, 1, RANGE - 1, RANGE, RANGE + 1, 3 * RANGE + 5];
        let metas: Vec<FileMeta> = sizes.iter().map(|&s| meta("f", s)).collect();
        let (pieces, counts) = pieces_of(&metas, RANGE);
        assert_eq!(counts, [1, 1, 1, 1, 2, 4]);
        assert_eq!(pieces.len(), counts.iter().sum::<usize>());
        for (file, size) in sizes.iter().enumerate() {
            let ranges: Vec<&Range<u64>> = pieces
                .iter()
                .filter(|p| p.file == file)
                .map(|p| &p.range)
                .collect();
            assert_eq!(ranges.first().unwrap().start, 0);
            assert_eq!(ranges.last().unwrap().end, *size);
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
            assert!(ranges.iter().all(|r| r.end - r.start <= RANGE));
        }
        assert!(pieces.windows(2).all(|w| w[0].file <= w[1].file));
    }

    #[test]
    fn only_a_file_larger_than_a_threads_share_is_read_in_ranges() {
        const MB: u64 = 1 << 20;
        let many: Vec<FileMeta> = (0..17).map(|_| meta("f", 60 * MB)).collect();
        assert_eq!(pieces_of(&many, range_bytes_for(&many)).0.len(), 17);
        let one = [meta("base", 1_000 * MB), meta("f", MB)];
        let (pieces, counts) = pieces_of(&one, range_bytes_for(&one));
        assert_eq!(counts, [FETCH_THREADS, 1]);
        assert_eq!(pieces.len(), FETCH_THREADS + 1);
        let huge = [meta("base", 10_000 * MB)];
        assert_eq!(range_bytes_for(&huge), MAX_RANGE_BYTES);
        assert_eq!(pieces_of(&huge, range_bytes_for(&huge)).1, [40]);
        let small = [meta("f", MB), meta("g", 3 * MB)];
        assert_eq!(range_bytes_for(&small), MIN_RANGE_BYTES);
        assert_eq!(pieces_of(&small, range_bytes_for(&small)).1, [1, 1]);
    }

    /// A real data file of about 40 KB in `store`, and its record.
    fn written_file(store: &CheckpointStore) -> FileMeta {
        let mut updates: Vec<PersistedUpdate> = (0..2_000u64)
            .map(|i| PersistedUpdate {
                key_group: (i % 7) as u16,
                data: format!("key-{i}-{}", "x".repeat((i % 13) as usize)).into_bytes(),
                time: i,
                diff: 1,
            })
            .collect();
        store.write_delta(1, 0, &mut updates).unwrap()
    }

    #[test]
    fn files_come_back_from_ranges_byte_for_byte_or_not_at_all() {
        let tmp = tempfile::tempdir().unwrap();
        let source = CheckpointStore::open(&tmp.path().join("source")).unwrap();
        let meta = written_file(&source);
        assert!(meta.size_bytes > 20_000, "{}", meta.size_bytes);
        let original = std::fs::read(tmp.path().join("source").join(&meta.name)).unwrap();
        let blob = FileBlob::open(&tmp.path().join("cold")).unwrap();
        let key = file_key(3, &meta.name);
        blob.put(&key, &original).unwrap();

        // Ranges of 1 KB (tens of pieces on 4 threads), of a few bytes
        // more than the file, and of exactly its size.
        for (i, range_bytes) in [1_000, meta.size_bytes + 3, meta.size_bytes]
            .into_iter()
            .enumerate()
        {
            let dir = tmp.path().join(format!("restored-{i}"));
            let store = CheckpointStore::open(&dir).unwrap();
            fetch_in_ranges(&store, &blob, 3, std::slice::from_ref(&meta), range_bytes).unwrap();
            assert_eq!(std::fs::read(dir.join(&meta.name)).unwrap(), original);
        }

        let refused = |bytes: Option<&[u8]>, why: &str| {
            match bytes {
                Some(bytes) => blob.put(&key, bytes).unwrap(),
                None => blob.delete(&key).unwrap(),
            }
            let dir = tmp.path().join(format!("refused-{why}"));
            let store = CheckpointStore::open(&dir).unwrap();
            let error =
                fetch_in_ranges(&store, &blob, 3, std::slice::from_ref(&meta), 1_000).unwrap_err();
            assert!(error.contains(why), "{error}");
            assert!(!dir.join(&meta.name).exists(), "{why}: nothing written");
        };
        let mut flipped = original.clone();
        flipped[original.len() / 2] ^= 1;
        refused(Some(&flipped), "CRC");
        refused(Some(&original[..original.len() - 1]), "is not the");
        refused(None, "is missing");
        // Bytes past the recorded size are not read: the file restored is
        // the one its record names (and checks).
        let mut longer = original.clone();
        longer.push(0);
        blob.put(&key, &longer).unwrap();
        let dir = tmp.path().join("longer");
        let store = CheckpointStore::open(&dir).unwrap();
        fetch_in_ranges(&store, &blob, 3, std::slice::from_ref(&meta), 1_000).unwrap();
        assert_eq!(std::fs::read(dir.join(&meta.name)).unwrap(), original);
    }
}
