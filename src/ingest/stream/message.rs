//! Message payloads to log records: one message is one row, as a CSV line
//! of the topic's format (`ts,key,value` or a Nexmark table's columns) or
//! as a JSON object with those columns as members (numbers as JSON
//! numbers, texts as strings; other members are ignored). A JSON object is
//! turned into the CSV row and parsed by the same [`RowParser`], so both
//! formats get exactly a file's checks.

use serde_json::Value;

use crate::csv_input::{write_csv_field, RowParser, RowSchema};
use crate::event::encode_event;

/// How message payloads are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageFormat {
    /// One CSV row, without a header.
    Csv,
    /// One JSON object.
    Json,
}

/// Decodes payloads into encoded events (see the module doc).
pub struct MessageDecoder {
    format: MessageFormat,
    columns: Vec<&'static str>,
    parser: RowParser,
    row: Vec<u8>,
    record: Vec<u8>,
}

impl MessageDecoder {
    /// A decoder of `format` payloads of rows of `schema`.
    pub fn new(format: MessageFormat, schema: RowSchema) -> Self {
        Self {
            format,
            columns: schema.header().split(',').collect(),
            parser: RowParser::new(schema),
            row: Vec::new(),
            record: Vec::new(),
        }
    }

    /// The log record of `payload`, or why it is malformed.
    pub fn decode(&mut self, payload: &[u8]) -> Result<&[u8], String> {
        let row: &[u8] = match self.format {
            MessageFormat::Csv => payload,
            MessageFormat::Json => {
                self.json_to_row(payload)?;
                &self.row
            }
        };
        let event = self.parser.parse(row).map_err(|e| e.to_string())?;
        self.record.clear();
        encode_event(event.ts, event.key, event.value, &mut self.record);
        Ok(&self.record)
    }

    fn json_to_row(&mut self, payload: &[u8]) -> Result<(), String> {
        let value: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(object) = value else {
            return Err("not a JSON object".into());
        };
        self.row.clear();
        for (i, column) in self.columns.iter().enumerate() {
            if i > 0 {
                self.row.push(b',');
            }
            match object.get(*column) {
                None => return Err(format!("no member `{column}`")),
                Some(Value::Number(n)) => self.row.extend_from_slice(n.to_string().as_bytes()),
                Some(Value::String(s)) => {
                    write_csv_field(&mut self.row, s).expect("writing to a Vec");
                }
                Some(_) => return Err(format!("member `{column}` is not a number or a string")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_event;

    fn decoded(d: &mut MessageDecoder, payload: &str) -> Result<(u64, String, i64), String> {
        let record = d.decode(payload.as_bytes())?;
        let e = decode_event(record).unwrap();
        Ok((e.ts, e.key.to_owned(), e.value))
    }

    #[test]
    fn csv_and_json_give_the_same_records() {
        let mut csv = MessageDecoder::new(MessageFormat::Csv, RowSchema::Generic);
        let mut json = MessageDecoder::new(MessageFormat::Json, RowSchema::Generic);
        assert_eq!(
            decoded(&mut csv, "10,\"a,b\",-4").unwrap(),
            decoded(&mut json, r#"{"value":-4,"key":"a,b","ts":10,"extra":[1]}"#).unwrap()
        );
        for bad in [
            r#"{"ts":1,"key":"k"}"#,
            r#"{"ts":1.5,"key":"k","value":1}"#,
            r#"{"ts":-1,"key":"k","value":1}"#,
            r#"{"ts":1,"key":null,"value":1}"#,
            r#"[1,"k",1]"#,
            r#"{"ts":1,"key":"k","value":1"#,
            "",
        ] {
            assert!(decoded(&mut json, bad).is_err(), "{bad}");
        }
        // A key given as a number is the key of its digits.
        assert_eq!(
            decoded(&mut json, r#"{"ts":1,"key":7,"value":1}"#).unwrap(),
            (1, "7".into(), 1)
        );
    }
}
