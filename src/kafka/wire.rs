//! Kafka protocol primitives (big-endian integers, `i16`-length strings,
//! `i32`-length bytes and arrays, zigzag varints) for the non-flexible
//! message versions the client uses. The reader never panics on short or
//! corrupt input: every read is checked and fails with the byte offset.

/// Why bytes do not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {reason}")]
pub struct WireError {
    /// Where in the buffer.
    pub offset: usize,
    /// What is wrong.
    pub reason: String,
}

/// Appends primitives to a buffer.
#[derive(Debug, Default)]
pub struct Writer {
    /// The bytes written.
    pub buf: Vec<u8>,
}

impl Writer {
    /// An `i8`.
    pub fn i8(&mut self, v: i8) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// An `i16`.
    pub fn i16(&mut self, v: i16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// An `i32`.
    pub fn i32(&mut self, v: i32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// An `i64`.
    pub fn i64(&mut self, v: i64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// A string with an `i16` length.
    pub fn string(&mut self, s: &str) {
        self.i16(i16::try_from(s.len()).expect("a Kafka string is under 32 KiB"));
        self.buf.extend_from_slice(s.as_bytes());
    }
    /// A null string.
    pub fn null_string(&mut self) {
        self.i16(-1);
    }
    /// Bytes with an `i32` length.
    pub fn bytes(&mut self, b: &[u8]) {
        self.i32(i32::try_from(b.len()).expect("under 2 GiB"));
        self.buf.extend_from_slice(b);
    }
    /// An array length.
    pub fn array_len(&mut self, n: usize) {
        self.i32(i32::try_from(n).expect("under 2^31 elements"));
    }
    /// A zigzag varint (`i32` range).
    pub fn varint(&mut self, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)).cast_unsigned();
        while z >= 0x80 {
            self.buf.push((z as u8) | 0x80);
            z >>= 7;
        }
        self.buf.push(z as u8);
    }
}

/// Reads primitives from a buffer.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader of `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    /// The position.
    pub fn offset(&self) -> usize {
        self.at
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }

    /// An error at the current position.
    pub fn error(&self, reason: impl Into<String>) -> WireError {
        WireError {
            offset: self.at,
            reason: reason.into(),
        }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(self.error(format!("{n} bytes needed, {} left", self.remaining())));
        }
        let out = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    /// An `i8`.
    pub fn i8(&mut self) -> Result<i8, WireError> {
        Ok(i8::from_be_bytes(self.array()?))
    }
    /// An `i16`.
    pub fn i16(&mut self) -> Result<i16, WireError> {
        Ok(i16::from_be_bytes(self.array()?))
    }
    /// An `i32`.
    pub fn i32(&mut self) -> Result<i32, WireError> {
        Ok(i32::from_be_bytes(self.array()?))
    }
    /// An `i64`.
    pub fn i64(&mut self) -> Result<i64, WireError> {
        Ok(i64::from_be_bytes(self.array()?))
    }
    /// A `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// A nullable string with an `i16` length (`None` for null).
    pub fn nullable_string(&mut self) -> Result<Option<String>, WireError> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let at = self.at;
        let bytes = self.take(len as usize)?;
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| WireError {
                offset: at,
                reason: "a string that is not UTF-8".into(),
            })
    }

    /// A string with an `i16` length (null is an error).
    pub fn string(&mut self) -> Result<String, WireError> {
        let at = self.at;
        self.nullable_string()?.ok_or(WireError {
            offset: at,
            reason: "a null string".into(),
        })
    }

    /// Nullable bytes with an `i32` length.
    pub fn nullable_bytes(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(None);
        }
        self.take(len as usize).map(Some)
    }

    /// An array length (a null array is empty), bounded by the bytes left
    /// (each element takes at least one byte).
    pub fn array_len(&mut self) -> Result<usize, WireError> {
        let n = self.i32()?;
        if n < 0 {
            return Ok(0);
        }
        let n = n as usize;
        if n > self.remaining() {
            return Err(self.error(format!(
                "an array of {n} elements in {} bytes",
                self.remaining()
            )));
        }
        Ok(n)
    }

    /// A zigzag varint of at most 10 bytes.
    pub fn varint(&mut self) -> Result<i64, WireError> {
        let mut z: u64 = 0;
        for i in 0..10 {
            let b = self.i8()?.cast_unsigned();
            z |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok((z >> 1).cast_signed() ^ -((z & 1).cast_signed()));
            }
        }
        Err(self.error("a varint longer than 10 bytes"))
    }

    /// Bytes with a varint length (`None` for -1).
    pub fn varint_bytes(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        let len = self.varint()?;
        if len < 0 {
            return Ok(None);
        }
        let len =
            usize::try_from(len).map_err(|_| self.error("a length over the address space"))?;
        self.take(len).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_overlong_ones_are_refused() {
        for v in [
            0_i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i64::from(i32::MAX),
            i64::from(i32::MIN),
            i64::MAX,
            i64::MIN,
        ] {
            let mut w = Writer::default();
            w.varint(v);
            let mut r = Reader::new(&w.buf);
            assert_eq!(r.varint().unwrap(), v);
            assert_eq!(r.remaining(), 0);
        }
        assert!(Reader::new(&[0x80; 11]).varint().is_err());
        assert!(Reader::new(&[0x80]).varint().is_err());
    }

    #[test]
    fn short_and_corrupt_input_fails_with_the_offset() {
        let mut w = Writer::default();
        w.string("topic");
        w.bytes(b"abc");
        w.array_len(2);
        let bytes = w.buf;
        for cut in 0..bytes.len() {
            let mut r = Reader::new(&bytes[..cut]);
            let ok = r.string().is_ok() && r.nullable_bytes().is_ok() && r.array_len().is_ok();
            assert!(!ok, "cut {cut}");
        }
        let mut r = Reader::new(&[0, 0, 0, 9, 1]);
        assert_eq!(r.array_len().unwrap_err().offset, 4);
        assert!(Reader::new(&[0, 2, 0xff, 0xfe]).string().is_err());
    }
}
