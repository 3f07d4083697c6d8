//! Unit tests of the CSV reader and field writer.

use super::*;
use crate::event::Event;
use proptest::prelude::*;

/// A source that returns at most `chunk` bytes per read, to cross buffer
/// boundaries everywhere.
struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Chunked<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.chunk.min(out.len()).min(self.data.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn parse_chunked(data: &[u8], chunk: usize) -> Result<Vec<Event>, CsvError> {
    let mut r = CsvReader::new(Chunked { data, chunk }, Path::new("in.csv"))?;
    let mut out = Vec::new();
    while let Some(ev) = r.next_record()? {
        out.push(ev.to_event());
    }
    assert_eq!(r.bytes_read(), data.len() as u64);
    assert_eq!(r.content_crc32c(), crc32c::crc32c(data));
    Ok(out)
}

fn parse(data: &str) -> Result<Vec<Event>, CsvError> {
    let whole = parse_chunked(data.as_bytes(), usize::MAX);
    let bytewise = parse_chunked(data.as_bytes(), 1);
    assert_eq!(format!("{whole:?}"), format!("{bytewise:?}"));
    whole
}

fn ev(ts: u64, key: &str, value: i64) -> Event {
    Event {
        ts,
        key: key.to_owned(),
        value,
    }
}

/// The error's line and message for `data`.
fn err(data: &str) -> (u64, String) {
    let e = parse(data).expect_err("must fail");
    assert_eq!(e.path, Path::new("in.csv"));
    (e.line, e.reason.to_string())
}

#[test]
fn plain_quoted_crlf_and_last_line_without_newline() {
    let data =
        "ts,key,value\r\n1,a,2\r\n3,\"b,c\",-4\n5,\"say \"\"hi\"\"\",0\n6,\"two\r\nlines\",7\n8,,9";
    assert_eq!(
        parse(data).unwrap(),
        vec![
            ev(1, "a", 2),
            ev(3, "b,c", -4),
            ev(5, "say \"hi\"", 0),
            ev(6, "two\r\nlines", 7),
            ev(8, "", 9),
        ]
    );
}

#[test]
fn extremes_and_trailing_empty_line() {
    let data = format!(
        "ts,key,value\n{},k,{}\n0,k,{}\n\n",
        MAX_EVENT_TS_MS,
        i64::MIN,
        i64::MAX
    );
    assert_eq!(
        parse(&data).unwrap(),
        vec![ev(MAX_EVENT_TS_MS, "k", i64::MIN), ev(0, "k", i64::MAX)]
    );
    assert_eq!(parse("ts,key,value\r\n\r\n").unwrap(), vec![]);
    assert_eq!(parse("ts,key,value").unwrap(), vec![]);
    assert_eq!(parse("ts,key,value\n").unwrap(), vec![]);
}

#[test]
fn header_errors() {
    assert_eq!(err("").0, 1);
    assert!(err("").1.contains("bad header"));
    let (line, msg) = err("ts,key,val\n1,a,2\n");
    assert_eq!(line, 1);
    assert!(msg.contains("found `ts,key,val`"), "{msg}");
    assert_eq!(err("\u{feff}ts,key,value\n").0, 1);
    assert_eq!(err("ts,key,value,extra\n").0, 1);
}

#[test]
fn bad_numbers_name_column_and_text() {
    let (line, msg) = err("ts,key,value\n1,a,2\n12x,a,2\n");
    assert_eq!(line, 3);
    assert!(msg.contains("`ts`") && msg.contains("`12x`"), "{msg}");
    let (line, msg) = err("ts,key,value\n1,a,2\n2,b,3\n4,a,1.5\n");
    assert_eq!(line, 4);
    assert!(msg.contains("`value`") && msg.contains("`1.5`"), "{msg}");
    for bad_ts in ["-1", "+1", " 1", "", "18446744073709551616", "\"1\"\"\""] {
        let data = format!("ts,key,value\n{bad_ts},a,1\n");
        let (line, msg) = err(&data);
        assert_eq!((line, msg.contains("`ts`")), (2, true), "{bad_ts}: {msg}");
    }
    for bad_value in [
        "9223372036854775808",
        "-9223372036854775809",
        "--1",
        "-",
        "1e3",
    ] {
        let data = format!("ts,key,value\n1,a,{bad_value}\n");
        let (line, msg) = err(&data);
        assert_eq!(
            (line, msg.contains("`value`")),
            (2, true),
            "{bad_value}: {msg}"
        );
    }
    // A quoted number without escapes is accepted.
    assert_eq!(
        parse("ts,key,value\n\"1\",a,\"-2\"\n").unwrap(),
        vec![ev(1, "a", -2)]
    );
}

#[test]
fn ts_above_the_engine_limit_is_refused_with_its_line() {
    for too_large in [MAX_EVENT_TS_MS + 1, u64::MAX] {
        let data = format!("ts,key,value\n1,a,2\n{too_large},b,3\n4,c,5\n");
        let e = parse(&data).expect_err("must fail");
        assert_eq!(e.line, 3);
        assert!(
            matches!(e.reason, CsvErrorReason::TsTooLarge { ts, max } if ts == too_large && max == MAX_EVENT_TS_MS),
            "{:?}",
            e.reason
        );
        let shown = e.to_string();
        assert!(
            shown.starts_with(&format!("in.csv:3: `ts` {too_large} is above")),
            "{shown}"
        );
        assert!(shown.contains(&MAX_EVENT_TS_MS.to_string()), "{shown}");
    }
    // The limit itself is accepted; a quoted ts is checked too.
    let data = format!(
        "ts,key,value\n{MAX_EVENT_TS_MS},a,1\n\"{}\",b,2\n",
        MAX_EVENT_TS_MS + 1
    );
    let e = parse(&data).expect_err("must fail");
    assert_eq!(e.line, 3);
    assert!(matches!(e.reason, CsvErrorReason::TsTooLarge { .. }));
}

#[test]
fn column_count_utf8_quote_and_empty_line_errors() {
    let cases: &[(&str, u64, &str)] = &[
        ("ts,key,value\n1,a\n", 2, "expected 3, got 2"),
        ("ts,key,value\n1,a,2\n1,a,2,\n", 3, "expected 3, got 4"),
        ("ts,key,value\n1,\"a,b\",2,3\n", 2, "expected 3, got 4"),
        ("ts,key,value\n1\n", 2, "expected 3, got 1"),
        (
            "ts,key,value\n1,a,2\n1,\"abc,2\n2,a,3\n",
            3,
            "unterminated quote",
        ),
        (
            "ts,key,value\n1,\"multi\nline\",2\n3,\"open\n",
            4,
            "unterminated quote",
        ),
        (
            "ts,key,value\n1,a\"b,2\n",
            2,
            "inside the unquoted field of column 2",
        ),
        (
            "ts,key,value\n1,\"a\"b,2\n",
            2,
            "after the closing quote of column 2",
        ),
        ("ts,key,value\n1,a,2\n\n3,b,4\n", 3, "empty line"),
        ("ts,key,value\n1,a,2\n\n\n", 3, "empty line"),
        ("ts,key,value\r\n1,a,2\r\n\r\n\r\n", 3, "empty line"),
    ];
    for &(data, line, reason) in cases {
        let (got_line, msg) = err(data);
        assert_eq!(got_line, line, "{data:?}: {msg}");
        assert!(msg.contains(reason), "{data:?}: {msg}");
    }
    let mut bad_utf8 = b"ts,key,value\n1,a,2\n2,".to_vec();
    bad_utf8.extend_from_slice(&[0xC3, 0x28]);
    bad_utf8.extend_from_slice(b",3\n");
    let e = parse_chunked(&bad_utf8, 7).unwrap_err();
    assert_eq!(e.line, 3);
    assert!(matches!(e.reason, CsvErrorReason::BadUtf8 { .. }));
    let shown = e.to_string();
    assert!(shown.starts_with("in.csv:3: bad UTF-8"), "{shown}");
}

#[test]
fn open_missing_file_names_it() {
    let e = CsvReader::open(Path::new("/nonexistent/x.csv"))
        .err()
        .unwrap();
    assert_eq!(e.line, 0);
    assert!(e.to_string().starts_with("/nonexistent/x.csv: read error"));
}

#[test]
fn rows_longer_than_the_buffer() {
    let key = "k".repeat(3 * READ_BUFFER_LEN_BYTES);
    let data = format!("ts,key,value\n1,{key},2\n3,\"{key}\"\"\",4\n");
    let got = parse_chunked(data.as_bytes(), usize::MAX).unwrap();
    assert_eq!(got, vec![ev(1, &key, 2), ev(3, &format!("{key}\""), 4)]);
}

#[test]
fn field_quoting() {
    let quoted = |s: &str| {
        let mut out = Vec::new();
        write_csv_field(&mut out, s).unwrap();
        String::from_utf8(out).unwrap()
    };
    assert_eq!(quoted("plain"), "plain");
    assert_eq!(quoted(""), "");
    assert_eq!(quoted("a,b"), "\"a,b\"");
    assert_eq!(quoted("say \"x\""), "\"say \"\"x\"\"\"");
    assert_eq!(quoted("cr\r"), "\"cr\r\"");
    assert_eq!(quoted("lf\n"), "\"lf\n\"");
}

proptest! {
    #[test]
    fn written_fields_parse_back(
        rows in proptest::collection::vec((0..=MAX_EVENT_TS_MS, "[a-z,\"\r\n €]{0,12}", any::<i64>()), 0..20),
        crlf: bool,
        trailing_newline: bool,
        chunk in 1usize..64,
    ) {
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut data = format!("{CSV_HEADER}{eol}").into_bytes();
        for (i, (ts, key, value)) in rows.iter().enumerate() {
            data.extend_from_slice(ts.to_string().as_bytes());
            data.push(b',');
            write_csv_field(&mut data, key).unwrap();
            data.extend_from_slice(format!(",{value}").as_bytes());
            if trailing_newline || i + 1 < rows.len() {
                data.extend_from_slice(eol.as_bytes());
            }
        }
        let got = parse_chunked(&data, chunk).unwrap();
        let expect: Vec<Event> = rows.iter().map(|(t, k, v)| ev(*t, k, *v)).collect();
        prop_assert_eq!(got, expect);
    }

    #[test]
    fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), chunk in 1usize..16) {
        let mut with_header = b"ts,key,value\n".to_vec();
        with_header.extend_from_slice(&data);
        let _ = parse_chunked(&with_header, chunk);
    }
}

#[test]
fn numbers_up_to_u64_max_parse_and_beyond_do_not() {
    assert_eq!(parse_u64(b"0"), Some(0));
    assert_eq!(
        parse_u64(b"9999999999999999999"),
        Some(9_999_999_999_999_999_999)
    );
    assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
    assert_eq!(parse_u64(b"00000000000000000001"), Some(1));
    for bad in [
        &b""[..],
        b"18446744073709551616",
        b"99999999999999999999",
        b"123456789012345678901",
        b"1a",
        b"-1",
        b" 1",
    ] {
        assert_eq!(parse_u64(bad), None, "{}", String::from_utf8_lossy(bad));
    }
}

/// The events of Nexmark `table` rows, or the first error.
fn nexmark_rows(table: NexmarkTable, rows: &[u8]) -> Result<Vec<Event>, CsvError> {
    let data = [table.header().as_bytes(), b"\n", rows].concat();
    let mut r = CsvReader::new_as(&data[..], Path::new("t.csv"), RowSchema::Nexmark(table))?;
    let mut out = Vec::new();
    while let Some(e) = r.next_record()? {
        out.push(e.to_event());
    }
    Ok(out)
}

#[test]
fn nexmark_texts_may_be_any_utf8_and_nothing_else() {
    // Non-ASCII UTF-8 in every text column, and a person's name kept.
    let bids = "1,2,3,ch\u{e9},http://\u{fc}.example/\u{1f600},100,\u{e9}x\n".as_bytes();
    let events = nexmark_rows(NexmarkTable::Bid, bids).unwrap();
    assert_eq!(events, vec![ev(100, "1,2,3", 3)]);
    let people = "7,J\u{fc}rgen M\u{fc}ller,e@x,1 2,city,st,100,\n".as_bytes();
    let events = nexmark_rows(NexmarkTable::Person, people).unwrap();
    assert_eq!(events, vec![ev(100, "7,J\u{fc}rgen M\u{fc}ller", 0)]);
    // A byte that is not UTF-8 in any text column is refused with its line
    // and column, also after an ASCII row.
    for (column, row) in [
        ("channel", &b"1,2,3,c\xff,u,100,x\n"[..]),
        ("url", b"1,2,3,c,\xc3(,100,x\n"),
        ("extra", b"1,2,3,c,u,100,\xe9x\n"),
    ] {
        let rows = [&b"1,2,3,c,u,100,x\n"[..], row].concat();
        let e = nexmark_rows(NexmarkTable::Bid, &rows).unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(
            matches!(e.reason, CsvErrorReason::BadUtf8 { column: c } if c == column),
            "{e}"
        );
    }
    let e = nexmark_rows(NexmarkTable::Person, b"7,J\xfcrgen,e,c,c,s,100,\n").unwrap_err();
    assert!(
        matches!(e.reason, CsvErrorReason::BadUtf8 { column: "name" }),
        "{e}"
    );
}
