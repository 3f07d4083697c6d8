//! [`RowParser`]: one row at a time, given as bytes (a message of a stream
//! source), with every check a file's rows get. No header; the row may end
//! with a line end; a payload holding more than one row is refused.

use std::io;
use std::path::Path;

use super::{CsvReader, RowSchema};
use crate::event::EventRef;

/// Parses single rows of a [`RowSchema`] (see the module doc).
pub struct RowParser {
    reader: CsvReader<io::Empty>,
}

/// Why a single row was refused.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// What a file's row would be refused for.
    #[error("{0}")]
    Csv(#[from] super::CsvErrorReason),
    /// Nothing but a line end.
    #[error("an empty row")]
    Empty,
    /// Another row follows the first.
    #[error("more than one row")]
    MoreThanOneRow,
}

impl RowParser {
    /// A parser of rows of `schema`.
    pub fn new(schema: RowSchema) -> Self {
        Self {
            reader: CsvReader {
                src: io::empty(),
                schema,
                path: Path::new("message").to_owned(),
                buf: Vec::new(),
                start: 0,
                end: 0,
                eof: true,
                line: 1,
                row_line: 0,
                scratch: String::new(),
                fields: super::RowFields::default(),
                bytes_read: 0,
                crc: 0,
            },
        }
    }

    /// The event of `row`; its key borrows the parser.
    pub fn parse(&mut self, row: &[u8]) -> Result<EventRef<'_>, RowError> {
        let r = &mut self.reader;
        r.buf.clear();
        r.buf.extend_from_slice(row);
        r.start = 0;
        r.end = row.len();
        r.line = 1;
        let rest_after = |r: &CsvReader<io::Empty>| r.end - r.start;
        match r.next_row() {
            Err(e) => return Err(e.reason.into()),
            Ok(None) => return Err(RowError::Empty),
            Ok(Some((s, e))) if s == e => return Err(RowError::Empty),
            Ok(Some(_)) if rest_after(r) > 0 => return Err(RowError::MoreThanOneRow),
            Ok(Some(_)) => {}
        }
        // Parse the row again through the file path, now that it is known
        // to be the only one.
        r.start = 0;
        r.line = 1;
        match r.next_record() {
            Ok(Some(event)) => Ok(event),
            Ok(None) => Err(RowError::Empty),
            Err(e) => Err(e.reason.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csv_input::NexmarkTable;

    #[test]
    fn parses_like_a_file_row_and_refuses_what_a_file_would() {
        let mut p = RowParser::new(RowSchema::Generic);
        let e = p.parse(b"5,\"a,\"\"b\",-3").unwrap().to_event();
        assert_eq!((e.ts, e.key.as_str(), e.value), (5, "a,\"b", -3));
        let e = p.parse(b"7,k,1\r\n").unwrap().to_event();
        assert_eq!((e.ts, e.key.as_str(), e.value), (7, "k", 1));
        for bad in [
            &b""[..],
            b"\n",
            b"1,k",
            b"x,k,1",
            b"1,k,1.5",
            b"1,\"k,1",
            b"1,k,1\n2,k,1",
            b"1,\xff,1",
        ] {
            assert!(p.parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut bids = RowParser::new(RowSchema::Nexmark(NexmarkTable::Bid));
        let e = bids.parse(b"1,2,30,ch,url,1000,x").unwrap().to_event();
        assert_eq!((e.ts, e.key.as_str(), e.value), (1000, "1,2,30", 30));
    }
}
