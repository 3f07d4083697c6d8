//! The compression codecs of Kafka record batches (the low three bits of a
//! batch's attributes): the records section after the record count is one
//! compressed block. gzip, snappy (raw, or in the xerial framing the Java
//! client writes), LZ4 (frame format) and zstd, all in pure Rust. Inflating
//! is bounded ([`MAX_INFLATED_BATCH_BYTES`]): a batch that would grow past
//! it is refused, not allocated.

use std::io::{Read, Write};

/// The most bytes one batch's records may inflate to.
pub const MAX_INFLATED_BATCH_BYTES: usize = 64 << 20;
/// The header of snappy-java's (xerial) framing: magic, version 1,
/// compatible version 1; then blocks of `length i32 | raw snappy`.
const XERIAL_HEADER: [u8; 16] = [
    0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1,
];
const XERIAL_MAGIC_BYTES: usize = 8;

/// A batch's codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    /// Not compressed.
    None,
    /// gzip (1).
    Gzip,
    /// snappy (2).
    Snappy,
    /// LZ4 frames (3).
    Lz4,
    /// zstd (4).
    Zstd,
}

impl Codec {
    /// The codec of attribute bits `bits` (`attributes & 0x07`).
    pub fn from_bits(bits: i16) -> Option<Self> {
        Some(match bits {
            0 => Self::None,
            1 => Self::Gzip,
            2 => Self::Snappy,
            3 => Self::Lz4,
            4 => Self::Zstd,
            _ => return None,
        })
    }

    /// Its attribute bits.
    pub fn bits(self) -> i16 {
        match self {
            Self::None => 0,
            Self::Gzip => 1,
            Self::Snappy => 2,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }

    /// Its name, as Kafka's `compression.type` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// `data` compressed with `codec` (for producing).
pub fn compress(codec: Codec, data: &[u8]) -> Vec<u8> {
    match codec {
        Codec::None => data.to_vec(),
        Codec::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(data).expect("writing to a Vec");
            encoder.finish().expect("writing to a Vec")
        }
        Codec::Snappy => snap::raw::Encoder::new()
            .compress_vec(data)
            .expect("snappy takes any input under 4 GiB"),
        Codec::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(Vec::new());
            encoder.write_all(data).expect("writing to a Vec");
            encoder.finish().expect("writing to a Vec")
        }
        Codec::Zstd => {
            ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
        }
    }
}

/// `data` in snappy-java's xerial framing (blocks of at most 32 KiB), as
/// the Java client writes it.
pub fn snappy_xerial(data: &[u8]) -> Vec<u8> {
    let mut out = XERIAL_HEADER.to_vec();
    for block in data.chunks(32 << 10) {
        let compressed = compress(Codec::Snappy, block);
        out.extend_from_slice(
            &i32::try_from(compressed.len())
                .expect("small")
                .to_be_bytes(),
        );
        out.extend_from_slice(&compressed);
    }
    out
}

/// `data` inflated with `codec`, or why it could not be.
pub fn decompress(codec: Codec, data: &[u8]) -> Result<Vec<u8>, String> {
    let limit = MAX_INFLATED_BATCH_BYTES as u64;
    let bounded = |reader: &mut dyn Read| -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        reader
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        if out.len() > MAX_INFLATED_BATCH_BYTES {
            return Err(format!("inflates to over {MAX_INFLATED_BATCH_BYTES} bytes"));
        }
        Ok(out)
    };
    let out = match codec {
        Codec::None => return Ok(data.to_vec()),
        Codec::Gzip => bounded(&mut flate2::read::MultiGzDecoder::new(data))?,
        Codec::Snappy if data.starts_with(&XERIAL_HEADER[..XERIAL_MAGIC_BYTES]) => {
            inflate_xerial(data)?
        }
        Codec::Snappy => inflate_snappy_block(data)?,
        Codec::Lz4 => bounded(&mut lz4_flex::frame::FrameDecoder::new(data))?,
        Codec::Zstd => {
            // One or more frames, back to back.
            let mut rest = data;
            let mut out = Vec::new();
            while !rest.is_empty() {
                let mut decoder = ruzstd::decoding::StreamingDecoder::new(&mut rest)
                    .map_err(|e| e.to_string())?;
                out.extend(bounded(&mut decoder)?);
                if out.len() > MAX_INFLATED_BATCH_BYTES {
                    return Err(format!("inflates to over {MAX_INFLATED_BATCH_BYTES} bytes"));
                }
            }
            out
        }
    };
    Ok(out)
}

fn inflate_snappy_block(data: &[u8]) -> Result<Vec<u8>, String> {
    let len = snap::raw::decompress_len(data).map_err(|e| e.to_string())?;
    if len > MAX_INFLATED_BATCH_BYTES {
        return Err(format!(
            "inflates to {len} bytes, over {MAX_INFLATED_BATCH_BYTES}"
        ));
    }
    snap::raw::Decoder::new()
        .decompress_vec(data)
        .map_err(|e| e.to_string())
}

fn inflate_xerial(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut rest = data
        .get(XERIAL_HEADER.len()..)
        .ok_or("a snappy-java header cut short")?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or("a snappy-java block length cut short")?;
        let len = usize::try_from(i32::from_be_bytes(*len))
            .map_err(|_| "a negative snappy-java block length")?;
        let block = tail.get(..len).ok_or("a snappy-java block cut short")?;
        out.extend(inflate_snappy_block(block)?);
        if out.len() > MAX_INFLATED_BATCH_BYTES {
            return Err(format!("inflates to over {MAX_INFLATED_BATCH_BYTES} bytes"));
        }
        rest = &tail[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODECS: [Codec; 4] = [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd];

    fn sample() -> Vec<u8> {
        (0..50_000u32)
            .flat_map(|i| format!("{},k{},{}\n", 1_000 + i, i % 37, i % 1_000).into_bytes())
            .collect()
    }

    #[test]
    fn every_codec_round_trips() {
        let data = sample();
        for codec in CODECS {
            let packed = compress(codec, &data);
            assert!(packed.len() < data.len(), "{codec:?}");
            assert_eq!(decompress(codec, &packed).unwrap(), data, "{codec:?}");
            assert_eq!(Codec::from_bits(codec.bits()), Some(codec));
        }
        assert_eq!(
            decompress(Codec::Snappy, &snappy_xerial(&data)).unwrap(),
            data
        );
        assert_eq!(Codec::from_bits(5), None);
    }

    #[test]
    fn truncated_and_corrupt_blocks_are_refused() {
        let data = sample();
        for codec in CODECS {
            let packed = compress(codec, &data);
            // (An LZ4 frame cut inside its end mark still holds all its
            // data; the batch CRC around it rules that out anyway.)
            for cut in [1, packed.len() / 3, packed.len() - 5] {
                assert!(
                    decompress(codec, &packed[..cut]).is_err_and(|e| !e.is_empty()),
                    "{codec:?} cut at {cut}"
                );
            }
        }
        let xerial = snappy_xerial(&data);
        for cut in [4, 12, 17, 21, xerial.len() - 1] {
            assert!(
                decompress(Codec::Snappy, &xerial[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        // Garbage is refused, never inflated into something.
        let garbage: Vec<u8> = (0..4_096u32).map(|i| (i * 7_919 % 251) as u8).collect();
        for codec in CODECS {
            assert!(decompress(codec, &garbage).is_err(), "{codec:?}");
        }
    }

    #[test]
    fn a_batch_that_inflates_past_the_limit_is_refused() {
        let zeros = vec![0u8; MAX_INFLATED_BATCH_BYTES + 1];
        for codec in CODECS {
            let bomb = compress(codec, &zeros);
            let e = decompress(codec, &bomb).unwrap_err();
            assert!(e.contains("over"), "{codec:?}: {e}");
        }
    }
}
