//! The `POSITION` file of a partition fed by a stream source: how far the
//! source has been read and committed. Replaced atomically (temp file,
//! fsync, rename, fsync directory) after the log records and dead letters it
//! counts are durable.
//!
//! Format version 1, little-endian:
//!
//! ```text
//! magic b"WEIRSPOS" | version u32 | log_next_offset u64 | source_seq u64
//! | dead_letter_len_bytes u64 | messages u64 | dead_letters u64
//! | source length u32 | source (UTF-8) | crc32c(all bytes before it) u32
//! ```

/// Magic bytes of a position file.
pub const POSITION_MAGIC: &[u8; 8] = b"WEIRSPOS";
/// Version of the position format written by this code.
pub const POSITION_FORMAT_VERSION: u32 = 1;
const FIXED_LEN_BYTES: usize = 8 + 4 + 5 * 8 + 4 + 4;
/// The longest source name recorded.
pub const MAX_SOURCE_LEN_BYTES: usize = 4096;

/// What has been committed of a stream source into its partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourcePosition {
    /// The source (`nats://…/STREAM`'s stream name): a partition is fed by
    /// one source only.
    pub source: String,
    /// The log offset after the last record committed.
    pub log_next_offset: u64,
    /// The last source sequence committed (0: none).
    pub source_seq: u64,
    /// The length of the dead-letter file committed with it.
    pub dead_letter_len_bytes: u64,
    /// Messages committed (appended or dead-lettered), over all runs.
    pub messages: u64,
    /// Of those, the dead-lettered ones.
    pub dead_letters: u64,
}

impl SourcePosition {
    /// Encodes the position.
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.source.len() <= MAX_SOURCE_LEN_BYTES,
            "source name too long"
        );
        let mut out = Vec::with_capacity(FIXED_LEN_BYTES + self.source.len());
        out.extend_from_slice(POSITION_MAGIC);
        out.extend_from_slice(&POSITION_FORMAT_VERSION.to_le_bytes());
        for n in [
            self.log_next_offset,
            self.source_seq,
            self.dead_letter_len_bytes,
            self.messages,
            self.dead_letters,
        ] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        let len = u32::try_from(self.source.len()).expect("bounded above");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(self.source.as_bytes());
        out.extend_from_slice(&crc32c::crc32c(&out).to_le_bytes());
        out
    }

    /// Decodes a position; the error names the byte offset and the reason.
    pub fn decode(bytes: &[u8]) -> Result<Self, (u64, String)> {
        if bytes.len() < FIXED_LEN_BYTES {
            return Err((
                0,
                format!("{} bytes, shorter than any position", bytes.len()),
            ));
        }
        if &bytes[..8] != POSITION_MAGIC {
            return Err((0, "not a position file (bad magic)".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8"));
        let version = u32_at(8);
        if version != POSITION_FORMAT_VERSION {
            return Err((
                8,
                format!(
                    "format version {version}; this build reads version {POSITION_FORMAT_VERSION}"
                ),
            ));
        }
        let source_len = u32_at(52) as usize;
        let total = FIXED_LEN_BYTES + source_len;
        if source_len > MAX_SOURCE_LEN_BYTES || bytes.len() != total {
            return Err((
                52,
                format!("length {} does not match its source name", bytes.len()),
            ));
        }
        let crc_at = total - 4;
        if crc32c::crc32c(&bytes[..crc_at]) != u32_at(crc_at) {
            return Err((crc_at as u64, "checksum mismatch".into()));
        }
        let source = std::str::from_utf8(&bytes[56..crc_at])
            .map_err(|_| (56, "source name is not UTF-8".to_owned()))?
            .to_owned();
        Ok(Self {
            source,
            log_next_offset: u64_at(12),
            source_seq: u64_at(20),
            dead_letter_len_bytes: u64_at(28),
            messages: u64_at(36),
            dead_letters: u64_at(44),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SourcePosition {
        SourcePosition {
            source: "ORDERS".into(),
            log_next_offset: 10,
            source_seq: 12,
            dead_letter_len_bytes: 99,
            messages: 12,
            dead_letters: 2,
        }
    }

    #[test]
    fn round_trips_and_matches_the_golden_bytes() {
        let bytes = sample().encode();
        assert_eq!(SourcePosition::decode(&bytes).unwrap(), sample());
        let golden = include_bytes!("../../../tests/golden/position-v1.bin");
        assert_eq!(&bytes[..], &golden[..], "format v1 changed: add a version");
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            assert!(SourcePosition::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            assert!(SourcePosition::decode(&bad).is_err(), "flip at {at}");
        }
    }
}
