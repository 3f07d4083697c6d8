//! Buffered, checksum-verifying iteration over the frames of one segment
//! file, shared by the reader and by the writer's recovery scan.
//!
//! [`SegmentFrames`] reads the file in large chunks into a buffer it manages
//! and hands out records as ranges of that buffer: no allocation per record.
//! It stops (without error) where the data ends, reporting how many bytes of
//! an incomplete header or frame follow; a later call reads again, so it can
//! follow a segment that is still being appended to.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::format::{
    check_payload, decode_frame_header, decode_segment_header, segment_header_len, SegmentHeader,
    FRAME_HEADER_LEN_BYTES, SEGMENT_HEADER_PREFIX_LEN_BYTES,
};
use super::index::IndexEntry;
use super::LogError;

/// Size of the read buffer (grown for a record that does not fit).
pub const READ_BUFFER_LEN_BYTES: usize = 1 << 20;

/// What [`SegmentFrames::next_frame`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A complete record whose checksums match; its payload is
    /// `buf[payload_start..payload_start + payload_len]` (see
    /// [`SegmentFrames::payload`]).
    Record {
        /// Byte position of the frame in the file.
        pos: u64,
        /// Start of the payload in the buffer.
        payload_start: usize,
        /// Payload length.
        payload_len: usize,
    },
    /// The data ends at byte `pos`; `partial_bytes` bytes of an incomplete
    /// segment header (`pos == 0` and `!header_ok`) or frame follow.
    End {
        /// Where the complete data ends.
        pos: u64,
        /// Bytes of an incomplete header or frame after `pos`.
        partial_bytes: usize,
    },
}

/// Iterates over the frames of one segment file.
pub struct SegmentFrames {
    path: PathBuf,
    file: File,
    base_offset: u64,
    /// The verified header (`None` until it was read).
    header: Option<SegmentHeader>,
    /// Where to continue once the header is verified (an index hint).
    resume_pos: u64,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// File position of `buf[start]`.
    pos: u64,
}

impl SegmentFrames {
    /// Opens the segment at `path` that must start at `base_offset`; reading
    /// continues at byte `resume_pos` (the segment header is always checked
    /// first; `resume_pos` must be a frame boundary, e.g. from the index, or
    /// 0 for the first frame, wherever the header's version puts it).
    pub fn open(path: &Path, base_offset: u64, resume_pos: u64) -> Result<Self, LogError> {
        let file = File::open(path).map_err(LogError::io(path))?;
        Ok(Self {
            path: path.to_owned(),
            file,
            base_offset,
            header: None,
            resume_pos,
            buf: vec![0; READ_BUFFER_LEN_BYTES],
            start: 0,
            end: 0,
            pos: 0,
        })
    }

    /// Switches to another segment file, keeping the buffer.
    pub fn reopen(
        &mut self,
        path: &Path,
        base_offset: u64,
        resume_pos: u64,
    ) -> Result<(), LogError> {
        self.file = File::open(path).map_err(LogError::io(path))?;
        path.clone_into(&mut self.path);
        self.base_offset = base_offset;
        self.header = None;
        self.resume_pos = resume_pos;
        self.start = 0;
        self.end = 0;
        self.pos = 0;
        Ok(())
    }

    /// The segment file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the segment header was read and verified.
    pub fn header_ok(&self) -> bool {
        self.header.is_some()
    }

    /// The verified header, once read.
    pub fn header(&self) -> Option<SegmentHeader> {
        self.header
    }

    /// The payload bytes of a [`Step::Record`].
    pub fn payload(&self, start: usize, len: usize) -> &[u8] {
        &self.buf[start..start + len]
    }

    fn corrupt(&self, byte_offset: u64, reason: String) -> LogError {
        LogError::Corrupt {
            path: self.path.clone(),
            byte_offset,
            reason,
        }
    }

    /// Reads more bytes into the buffer, making room for at least
    /// `need_bytes` unconsumed bytes. Returns whether any byte was read.
    pub fn fill(&mut self, need_bytes: usize) -> Result<bool, LogError> {
        if self.start > 0
            && (self.end == self.buf.len() || self.start + need_bytes > self.buf.len())
        {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if need_bytes > self.buf.len() {
            self.buf.resize(need_bytes, 0);
        }
        let n = loop {
            match self.file.read(&mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LogError::io(&self.path)(e)),
            }
        };
        self.end += n;
        Ok(n > 0)
    }

    fn check_header(&mut self) -> Result<bool, LogError> {
        let mut need = SEGMENT_HEADER_PREFIX_LEN_BYTES;
        loop {
            while self.end - self.start < need {
                if !self.fill(need)? {
                    return Ok(false);
                }
            }
            let bytes = &self.buf[self.start..self.end];
            let len = segment_header_len(bytes).map_err(|reason| self.corrupt(0, reason))?;
            if len <= need {
                break;
            }
            need = len;
        }
        let header = decode_segment_header(&self.buf[self.start..self.start + need])
            .map_err(|reason| self.corrupt(0, reason))?;
        let base = header.base_offset;
        if base != self.base_offset {
            return Err(self.corrupt(
                0,
                format!(
                    "segment header says base offset {base} but the file name says {}",
                    self.base_offset
                ),
            ));
        }
        self.header = Some(header);
        self.start += header.len_bytes();
        self.pos = header.len_bytes() as u64;
        if self.resume_pos > 0 && self.resume_pos < self.pos {
            // An index entry of another version than its segment's: its
            // positions (and offsets) do not belong to this file.
            return Err(self.corrupt(
                0,
                format!(
                    "resume position {} from the index falls inside the {}-byte version {} segment header",
                    self.resume_pos, self.pos, header.version
                ),
            ));
        }
        if self.resume_pos > self.pos {
            let avail = (self.end - self.start) as u64;
            if self.resume_pos - self.pos <= avail {
                self.start += (self.resume_pos - self.pos) as usize;
            } else {
                self.file
                    .seek(SeekFrom::Start(self.resume_pos))
                    .map_err(LogError::io(&self.path))?;
                self.start = 0;
                self.end = 0;
            }
            self.pos = self.resume_pos;
        }
        Ok(true)
    }

    /// The next verified record, or where the data currently ends.
    pub fn next_frame(&mut self) -> Result<Step, LogError> {
        if self.header.is_none() && !self.check_header()? {
            return Ok(Step::End {
                pos: 0,
                partial_bytes: self.end - self.start,
            });
        }
        loop {
            let avail = self.end - self.start;
            let mut need = FRAME_HEADER_LEN_BYTES;
            if avail >= FRAME_HEADER_LEN_BYTES {
                let header = decode_frame_header(&self.buf[self.start..])
                    .map_err(|reason| self.corrupt(self.pos, reason))?;
                need += header.len_bytes;
                if avail >= need {
                    let payload_start = self.start + FRAME_HEADER_LEN_BYTES;
                    let payload = &self.buf[payload_start..self.start + need];
                    check_payload(header, payload)
                        .map_err(|reason| self.corrupt(self.pos, reason))?;
                    let step = Step::Record {
                        pos: self.pos,
                        payload_start,
                        payload_len: header.len_bytes,
                    };
                    self.start += need;
                    self.pos += need as u64;
                    return Ok(step);
                }
            }
            if !self.fill(need)? {
                return Ok(Step::End {
                    pos: self.pos,
                    partial_bytes: avail,
                });
            }
        }
    }
}

/// The result of scanning a whole segment.
#[derive(Debug)]
pub struct SegmentScan {
    /// Whether the segment header is complete (and valid: an invalid one is
    /// an error).
    pub header_ok: bool,
    /// Where the first frame starts (the header's length; 0 without a
    /// complete header).
    pub header_len_bytes: u64,
    /// The header's format version (0 without a complete header).
    pub version: u32,
    /// Number of complete, verified records.
    pub records: u64,
    /// Where the complete records end.
    pub valid_len_bytes: u64,
    /// Bytes of an incomplete frame (or header) after `valid_len_bytes`.
    pub partial_bytes: u64,
    /// The index entries the writer would have written for this data.
    pub index: Vec<IndexEntry>,
}

/// Scans a whole segment, verifying every record, and computes its index
/// with the same rule as the writer (an entry for the first record starting
/// at least `index_interval_bytes` after the previous entry).
pub fn scan_segment(
    path: &Path,
    base_offset: u64,
    index_interval_bytes: u64,
) -> Result<SegmentScan, LogError> {
    let mut frames = SegmentFrames::open(path, base_offset, 0)?;
    let mut records = 0u64;
    let mut index = Vec::new();
    let mut last_indexed_pos = None;
    loop {
        match frames.next_frame()? {
            Step::Record { pos, .. } => {
                // The first frame starts right after the header: never indexed.
                let last_indexed_pos = last_indexed_pos.get_or_insert(pos);
                if pos - *last_indexed_pos >= index_interval_bytes && pos > *last_indexed_pos {
                    index.push(IndexEntry {
                        relative_offset: records as u32,
                        byte_pos: pos as u32,
                    });
                    *last_indexed_pos = pos;
                }
                records += 1;
            }
            Step::End { pos, partial_bytes } => {
                let header = frames.header();
                return Ok(SegmentScan {
                    header_ok: header.is_some(),
                    header_len_bytes: header.map_or(0, |h| h.len_bytes() as u64),
                    version: header.map_or(0, |h| h.version),
                    records,
                    valid_len_bytes: pos,
                    partial_bytes: partial_bytes as u64,
                    index,
                });
            }
        }
    }
}
