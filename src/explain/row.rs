//! Finding an output row of the generic window query in the output
//! directory (`windows-<worker>.csv`), by its text or by its window start
//! and key, with the file, line and byte offset where it is.

use std::io::BufRead;
use std::path::Path;

use super::{ExplainError, RowSelector, UsageError};
use crate::sink::is_output_file_name;
use crate::storage::IoError;

/// Window starts of the key named in a "no such row" error, at most.
const MAX_STARTS_NAMED: usize = 5;

/// A window row as found in the output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundRow {
    /// The line, without its newline.
    pub line: String,
    /// The output file's name.
    pub file_name: String,
    /// Its line number in that file, from 1 (the header is line 1).
    pub line_number: u64,
    /// Where the line starts in the file.
    pub byte_offset: u64,
    /// Its window.
    pub window: (u64, u64),
    /// Its key.
    pub key: String,
    /// The column names of the file's header after `window_start,window_end,key`,
    /// with the row's values.
    pub columns: Vec<(String, String)>,
}

impl FoundRow {
    /// The row's value of column `name`, if it has one.
    pub fn column(&self, name: &str) -> Option<&str> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Where the line ends (the offset a checkpoint must cover).
    pub fn end_offset(&self) -> u64 {
        self.byte_offset + self.line.len() as u64 + 1
    }
}

/// The window-row files of `out_dir`, in worker order.
fn window_files(out_dir: &Path) -> Result<Vec<(u64, String)>, ExplainError> {
    let entries = std::fs::read_dir(out_dir).map_err(IoError::at(out_dir))?;
    let mut files = Vec::new();
    for entry in entries {
        let name = entry
            .map_err(IoError::at(out_dir))?
            .file_name()
            .to_string_lossy()
            .into_owned();
        if is_output_file_name(&name) {
            if let Some(worker) = name
                .strip_prefix("windows-")
                .and_then(|n| n.strip_suffix(".csv"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                files.push((worker, name));
            }
        }
    }
    files.sort_unstable();
    Ok(files)
}

/// Finds the row `selector` names in `out_dir`.
pub fn find_row(out_dir: &Path, selector: &RowSelector) -> Result<FoundRow, ExplainError> {
    let files = window_files(out_dir)?;
    if files.is_empty() {
        return Err(UsageError::NoOutput {
            out_dir: out_dir.to_owned(),
        }
        .into());
    }
    // For the error: window starts of the key seen anywhere.
    let mut starts_of_key: Vec<u64> = Vec::new();
    let mut rows_of_key = 0u64;
    for (_, name) in &files {
        let path = out_dir.join(name);
        let file = std::fs::File::open(&path).map_err(IoError::at(&path))?;
        let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
        let mut header: Vec<String> = Vec::new();
        let (mut line, mut byte_offset, mut line_number) = (String::new(), 0u64, 0u64);
        loop {
            line.clear();
            let read = reader.read_line(&mut line).map_err(IoError::at(&path))?;
            if read == 0 {
                break;
            }
            line_number += 1;
            let at = byte_offset;
            byte_offset += read as u64;
            let Some(text) = line.strip_suffix('\n') else {
                // A row being written (a run in progress): not a row yet.
                break;
            };
            if line_number == 1 {
                header = split_csv_fields(text).unwrap_or_default();
                continue;
            }
            let wanted = match selector {
                RowSelector::Line(wanted) => text == wanted.trim_end_matches(['\r', '\n']),
                RowSelector::WindowKey { window_start, .. } => {
                    text.starts_with(&format!("{window_start},"))
                }
            };
            let key_only = match selector {
                RowSelector::WindowKey { key, .. } => Some(key),
                RowSelector::Line(_) => None,
            };
            if !wanted && key_only.is_none() {
                continue;
            }
            let fields = split_csv_fields(text).map_err(|reason| ExplainError::BadOutput {
                path: path.clone(),
                line: line_number,
                reason,
            })?;
            let bad = |reason: &str| ExplainError::BadOutput {
                path: path.clone(),
                line: line_number,
                reason: reason.to_owned(),
            };
            let [start, end, key, ..] = fields.as_slice() else {
                return Err(bad("fewer than 3 fields"));
            };
            if key_only.is_some_and(|k| k != key) {
                continue;
            }
            let start: u64 = start
                .parse()
                .map_err(|_| bad("window_start is not a number"))?;
            let end: u64 = end.parse().map_err(|_| bad("window_end is not a number"))?;
            if !wanted {
                rows_of_key += 1;
                if starts_of_key.len() < MAX_STARTS_NAMED {
                    starts_of_key.push(start);
                }
                continue;
            }
            let names = header.iter().skip(3).cloned();
            return Ok(FoundRow {
                line: text.to_owned(),
                file_name: name.clone(),
                line_number,
                byte_offset: at,
                window: (start, end),
                key: key.clone(),
                columns: names.zip(fields.iter().skip(3).cloned()).collect(),
            });
        }
    }
    Err(match selector {
        RowSelector::Line(line) => UsageError::RowNotFound {
            row: line.clone(),
            out_dir: out_dir.to_owned(),
        },
        RowSelector::WindowKey { window_start, key } if rows_of_key == 0 => {
            UsageError::KeyNotFound {
                key: key.clone(),
                window_start: *window_start,
                out_dir: out_dir.to_owned(),
            }
        }
        RowSelector::WindowKey { window_start, key } => UsageError::WindowNotFound {
            key: key.clone(),
            window_start: *window_start,
            rows_of_key,
            some_starts: starts_of_key,
        },
    }
    .into())
}

/// The fields of one CSV line (`"` quotes, `""` inside them), or why it is
/// not one.
pub fn split_csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted field is not closed".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => {}
                Some(c) => return Err(format!("{c:?} after a closing quote")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
        }
        fields.push(field);
    }
}

#[cfg(test)]
mod tests {
    use super::split_csv_fields;

    #[test]
    fn csv_fields_as_the_sink_writes_them() {
        let mut line = Vec::new();
        for (i, field) in ["10", "a,b", "say \"hi\"", "", "x"].iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            crate::csv_input::write_csv_field(&mut line, field).unwrap();
        }
        let line = String::from_utf8(line).unwrap();
        assert_eq!(
            split_csv_fields(&line).unwrap(),
            ["10", "a,b", "say \"hi\"", "", "x"]
        );
        for bad in ["\"open", "a\"b", "\"a\"b"] {
            assert!(split_csv_fields(bad).is_err(), "{bad}");
        }
    }
}
