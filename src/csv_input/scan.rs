//! Finding where a CSV row ends and where its fields are, in one pass
//! over its bytes ([`scan_row`]): one `memchr3` per plain field for its
//! end (`,` or line end) or a stray quote, instead of a pass for the row's
//! end and two per field to split it (about a quarter of ingesting
//! Nexmark bids). A quote opens a quoted section only at the start of a
//! field (RFC 4180), so a stray quote inside a plain field does not swallow
//! the following lines; it is reported as the field's problem.
//!
//! [`split_fields`] splits a row already cut out (the last one, which has
//! no line end to find); the tests check the one-pass scan against it and
//! against the two-pass row end ([`find_row_end`]) on random rows.

use super::CsvErrorReason;

/// Fields recorded per row; a row may have more (only counted).
pub(super) const MAX_FIELDS: usize = 16;

/// What was wrong with a field of a scanned row (the first, left to right).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldProblem {
    /// A `"` inside an unquoted field (1-based column).
    StrayQuote(usize),
    /// Text after a closing quote (1-based column).
    TextAfterQuote(usize),
}

/// The fields of the row [`scan_row`] found last.
#[derive(Clone, Debug)]
pub(super) struct RowFields {
    spans: [Field; MAX_FIELDS],
    count: usize,
    problem: Option<FieldProblem>,
    /// Whether they belong to the row returned last (not when that row was
    /// cut at the end of the input instead of found by [`scan_row`]).
    pub(super) valid: bool,
}

impl Default for RowFields {
    fn default() -> Self {
        Self {
            spans: [Field::default(); MAX_FIELDS],
            count: 0,
            problem: None,
            valid: false,
        }
    }
}

impl RowFields {
    fn push(&mut self, field: Field) {
        if self.count < MAX_FIELDS {
            self.spans[self.count] = field;
        }
        self.count += 1;
    }

    fn problem(&mut self, problem: FieldProblem) {
        self.problem.get_or_insert(problem);
    }

    /// The row's `N` fields, or what [`split_fields`] says of the row.
    pub(super) fn take<const N: usize>(&self) -> Result<[Field; N], CsvErrorReason> {
        const { assert!(N <= MAX_FIELDS) };
        match self.problem {
            Some(FieldProblem::StrayQuote(column)) => Err(CsvErrorReason::StrayQuote { column }),
            Some(FieldProblem::TextAfterQuote(column)) => {
                Err(CsvErrorReason::TextAfterQuote { column })
            }
            None if self.count != N => Err(CsvErrorReason::WrongColumnCount {
                expected: N,
                got: self.count,
            }),
            None => Ok(self.spans[..N].try_into().expect("N fields")),
        }
    }
}

/// Finds the end of the row at the start of `data` and records its fields
/// (relative to the row's start; a plain last field ends before a `\r`
/// preceding the line end, as the row's content does once the reader strips
/// it) in `fields`, valid if the row is complete.
pub(super) fn scan_row(data: &[u8], fields: &mut RowFields) -> RowEnd {
    fields.count = 0;
    fields.problem = None;
    fields.valid = false;
    let mut newlines_inside = 0;
    let mut i = 0;
    loop {
        let column = fields.count + 1;
        let field_start = i;
        // Where the field's text stops: at `,`, or at the line end.
        let stop = if data.get(i) == Some(&b'"') {
            i += 1;
            let mut escaped = false;
            let close = loop {
                let Some(k) = memchr::memchr2(b'"', b'\n', &data[i..]) else {
                    return RowEnd::Incomplete { in_quotes: true };
                };
                let at = i + k;
                i = at + 1;
                if data[at] == b'\n' {
                    newlines_inside += 1;
                } else if data.get(i) == Some(&b'"') {
                    escaped = true;
                    i += 1;
                } else {
                    break at; // the closing quote (or the last byte so far)
                }
            };
            fields.push(Field {
                start: field_start + 1,
                end: close,
                escaped,
            });
            match (data.get(i), data.get(i + 1)) {
                (Some(b',' | b'\n'), _) | (Some(b'\r'), Some(b'\n')) => {}
                (None, _) | (Some(b'\r'), None) => return RowEnd::Incomplete { in_quotes: false },
                _ => fields.problem(FieldProblem::TextAfterQuote(column)),
            }
            let Some(k) = memchr::memchr2(b',', b'\n', &data[i..]) else {
                return RowEnd::Incomplete { in_quotes: false };
            };
            i + k
        } else {
            let Some(k) = memchr::memchr3(b',', b'\n', b'"', &data[i..]) else {
                return RowEnd::Incomplete { in_quotes: false };
            };
            let mut at = i + k;
            if data[at] == b'"' {
                fields.problem(FieldProblem::StrayQuote(column));
                let Some(k) = memchr::memchr2(b',', b'\n', &data[at + 1..]) else {
                    return RowEnd::Incomplete { in_quotes: false };
                };
                at += 1 + k;
            }
            let end = if data[at] == b'\n' && at > field_start && data[at - 1] == b'\r' {
                at - 1
            } else {
                at
            };
            fields.push(Field {
                start: field_start,
                end,
                escaped: false,
            });
            at
        };
        if data[stop] == b'\n' {
            fields.valid = true;
            return RowEnd::Complete {
                content_len: stop,
                consumed: stop + 1,
                newlines_inside,
            };
        }
        i = stop + 1;
    }
}

/// The span of one field in a row, relative to the row start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Field {
    pub(super) start: usize,
    pub(super) end: usize,
    /// Quoted and containing `""` escapes.
    pub(super) escaped: bool,
}

/// Splits a row (without its line end) into its `N` fields: for a row
/// [`scan_row`] did not see whole (the last one, without a line end).
pub(super) fn split_fields<const N: usize>(row: &[u8]) -> Result<[Field; N], CsvErrorReason> {
    let mut fields = [Field::default(); N];
    let mut count = 0;
    let mut i = 0;
    loop {
        let column = count + 1;
        let (field, next) = if row.get(i) == Some(&b'"') {
            let mut j = i + 1;
            let mut escaped = false;
            let close = loop {
                let q =
                    j + memchr::memchr(b'"', &row[j..]).ok_or(CsvErrorReason::UnterminatedQuote)?;
                if row.get(q + 1) == Some(&b'"') {
                    escaped = true;
                    j = q + 2;
                } else {
                    break q;
                }
            };
            let field = Field {
                start: i + 1,
                end: close,
                escaped,
            };
            match row.get(close + 1) {
                None => (field, None),
                Some(b',') => (field, Some(close + 2)),
                Some(_) => return Err(CsvErrorReason::TextAfterQuote { column }),
            }
        } else {
            let end = memchr::memchr(b',', &row[i..]).map_or(row.len(), |k| i + k);
            if memchr::memchr(b'"', &row[i..end]).is_some() {
                return Err(CsvErrorReason::StrayQuote { column });
            }
            let field = Field {
                start: i,
                end,
                escaped: false,
            };
            (field, (end < row.len()).then_some(end + 1))
        };
        if count < N {
            fields[count] = field;
        }
        count += 1;
        match next {
            Some(n) => i = n,
            None => break,
        }
    }
    if count == N {
        Ok(fields)
    } else {
        Err(CsvErrorReason::WrongColumnCount {
            expected: N,
            got: count,
        })
    }
}

/// Where the next row ends in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum RowEnd {
    /// The row is `buf[start..start + content_len]` (line end excluded) and
    /// `consumed` bytes are used up including its line end.
    Complete {
        content_len: usize,
        consumed: usize,
        newlines_inside: u64,
    },
    /// No line end yet (more data needed), and whether it stops inside quotes.
    Incomplete { in_quotes: bool },
}

/// The row end as [`scan_row`] finds it, without the fields: the two-pass
/// reader's first pass, kept as the oracle of the one-pass scan. A quote
/// opens a quoted section only at the start of a field (RFC 4180), so a
/// stray quote inside a plain field does not swallow the following lines.
#[cfg(test)]
fn find_row_end(data: &[u8]) -> RowEnd {
    let mut newlines_inside = 0;
    let mut i = 0;
    loop {
        if data.get(i) == Some(&b'"') {
            // Inside a quoted field: find its closing quote.
            i += 1;
            loop {
                let Some(k) = memchr::memchr2(b'"', b'\n', &data[i..]) else {
                    return RowEnd::Incomplete { in_quotes: true };
                };
                let at = i + k;
                i = at + 1;
                if data[at] == b'\n' {
                    newlines_inside += 1;
                } else if data.get(i) == Some(&b'"') {
                    i += 1; // an escaped quote
                } else {
                    break; // the closing quote (or the last byte so far)
                }
            }
        }
        let Some(k) = memchr::memchr2(b',', b'\n', &data[i..]) else {
            return RowEnd::Incomplete { in_quotes: false };
        };
        let at = i + k;
        if data[at] == b'\n' {
            return RowEnd::Complete {
                content_len: at,
                consumed: at + 1,
                newlines_inside,
            };
        }
        i = at + 1;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The row's content as the reader returns it: without a `\r` before
    /// its line end.
    fn strip_cr(row: &[u8]) -> &[u8] {
        row.strip_suffix(b"\r").unwrap_or(row)
    }

    /// The one-pass fields of a complete row against splitting its content,
    /// for `N` fields (results compared as text: the error type holds an
    /// `io::Error`, so it is not `PartialEq`).
    fn same_fields<const N: usize>(fields: &RowFields, row: &[u8]) -> Result<(), TestCaseError> {
        prop_assert_eq!(
            format!("{:?}", fields.take::<N>()),
            format!("{:?}", split_fields::<N>(row))
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// On any bytes (plain and quoted fields, doubled and stray quotes,
        /// CR, LF, rows cut anywhere), the scan finds the row end the
        /// two-pass reader found, and the fields (or the first problem, or
        /// the column count) splitting that row gave.
        #[test]
        fn one_pass_scan_equals_row_end_then_split(
            bytes in prop::collection::vec(
                prop::sample::select(b"ab,\"\r\n".to_vec()), 0..40)
        ) {
            let mut fields = RowFields::default();
            let got = scan_row(&bytes, &mut fields);
            let want = find_row_end(&bytes);
            prop_assert_eq!(&got, &want);
            if let RowEnd::Complete { content_len, .. } = want {
                prop_assert!(fields.valid);
                let row = strip_cr(&bytes[..content_len]);
                same_fields::<1>(&fields, row)?;
                same_fields::<2>(&fields, row)?;
                same_fields::<3>(&fields, row)?;
                same_fields::<7>(&fields, row)?;
            } else {
                prop_assert!(!fields.valid);
            }
        }
    }

    #[test]
    fn more_fields_than_recorded_are_counted() {
        let row = [b"a,".repeat(20), b"a\n".to_vec()].concat();
        let mut fields = RowFields::default();
        assert!(matches!(
            scan_row(&row, &mut fields),
            RowEnd::Complete { .. }
        ));
        assert!(matches!(
            fields.take::<3>(),
            Err(CsvErrorReason::WrongColumnCount {
                expected: 3,
                got: 21
            })
        ));
    }
}
