//! CSV parsing of the generic input (`ts,key,value`) and CSV field quoting
//! for the output writers.
//!
//! The header must be exactly `ts,key,value`. Each row is `ts` (u64
//! milliseconds, at most [`MAX_EVENT_TS_MS`] = 2^60, the largest event time
//! the engine accepts), `key` (a plain field, or RFC 4180 double-quoted with
//! `""` escapes; it may contain commas and line breaks) and `value` (i64). Lines
//! end with `\n` or `\r\n`; the last line may lack its line end and may be
//! followed by one empty line. Nothing is skipped: every other deviation is
//! a [`CsvError`] naming the file, the 1-based line (the header is line 1;
//! a row spanning lines is named by its first line) and the reason.
//!
//! [`CsvReader`] streams a file through a buffer it manages: a row's key
//! borrows that buffer (or a reused scratch string for keys with `""`), so
//! no allocation happens per row. It also computes the size and CRC32C of
//! everything it read, the identity ingest uses.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use weir_dataflows::MAX_EVENT_TS_MS;

use crate::event::EventRef;
use scan::{scan_row, split_fields, Field, RowEnd, RowFields};
pub use weir_dataflows::nexmark::NexmarkTable;

/// The required header line.
pub const CSV_HEADER: &str = "ts,key,value";
const READ_BUFFER_LEN_BYTES: usize = 1 << 20;
const MAX_QUOTED_TEXT_CHARS: usize = 60;

/// A CSV input error: the file, the 1-based line (0 when not about a line)
/// and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {reason}", path.display(), line_suffix(*line))]
pub struct CsvError {
    /// The input file.
    pub path: PathBuf,
    /// The 1-based line (the header is line 1), 0 for errors opening the file.
    pub line: u64,
    /// What is wrong.
    pub reason: CsvErrorReason,
}

fn line_suffix(line: u64) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}")
    }
}

/// Why a CSV line was rejected.
#[derive(Debug, thiserror::Error)]
pub enum CsvErrorReason {
    /// Reading the file failed.
    #[error("read error: {0}")]
    Io(#[source] io::Error),
    /// The first line is not the expected header.
    #[error("bad header: expected `{expected}`, found `{found}`")]
    BadHeader {
        /// The header the file's format requires.
        expected: &'static str,
        /// The first line (shortened).
        found: String,
    },
    /// A number column does not hold a number of its type.
    #[error("bad number in column `{column}`: `{text}` is not {expected}")]
    BadNumber {
        /// `ts` or `value`.
        column: &'static str,
        /// The field's text (shortened).
        text: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A row without exactly the format's number of fields.
    #[error("wrong column count: expected {expected}, got {got}")]
    WrongColumnCount {
        /// The format's number of fields.
        expected: usize,
        /// The number of fields found.
        got: usize,
    },
    /// A text column is not valid UTF-8.
    #[error("bad UTF-8 in column `{column}`")]
    BadUtf8 {
        /// The column's name.
        column: &'static str,
    },
    /// A quoted field that does not end before the end of the file.
    #[error("unterminated quote: a quoted field starting in this row never ends")]
    UnterminatedQuote,
    /// A `"` inside a field that does not start with `"`.
    #[error("quote character inside the unquoted field of column {column}; quote the whole field and double the inner quotes")]
    StrayQuote {
        /// The 1-based column.
        column: usize,
    },
    /// Text between a closing quote and the next `,` or line end.
    #[error("text after the closing quote of column {column}")]
    TextAfterQuote {
        /// The 1-based column.
        column: usize,
    },
    /// An empty line that is not the single last line of the file.
    #[error("empty line (only one empty line, at the very end of the file, is allowed)")]
    EmptyLine,
    /// A `ts` above [`MAX_EVENT_TS_MS`], the largest event time the engine
    /// accepts.
    #[error("`ts` {ts} is above the largest accepted event time, {max} ms")]
    TsTooLarge {
        /// The row's `ts`.
        ts: u64,
        /// The limit, [`MAX_EVENT_TS_MS`].
        max: u64,
    },
}

/// Shortens a field's bytes for an error message.
fn shorten(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    if text.chars().count() <= MAX_QUOTED_TEXT_CHARS {
        text.into_owned()
    } else {
        let mut s: String = text.chars().take(MAX_QUOTED_TEXT_CHARS).collect();
        s.push('…');
        s
    }
}

/// Writes `field` as one CSV field, quoting it (and doubling inner quotes)
/// when it contains a comma, a quote, CR or LF.
pub fn write_csv_field<W: Write + ?Sized>(out: &mut W, field: &str) -> io::Result<()> {
    if !field
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
    {
        return out.write_all(field.as_bytes());
    }
    out.write_all(b"\"")?;
    for (i, part) in field.split('"').enumerate() {
        if i > 0 {
            out.write_all(b"\"\"")?;
        }
        out.write_all(part.as_bytes())?;
    }
    out.write_all(b"\"")
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 {
        return None;
    }
    if b.len() < 20 {
        // At most 19 digits cannot overflow: no checked arithmetic.
        let mut acc = 0u64;
        for &c in b {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            acc = acc * 10 + u64::from(d);
        }
        return Some(acc);
    }
    b.iter().try_fold(0u64, |acc, &c| {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(d))
    })
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    match b.split_first() {
        Some((b'-', digits)) => {
            let magnitude = parse_u64(digits)?;
            if let Ok(m) = i64::try_from(magnitude) {
                Some(-m)
            } else if magnitude == 1 << 63 {
                Some(i64::MIN)
            } else {
                None
            }
        }
        _ => parse_u64(b).and_then(|m| i64::try_from(m).ok()),
    }
}

/// The format of a CSV input file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowSchema {
    /// `ts,key,value`: the generic input.
    Generic,
    /// A Nexmark table (see [`weir_dataflows::nexmark`]): rows become
    /// events timed by `date_time` whose key holds the table's stored columns.
    Nexmark(NexmarkTable),
}

impl RowSchema {
    /// The header line files of this format start with.
    pub fn header(self) -> &'static str {
        match self {
            RowSchema::Generic => CSV_HEADER,
            RowSchema::Nexmark(table) => table.header(),
        }
    }
}

/// Streams the rows of a CSV file of some [`RowSchema`].
pub struct CsvReader<R = File> {
    src: R,
    schema: RowSchema,
    path: PathBuf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    /// Line on which the next row starts.
    line: u64,
    /// Line of the row returned last.
    row_line: u64,
    scratch: String,
    /// The fields of the row returned last, found with its end.
    fields: RowFields,
    bytes_read: u64,
    crc: u32,
}

impl CsvReader<File> {
    /// Opens `path`, a `ts,key,value` file, and checks its header.
    pub fn open(path: &Path) -> Result<Self, CsvError> {
        Self::open_as(path, RowSchema::Generic)
    }

    /// Opens `path`, a file of `schema`, and checks its header.
    pub fn open_as(path: &Path, schema: RowSchema) -> Result<Self, CsvError> {
        let file = File::open(path).map_err(|e| CsvError {
            path: path.to_owned(),
            line: 0,
            reason: CsvErrorReason::Io(e),
        })?;
        Self::new_as(file, path, schema)
    }
}

impl<R: Read> CsvReader<R> {
    /// Reads `ts,key,value` CSV from `src`, naming it `path` in errors, and
    /// checks the header.
    pub fn new(src: R, path: &Path) -> Result<Self, CsvError> {
        Self::new_as(src, path, RowSchema::Generic)
    }

    /// Reads CSV of `schema` from `src`, naming it `path` in errors, and
    /// checks the header.
    pub fn new_as(src: R, path: &Path, schema: RowSchema) -> Result<Self, CsvError> {
        let mut r = Self {
            src,
            schema,
            path: path.to_owned(),
            buf: vec![0; READ_BUFFER_LEN_BYTES],
            start: 0,
            end: 0,
            eof: false,
            line: 1,
            row_line: 0,
            scratch: String::new(),
            fields: RowFields::default(),
            bytes_read: 0,
            crc: 0,
        };
        r.read_header()?;
        Ok(r)
    }

    /// The file named in errors.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The line of the row returned last (1-based; 1 before any row).
    pub fn line(&self) -> u64 {
        self.row_line.max(1)
    }

    /// Bytes read from the source so far (the whole file once
    /// [`Self::next_record`] returned `Ok(None)`).
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// CRC32C of the bytes read so far.
    pub fn content_crc32c(&self) -> u32 {
        self.crc
    }

    fn error(&self, line: u64, reason: CsvErrorReason) -> CsvError {
        CsvError {
            path: self.path.clone(),
            line,
            reason,
        }
    }

    /// Reads more input; returns whether any byte came.
    fn fill(&mut self) -> Result<bool, CsvError> {
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = loop {
            match self.src.read(&mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.error(self.line, CsvErrorReason::Io(e))),
            }
        };
        self.crc = crc32c::crc32c_append(self.crc, &self.buf[self.end..self.end + n]);
        self.bytes_read += n as u64;
        self.end += n;
        self.eof = n == 0;
        Ok(n > 0)
    }

    /// Finds the next row; returns its content range in the buffer (line
    /// end excluded) and consumes it, or `None` at the end of the input.
    fn next_row(&mut self) -> Result<Option<(usize, usize)>, CsvError> {
        loop {
            match scan_row(&self.buf[self.start..self.end], &mut self.fields) {
                RowEnd::Complete {
                    content_len,
                    consumed,
                    newlines_inside,
                } => {
                    let row = (self.start, self.start + content_len);
                    self.start += consumed;
                    self.row_line = self.line;
                    self.line += 1 + newlines_inside;
                    return Ok(Some(strip_cr(&self.buf, row)));
                }
                RowEnd::Incomplete { in_quotes } => {
                    if self.fill()? {
                        continue;
                    }
                    if in_quotes {
                        return Err(self.error(self.line, CsvErrorReason::UnterminatedQuote));
                    }
                    if self.start == self.end {
                        return Ok(None);
                    }
                    // The last line, without a line end.
                    let row = (self.start, self.end);
                    self.start = self.end;
                    self.row_line = self.line;
                    self.line += 1;
                    return Ok(Some(strip_cr(&self.buf, row)));
                }
            }
        }
    }

    fn read_header(&mut self) -> Result<(), CsvError> {
        let Some((s, e)) = self.next_row()? else {
            return Err(self.error(
                1,
                CsvErrorReason::BadHeader {
                    expected: self.schema.header(),
                    found: String::new(),
                },
            ));
        };
        let expected = self.schema.header();
        if &self.buf[s..e] != expected.as_bytes() {
            let found = shorten(&self.buf[s..e]);
            return Err(self.error(1, CsvErrorReason::BadHeader { expected, found }));
        }
        Ok(())
    }

    /// The `N` fields of the row `buf[s..e]` returned last.
    fn row_fields<const N: usize>(
        &self,
        (s, e): (usize, usize),
    ) -> Result<[Field; N], CsvErrorReason> {
        if self.fields.valid {
            self.fields.take::<N>()
        } else {
            split_fields::<N>(&self.buf[s..e])
        }
    }

    /// The next row, or `Ok(None)` at the end of the file. The key borrows
    /// the reader.
    pub fn next_record(&mut self) -> Result<Option<EventRef<'_>>, CsvError> {
        let Some((s, e)) = self.next_row()? else {
            return Ok(None);
        };
        let line = self.row_line;
        if s == e {
            // Only allowed as the very last line.
            if self.start == self.end && !self.fill()? {
                return Ok(None);
            }
            return Err(self.error(line, CsvErrorReason::EmptyLine));
        }
        if let RowSchema::Nexmark(table) = self.schema {
            return self.nexmark_record(table, (s, e), line).map(Some);
        }
        let fields = self
            .row_fields::<3>((s, e))
            .map_err(|reason| self.error(line, reason))?;
        let field_bytes = |f: Field| &self.buf[s + f.start..s + f.end];
        let [ts_f, key_f, value_f] = fields;
        let bad_number = |column, f: Field, expected| {
            let text = shorten(field_bytes(f));
            self.error(
                line,
                CsvErrorReason::BadNumber {
                    column,
                    text,
                    expected,
                },
            )
        };
        let Some(ts) = parse_u64(field_bytes(ts_f)).filter(|_| !ts_f.escaped) else {
            return Err(bad_number(
                "ts",
                ts_f,
                "an unsigned 64-bit integer (milliseconds)",
            ));
        };
        if ts > MAX_EVENT_TS_MS {
            return Err(self.error(
                line,
                CsvErrorReason::TsTooLarge {
                    ts,
                    max: MAX_EVENT_TS_MS,
                },
            ));
        }
        let Some(value) = parse_i64(field_bytes(value_f)).filter(|_| !value_f.escaped) else {
            return Err(bad_number("value", value_f, "a signed 64-bit integer"));
        };
        let (ks, ke) = (s + key_f.start, s + key_f.end);
        let Ok(raw_key) = std::str::from_utf8(&self.buf[ks..ke]) else {
            return Err(self.error(line, CsvErrorReason::BadUtf8 { column: "key" }));
        };
        let key = if key_f.escaped {
            self.scratch.clear();
            let mut rest = raw_key;
            while let Some(p) = rest.find("\"\"") {
                self.scratch.push_str(&rest[..=p]);
                rest = &rest[p + 2..];
            }
            self.scratch.push_str(rest);
            self.scratch.as_str()
        } else {
            raw_key
        };
        Ok(Some(EventRef {
            ts,
            key,
            value,
            key_hash: None,
        }))
    }
}

/// Drops a `\r` before the line end.
fn strip_cr(buf: &[u8], (s, e): (usize, usize)) -> (usize, usize) {
    if e > s && buf[e - 1] == b'\r' {
        (s, e - 1)
    } else {
        (s, e)
    }
}

mod nexmark;
mod row;
mod scan;
pub use row::{RowError, RowParser};
#[cfg(test)]
mod tests;
