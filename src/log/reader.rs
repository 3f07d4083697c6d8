//! [`PartitionReader`]: reads one partition from any offset, following the
//! segments in order, verifying every record's checksums.
//!
//! It never returns bytes whose checksum does not match. An incomplete
//! frame at the end of the *last* segment is the current end of data (a
//! writer may be appending); in any earlier segment it is corruption.

use std::path::{Path, PathBuf};

use super::format::{index_path, list_segments, segment_path};
use super::index::read_index;
use super::segment::{SegmentFrames, Step};
use super::LogError;

/// A resume position meaning "the first frame", which follows the header
/// of whatever version the segment has.
const FIRST_FRAME: u64 = 0;

/// Reads the records of one partition directory in offset order.
pub struct PartitionReader {
    dir: PathBuf,
    /// `None` only while waiting for the first segment of an empty partition.
    frames: Option<SegmentFrames>,
    seg_base: u64,
    /// The largest segment base offset known to exist.
    last_known_base: u64,
    next_offset: u64,
}

impl PartitionReader {
    /// Opens the partition in `dir` positioned at `from_offset`, which must
    /// be at most the current end of the partition. The segment index is
    /// used to seek near `from_offset`; the records before it in that
    /// segment are read (and verified) and skipped.
    pub fn open(dir: &Path, from_offset: u64) -> Result<Self, LogError> {
        let bases = list_segments(dir)?;
        let mut reader = Self {
            dir: dir.to_owned(),
            frames: None,
            seg_base: 0,
            last_known_base: bases.last().copied().unwrap_or(0),
            next_offset: 0,
        };
        let Some(&base) = bases.iter().rev().find(|&&b| b <= from_offset) else {
            if bases.is_empty() && from_offset == 0 {
                return Ok(reader);
            }
            return Err(LogError::OffsetBeforeStart {
                dir: dir.to_owned(),
                requested: from_offset,
                first: bases.first().copied().unwrap_or(0),
            });
        };
        let seg_path = segment_path(dir, base);
        let seg_len = std::fs::metadata(&seg_path)
            .map_err(LogError::io(&seg_path))?
            .len();
        let (pos, offset) = read_index(&index_path(dir, base), base, seg_len)
            .iter()
            .rev()
            .map(|e| (u64::from(e.byte_pos), base + u64::from(e.relative_offset)))
            .find(|&(_, offset)| offset <= from_offset)
            .unwrap_or((FIRST_FRAME, base));
        reader.frames = Some(SegmentFrames::open(&seg_path, base, pos)?);
        reader.seg_base = base;
        reader.next_offset = offset;
        while reader.next_offset < from_offset {
            if reader.step()?.is_none() {
                return Err(LogError::OffsetOutOfRange {
                    dir: dir.to_owned(),
                    requested: from_offset,
                    first: bases[0],
                    end: reader.next_offset,
                });
            }
        }
        Ok(reader)
    }

    /// The offset of the record the next call to [`Self::next`] returns.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// The partition directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The next record as `(offset, payload)`, or `Ok(None)` at the current
    /// end of data (calling again later returns records appended since).
    /// The payload borrows the reader's buffer.
    #[allow(clippy::should_implement_trait)] // a lending iterator: `Iterator` cannot borrow from `self`
    pub fn next(&mut self) -> Result<Option<(u64, &[u8])>, LogError> {
        match self.step()? {
            None => Ok(None),
            Some((start, len)) => {
                let frames = self.frames.as_ref().expect("a record came from a segment");
                Ok(Some((self.next_offset - 1, frames.payload(start, len))))
            }
        }
    }

    /// The next record's whole frame as the segment holds it (header and
    /// payload, verified), with its offset; `Ok(None)` at the current end
    /// of data. For copying records without encoding them again.
    pub fn next_frame(&mut self) -> Result<Option<(u64, &[u8])>, LogError> {
        match self.step()? {
            None => Ok(None),
            Some((start, len)) => {
                let frames = self.frames.as_ref().expect("a record came from a segment");
                let header = super::format::FRAME_HEADER_LEN_BYTES;
                Ok(Some((
                    self.next_offset - 1,
                    frames.payload(start - header, len + header),
                )))
            }
        }
    }

    /// Advances to the next record and returns where its payload is in the
    /// buffer.
    fn step(&mut self) -> Result<Option<(usize, usize)>, LogError> {
        loop {
            let Some(frames) = self.frames.as_mut() else {
                let path = segment_path(&self.dir, self.next_offset);
                if !path.try_exists().map_err(LogError::io(&path))? {
                    return Ok(None);
                }
                self.frames = Some(SegmentFrames::open(&path, self.next_offset, 0)?);
                self.seg_base = self.next_offset;
                continue;
            };
            match frames.next_frame()? {
                Step::Record {
                    payload_start,
                    payload_len,
                    ..
                } => {
                    self.next_offset += 1;
                    return Ok(Some((payload_start, payload_len)));
                }
                Step::End { pos, partial_bytes } => {
                    if !self.advance(pos, partial_bytes)? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// At the end of the current segment's data: moves to the next segment
    /// if it exists (or notices that more data arrived). Returns whether to
    /// keep reading.
    fn advance(&mut self, pos: u64, partial_bytes: usize) -> Result<bool, LogError> {
        let frames = self.frames.as_mut().expect("called with a segment");
        let next_path = segment_path(&self.dir, self.next_offset);
        let has_records = self.next_offset > self.seg_base;
        let next_exists = frames.header_ok()
            && has_records
            && next_path.try_exists().map_err(LogError::io(&next_path))?;
        if !next_exists && self.seg_base >= self.last_known_base {
            // The last segment: this is the current end of data, unless the
            // segment was deleted under the reader (log retention of a job
            // that is further on; never this job's own, which deletes a
            // segment only once its readers are past the next one).
            let path = frames.path();
            if !path.try_exists().map_err(LogError::io(path))? {
                return Err(LogError::OffsetBeforeStart {
                    dir: self.dir.clone(),
                    requested: self.next_offset,
                    first: list_segments(&self.dir)?.first().copied().unwrap_or(0),
                });
            }
            return Ok(false);
        }
        // A later segment exists, so this one is sealed and its writer has
        // flushed it: read again in case the data grew since we hit its end.
        if frames.fill(partial_bytes + 1)? {
            return Ok(true);
        }
        if next_exists && partial_bytes == 0 {
            frames.reopen(&next_path, self.next_offset, FIRST_FRAME)?;
            self.seg_base = self.next_offset;
            self.last_known_base = self.last_known_base.max(self.seg_base);
            return Ok(true);
        }
        let what = if frames.header_ok() {
            "record"
        } else {
            "segment header"
        };
        Err(LogError::Corrupt {
            path: frames.path().to_owned(),
            byte_offset: pos,
            reason: if next_exists {
                format!("a sealed segment ends with {partial_bytes} bytes of an incomplete {what}")
            } else {
                format!(
                    "the segment's data ends at offset {} ({partial_bytes} bytes of an incomplete {what} follow) \
                     but no segment starts there although later segments exist",
                    self.next_offset
                )
            },
        })
    }
}
