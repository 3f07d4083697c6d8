//! The event codec: how an input event `(ts, key, value)` is stored as the
//! payload of one log record.
//!
//! Layout (little-endian): `ts u64 | value i64 | key UTF-8 bytes` (the key
//! runs to the end of the payload, so it needs no length). The log frame
//! around the payload carries the checksum.
//!
//! A partition also holds *idle markers* (decision 29): `b"IDLE" |
//! watermark_ms u64`, 12 bytes, shorter than any event, written by whatever
//! appends to the partition when it has had nothing new for a while. A
//! marker counts for the lateness rule as an event at `watermark_ms` would,
//! and carries no data.

/// Bytes before the key in an encoded event.
pub const EVENT_FIXED_LEN_BYTES: usize = 16;

/// An owned input event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Ord, PartialOrd)]
pub struct Event {
    /// Event time in milliseconds.
    pub ts: u64,
    /// The key.
    pub key: String,
    /// The value.
    pub value: i64,
}

/// A decoded event borrowing its key from the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Ord, PartialOrd)]
pub struct EventRef<'a> {
    /// Event time in milliseconds.
    pub ts: u64,
    /// The key.
    pub key: &'a str,
    /// The value.
    pub value: i64,
    /// The key's [`weir_dataflows::key::key_hash`], if the feed computed it
    /// already (a log read ahead hashes keys on its reading thread).
    pub key_hash: Option<u64>,
}

impl<'a> EventRef<'a> {
    /// An event whose key is not hashed yet.
    pub fn new(ts: u64, key: &'a str, value: i64) -> Self {
        EventRef {
            ts,
            key,
            value,
            key_hash: None,
        }
    }
}

impl Event {
    /// Borrows this event.
    pub fn as_event_ref(&self) -> EventRef<'_> {
        EventRef {
            ts: self.ts,
            key: &self.key,
            value: self.value,
            key_hash: None,
        }
    }

    /// Appends the encoding of this event to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_event(self.ts, &self.key, self.value, out);
    }
}

impl EventRef<'_> {
    /// Copies the key into an owned [`Event`].
    pub fn to_event(&self) -> Event {
        Event {
            ts: self.ts,
            key: self.key.to_owned(),
            value: self.value,
        }
    }
}

/// Bytes of an idle marker: its magic and the watermark.
pub const IDLE_MARKER_LEN_BYTES: usize = 12;
/// The first bytes of an idle marker.
pub const IDLE_MARKER_MAGIC: &[u8; 4] = b"IDLE";

/// One record of an input partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogRecord<'a> {
    /// An input event.
    Event(EventRef<'a>),
    /// The partition's appender had nothing new: its event time has reached
    /// `watermark_ms` (decision 29).
    Idle {
        /// Event time the partition has reached, ms.
        watermark_ms: u64,
    },
}

/// Appends an idle marker with `watermark_ms` to `out`.
pub fn encode_idle_marker(watermark_ms: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(IDLE_MARKER_MAGIC);
    out.extend_from_slice(&watermark_ms.to_le_bytes());
}

/// Decodes a payload written by [`encode_event`] or [`encode_idle_marker`].
pub fn decode_record(payload: &[u8]) -> Result<LogRecord<'_>, EventDecodeError> {
    if payload.len() == IDLE_MARKER_LEN_BYTES {
        let (magic, watermark) = payload.split_at(IDLE_MARKER_MAGIC.len());
        if magic != IDLE_MARKER_MAGIC {
            return Err(EventDecodeError::BadMarker);
        }
        let watermark_ms = u64::from_le_bytes(watermark.try_into().expect("8 bytes"));
        return Ok(LogRecord::Idle { watermark_ms });
    }
    decode_event(payload).map(LogRecord::Event)
}

/// Why a payload is not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventDecodeError {
    /// Shorter than the fixed part.
    #[error("event payload has {len_bytes} bytes, fewer than the {EVENT_FIXED_LEN_BYTES} of ts and value")]
    TooShort {
        /// The payload length.
        len_bytes: usize,
    },
    /// Of an idle marker's length, without its magic.
    #[error("a {IDLE_MARKER_LEN_BYTES}-byte payload that does not start with the idle marker's magic {IDLE_MARKER_MAGIC:?}")]
    BadMarker,
    /// The key is not UTF-8.
    #[error("event key is not valid UTF-8 (valid up to key byte {valid_up_to})")]
    BadUtf8 {
        /// Length of the valid UTF-8 prefix of the key.
        valid_up_to: usize,
    },
}

/// Appends the encoding of `(ts, key, value)` to `out`.
pub fn encode_event(ts: u64, key: &str, value: i64, out: &mut Vec<u8>) {
    out.reserve(EVENT_FIXED_LEN_BYTES + key.len());
    out.extend_from_slice(&ts.to_le_bytes());
    out.extend_from_slice(&value.to_le_bytes());
    out.extend_from_slice(key.as_bytes());
}

/// Decodes a payload written by [`encode_event`].
pub fn decode_event(payload: &[u8]) -> Result<EventRef<'_>, EventDecodeError> {
    let Some((fixed, key)) = payload.split_first_chunk::<EVENT_FIXED_LEN_BYTES>() else {
        return Err(EventDecodeError::TooShort {
            len_bytes: payload.len(),
        });
    };
    let (ts, value) = fixed.split_at(8);
    let key = std::str::from_utf8(key).map_err(|e| EventDecodeError::BadUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    Ok(EventRef {
        ts: u64::from_le_bytes(ts.try_into().expect("8 bytes")),
        key,
        value: i64::from_le_bytes(value.try_into().expect("8 bytes")),
        key_hash: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_ts_value_key() {
        let mut out = vec![0xAA];
        encode_event(1, "k€y", -2, &mut out);
        let mut expect = vec![0xAA];
        expect.extend_from_slice(&1u64.to_le_bytes());
        expect.extend_from_slice(&(-2i64).to_le_bytes());
        expect.extend_from_slice("k€y".as_bytes());
        assert_eq!(out, expect);
        assert_eq!(
            decode_event(&out[1..]),
            Ok(EventRef {
                ts: 1,
                key: "k€y",
                value: -2,
                key_hash: None,
            })
        );
    }

    #[test]
    fn truncated_and_corrupt_payloads() {
        let mut out = Vec::new();
        encode_event(7, "ab€", 9, &mut out);
        for len in 0..EVENT_FIXED_LEN_BYTES {
            assert_eq!(
                decode_event(&out[..len]),
                Err(EventDecodeError::TooShort { len_bytes: len })
            );
        }
        // Empty key is fine.
        assert_eq!(decode_event(&out[..16]).unwrap().key, "");
        // Cutting inside the 3-byte `€` gives bad UTF-8 at key byte 2.
        assert_eq!(
            decode_event(&out[..out.len() - 1]),
            Err(EventDecodeError::BadUtf8 { valid_up_to: 2 })
        );
        let mut bad = out.clone();
        bad[16] = 0xFF;
        assert_eq!(
            decode_event(&bad),
            Err(EventDecodeError::BadUtf8 { valid_up_to: 0 })
        );
    }

    #[test]
    fn golden_idle_marker_and_its_corruptions() {
        let mut out = Vec::new();
        encode_idle_marker(0x0102_0304_0506_0708, &mut out);
        assert_eq!(out, b"IDLE\x08\x07\x06\x05\x04\x03\x02\x01");
        assert_eq!(
            decode_record(&out),
            Ok(LogRecord::Idle {
                watermark_ms: 0x0102_0304_0506_0708
            })
        );
        // An event payload is never mistaken for a marker, nor the reverse.
        assert_eq!(
            decode_event(&out),
            Err(EventDecodeError::TooShort { len_bytes: 12 })
        );
        let mut event = Vec::new();
        encode_event(1, "", 2, &mut event);
        assert_eq!(
            decode_record(&event),
            Ok(LogRecord::Event(EventRef {
                ts: 1,
                key: "",
                value: 2,
                key_hash: None,
            }))
        );
        for i in 0..IDLE_MARKER_MAGIC.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x20;
            assert_eq!(decode_record(&bad), Err(EventDecodeError::BadMarker));
        }
        for len in (0..IDLE_MARKER_LEN_BYTES).chain(13..16) {
            assert_eq!(
                decode_record(&[b'I'; 16][..len]),
                Err(EventDecodeError::TooShort { len_bytes: len })
            );
        }
    }

    proptest! {
        #[test]
        fn marker_round_trip(watermark_ms: u64) {
            let mut out = Vec::new();
            encode_idle_marker(watermark_ms, &mut out);
            prop_assert_eq!(decode_record(&out), Ok(LogRecord::Idle { watermark_ms }));
        }

        #[test]
        fn round_trip(ts: u64, key in ".{0,40}", value: i64, prefix in proptest::collection::vec(any::<u8>(), 0..4)) {
            let ev = Event { ts, key, value };
            let mut out = prefix.clone();
            ev.encode(&mut out);
            let got = decode_event(&out[prefix.len()..]).unwrap();
            prop_assert_eq!(got, ev.as_event_ref());
            prop_assert_eq!(got.to_event(), ev);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(LogRecord::Idle { watermark_ms }) = decode_record(&bytes) {
                let mut out = Vec::new();
                encode_idle_marker(watermark_ms, &mut out);
                prop_assert_eq!(&out, &bytes);
            }
            if let Ok(ev) = decode_event(&bytes) {
                let mut out = Vec::new();
                encode_event(ev.ts, ev.key, ev.value, &mut out);
                prop_assert_eq!(out, bytes);
            }
        }
    }
}
