//! Hand-written payload encoding of the sidecar messages.
//!
//! Little-endian fixed-width integers; a byte string or string is `len u32 |
//! bytes`; a vector is `count u32 | elements`; an `Option<u64>` is `tag u8
//! (0 none, 1 some) | u64 if some`. The decoder checks every length against
//! the bytes that remain BEFORE allocating (so a lying count costs nothing),
//! rejects invalid UTF-8, unknown tags and trailing bytes, and never panics.
//!
//! Every payload starts with `kind u8` (the frame kind again), then:
//!
//! ```text
//! Hello      token bytes | process u32 | workers_total u32 | query_fingerprint u64 | epoch u64 | restored_from Option<u64>
//! WorkerCut  worker u32 | checkpoint_id u64 | prev_cut_time u64 | cut_time u64 | retention_ms u64
//!            | updates vec of (key_group u16 | data bytes | time u64 | diff i64)
//!            | partitions vec of (partition u32 | resume_offset u64 | max_ts_before opt u64)
//!            | outputs vec of (file_name string | length_bytes u64)
//! CutUpdates worker u32 | checkpoint_id u64 | updates (as in WorkerCut)
//! Goodbye    (empty)
//! Welcome    last_committed: tag u8 | (id u64 | cut_time u64) if tag 1
//! Committed  checkpoint_id u64 | cut_time u64 | commit_latency_us u64
//! Refused    reason string
//! ```

use crate::checkpoint::format::{OutputLength, PartitionResume, PersistedUpdate};

/// Appends encoded values to a buffer.
#[derive(Debug, Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    /// A length or count; saturates (the frame limit rejects such a payload
    /// long before 4 GiB).
    pub fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
    pub fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    pub fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    pub fn updates(&mut self, updates: &[PersistedUpdate]) {
        self.len(updates.len());
        for u in updates {
            self.u16(u.key_group);
            self.bytes(&u.data);
            self.u64(u.time);
            self.i64(u.diff);
        }
    }
    pub fn partitions(&mut self, partitions: &[PartitionResume]) {
        self.len(partitions.len());
        for p in partitions {
            self.u32(p.partition);
            self.u64(p.resume_offset);
            self.opt_u64(p.max_ts_before);
        }
    }
    pub fn outputs(&mut self, outputs: &[OutputLength]) {
        self.len(outputs.len());
        for o in outputs {
            self.str(&o.file_name);
            self.u64(o.length_bytes);
        }
    }
}

/// Reads encoded values from a slice; every read is bounds-checked.
#[derive(Debug)]
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

/// Smallest encoding of one update (key group, empty data, time, diff).
const MIN_UPDATE_BYTES: usize = 2 + 4 + 8 + 8;
/// Smallest encoding of one partition resume.
const MIN_PARTITION_BYTES: usize = 4 + 8 + 1;
/// Smallest encoding of one output length.
const MIN_OUTPUT_BYTES: usize = 4 + 8;

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining {
            return Err(format!(
                "{what} needs {n} bytes at byte {}, only {remaining} remain",
                self.pos
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], String> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.array::<1>(what)?[0])
    }
    pub fn u16(&mut self, what: &str) -> Result<u16, String> {
        self.array(what).map(u16::from_le_bytes)
    }
    pub fn u32(&mut self, what: &str) -> Result<u32, String> {
        self.array(what).map(u32::from_le_bytes)
    }
    pub fn u64(&mut self, what: &str) -> Result<u64, String> {
        self.array(what).map(u64::from_le_bytes)
    }
    pub fn i64(&mut self, what: &str) -> Result<i64, String> {
        self.array(what).map(i64::from_le_bytes)
    }

    /// A count of elements of at least `min_elem_bytes` each, checked against
    /// the bytes that remain.
    fn count(&mut self, min_elem_bytes: usize, what: &str) -> Result<usize, String> {
        let n = self.u32(what)? as usize;
        let remaining = self.buf.len() - self.pos;
        if n > remaining / min_elem_bytes.max(1) {
            return Err(format!(
                "{what}: {n} elements cannot fit in the {remaining} bytes that remain"
            ));
        }
        Ok(n)
    }

    pub fn bytes(&mut self, what: &str) -> Result<Vec<u8>, String> {
        let n = self.count(1, what)?;
        Ok(self.take(n, what)?.to_vec())
    }

    pub fn string(&mut self, what: &str) -> Result<String, String> {
        String::from_utf8(self.bytes(what)?).map_err(|_| format!("{what} is not UTF-8"))
    }

    pub fn opt_u64(&mut self, what: &str) -> Result<Option<u64>, String> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => self.u64(what).map(Some),
            tag => Err(format!("{what}: bad option tag {tag}")),
        }
    }

    pub fn updates(&mut self) -> Result<Vec<PersistedUpdate>, String> {
        let n = self.count(MIN_UPDATE_BYTES, "updates")?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(PersistedUpdate {
                key_group: self.u16("update key group")?,
                data: self.bytes("update data")?,
                time: self.u64("update time")?,
                diff: self.i64("update diff")?,
            });
        }
        Ok(out)
    }

    pub fn partitions(&mut self) -> Result<Vec<PartitionResume>, String> {
        let n = self.count(MIN_PARTITION_BYTES, "partitions")?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(PartitionResume {
                partition: self.u32("partition")?,
                resume_offset: self.u64("resume offset")?,
                max_ts_before: self.opt_u64("max ts before")?,
            });
        }
        Ok(out)
    }

    pub fn outputs(&mut self) -> Result<Vec<OutputLength>, String> {
        let n = self.count(MIN_OUTPUT_BYTES, "outputs")?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(OutputLength {
                file_name: self.string("output file name")?,
                length_bytes: self.u64("output length")?,
            });
        }
        Ok(out)
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), String> {
        let trailing = self.buf.len() - self.pos;
        if trailing == 0 {
            Ok(())
        } else {
            Err(format!("{trailing} trailing bytes after the message"))
        }
    }
}
