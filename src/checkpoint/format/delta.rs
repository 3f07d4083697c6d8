//! The delta and base file codec (see the parent module for the layout).
//!
//! Writers give consolidated updates; readers first check the whole file
//! against the size and CRC32C its commit record gives ([`verify_data_file`])
//! and only then decode ([`decode_data_file`]), using the index to skip the
//! key groups they do not own.

use super::{
    data_file_header_len_bytes, is_consolidated, put_varint, u32_at, unzigzag, zigzag, Cursor,
    DataFileId, DataFileKind, FileMeta, FormatError, PersistedUpdate, DATA_FILE_FORMAT_VERSION,
    DATA_FILE_HEADER_LEN_BYTES, DATA_FILE_MAGIC, DATA_FILE_MIN_HEADER_LEN_BYTES,
    DATA_FILE_OLDEST_READABLE_VERSION, DATA_FILE_TRAILER_LEN_BYTES, KEY_GROUPS,
    MAX_UPDATE_DATA_BYTES,
};
use crate::release::{Release, RELEASE_LEN_BYTES, THIS_RELEASE};

/// Bytes of one index entry: key group u16, byte offset u64, records u64.
const INDEX_ENTRY_LEN_BYTES: usize = 18;
/// The smallest encoded record (four one-byte varints).
const MIN_RECORD_LEN_BYTES: u64 = 4;

fn kind_code(kind: DataFileKind) -> u32 {
    match kind {
        DataFileKind::Delta => 0,
        DataFileKind::Base => 1,
    }
}

/// Encodes `updates`, which must be consolidated (see
/// [`super::consolidate`]) with key groups below [`KEY_GROUPS`], as the
/// file `id`; returns the bytes and the file's [`FileMeta`].
pub fn encode_data_file(id: DataFileId, updates: &[PersistedUpdate]) -> (Vec<u8>, FileMeta) {
    debug_assert!(is_consolidated(updates));
    let data_bytes: usize = updates.iter().map(|u| u.data.len()).sum();
    let mut encoder = DataFileEncoder::with_capacity(id, 128 + data_bytes + 8 * updates.len());
    encoder.push_sorted(updates);
    let mut out = encoder.take_bytes();
    let (tail, meta) = encoder.finish();
    out.extend_from_slice(&tail);
    (out, meta)
}

/// A data file encoded piece by piece, for a writer that streams it (a
/// compaction merging one key group at a time): push updates in
/// `(key_group, data, time)` order, consolidated, move the encoded bytes
/// out with [`DataFileEncoder::take_bytes`] whenever convenient, and end
/// with [`DataFileEncoder::finish`]. The bytes are exactly those of
/// [`encode_data_file`] over all the updates pushed.
#[derive(Debug)]
pub struct DataFileEncoder {
    id: DataFileId,
    /// Encoded bytes not taken yet.
    out: Vec<u8>,
    /// Bytes taken before `out`, and their CRC32C.
    taken_bytes: u64,
    taken_crc32c: u32,
    /// (key group, byte offset, records) of each group started.
    index: Vec<(u16, u64, u64)>,
    /// The last update pushed (the prefix compression's reference), if it
    /// is in the current key group.
    prev: Option<PersistedUpdate>,
    records: u64,
    min_time: u64,
    max_time: u64,
}

impl DataFileEncoder {
    /// An encoder of file `id`, its header encoded.
    pub fn new(id: DataFileId) -> Self {
        Self::with_capacity(id, 1 << 16)
    }

    fn with_capacity(id: DataFileId, capacity_bytes: usize) -> Self {
        let mut out = Vec::with_capacity(capacity_bytes);
        out.extend_from_slice(DATA_FILE_MAGIC);
        out.extend_from_slice(&DATA_FILE_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&THIS_RELEASE.encode());
        out.extend_from_slice(&kind_code(id.kind).to_le_bytes());
        out.extend_from_slice(&id.checkpoint_id.to_le_bytes());
        out.extend_from_slice(&id.part.to_le_bytes());
        debug_assert_eq!(out.len(), DATA_FILE_HEADER_LEN_BYTES);
        DataFileEncoder {
            id,
            out,
            taken_bytes: 0,
            taken_crc32c: 0,
            index: Vec::new(),
            prev: None,
            records: 0,
            min_time: u64::MAX,
            max_time: 0,
        }
    }

    /// Bytes encoded and not taken yet.
    pub fn pending_bytes(&self) -> usize {
        self.out.len()
    }

    /// Appends `updates`: consolidated, and after every update pushed
    /// before in `(key_group, data, time)` order.
    pub fn push_sorted(&mut self, updates: &[PersistedUpdate]) {
        let mut prev = self.prev.take();
        let mut prev_ref: Option<&PersistedUpdate> = prev.as_ref();
        for u in updates {
            debug_assert!(u.key_group < KEY_GROUPS);
            let position = self.taken_bytes + self.out.len() as u64;
            if self.index.last().map(|e| e.0) != Some(u.key_group) {
                debug_assert!(self.index.last().is_none_or(|e| e.0 < u.key_group));
                self.index.push((u.key_group, position, 0));
                prev_ref = None;
            }
            self.index.last_mut().expect("just pushed").2 += 1;
            let (shared, same) = match prev_ref {
                Some(p) => {
                    debug_assert!((&p.data, p.time) < (&u.data, u.time));
                    let shared = p
                        .data
                        .iter()
                        .zip(&u.data)
                        .take_while(|(a, b)| a == b)
                        .count();
                    (shared, shared == p.data.len() && shared == u.data.len())
                }
                None => (0, false),
            };
            put_varint(&mut self.out, shared as u64);
            put_varint(&mut self.out, (u.data.len() - shared) as u64);
            self.out.extend_from_slice(&u.data[shared..]);
            let time = match prev_ref {
                Some(p) if same => u.time - p.time,
                _ => u.time,
            };
            put_varint(&mut self.out, time);
            put_varint(&mut self.out, zigzag(u.diff));
            self.min_time = self.min_time.min(u.time);
            self.max_time = self.max_time.max(u.time);
            prev_ref = Some(u);
        }
        self.records += updates.len() as u64;
        // The reference survives into the next push (same key group).
        if let Some(last) = updates.last() {
            prev = Some(last.clone());
        }
        self.prev = prev.filter(|p| self.index.last().is_some_and(|e| e.0 == p.key_group));
    }

    /// The bytes encoded since the last call (the file's next bytes).
    pub fn take_bytes(&mut self) -> Vec<u8> {
        self.taken_crc32c = crc32c::crc32c_append(self.taken_crc32c, &self.out);
        self.taken_bytes += self.out.len() as u64;
        std::mem::take(&mut self.out)
    }

    /// The file's remaining bytes (index and trailer included) and its
    /// [`FileMeta`].
    pub fn finish(mut self) -> (Vec<u8>, FileMeta) {
        let index_offset = self.taken_bytes + self.out.len() as u64;
        let out = &mut self.out;
        out.extend_from_slice(&(self.index.len() as u32).to_le_bytes());
        for &(key_group, offset, records) in &self.index {
            out.extend_from_slice(&key_group.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&records.to_le_bytes());
        }
        out.extend_from_slice(&index_offset.to_le_bytes());
        out.extend_from_slice(&self.records.to_le_bytes());
        let crc32c = crc32c::crc32c_append(self.taken_crc32c, out);
        out.extend_from_slice(&crc32c.to_le_bytes());
        let (min_time, max_time) = if self.records == 0 {
            (0, 0)
        } else {
            (self.min_time, self.max_time)
        };
        let meta = FileMeta {
            name: self.id.file_name(),
            size_bytes: self.taken_bytes + out.len() as u64,
            crc32c,
            min_time,
            max_time,
        };
        (std::mem::take(out), meta)
    }
}

/// Checks a whole data file against its commit record's size and CRC32C
/// (and the CRC32C in its own trailer). Decode only files that pass.
pub fn verify_data_file(bytes: &[u8], meta: &FileMeta) -> Result<(), FormatError> {
    check_data_file_length(bytes.len() as u64, meta)?;
    let crc_at = bytes.len() - 4;
    check_data_file_crc(
        crc_at as u64,
        crc32c::crc32c(&bytes[..crc_at]),
        u32_at(bytes, crc_at),
        meta,
    )
}

/// The length checks of [`verify_data_file`], for a reader that checksums
/// a file in chunks: `len` must be `meta`'s size and hold a header and a
/// trailer.
pub fn check_data_file_length(len: u64, meta: &FileMeta) -> Result<(), FormatError> {
    if len != meta.size_bytes {
        return Err(FormatError {
            byte_offset: len.min(meta.size_bytes),
            reason: format!(
                "file has {len} bytes, its commit record says {}",
                meta.size_bytes
            ),
        });
    }
    let min_len = (DATA_FILE_MIN_HEADER_LEN_BYTES + DATA_FILE_TRAILER_LEN_BYTES) as u64;
    if len < min_len {
        return Err(FormatError {
            byte_offset: 0,
            reason: format!("file has {len} bytes, fewer than a header and trailer ({min_len})"),
        });
    }
    Ok(())
}

/// The checksum checks of [`verify_data_file`]: `computed` is the CRC32C of
/// the bytes before `crc_at`, `stored` the one the file's last 4 bytes hold.
pub fn check_data_file_crc(
    crc_at: u64,
    computed: u32,
    stored: u32,
    meta: &FileMeta,
) -> Result<(), FormatError> {
    if computed != stored {
        return Err(FormatError {
            byte_offset: 0,
            reason: format!(
                "checksum mismatch: CRC32C of bytes 0..{crc_at} is {computed:#010x}, the \
                 trailer says {stored:#010x}"
            ),
        });
    }
    if stored != meta.crc32c {
        return Err(FormatError {
            byte_offset: crc_at,
            reason: format!(
                "file CRC32C {stored:#010x} differs from its commit record's {:#010x} (another \
                 file of the same name)",
                meta.crc32c
            ),
        });
    }
    Ok(())
}

/// Where one key group's records lie in a data file, from its index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupExtent {
    /// The key group.
    pub key_group: u16,
    /// File offset of its first record.
    pub offset: u64,
    /// File offset just past its last record.
    pub end: u64,
    /// Its number of records.
    pub records: u64,
}

/// The trailer of a data file: where its index starts, how many records it
/// holds. `file_len` is the whole file's length; `trailer` its last
/// [`DATA_FILE_TRAILER_LEN_BYTES`] bytes.
pub fn decode_trailer(file_len: u64, trailer: &[u8]) -> Result<(u64, u64), FormatError> {
    let err = |byte_offset: u64, reason: String| FormatError {
        byte_offset,
        reason,
    };
    let min_len = (DATA_FILE_MIN_HEADER_LEN_BYTES + DATA_FILE_TRAILER_LEN_BYTES) as u64;
    if file_len < min_len || trailer.len() != DATA_FILE_TRAILER_LEN_BYTES {
        return Err(err(0, format!("file has only {file_len} bytes")));
    }
    let trailer_at = file_len - DATA_FILE_TRAILER_LEN_BYTES as u64;
    let mut t = Cursor::new(trailer, trailer_at);
    let index_offset = t.u64("index offset")?;
    let record_count = t.u64("record count")?;
    if index_offset < DATA_FILE_MIN_HEADER_LEN_BYTES as u64 || index_offset > trailer_at {
        return Err(err(
            trailer_at,
            format!("index offset {index_offset} out of range"),
        ));
    }
    Ok((index_offset, record_count))
}

/// Checks a data file's header against `meta`'s name and reads its index
/// (`index`: the bytes from `index_offset` up to the trailer): the extent of
/// every key group, in order, checked to tile the records section exactly.
pub fn decode_layout(
    header: &[u8],
    index: &[u8],
    (index_offset, record_count): (u64, u64),
    meta: &FileMeta,
) -> Result<Vec<GroupExtent>, FormatError> {
    let err = |byte_offset: u64, reason: String| FormatError {
        byte_offset,
        reason,
    };
    let id = DataFileId::parse(&meta.name)
        .ok_or_else(|| err(0, format!("`{}` is not a data file name", meta.name)))?;
    let mut c = Cursor::new(header, 0);
    if &c.array::<8>("magic")? != DATA_FILE_MAGIC {
        return Err(err(0, "bad data file magic".to_owned()));
    }
    let version = c.u32("version")?;
    let release = if version >= 2 {
        Some(c.array::<RELEASE_LEN_BYTES>("writer release")?)
    } else {
        None
    };
    if !(DATA_FILE_OLDEST_READABLE_VERSION..=DATA_FILE_FORMAT_VERSION).contains(&version) {
        let by = Release::unreadable_writer(release.as_ref());
        return Err(err(
            8,
            format!(
                "checkpoint data file version {version}, written by {by}: this binary \
                 ({THIS_RELEASE}) reads versions {DATA_FILE_OLDEST_READABLE_VERSION} to \
                 {DATA_FILE_FORMAT_VERSION}"
            ),
        ));
    }
    if release.is_some_and(|r| Release::decode(&r).is_none()) {
        return Err(err(
            12,
            "the writer release's reserved bytes are not zero".to_owned(),
        ));
    }
    let header = (c.u32("kind")?, c.u64("checkpoint id")?, c.u32("part")?);
    if header != (kind_code(id.kind), id.checkpoint_id, id.part) {
        return Err(err(
            c.offset() - 16,
            format!("header (kind, checkpoint id, part) = {header:?} does not match the file name"),
        ));
    }

    let mut ix = Cursor::new(index, index_offset);
    let groups = ix.u32("index group count")? as usize;
    if groups > usize::from(KEY_GROUPS) || ix.remaining() != groups * INDEX_ENTRY_LEN_BYTES {
        return Err(err(
            index_offset,
            format!("index of {groups} groups does not fill its bytes"),
        ));
    }
    let mut entries = Vec::with_capacity(groups);
    for _ in 0..groups {
        let at = ix.offset();
        entries.push((
            at,
            ix.u16("key group")?,
            ix.u64("group offset")?,
            ix.u64("group records")?,
        ));
    }
    let mut extents = Vec::with_capacity(groups);
    let mut expected_offset = data_file_header_len_bytes(version) as u64;
    let mut total = 0u64;
    for (i, &(at, key_group, offset, records)) in entries.iter().enumerate() {
        let end = entries.get(i + 1).map_or(index_offset, |e| e.2);
        let ordered = i == 0 || key_group > entries[i - 1].1;
        let fits = end >= offset && end - offset >= records.saturating_mul(MIN_RECORD_LEN_BYTES);
        if key_group >= KEY_GROUPS || !ordered || offset != expected_offset || records == 0 || !fits
        {
            return Err(err(
                at,
                format!(
                    "bad index entry (key group {key_group}, offset {offset}, {records} records; \
                     expected offset {expected_offset}, end {end})"
                ),
            ));
        }
        total = total.saturating_add(records);
        expected_offset = end;
        extents.push(GroupExtent {
            key_group,
            offset,
            end,
            records,
        });
    }
    if expected_offset != index_offset || total != record_count {
        return Err(err(
            index_offset,
            format!(
                "index covers {total} records up to byte {expected_offset}; the trailer says \
                 {record_count} records and the index at {index_offset}"
            ),
        ));
    }
    Ok(extents)
}

/// One decoded update, borrowed from the decoder: key group, encoded data,
/// time, diff. Returning `Err(reason)` stops decoding with that reason at
/// the record's offset.
pub type VisitUpdate<'v> = dyn FnMut(u16, &[u8], u64, i64) -> Result<(), String> + 'v;

/// Decodes the records of one key group, `bytes` being exactly its extent,
/// calling `visit` for each with time at least `horizon_time`. Checks that
/// the records are sorted and consolidated and their times within `meta`'s
/// range.
pub fn visit_group(
    bytes: &[u8],
    extent: &GroupExtent,
    meta: &FileMeta,
    horizon_time: u64,
    visit: &mut VisitUpdate<'_>,
) -> Result<(), FormatError> {
    debug_assert_eq!(bytes.len() as u64, extent.end - extent.offset);
    let mut g = Cursor::new(bytes, extent.offset);
    decode_group(&mut g, extent, meta, horizon_time, visit)?;
    if g.remaining() != 0 {
        return Err(g.error(format!(
            "{} bytes after the last record of key group {}",
            g.remaining(),
            extent.key_group
        )));
    }
    Ok(())
}

/// A visitor for [`visit_group`] and its kin that appends a copy of each
/// update to `out`.
pub fn push_updates(
    out: &mut Vec<PersistedUpdate>,
) -> impl FnMut(u16, &[u8], u64, i64) -> Result<(), String> + '_ {
    |key_group, data, time, diff| {
        out.push(PersistedUpdate {
            key_group,
            data: data.to_vec(),
            time,
            diff,
        });
        Ok(())
    }
}

/// Decodes a data file that passed [`verify_data_file`] against `meta`,
/// appending to `out` its updates of the key groups `key_groups` accepts
/// with time at least `horizon_time`, in file order. Structural checks
/// (header matches the name, index consistent, records sorted and
/// consolidated, times within `meta`'s range) still apply.
pub fn decode_data_file(
    bytes: &[u8],
    meta: &FileMeta,
    key_groups: &dyn Fn(u16) -> bool,
    horizon_time: u64,
    out: &mut Vec<PersistedUpdate>,
) -> Result<(), FormatError> {
    // A file shorter than a trailer gives a short slice, which
    // `decode_trailer` refuses like any file too short for a header and one.
    let trailer_at = bytes.len().saturating_sub(DATA_FILE_TRAILER_LEN_BYTES);
    let trailer = decode_trailer(bytes.len() as u64, &bytes[trailer_at..])?;
    let extents = decode_layout(
        &bytes[..DATA_FILE_HEADER_LEN_BYTES.min(trailer_at)],
        &bytes[trailer.0 as usize..trailer_at],
        trailer,
        meta,
    )?;
    let mut visit = push_updates(out);
    for extent in extents.iter().filter(|e| key_groups(e.key_group)) {
        let range = extent.offset as usize..extent.end as usize;
        visit_group(&bytes[range], extent, meta, horizon_time, &mut visit)?;
    }
    Ok(())
}

fn decode_group(
    c: &mut Cursor<'_>,
    extent: &GroupExtent,
    meta: &FileMeta,
    horizon_time: u64,
    visit: &mut VisitUpdate<'_>,
) -> Result<(), FormatError> {
    let key_group = extent.key_group;
    let mut data: Vec<u8> = Vec::new();
    let mut time = 0u64;
    for i in 0..extent.records {
        let at = c.offset();
        let bad = |reason: &str| FormatError {
            byte_offset: at,
            reason: format!("record {i} of key group {key_group}: {reason}"),
        };
        let shared = usize::try_from(c.varint("shared prefix")?).map_err(|_| bad("huge prefix"))?;
        let suffix_len =
            usize::try_from(c.varint("suffix length")?).map_err(|_| bad("huge suffix"))?;
        if shared > data.len() || (i == 0 && shared != 0) {
            return Err(bad("shared prefix longer than the previous data"));
        }
        if shared.saturating_add(suffix_len) > MAX_UPDATE_DATA_BYTES {
            return Err(bad("data larger than the maximum"));
        }
        let suffix = c.take(suffix_len, "suffix")?;
        let stored_time = c.varint("time")?;
        let same = i > 0 && shared == data.len() && suffix.is_empty();
        if same {
            time = match time.checked_add(stored_time) {
                Some(t) if stored_time > 0 => t,
                _ => return Err(bad("time not increasing for the same data")),
            };
        } else {
            if i > 0 {
                let increasing = match (data.get(shared), suffix.first()) {
                    (Some(a), Some(b)) => b > a,
                    (None, Some(_)) => true,
                    _ => false,
                };
                if !increasing {
                    return Err(bad("data not sorted, or its shared prefix not maximal"));
                }
            }
            data.truncate(shared);
            data.extend_from_slice(suffix);
            time = stored_time;
        }
        let diff = unzigzag(c.varint("diff")?);
        if diff == 0 {
            return Err(bad("zero diff"));
        }
        if time < meta.min_time || time > meta.max_time {
            return Err(bad("time outside the file's range in its commit record"));
        }
        if time >= horizon_time {
            visit(key_group, &data, time, diff).map_err(|reason| bad(&reason))?;
        }
    }
    Ok(())
}
