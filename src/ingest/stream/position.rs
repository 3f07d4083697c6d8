//! The `POSITION` file of a partition fed by a stream source: how far the
//! source has been read and committed. Replaced atomically (temp file,
//! fsync, rename, fsync directory) after the log records and dead letters it
//! counts are durable.
//!
//! Format version 2, little-endian:
//!
//! ```text
//! magic b"WEIRSPOS" | version u32 | writer release (8 bytes, crate::release)
//! | log_next_offset u64 | source_seq u64
//! | dead_letter_len_bytes u64 | messages u64 | dead_letters u64
//! | source length u32 | source (UTF-8) | crc32c(all bytes before it) u32
//! ```
//!
//! Version 1, still read, has no writer release.

use crate::release::{Release, RELEASE_LEN_BYTES, THIS_RELEASE};

/// Magic bytes of a position file.
pub const POSITION_MAGIC: &[u8; 8] = b"WEIRSPOS";
/// Version of the position format written by this code (2: the writer's
/// release after the version).
pub const POSITION_FORMAT_VERSION: u32 = 2;

/// Where the fields after the header start in `version`.
const fn fields_at(version: u32) -> usize {
    if version >= 2 {
        8 + 4 + RELEASE_LEN_BYTES
    } else {
        8 + 4
    }
}

/// The length of a position of `version` without its source name.
const fn fixed_len_bytes(version: u32) -> usize {
    fields_at(version) + 5 * 8 + 4 + 4
}
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
        let mut out =
            Vec::with_capacity(fixed_len_bytes(POSITION_FORMAT_VERSION) + self.source.len());
        out.extend_from_slice(POSITION_MAGIC);
        out.extend_from_slice(&POSITION_FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&THIS_RELEASE.encode());
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

    /// Decodes a position (version 1 or 2); the error names the byte
    /// offset and the reason, and for a later version the release that
    /// wrote it.
    pub fn decode(bytes: &[u8]) -> Result<Self, (u64, String)> {
        if bytes.len() < fixed_len_bytes(1) {
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
        if version == 0 || version > POSITION_FORMAT_VERSION {
            // From version 2 on the writer's release follows the version.
            let writer = (version >= 2)
                .then(|| Release::decode_newer(bytes[12..20].try_into().expect("8")))
                .map_or_else(String::new, |w| format!(", written by {w}"));
            return Err((
                8,
                format!(
                    "format version {version}{writer}; this build ({THIS_RELEASE}) reads versions \
                     1 to {POSITION_FORMAT_VERSION}"
                ),
            ));
        }
        let at = fields_at(version);
        let fixed = fixed_len_bytes(version);
        if bytes.len() < fixed {
            return Err((
                0,
                format!(
                    "{} bytes, shorter than a version {version} position",
                    bytes.len()
                ),
            ));
        }
        let source_len = u32_at(at + 40) as usize;
        let total = fixed + source_len;
        if source_len > MAX_SOURCE_LEN_BYTES || bytes.len() != total {
            return Err((
                (at + 40) as u64,
                format!("length {} does not match its source name", bytes.len()),
            ));
        }
        let crc_at = total - 4;
        if crc32c::crc32c(&bytes[..crc_at]) != u32_at(crc_at) {
            return Err((crc_at as u64, "checksum mismatch".into()));
        }
        if version >= 2 && Release::decode(bytes[12..20].try_into().expect("8")).is_none() {
            return Err((
                12,
                "the writer release's reserved bytes are not zero".into(),
            ));
        }
        let source = std::str::from_utf8(&bytes[at + 44..crc_at])
            .map_err(|_| ((at + 44) as u64, "source name is not UTF-8".to_owned()))?
            .to_owned();
        Ok(Self {
            source,
            log_next_offset: u64_at(at),
            source_seq: u64_at(at + 8),
            dead_letter_len_bytes: u64_at(at + 16),
            messages: u64_at(at + 24),
            dead_letters: u64_at(at + 32),
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
        // The golden bytes were written by weir 0.1.0: this release in its
        // place (and the checksum that covers it), the rest unchanged.
        let mut golden = include_bytes!("../../../tests/golden/position-v2.bin").to_vec();
        assert_eq!(golden[12..20], Release::parse("0.1.0").encode());
        golden[12..20].copy_from_slice(&THIS_RELEASE.encode());
        let crc_at = golden.len() - 4;
        let crc = crc32c::crc32c(&golden[..crc_at]);
        golden[crc_at..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(bytes, golden, "format v2 changed: add a version");
        // Version 1, written before the release was recorded, still reads.
        let v1 = include_bytes!("../../../tests/golden/position-v1.bin");
        assert_eq!(SourcePosition::decode(v1).unwrap(), sample());
    }

    #[test]
    fn a_later_version_is_refused_naming_its_writer() {
        let mut bytes = sample().encode();
        bytes[8..12].copy_from_slice(&3u32.to_le_bytes());
        bytes[12..20].copy_from_slice(&Release::parse("9.8.7").encode());
        let (offset, reason) = SourcePosition::decode(&bytes).unwrap_err();
        assert_eq!(offset, 8);
        assert_eq!(
            reason,
            format!("format version 3, written by weir 9.8.7; this build ({THIS_RELEASE}) reads versions 1 to 2")
        );
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
