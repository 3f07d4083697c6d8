//! CSV output files of the generic window query.
//!
//! Each process writes its own files into the output directory:
//! `windows.csv` and `late.csv` for a single process, `windows-<I>.csv` and
//! `late-<I>.csv` for process `I` of a cluster. The workers of a process
//! share the files; each worker formats rows into a private buffer and
//! appends it under a lock when it is large, so the lock is rare.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use weir_dataflows::{LateRow, WindowRow};

use crate::csv_input::write_csv_field;
use crate::job::RowSink;

/// Header of the window rows file.
pub const WINDOW_ROWS_HEADER: &str = "window_start,window_end,key,count,sum,min,max";
/// Header of the late events file.
pub const LATE_ROWS_HEADER: &str = "partition,offset,ts,key,value";

const FLUSH_THRESHOLD_BYTES: usize = 256 * 1024;

/// An output file shared by the workers of a process.
#[derive(Debug)]
pub struct SharedCsvFile {
    path: PathBuf,
    writer: Mutex<BufWriter<File>>,
    rows_written: AtomicU64,
}

impl SharedCsvFile {
    /// Creates (truncates) `path` and writes `header`.
    pub fn create(path: &Path, header: &str) -> std::io::Result<Arc<Self>> {
        let mut writer = BufWriter::with_capacity(1 << 20, File::create(path)?);
        writeln!(writer, "{header}")?;
        Ok(Arc::new(SharedCsvFile {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            rows_written: AtomicU64::new(0),
        }))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows written so far (appended to the file's buffer).
    pub fn rows_written(&self) -> u64 {
        self.rows_written.load(Ordering::Relaxed)
    }

    fn append(&self, bytes: &[u8], rows: u64) -> std::io::Result<()> {
        let mut writer = self.writer.lock().expect("output file lock poisoned");
        writer.write_all(bytes)?;
        self.rows_written.fetch_add(rows, Ordering::Relaxed);
        Ok(())
    }

    /// Flushes buffered bytes to the operating system.
    pub fn flush(&self) -> std::io::Result<()> {
        self.writer
            .lock()
            .expect("output file lock poisoned")
            .flush()
    }
}

/// The file names a process writes into the output directory.
pub fn output_file_names(processes: usize, process: usize) -> (String, String) {
    if processes == 1 {
        ("windows.csv".to_owned(), "late.csv".to_owned())
    } else {
        (
            format!("windows-{process}.csv"),
            format!("late-{process}.csv"),
        )
    }
}

/// One worker's view of the process's output files.
#[derive(Debug)]
pub struct CsvSink {
    windows: Arc<SharedCsvFile>,
    late: Arc<SharedCsvFile>,
    window_buffer: Vec<u8>,
    window_rows: u64,
    late_buffer: Vec<u8>,
    late_rows: u64,
    /// The first write error; later rows are dropped and the driver fails the run.
    error: Option<std::io::Error>,
}

impl CsvSink {
    /// A sink appending to the shared `windows` and `late` files.
    pub fn new(windows: Arc<SharedCsvFile>, late: Arc<SharedCsvFile>) -> Self {
        CsvSink {
            windows,
            late,
            window_buffer: Vec::with_capacity(FLUSH_THRESHOLD_BYTES),
            window_rows: 0,
            late_buffer: Vec::new(),
            late_rows: 0,
            error: None,
        }
    }

    fn spill(&mut self, force: bool) {
        if self.error.is_some() {
            return;
        }
        if force || self.window_buffer.len() >= FLUSH_THRESHOLD_BYTES {
            if let Err(e) = self.windows.append(&self.window_buffer, self.window_rows) {
                self.error = Some(e);
            }
            self.window_buffer.clear();
            self.window_rows = 0;
        }
        if force || self.late_buffer.len() >= FLUSH_THRESHOLD_BYTES {
            if let Err(e) = self.late.append(&self.late_buffer, self.late_rows) {
                self.error.get_or_insert(e);
            }
            self.late_buffer.clear();
            self.late_rows = 0;
        }
    }

    /// Appends everything buffered to the shared files and flushes them.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.spill(true);
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.windows.flush()?;
        self.late.flush()
    }
}

/// Formats one window row as a CSV line.
pub fn format_window_row(row: &WindowRow, out: &mut Vec<u8>) {
    let agg = &row.agg;
    write!(out, "{},{},", row.window_start, row.window_end).expect("writing to a Vec");
    write_csv_field(out, &row.key).expect("writing to a Vec");
    writeln!(out, ",{},{},{},{}", agg.count, agg.sum, agg.min, agg.max).expect("writing to a Vec");
}

/// Formats one late event as a CSV line.
pub fn format_late_row(row: &LateRow, out: &mut Vec<u8>) {
    write!(out, "{},{},{},", row.partition, row.offset, row.ts).expect("writing to a Vec");
    write_csv_field(out, &row.key).expect("writing to a Vec");
    writeln!(out, ",{}", row.value).expect("writing to a Vec");
}

impl RowSink for CsvSink {
    fn window_rows(&mut self, rows: &mut Vec<WindowRow>) {
        for row in rows.drain(..) {
            format_window_row(&row, &mut self.window_buffer);
            self.window_rows += 1;
        }
        self.spill(false);
    }

    fn late_rows(&mut self, rows: &mut Vec<LateRow>) {
        for row in rows.drain(..) {
            format_late_row(&row, &mut self.late_buffer);
            self.late_rows += 1;
        }
        self.spill(false);
    }
}
