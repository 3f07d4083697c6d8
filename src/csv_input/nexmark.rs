//! Rows of the Nexmark tables (`person`, `auction`, `bid`; headers in
//! [`NexmarkTable::header`]). Every column is checked (numbers are `u64`,
//! texts UTF-8); the event is timed by `date_time` and its key holds the
//! table's stored columns joined by `,` ([`NexmarkTable::stored_columns`]):
//! `id,name` for persons, `seller` for auctions, `auction,bidder,price` for
//! bids, whose value is the price (0 otherwise).

use weir_dataflows::MAX_EVENT_TS_MS;

use super::{parse_u64, shorten, CsvError, CsvErrorReason, CsvReader, Field, NexmarkTable};
use crate::event::EventRef;

/// What a column holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Column {
    Number(&'static str),
    Text(&'static str),
}

use Column::{Number, Text};

const PERSON: [Column; 8] = [
    Number("id"),
    Text("name"),
    Text("email_address"),
    Text("credit_card"),
    Text("city"),
    Text("state"),
    Number("date_time"),
    Text("extra"),
];
const AUCTION: [Column; 10] = [
    Number("id"),
    Text("item_name"),
    Text("description"),
    Number("initial_bid"),
    Number("reserve"),
    Number("date_time"),
    Number("expires"),
    Number("seller"),
    Number("category"),
    Text("extra"),
];
const BID: [Column; 7] = [
    Number("auction"),
    Number("bidder"),
    Number("price"),
    Text("channel"),
    Text("url"),
    Number("date_time"),
    Text("extra"),
];

impl<R: std::io::Read> CsvReader<R> {
    /// Checks the row `buf[s..e]` (line `line`) of `table` and builds its event.
    pub(super) fn nexmark_record(
        &mut self,
        table: NexmarkTable,
        (s, e): (usize, usize),
        line: u64,
    ) -> Result<EventRef<'_>, CsvError> {
        let row = &self.buf[s..e];
        // Fields in a fixed array: no allocation per row.
        let mut all_fields = [Field::default(); 10];
        let split = match table {
            NexmarkTable::Person => self.row_fields::<8>((s, e)).map(|f| {
                all_fields[..8].copy_from_slice(&f);
                &PERSON[..]
            }),
            NexmarkTable::Auction => self.row_fields::<10>((s, e)).map(|f| {
                all_fields.copy_from_slice(&f);
                &AUCTION[..]
            }),
            NexmarkTable::Bid => self.row_fields::<7>((s, e)).map(|f| {
                all_fields[..7].copy_from_slice(&f);
                &BID[..]
            }),
        };
        let columns = split.map_err(|reason| self.error(line, reason))?;
        let fields = &all_fields[..columns.len()];
        let mut numbers = [0u64; 10];
        // One check of the whole row instead of one per text column (the
        // validation of short texts was ~13% of ingesting bids); a row that
        // is not all ASCII has its texts checked one by one.
        let ascii = row.is_ascii();
        for (i, (field, column)) in fields.iter().zip(columns).enumerate() {
            let bytes = &row[field.start..field.end];
            match *column {
                Number(name) => {
                    let Some(n) = parse_u64(bytes).filter(|_| !field.escaped) else {
                        return Err(self.error(
                            line,
                            CsvErrorReason::BadNumber {
                                column: name,
                                text: shorten(bytes),
                                expected: "an unsigned 64-bit integer",
                            },
                        ));
                    };
                    numbers[i] = n;
                }
                Text(name) => {
                    if !ascii && std::str::from_utf8(bytes).is_err() {
                        return Err(self.error(line, CsvErrorReason::BadUtf8 { column: name }));
                    }
                }
            }
        }
        let date_time = match table {
            NexmarkTable::Person => numbers[6],
            NexmarkTable::Auction | NexmarkTable::Bid => numbers[5],
        };
        if date_time > MAX_EVENT_TS_MS {
            return Err(self.error(
                line,
                CsvErrorReason::TsTooLarge {
                    ts: date_time,
                    max: MAX_EVENT_TS_MS,
                },
            ));
        }
        let mut key = std::mem::take(&mut self.scratch);
        key.clear();
        let value = match table {
            NexmarkTable::Person => {
                key.push_str(itoa::Buffer::new().format(numbers[0]));
                key.push(',');
                let name = &row[fields[1].start..fields[1].end];
                push_unescaped(
                    &mut key,
                    std::str::from_utf8(name).expect("checked above"),
                    fields[1],
                );
                0
            }
            NexmarkTable::Auction => {
                key.push_str(itoa::Buffer::new().format(numbers[7]));
                0
            }
            NexmarkTable::Bid => {
                let Ok(price) = i64::try_from(numbers[2]) else {
                    self.scratch = key;
                    return Err(self.error(
                        line,
                        CsvErrorReason::BadNumber {
                            column: "price",
                            text: numbers[2].to_string(),
                            expected: "at most 2^63 - 1",
                        },
                    ));
                };
                // itoa, not `write!`: formatting was ~6% of a q5 ingest.
                let mut digits = itoa::Buffer::new();
                key.push_str(digits.format(numbers[0]));
                key.push(',');
                key.push_str(digits.format(numbers[1]));
                key.push(',');
                key.push_str(digits.format(price));
                price
            }
        };
        self.scratch = key;
        Ok(EventRef {
            ts: date_time,
            key: &self.scratch,
            value,
            key_hash: None,
        })
    }
}

/// Appends a field's text, undoing `""` escapes.
fn push_unescaped(out: &mut String, text: &str, field: Field) {
    if field.escaped {
        out.push_str(&text.replace("\"\"", "\""));
    } else {
        out.push_str(text);
    }
}
