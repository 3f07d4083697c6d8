//! The dead-letter file of a stream source: one CSV row per malformed
//! message, `source,seq,reason,payload` (the payload as text, invalid UTF-8
//! replaced). Its committed length is recorded in the partition's
//! `POSITION`; rows after it (written before a crash, not committed) are cut
//! when the source restarts, and written again as the messages are read
//! again, so each malformed message is in the file exactly once.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::csv_input::write_csv_field;
use crate::storage::durable::{create_dir_all_durably, sync_dir, sync_file, truncate_file_durably};
use crate::storage::IoError;

/// The header row of a source's dead-letter file.
pub const SOURCE_DEAD_LETTER_HEADER: &str = "source,seq,reason,payload";

/// The directory of the data dir that holds the sources' dead-letter files
/// unless `--dead-letter` puts them elsewhere.
pub const DEAD_LETTER_DIR_NAME: &str = "dead-letter";

/// The default dead-letter file of a NATS source feeding `topic`.
pub fn default_file_name(topic: &str) -> String {
    format!("{topic}-source.csv")
}

/// The default dead-letter file of the Kafka partition feeding log
/// partition `partition` of `topic`: the NATS name with `-<partition>`
/// before the extension.
pub fn default_partition_file_name(topic: &str, partition: u32) -> String {
    format!("{topic}-source-{partition}.csv")
}

/// An open dead-letter file (see the module doc).
pub struct DeadLetters {
    path: PathBuf,
    out: BufWriter<File>,
    len_bytes: u64,
    row: Vec<u8>,
}

impl DeadLetters {
    /// Opens `path` at its committed length `committed_len_bytes` (0: the
    /// file was never committed), creating it with its header if needed.
    pub fn open(path: &Path, committed_len_bytes: u64) -> Result<Self, IoError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_dir_all_durably(dir)?;
        }
        let header = format!("{SOURCE_DEAD_LETTER_HEADER}\n");
        let existed = path.exists();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(IoError::at(path))?;
        let mut len_bytes = file.metadata().map_err(IoError::at(path))?.len();
        if len_bytes < committed_len_bytes {
            tracing::warn!(
                path = %path.display(),
                len_bytes,
                committed_len_bytes,
                "the dead-letter file is shorter than its POSITION commits (cut or replaced \
                 under the source?): its rows go on after what it holds"
            );
        }
        if len_bytes > committed_len_bytes {
            truncate_file_durably(path, committed_len_bytes)?;
            len_bytes = committed_len_bytes;
        }
        let mut dead = Self {
            path: path.to_owned(),
            out: BufWriter::new(file),
            len_bytes,
            row: Vec::new(),
        };
        if len_bytes == 0 {
            dead.write_bytes(header.as_bytes())?;
            dead.sync()?;
            if !existed {
                sync_dir(
                    path.parent()
                        .filter(|d| !d.as_os_str().is_empty())
                        .unwrap_or(Path::new(".")),
                )?;
            }
        }
        Ok(dead)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its length, the rows written so far included.
    pub fn len_bytes(&self) -> u64 {
        self.len_bytes
    }

    /// Writes the row of the message `seq` of `source`.
    pub fn write(
        &mut self,
        source: &str,
        seq: u64,
        reason: &str,
        payload: &[u8],
    ) -> Result<(), IoError> {
        let mut row = std::mem::take(&mut self.row);
        row.clear();
        write_csv_field(&mut row, source).expect("writing to a Vec");
        row.push(b',');
        row.extend_from_slice(seq.to_string().as_bytes());
        row.push(b',');
        write_csv_field(&mut row, reason).expect("writing to a Vec");
        row.push(b',');
        write_csv_field(&mut row, &String::from_utf8_lossy(payload)).expect("writing to a Vec");
        row.push(b'\n');
        let result = self.write_bytes(&row);
        self.row = row;
        result
    }

    fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), IoError> {
        self.out.write_all(bytes).map_err(IoError::at(&self.path))?;
        self.len_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Makes every row written durable.
    pub fn sync(&mut self) -> Result<(), IoError> {
        self.out.flush().map_err(IoError::at(&self.path))?;
        sync_file(&self.path)
    }
}
