//! Kafka record batches, format v2 (magic 2, Kafka 0.11 and later), plain
//! or compressed ([`super::compression`]): decoded from fetch responses,
//! encoded for produce requests. A batch's CRC32C (over its attributes to its end) is checked;
//! a fetch response may end with a partial batch, which is not an error
//! (the next fetch starts there).
//!
//! ```text
//! batch:  base_offset i64 | batch_length i32 | leader_epoch i32 | magic i8 = 2
//!         | crc u32 | attributes i16 | last_offset_delta i32 | base_ts i64
//!         | max_ts i64 | producer_id i64 | producer_epoch i16 | base_seq i32
//!         | record count i32 | records
//! record: length varint | attributes i8 | ts_delta varint | offset_delta varint
//!         | key (varint length, -1 null) | value (same) | header count varint
//!         | headers (key and value, varint lengths)
//! ```

use super::compression::{self, Codec};
use super::wire::{Reader, WireError, Writer};

/// Bytes of a batch before `batch_length`'s coverage starts.
const BATCH_PREFIX_BYTES: usize = 12;
const COMPRESSION_MASK: i16 = 0x07;
const CONTROL_BIT: i16 = 0x20;

/// One record of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KafkaRecord<'a> {
    /// Its offset in the partition.
    pub offset: i64,
    /// Its value (`None`: null, a tombstone).
    pub value: Option<&'a [u8]>,
}

/// The records of the complete batches in `bytes` at offsets `>= from`,
/// and the offset after the last complete batch (where the next fetch
/// starts; `from` if there is none). The records of compressed batches are
/// inflated into `inflated` (cleared first), which they borrow from.
pub fn decode_batches<'a>(
    bytes: &'a [u8],
    from: i64,
    inflated: &'a mut Vec<Vec<u8>>,
) -> Result<(Vec<KafkaRecord<'a>>, i64), WireError> {
    inflated.clear();
    // First every batch is framed and checked and its records inflated;
    // then the records are decoded, borrowing the inflated bytes.
    let mut batches = Vec::new();
    let mut next = from;
    let mut r = Reader::new(bytes);
    while r.remaining() >= BATCH_PREFIX_BYTES {
        let start = r.offset();
        let base_offset = r.i64()?;
        let batch_len = r.i32()?;
        let Ok(batch_len) = usize::try_from(batch_len) else {
            return Err(WireError {
                offset: start + 8,
                reason: format!("a negative batch length {batch_len}"),
            });
        };
        if r.remaining() < batch_len {
            break; // a partial batch at the end of a fetch
        }
        let body = r.take(batch_len)?;
        let at = |e: WireError| WireError {
            offset: start + BATCH_PREFIX_BYTES + e.offset,
            reason: e.reason,
        };
        let mut batch = frame_batch(body, base_offset).map_err(at)?;
        if let Records::Compressed(codec, packed) = batch.records {
            let records = compression::decompress(codec, packed).map_err(|reason| WireError {
                offset: start,
                reason: format!(
                    "the {} records of the batch at offset {base_offset}: {reason}",
                    codec.name()
                ),
            })?;
            inflated.push(records);
            batch.records = Records::Inflated(inflated.len() - 1);
        }
        next = next.max(batch.last + 1);
        batches.push((start, batch));
    }
    let inflated: &'a Vec<Vec<u8>> = inflated;
    let mut records = Vec::new();
    for (start, batch) in batches {
        let (section, section_at) = match batch.records {
            Records::Plain(section, at) => (section, start + BATCH_PREFIX_BYTES + at),
            Records::Inflated(i) => (inflated[i].as_slice(), start),
            Records::Compressed(..) | Records::Control => continue,
        };
        decode_records(section, batch.count, batch.base_offset, from, &mut records).map_err(
            |e| match batch.records {
                Records::Inflated(_) => WireError {
                    offset: section_at,
                    reason: format!(
                        "the inflated records of the batch at offset {}, at their byte {}: {}",
                        batch.base_offset, e.offset, e.reason
                    ),
                },
                _ => WireError {
                    offset: section_at + e.offset,
                    reason: e.reason,
                },
            },
        )?;
    }
    Ok((records, next))
}

/// Where a batch's records are.
#[derive(Clone, Copy)]
enum Records<'a> {
    /// Uncompressed, at this byte of the batch body.
    Plain(&'a [u8], usize),
    /// Compressed with this codec.
    Compressed(Codec, &'a [u8]),
    /// Inflated, in this entry of the arena.
    Inflated(usize),
    /// A control batch (transaction markers): no data.
    Control,
}

/// A checked batch.
struct Batch<'a> {
    base_offset: i64,
    last: i64,
    count: usize,
    records: Records<'a>,
}

/// The size of the first batch in `bytes` when `bytes` holds only part of
/// it: a broker that cuts a fetch at the partition's byte limit (Kafka
/// itself returns a first batch whole, whatever the limit) needs a larger
/// limit to make progress.
pub fn incomplete_first_batch_bytes(bytes: &[u8]) -> Option<usize> {
    let prefix = bytes.get(..BATCH_PREFIX_BYTES)?;
    let batch_len = i32::from_be_bytes(prefix[8..12].try_into().expect("4 bytes"));
    let whole = BATCH_PREFIX_BYTES + usize::try_from(batch_len).ok()?;
    (whole > bytes.len()).then_some(whole)
}

/// Checks one batch body (after `batch_length`) and finds its records.
fn frame_batch(body: &[u8], base_offset: i64) -> Result<Batch<'_>, WireError> {
    let mut r = Reader::new(body);
    let _leader_epoch = r.i32()?;
    let magic = r.i8()?;
    if magic != 2 {
        return Err(r.error(format!(
            "record batch format v{magic}: only v2 (Kafka 0.11 and later) is read"
        )));
    }
    let crc = r.u32()?;
    let covered = &body[r.offset()..];
    if crc32c::crc32c(covered) != crc {
        return Err(r.error("record batch checksum mismatch"));
    }
    let attributes = r.i16()?;
    let last_offset_delta = r.i32()?;
    let last = base_offset + i64::from(last_offset_delta);
    let Some(codec) = Codec::from_bits(attributes & COMPRESSION_MASK) else {
        return Err(r.error(format!(
            "unknown compression codec {} (0 to 4 are Kafka's)",
            attributes & COMPRESSION_MASK
        )));
    };
    let _base_ts = r.i64()?;
    let _max_ts = r.i64()?;
    let _producer_id = r.i64()?;
    let _producer_epoch = r.i16()?;
    let _base_seq = r.i32()?;
    let count = r.array_len()?;
    let at = r.offset();
    let section = &body[at..];
    let records = if attributes & CONTROL_BIT != 0 {
        Records::Control
    } else if codec == Codec::None {
        Records::Plain(section, at)
    } else {
        Records::Compressed(codec, section)
    };
    Ok(Batch {
        base_offset,
        last,
        count,
        records,
    })
}

/// Decodes `count` records from `section`, keeping those at offsets `>= from`.
fn decode_records<'a>(
    section: &'a [u8],
    count: usize,
    base_offset: i64,
    from: i64,
    out: &mut Vec<KafkaRecord<'a>>,
) -> Result<(), WireError> {
    let mut r = Reader::new(section);
    for _ in 0..count {
        let len = r.varint()?;
        let len = usize::try_from(len).map_err(|_| r.error("a negative record length"))?;
        let mut rec = Reader::new(r.take(len)?);
        let _attributes = rec.i8()?;
        let _ts_delta = rec.varint()?;
        let offset_delta = rec.varint()?;
        let _key = rec.varint_bytes()?;
        let value = rec.varint_bytes()?;
        let headers = rec.varint()?;
        for _ in 0..headers.max(0) {
            rec.varint_bytes()?;
            rec.varint_bytes()?;
        }
        let offset = base_offset + offset_delta;
        if offset >= from {
            out.push(KafkaRecord { offset, value });
        }
    }
    Ok(())
}

/// A batch of `values` (no keys, no headers) compressed with `codec`,
/// offsets from 0 (the broker assigns them), timestamped `ts_ms`.
pub fn encode_batch(values: &[&[u8]], ts_ms: i64, codec: Codec) -> Vec<u8> {
    let mut records = Writer::default();
    let mut record = Writer::default();
    for (i, value) in values.iter().enumerate() {
        record.buf.clear();
        record.i8(0);
        record.varint(0);
        record.varint(i as i64);
        record.varint(-1);
        record.varint(value.len() as i64);
        record.buf.extend_from_slice(value);
        record.varint(0);
        records.varint(record.buf.len() as i64);
        records.buf.extend_from_slice(&record.buf);
    }
    let mut covered = Writer::default();
    covered.i16(codec.bits());
    covered.i32(i32::try_from(values.len().saturating_sub(1)).expect("under 2^31 records"));
    covered.i64(ts_ms);
    covered.i64(ts_ms);
    covered.i64(-1);
    covered.i16(-1);
    covered.i32(-1);
    covered.array_len(values.len());
    covered
        .buf
        .extend_from_slice(&compression::compress(codec, &records.buf));
    let mut batch = Writer::default();
    batch.i64(0);
    batch.i32(i32::try_from(4 + 1 + 4 + covered.buf.len()).expect("under 2 GiB"));
    batch.i32(-1);
    batch.i8(2);
    batch
        .buf
        .extend_from_slice(&crc32c::crc32c(&covered.buf).to_be_bytes());
    batch.buf.extend_from_slice(&covered.buf);
    batch.buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_base(mut batch: Vec<u8>, base: i64) -> Vec<u8> {
        batch[..8].copy_from_slice(&base.to_be_bytes());
        batch
    }

    #[test]
    fn batches_round_trip_and_a_partial_one_waits() {
        let a = with_base(encode_batch(&[b"x", b"yy"], 5, Codec::None), 10);
        let b = with_base(encode_batch(&[b"zzz"], 5, Codec::None), 12);
        let both = [a.clone(), b.clone()].concat();
        let mut inflated = Vec::new();
        let (records, next) = decode_batches(&both, 11, &mut inflated).unwrap();
        let got: Vec<(i64, &[u8])> = records
            .iter()
            .map(|r| (r.offset, r.value.unwrap()))
            .collect();
        assert_eq!(got, vec![(11, &b"yy"[..]), (12, &b"zzz"[..])]);
        assert_eq!(next, 13);
        for cut in 0..b.len() {
            let partial = [a.clone(), b[..cut].to_vec()].concat();
            let mut inflated = Vec::new();
            let (records, next) = decode_batches(&partial, 10, &mut inflated).unwrap();
            assert_eq!((records.len(), next), (2, 12), "cut {cut}");
        }
    }

    #[test]
    fn a_first_batch_cut_short_gives_its_whole_size() {
        let batch = encode_batch(&[b"x", b"yy"], 5, Codec::None);
        assert_eq!(incomplete_first_batch_bytes(&batch), None);
        assert_eq!(incomplete_first_batch_bytes(&[]), None);
        for cut in 0..batch.len() {
            let expected = (cut >= BATCH_PREFIX_BYTES).then_some(batch.len());
            assert_eq!(
                incomplete_first_batch_bytes(&batch[..cut]),
                expected,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn compressed_batches_are_read_with_every_codec() {
        let values: Vec<Vec<u8>> = (0..500)
            .map(|i| format!("{i},k{},{i}", i % 7).into_bytes())
            .collect();
        let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        for codec in [
            Codec::None,
            Codec::Gzip,
            Codec::Snappy,
            Codec::Lz4,
            Codec::Zstd,
        ] {
            let a = with_base(encode_batch(&values[..200], 5, codec), 0);
            let b = with_base(encode_batch(&values[200..], 5, codec), 200);
            let both = [a, b].concat();
            let mut inflated = Vec::new();
            let (records, next) = decode_batches(&both, 100, &mut inflated).unwrap();
            assert_eq!(next, 500, "{codec:?}");
            let got: Vec<&[u8]> = records.iter().map(|r| r.value.unwrap()).collect();
            assert_eq!(got, values[100..], "{codec:?}");
            assert_eq!(records[0].offset, 100);
        }
    }

    #[test]
    fn a_compressed_batch_that_does_not_inflate_is_refused_with_its_offset() {
        // The CRC covers the compressed bytes: damage with a valid CRC is
        // what a buggy producer sends.
        let values: [&[u8]; 2] = [b"1000,a,1", b"2000,b,2"];
        for codec in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
            let mut batch = with_base(encode_batch(&values, 5, codec), 42);
            let records_at = BATCH_PREFIX_BYTES + 49;
            for b in &mut batch[records_at..] {
                *b ^= 0x5a;
            }
            let crc = crc32c::crc32c(&batch[21..]);
            batch[17..21].copy_from_slice(&crc.to_be_bytes());
            let e = decode_batches(&batch, 0, &mut Vec::new()).unwrap_err();
            assert!(
                e.reason.contains(codec.name()) && e.reason.contains("offset 42"),
                "{codec:?}: {e:?}"
            );
        }
        let mut unknown = encode_batch(&values, 5, Codec::None);
        unknown[22] |= 0x07;
        let crc = crc32c::crc32c(&unknown[21..]);
        unknown[17..21].copy_from_slice(&crc.to_be_bytes());
        let e = decode_batches(&unknown, 0, &mut Vec::new()).unwrap_err();
        assert!(e.reason.contains("unknown compression codec 7"), "{e:?}");
    }

    #[test]
    fn corrupt_batches_are_refused() {
        let batch = encode_batch(&[b"value"], 5, Codec::None);
        for at in 16..batch.len() {
            let mut bad = batch.clone();
            bad[at] ^= 0x01;
            assert!(
                decode_batches(&bad, 0, &mut Vec::new()).is_err(),
                "flip at {at}"
            );
        }
        let mut v1 = batch.clone();
        v1[16] = 1;
        assert!(decode_batches(&v1, 0, &mut Vec::new())
            .unwrap_err()
            .reason
            .contains("v1"));
        let mut negative = batch;
        negative[8..12].copy_from_slice(&(-5_i32).to_be_bytes());
        assert!(decode_batches(&negative, 0, &mut Vec::new()).is_err());
    }
}
