//! The commit stream codec: the file header, one frame per
//! [`CommitRecord`], and the scan that tells a torn tail from corruption.

use std::collections::HashSet;

use super::{
    commits_header_len_bytes, u32_at, validate_output_name, CommitRecord, CommitTiming, Cursor,
    DataFileId, FileMeta, FormatError, OutputLength, PartitionResume, COMMITS_FORMAT_VERSION,
    COMMITS_MAGIC, COMMITS_OLDEST_READABLE_VERSION, MAX_NAME_LEN_BYTES,
};
use crate::release::{Release, RELEASE_LEN_BYTES, THIS_RELEASE};
use crate::storage::frame::{
    check_payload, decode_frame_header, encode_frame_header, FRAME_HEADER_LEN_BYTES,
};

/// Checks what a commit record must satisfy: id at least 1; data file names
/// canonical, unique, of checkpoints up to this one, with `min_time <=
/// max_time`; partitions unique; output names valid and unique.
pub fn check_commit_record(r: &CommitRecord) -> Result<(), String> {
    if r.checkpoint_id == 0 {
        return Err("checkpoint ids start at 1".to_owned());
    }
    let mut names = HashSet::new();
    for f in &r.files {
        let id = DataFileId::parse(&f.name)
            .ok_or_else(|| format!("`{}` is not a data file name", f.name))?;
        if id.checkpoint_id > r.checkpoint_id {
            return Err(format!(
                "file {} belongs to a later checkpoint than {}",
                f.name, r.checkpoint_id
            ));
        }
        if f.min_time > f.max_time {
            return Err(format!("file {} has min_time > max_time", f.name));
        }
        if !names.insert(f.name.as_str()) {
            return Err(format!("file {} is listed twice", f.name));
        }
    }
    let mut partitions = HashSet::new();
    for p in &r.partitions {
        if !partitions.insert(p.partition) {
            return Err(format!("partition {} is listed twice", p.partition));
        }
    }
    let mut outputs = HashSet::new();
    for o in &r.outputs {
        validate_output_name(&o.file_name)?;
        if !outputs.insert(o.file_name.as_str()) {
            return Err(format!("output {} is listed twice", o.file_name));
        }
    }
    Ok(())
}

fn put_name(out: &mut Vec<u8>, name: &str) {
    debug_assert!(name.len() <= MAX_NAME_LEN_BYTES);
    out.extend_from_slice(&(name.len() as u16).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
}

/// Encodes the payload of a commit frame in the current version (the
/// record should pass [`check_commit_record`]).
pub fn encode_commit_record(r: &CommitRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + 50 * r.files.len() + 21 * r.partitions.len());
    out.extend_from_slice(&r.checkpoint_id.to_le_bytes());
    out.extend_from_slice(&r.cut_time.to_le_bytes());
    out.extend_from_slice(&r.query_fingerprint.to_le_bytes());
    out.extend_from_slice(&r.workers_total.to_le_bytes());
    out.extend_from_slice(&(r.files.len() as u32).to_le_bytes());
    for f in &r.files {
        put_name(&mut out, &f.name);
        out.extend_from_slice(&f.size_bytes.to_le_bytes());
        out.extend_from_slice(&f.crc32c.to_le_bytes());
        out.extend_from_slice(&f.min_time.to_le_bytes());
        out.extend_from_slice(&f.max_time.to_le_bytes());
    }
    out.extend_from_slice(&(r.partitions.len() as u32).to_le_bytes());
    for p in &r.partitions {
        out.extend_from_slice(&p.partition.to_le_bytes());
        out.extend_from_slice(&p.resume_offset.to_le_bytes());
        out.push(u8::from(p.max_ts_before.is_some()));
        out.extend_from_slice(&p.max_ts_before.unwrap_or(0).to_le_bytes());
    }
    out.extend_from_slice(&(r.outputs.len() as u32).to_le_bytes());
    for o in &r.outputs {
        put_name(&mut out, &o.file_name);
        out.extend_from_slice(&o.length_bytes.to_le_bytes());
    }
    let timing = r.timing.unwrap_or_default();
    out.push(u8::from(r.timing.is_some()));
    out.extend_from_slice(&timing.committed_at_unix_ms.to_le_bytes());
    out.extend_from_slice(&timing.commit_latency_us.to_le_bytes());
    out
}

/// Decodes a commit frame's payload of the current version; offsets in
/// errors are relative to it.
pub fn decode_commit_record(payload: &[u8]) -> Result<CommitRecord, FormatError> {
    decode_commit_record_version(payload, COMMITS_FORMAT_VERSION)
}

/// Decodes a commit frame's payload of a stream of `version`.
pub fn decode_commit_record_version(
    payload: &[u8],
    version: u32,
) -> Result<CommitRecord, FormatError> {
    let mut c = Cursor::new(payload, 0);
    let checkpoint_id = c.u64("checkpoint id")?;
    let cut_time = c.u64("cut time")?;
    let query_fingerprint = c.u64("query fingerprint")?;
    let workers_total = c.u32("workers")?;
    let n = c.count("file count", 2 + 28)?;
    let mut files = Vec::with_capacity(n);
    for _ in 0..n {
        files.push(FileMeta {
            name: c.name("file name")?,
            size_bytes: c.u64("file size")?,
            crc32c: c.u32("file CRC32C")?,
            min_time: c.u64("file min time")?,
            max_time: c.u64("file max time")?,
        });
    }
    let n = c.count("partition count", 21)?;
    let mut partitions = Vec::with_capacity(n);
    for _ in 0..n {
        let partition = c.u32("partition")?;
        let resume_offset = c.u64("resume offset")?;
        let at = c.offset();
        let flag = c.u8("max_ts flag")?;
        let value = c.u64("max_ts")?;
        let max_ts_before = match (flag, value) {
            (0, 0) => None,
            (1, v) => Some(v),
            _ => {
                return Err(FormatError::new(
                    at,
                    format!("bad max_ts flag {flag} (value {value})"),
                ))
            }
        };
        partitions.push(PartitionResume {
            partition,
            resume_offset,
            max_ts_before,
        });
    }
    let n = c.count("output count", 2 + 8)?;
    let mut outputs = Vec::with_capacity(n);
    for _ in 0..n {
        outputs.push(OutputLength {
            file_name: c.name("output name")?,
            length_bytes: c.u64("output length")?,
        });
    }
    let timing = if version >= 2 {
        let at = c.offset();
        let flag = c.u8("timing flag")?;
        let committed_at_unix_ms = c.u64("committed at")?;
        let commit_latency_us = c.u64("commit latency")?;
        match (flag, committed_at_unix_ms, commit_latency_us) {
            (0, 0, 0) => None,
            (1, committed_at_unix_ms, commit_latency_us) => Some(CommitTiming {
                committed_at_unix_ms,
                commit_latency_us,
            }),
            _ => return Err(FormatError::new(at, format!("bad timing flag {flag}"))),
        }
    } else {
        None
    };
    if c.remaining() != 0 {
        return Err(c.error(format!("{} bytes after the record", c.remaining())));
    }
    let record = CommitRecord {
        checkpoint_id,
        cut_time,
        query_fingerprint,
        workers_total,
        files,
        partitions,
        outputs,
        timing,
    };
    check_commit_record(&record).map_err(|reason| FormatError {
        byte_offset: 0,
        reason,
    })?;
    Ok(record)
}

/// The commit stream's file header, current version, naming this
/// binary's release.
pub fn encode_commits_header() -> Vec<u8> {
    encode_commits_header_version(COMMITS_FORMAT_VERSION)
}

/// The commit stream's file header for `version` (from version 3 on,
/// naming this binary's release).
pub fn encode_commits_header_version(version: u32) -> Vec<u8> {
    let len = commits_header_len_bytes(version);
    let mut h = Vec::with_capacity(len);
    h.extend_from_slice(COMMITS_MAGIC);
    h.extend_from_slice(&version.to_le_bytes());
    if version >= 3 {
        h.extend_from_slice(&THIS_RELEASE.encode());
    }
    let crc = crc32c::crc32c(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(h.len(), len);
    h
}

/// The frame appended to the commit stream for `r`: frame header + payload.
pub fn encode_commit_frame(r: &CommitRecord) -> Vec<u8> {
    let payload = encode_commit_record(r);
    let mut frame = encode_frame_header(&payload).to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// What [`scan_commits`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitScan {
    /// The complete records, in order.
    pub records: Vec<CommitRecord>,
    /// Length of the stream up to the end of the last complete frame.
    pub valid_len_bytes: u64,
    /// Why the bytes after `valid_len_bytes` are a torn (incomplete) last
    /// frame, if there are any.
    pub torn: Option<String>,
    /// The stream's format version.
    pub version: u32,
    /// The release that wrote the stream's header (version 3 on).
    pub writer: Option<Release>,
}

/// Reads a whole commit stream. An incomplete last frame (a frame header
/// cut short, or a payload shorter than its checksummed length) is a torn
/// tail, reported in [`CommitScan::torn`]. Anything else that is wrong (a
/// header shorter than its version's: it is written atomically; a checksum, magic
/// or version mismatch; a record that does not decode; ids not increasing)
/// is an error at the offset of the header or frame.
pub fn scan_commits(bytes: &[u8]) -> Result<CommitScan, FormatError> {
    let header_err = |reason: String| FormatError {
        byte_offset: 0,
        reason,
    };
    let version = (bytes.len() >= 12).then(|| u32_at(bytes, 8));
    let header_len = commits_header_len_bytes(version.unwrap_or(COMMITS_FORMAT_VERSION));
    let Some(version) = version.filter(|_| bytes.len() >= header_len) else {
        return Err(header_err(format!(
            "commit stream header has only {} of {header_len} bytes (it is written atomically, \
             so this is damage, not a torn write)",
            bytes.len()
        )));
    };
    let crc_at = header_len - 4;
    if crc32c::crc32c(&bytes[..crc_at]) != u32_at(bytes, crc_at) {
        return Err(header_err(
            "commit stream header checksum mismatch".to_owned(),
        ));
    }
    if &bytes[..8] != COMMITS_MAGIC {
        return Err(header_err("bad commit stream magic".to_owned()));
    }
    let release: Option<&[u8; RELEASE_LEN_BYTES]> =
        (version >= 3).then(|| bytes[12..20].try_into().expect("8 bytes"));
    if !(COMMITS_OLDEST_READABLE_VERSION..=COMMITS_FORMAT_VERSION).contains(&version) {
        let by = Release::unreadable_writer(release);
        return Err(header_err(format!(
            "commit stream version {version}, written by {by}: this binary ({THIS_RELEASE}) reads \
             versions {COMMITS_OLDEST_READABLE_VERSION} to {COMMITS_FORMAT_VERSION}"
        )));
    }
    let writer = match release {
        Some(r) => Some(Release::decode(r).ok_or_else(|| {
            header_err(
                "commit stream header: the writer release's reserved bytes are not zero".to_owned(),
            )
        })?),
        None => None,
    };
    let mut records: Vec<CommitRecord> = Vec::new();
    let mut pos = header_len;
    let mut torn = None;
    while pos < bytes.len() {
        let at = |reason: String| FormatError {
            byte_offset: pos as u64,
            reason,
        };
        let rest = &bytes[pos..];
        if rest.len() < FRAME_HEADER_LEN_BYTES {
            torn = Some(format!(
                "incomplete frame header at byte {pos} ({} of {FRAME_HEADER_LEN_BYTES} bytes)",
                rest.len()
            ));
            break;
        }
        let h = decode_frame_header(rest).map_err(at)?;
        let have = rest.len() - FRAME_HEADER_LEN_BYTES;
        if have < h.len_bytes {
            torn = Some(format!(
                "incomplete frame at byte {pos} ({have} of {} payload bytes)",
                h.len_bytes
            ));
            break;
        }
        let payload = &rest[FRAME_HEADER_LEN_BYTES..FRAME_HEADER_LEN_BYTES + h.len_bytes];
        check_payload(h, payload).map_err(at)?;
        let record = decode_commit_record_version(payload, version)
            .map_err(|e| at(format!("commit record does not decode: {e} of its payload")))?;
        if let Some(prev) = records.last() {
            if record.checkpoint_id <= prev.checkpoint_id {
                return Err(at(format!(
                    "checkpoint id {} follows {}",
                    record.checkpoint_id, prev.checkpoint_id
                )));
            }
        }
        records.push(record);
        pos += FRAME_HEADER_LEN_BYTES + h.len_bytes;
    }
    let valid_len_bytes = if torn.is_some() { pos } else { bytes.len() } as u64;
    Ok(CommitScan {
        records,
        valid_len_bytes,
        torn,
        version,
        writer,
    })
}
