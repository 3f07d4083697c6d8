//! Log retention: deleting the whole segments of a partition that hold only
//! offsets below a given one (the engine passes the least offset any
//! restorable checkpoint resumes at, `weir run --log-retention
//! checkpointed`).
//!
//! A segment `b` is deleted only when the next segment starts at or below
//! the offset, so every record at or past it stays, and the last (active)
//! segment is never deleted: a writer appending to the partition is not
//! disturbed. Segments go oldest first, each index file before its segment,
//! then the directory is fsynced: a crash part-way leaves a contiguous run of
//! segments (a sealed segment without its index is fine, the index is only a
//! hint and is rebuilt). A reader asked for a deleted offset gets
//! [`LogError::OffsetBeforeStart`], never other data. Readers that have a
//! deleted segment open keep reading it (POSIX unlink semantics); one that
//! reaches its end and finds neither it nor the next segment any more gets
//! the same error rather than taking it for the end of the data.

use std::path::Path;

use super::format::{index_path, list_segments, segment_path};
use super::LogError;
use crate::storage::durable::sync_dir;

/// What [`delete_segments_before`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Segment files deleted.
    pub segments: u64,
    /// Their bytes (segment and index files).
    pub bytes: u64,
    /// The partition's first offset afterwards.
    pub first_offset: u64,
}

/// Deletes the segments of the partition in `dir` whose records all lie
/// below `offset` (see the module doc). A missing directory deletes nothing.
pub fn delete_segments_before(dir: &Path, offset: u64) -> Result<Deleted, LogError> {
    if !dir.exists() {
        return Ok(Deleted::default());
    }
    let bases = list_segments(dir)?;
    let mut deleted = Deleted {
        first_offset: bases.first().copied().unwrap_or(0),
        ..Deleted::default()
    };
    for pair in bases.windows(2) {
        let (base, next_base) = (pair[0], pair[1]);
        if next_base > offset {
            break;
        }
        for path in [index_path(dir, base), segment_path(dir, base)] {
            match std::fs::metadata(&path) {
                Ok(meta) => {
                    deleted.bytes += meta.len();
                    std::fs::remove_file(&path).map_err(LogError::io(&path))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io(&path)(e)),
            }
        }
        deleted.segments += 1;
        deleted.first_offset = next_base;
    }
    if deleted.segments > 0 {
        sync_dir(dir)?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{FsyncPolicy, LogConfig, PartitionReader, PartitionWriter};

    fn small_segments() -> LogConfig {
        LogConfig {
            segment_size_bytes: 200,
            index_interval_bytes: 0,
            fsync: FsyncPolicy::Never,
        }
    }

    fn append(dir: &Path, range: std::ops::Range<u64>) {
        let mut writer = PartitionWriter::open(dir, small_segments()).unwrap();
        for i in range {
            writer.append(&i.to_le_bytes()).unwrap();
        }
        writer.sync().unwrap();
    }

    fn read_all_from(dir: &Path, offset: u64) -> Vec<u64> {
        let mut reader = PartitionReader::open(dir, offset).unwrap();
        let mut values = Vec::new();
        while let Some(record) = reader.next().unwrap() {
            values.push(u64::from_le_bytes(record.1.try_into().unwrap()));
        }
        values
    }

    #[test]
    fn only_segments_wholly_below_the_offset_go_and_the_rest_reads_on() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p0");
        append(&dir, 0..100);
        let bases = list_segments(&dir).unwrap();
        assert!(bases.len() >= 5, "{bases:?}");
        // An offset inside the third segment keeps it and everything after.
        let offset = bases[2] + 1;
        let deleted = delete_segments_before(&dir, offset).unwrap();
        assert_eq!(deleted.segments, 2);
        assert_eq!(deleted.first_offset, bases[2]);
        assert!(deleted.bytes > 0);
        assert_eq!(list_segments(&dir).unwrap(), bases[2..]);
        assert_eq!(
            read_all_from(&dir, offset),
            (offset..100).collect::<Vec<_>>()
        );
        // A deleted offset is refused, not served from elsewhere.
        assert!(matches!(
            PartitionReader::open(&dir, bases[1]),
            Err(LogError::OffsetBeforeStart { first, .. }) if first == bases[2]
        ));
        // Idempotent; and the writer appends on after a reopen.
        assert_eq!(delete_segments_before(&dir, offset).unwrap().segments, 0);
        append(&dir, 100..120);
        assert_eq!(
            read_all_from(&dir, offset),
            (offset..120).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_writer_that_never_fsyncs_syncs_on_after_its_sealed_segments_were_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p0");
        let mut writer = PartitionWriter::open(&dir, small_segments()).unwrap();
        for i in 0..100u64 {
            writer.append(&i.to_le_bytes()).unwrap();
        }
        writer.flush().unwrap();
        // Sealed, not yet fsynced segments go while the writer is open.
        let deleted = delete_segments_before(&dir, 100).unwrap();
        assert!(deleted.segments > 2, "{deleted:?}");
        writer.append(&100u64.to_le_bytes()).unwrap();
        writer.sync().unwrap();
        drop(writer);
        assert_eq!(read_all_from(&dir, deleted.first_offset).last(), Some(&100));
    }

    #[test]
    fn a_reader_whose_segment_was_deleted_under_it_is_told_so_not_ended() {
        // Another job's retention, further on, deletes the segment a tailing
        // reader is at the end of and the next one: the reader must not take
        // that for the end of the data.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p0");
        append(&dir, 0..10);
        let mut reader = PartitionReader::open(&dir, 0).unwrap();
        while reader.next().unwrap().is_some() {}
        append(&dir, 10..200);
        let deleted = delete_segments_before(&dir, 150).unwrap();
        assert!(deleted.segments >= 2, "{deleted:?}");
        // What the open segment file still holds is read; then the error.
        let mut expected = 10;
        let error = loop {
            match reader.next() {
                Ok(Some((offset, _))) => {
                    assert_eq!(offset, expected);
                    expected += 1;
                }
                Ok(None) => panic!("taken for the end of the data at offset {expected}"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(
                error,
                LogError::OffsetBeforeStart { requested, first, .. }
                    if requested == expected && first == deleted.first_offset
            ),
            "{error}"
        );
    }

    #[test]
    fn the_last_segment_is_never_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p0");
        append(&dir, 0..100);
        let bases = list_segments(&dir).unwrap();
        let deleted = delete_segments_before(&dir, u64::MAX).unwrap();
        assert_eq!(deleted.segments as usize, bases.len() - 1);
        assert_eq!(list_segments(&dir).unwrap(), [*bases.last().unwrap()]);
        assert_eq!(read_all_from(&dir, 100), Vec::<u64>::new());
        // Nothing below the first segment's successor: nothing deleted.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("p1");
        append(&dir, 0..100);
        let bases = list_segments(&dir).unwrap();
        assert_eq!(
            delete_segments_before(&dir, bases[1] - 1).unwrap().segments,
            0
        );
        assert_eq!(
            delete_segments_before(&tmp.path().join("missing"), 5).unwrap(),
            Deleted::default()
        );
    }
}
