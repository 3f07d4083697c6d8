//! Data model and byte layout of the checkpoint store (data files version 2,
//! commit stream version 3).
//!
//! Hand-written, little-endian, no serde. `docs/formats.md` §8 has the
//! tables; in short:
//!
//! ```text
//! data file  delta-<checkpoint id:020>-<part:06>.bin  |  base-<checkpoint id:020>.bin
//!   header (36 bytes): magic b"WEIRDLT1" | version u32 | writer release (8
//!   bytes, `crate::release`; not in version 1) | kind u32 (0 delta, 1 base)
//!                      | checkpoint id u64 | part u32 (0 for a base file)
//!   records, grouped by key group (ascending), each group sorted by (data, time):
//!     shared varint | suffix_len varint | suffix | time varint | diff zigzag-varint
//!   index: groups u32 | per non-empty group: key_group u16 | byte offset u64 | records u64
//!   trailer (20 bytes): index offset u64 | records u64 | crc32c(every byte before it) u32
//! commits.log
//!   header (24 bytes): magic b"WEIRCMT1" | version u32 | writer release
//!   (8 bytes, `crate::release`) | crc32c(previous 20 bytes) u32 (versions 1
//!   and 2: 16 bytes, no release)
//!   frames (as log segments): len u32 | crc32c(len) u32 | crc32c(payload) u32 | payload
//! ```
//!
//! A record's `data` is its predecessor's (in the same group) first `shared`
//! bytes followed by `suffix`, with `shared` maximal; its `time` is stored as
//! the difference to the predecessor's time when the data is the same, else
//! as is. The decoders check every invariant the encoder keeps (order,
//! consolidation, maximal prefixes, index consistency), so a decoded file is
//! exactly what was written. The codecs live in the child modules `commit`
//! and `delta`.
//!
//! The data types derive `serde` only for the sidecar transport (messages
//! between processes); nothing on disk is encoded with serde.

mod commit;
mod delta;
#[cfg(test)]
mod tests;

use std::fmt;

pub use commit::{
    check_commit_record, decode_commit_record, encode_commit_frame, encode_commit_record,
    encode_commits_header, encode_commits_header_version, scan_commits, CommitScan,
};
pub use delta::{
    check_data_file_crc, check_data_file_length, decode_data_file, decode_layout, decode_trailer,
    encode_data_file, push_updates, verify_data_file, visit_group, DataFileEncoder, GroupExtent,
    VisitUpdate,
};

/// Number of key groups; a key's group is a hash of it modulo this.
pub const KEY_GROUPS: u16 = 256;
/// The largest `data` of one update (16 MiB).
pub const MAX_UPDATE_DATA_BYTES: usize = 16 << 20;
/// The longest output or data file name.
pub const MAX_NAME_LEN_BYTES: usize = 255;
/// Magic bytes at the start of every delta or base file.
pub const DATA_FILE_MAGIC: &[u8; 8] = b"WEIRDLT1";
/// Version of the data file format written by this code (2: the header
/// names the writer's release).
pub const DATA_FILE_FORMAT_VERSION: u32 = 2;
/// The oldest data file version this code reads.
pub const DATA_FILE_OLDEST_READABLE_VERSION: u32 = 1;
/// Size of a data file header of the current version.
pub const DATA_FILE_HEADER_LEN_BYTES: usize = data_file_header_len_bytes(DATA_FILE_FORMAT_VERSION);
/// Size of the shortest data file header (version 1).
pub const DATA_FILE_MIN_HEADER_LEN_BYTES: usize = data_file_header_len_bytes(1);

/// Size of a data file header of `version`: 28 bytes in version 1; from
/// version 2 on 36, the writer's release (8 bytes) right after the
/// version, where every later version keeps it.
pub const fn data_file_header_len_bytes(version: u32) -> usize {
    if version >= 2 {
        36
    } else {
        28
    }
}
/// Size of a data file trailer.
pub const DATA_FILE_TRAILER_LEN_BYTES: usize = 20;
/// Magic bytes at the start of the commit stream.
pub const COMMITS_MAGIC: &[u8; 8] = b"WEIRCMT1";
/// Version of the commit stream format written by this code (2: records
/// carry their [`CommitTiming`]; 3: the header names the writer's release).
pub const COMMITS_FORMAT_VERSION: u32 = 3;
/// The oldest commit stream version this code reads (a store opened for
/// writing rewrites an older stream in the current version first).
pub const COMMITS_OLDEST_READABLE_VERSION: u32 = 1;
/// Size of the commit stream header of the current version.
pub const COMMITS_HEADER_LEN_BYTES: usize = commits_header_len_bytes(COMMITS_FORMAT_VERSION);

/// Size of the commit stream header of `version`: 16 bytes up to version
/// 2; from version 3 on, the header starts with 24 bytes whose layout
/// every later version keeps (magic, version, writer release, CRC32C of
/// the 20 bytes before), so that an older binary can still name the
/// release that wrote a stream it cannot read.
pub const fn commits_header_len_bytes(version: u32) -> usize {
    if version >= 3 {
        24
    } else {
        16
    }
}
/// The commit stream's file name.
pub const COMMITS_FILE_NAME: &str = "commits.log";
/// Suffix of files being written (removed by the store's garbage collection).
pub const TEMP_SUFFIX: &str = ".tmp";

/// One persisted differential update, opaque to the store except for its key
/// group and time.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PersistedUpdate {
    /// Key group, below [`KEY_GROUPS`].
    pub key_group: u16,
    /// The encoded `(key, value)` of the update.
    pub data: Vec<u8>,
    /// Timely time of the update.
    pub time: u64,
    /// Multiplicity change (never 0 once consolidated).
    pub diff: i64,
}

/// Where a worker resumes reading one input partition.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionResume {
    /// The input partition.
    pub partition: u32,
    /// The first offset not covered by the checkpoint.
    pub resume_offset: u64,
    /// `max_ts_p` over the events before `resume_offset` (`None`: none).
    pub max_ts_before: Option<u64>,
}

/// The committed length of one output file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputLength {
    /// A plain file name (`[A-Za-z0-9._-]+`, not `.` or `..`).
    pub file_name: String,
    /// Bytes of it that the checkpoint covers.
    pub length_bytes: u64,
}

/// A delta or base file as a commit record references it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileMeta {
    /// The file name, always [`DataFileId::file_name`] of some id.
    pub name: String,
    /// Its exact size.
    pub size_bytes: u64,
    /// CRC32C of every byte but the last four (which store this value).
    pub crc32c: u32,
    /// Smallest time of an update in it (0 if it has none).
    pub min_time: u64,
    /// Largest time of an update in it (0 if it has none).
    pub max_time: u64,
}

/// One committed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitRecord {
    /// 1, 2, 3... strictly increasing along the commit stream.
    pub checkpoint_id: u64,
    /// `T`: the state covers every update with time `< T`.
    pub cut_time: u64,
    /// Restore is refused if the running query's fingerprint differs.
    pub query_fingerprint: u64,
    /// Workers of the run that wrote it.
    pub workers_total: u32,
    /// Every data file needed to restore this checkpoint.
    pub files: Vec<FileMeta>,
    /// Resume positions of the input partitions.
    pub partitions: Vec<PartitionResume>,
    /// Committed output lengths.
    pub outputs: Vec<OutputLength>,
    /// When and how fast the sidecar committed it (`None` in records of a
    /// version 1 stream).
    pub timing: Option<CommitTiming>,
}

impl CommitRecord {
    /// The least offset it resumes any input partition from (`None`: it
    /// lists no partition); the log below it is not needed to continue.
    pub fn least_resume_offset(&self) -> Option<u64> {
        self.partitions.iter().map(|p| p.resume_offset).min()
    }
}

/// When a checkpoint was committed, as the sidecar measured it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitTiming {
    /// Wall clock (Unix ms) when the commit record was written.
    pub committed_at_unix_ms: u64,
    /// From the arrival of the checkpoint's first worker share at the
    /// sidecar to the commit record being written (its own fsync excluded).
    pub commit_latency_us: u64,
}

/// A decoding failure: where and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    /// Byte offset in the file where the bad header, frame or field starts.
    pub byte_offset: u64,
    /// What is wrong.
    pub reason: String,
}

impl FormatError {
    /// An error at `byte_offset`.
    pub fn new(byte_offset: u64, reason: String) -> Self {
        Self {
            byte_offset,
            reason,
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.byte_offset, self.reason)
    }
}

/// Sorts `updates` by `(key_group, data, time)`, sums the diffs of equal
/// triples and drops zero sums.
pub fn consolidate(updates: &mut Vec<PersistedUpdate>) {
    updates.sort_unstable_by(order);
    sum_equal_runs(updates);
}

/// Consolidates persisted *state* (open sessions): only its value as of the
/// cut matters, so every time is advanced to 0 first and an insertion and a
/// later retraction of the same record cancel.
pub fn consolidate_as_of_cut(updates: &mut Vec<PersistedUpdate>) {
    for update in updates.iter_mut() {
        update.time = 0;
    }
    consolidate(updates);
}

/// As [`consolidate`], for `updates` made of a few runs that are each
/// sorted (the files of a checkpoint, concatenated): a stable sort finds the
/// runs and merges them in about `n log(runs)` comparisons.
pub fn consolidate_sorted_runs(updates: &mut Vec<PersistedUpdate>) {
    updates.sort_by(order);
    sum_equal_runs(updates);
}

fn order(a: &PersistedUpdate, b: &PersistedUpdate) -> std::cmp::Ordering {
    (a.key_group, &a.data, a.time).cmp(&(b.key_group, &b.data, b.time))
}

/// Sums the diffs of equal adjacent triples of sorted `updates` and drops
/// zero sums.
fn sum_equal_runs(updates: &mut Vec<PersistedUpdate>) {
    let mut kept = 0;
    for i in 0..updates.len() {
        let same = kept > 0 && {
            let (p, u) = (&updates[kept - 1], &updates[i]);
            p.key_group == u.key_group && p.time == u.time && p.data == u.data
        };
        if same {
            let diff = updates[i].diff;
            let p = &mut updates[kept - 1];
            p.diff = p.diff.wrapping_add(diff);
        } else {
            if kept > 0 && updates[kept - 1].diff == 0 {
                kept -= 1;
            }
            updates.swap(kept, i);
            kept += 1;
        }
    }
    if kept > 0 && updates[kept - 1].diff == 0 {
        kept -= 1;
    }
    updates.truncate(kept);
}

/// Whether `updates` is what [`consolidate`] returns: strictly increasing
/// `(key_group, data, time)`, no zero diff.
pub fn is_consolidated(updates: &[PersistedUpdate]) -> bool {
    updates.iter().all(|u| u.diff != 0)
        && updates.windows(2).all(|w| {
            (w[0].key_group, &w[0].data, w[0].time) < (w[1].key_group, &w[1].data, w[1].time)
        })
}

/// Whether a file holds the changes of one part of a checkpoint or a
/// compacted base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataFileKind {
    /// `delta-<id:020>-<part:06>.bin`
    Delta,
    /// `base-<id:020>.bin`
    Base,
}

/// The integers a data file name is made of (names never come from input).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DataFileId {
    /// Delta or base.
    pub kind: DataFileKind,
    /// The checkpoint the file was written for.
    pub checkpoint_id: u64,
    /// The part (0 for a base file).
    pub part: u32,
}

impl DataFileId {
    /// A delta file.
    pub fn delta(checkpoint_id: u64, part: u32) -> Self {
        Self {
            kind: DataFileKind::Delta,
            checkpoint_id,
            part,
        }
    }

    /// A base file.
    pub fn base(checkpoint_id: u64) -> Self {
        Self {
            kind: DataFileKind::Base,
            checkpoint_id,
            part: 0,
        }
    }

    /// The file name.
    pub fn file_name(&self) -> String {
        match self.kind {
            DataFileKind::Delta => format!("delta-{:020}-{:06}.bin", self.checkpoint_id, self.part),
            DataFileKind::Base => format!("base-{:020}.bin", self.checkpoint_id),
        }
    }

    /// Parses a canonical data file name (exactly what [`Self::file_name`]
    /// gives); anything else is `None`.
    pub fn parse(name: &str) -> Option<Self> {
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let id = if let Some(rest) = name.strip_prefix("base-") {
            let n = rest.strip_suffix(".bin")?;
            digits(n).then_some(())?;
            Self::base(n.parse().ok()?)
        } else {
            let rest = name.strip_prefix("delta-")?.strip_suffix(".bin")?;
            let (n, p) = rest.split_once('-')?;
            (digits(n) && digits(p)).then_some(())?;
            Self::delta(n.parse().ok()?, p.parse().ok()?)
        };
        (id.file_name() == name).then_some(id)
    }
}

/// Checks an output file name: 1 to 255 bytes of `[A-Za-z0-9._-]`, not `.`
/// or `..`.
pub fn validate_output_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN_BYTES {
        return Err(format!(
            "output file name `{name}` must have 1 to {MAX_NAME_LEN_BYTES} bytes"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("output file name `{name}` is not a file name"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "output file name `{name}` may only hold ASCII letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// Appends `v` as an unsigned LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// A bounds-checked reader over a byte slice whose errors carry the file
/// offset.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// File offset of `bytes[0]`.
    base: u64,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8], base: u64) -> Self {
        Self {
            bytes,
            pos: 0,
            base,
        }
    }

    fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn error(&self, reason: String) -> FormatError {
        FormatError::new(self.offset(), reason)
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FormatError> {
        if self.remaining() < n {
            return Err(self.error(format!(
                "{what}: needs {n} bytes, only {} left",
                self.remaining()
            )));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], FormatError> {
        Ok(self.take(N, what)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self, what: &str) -> Result<u8, FormatError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, FormatError> {
        self.array(what).map(u16::from_le_bytes)
    }

    fn u32(&mut self, what: &str) -> Result<u32, FormatError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, FormatError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A `u32` count of entries of at least `min_entry_bytes` each, checked
    /// against what is left (so corrupt counts cannot allocate).
    fn count(&mut self, what: &str, min_entry_bytes: usize) -> Result<usize, FormatError> {
        let at = self.offset();
        let n = self.u32(what)? as usize;
        if n.saturating_mul(min_entry_bytes) > self.remaining() {
            return Err(FormatError::new(
                at,
                format!(
                    "{what} {n} does not fit in the {} bytes left",
                    self.remaining()
                ),
            ));
        }
        Ok(n)
    }

    fn name(&mut self, what: &str) -> Result<String, FormatError> {
        let at = self.offset();
        let len = self.u16(what)? as usize;
        if len > MAX_NAME_LEN_BYTES {
            return Err(FormatError::new(
                at,
                format!("{what} has {len} bytes (max {MAX_NAME_LEN_BYTES})"),
            ));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| FormatError::new(at, format!("{what} is not UTF-8")))
    }

    /// An unsigned LEB128 varint of at most 10 bytes that fits in a `u64`.
    fn varint(&mut self, what: &str) -> Result<u64, FormatError> {
        let at = self.offset();
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8(what)?;
            if i == 9 && b > 1 {
                break;
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(FormatError::new(at, format!("{what}: overlong varint")));
                }
                return Ok(v);
            }
        }
        Err(FormatError::new(
            at,
            format!("{what}: varint overflows 64 bits"),
        ))
    }
}
