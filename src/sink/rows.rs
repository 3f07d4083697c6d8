//! The two ways rows leave a worker's dataflow: a [`RowSink`] receives
//! them to write (the output files, or a collecting sink in tests and the
//! in-memory runs), a [`RowObserver`] sees the window rows as they are
//! emitted (a harness, the top-keys metric).

use weir_dataflows::{LateRow, WindowRow};

use super::OutputRow;
use crate::checkpoint::client::DurableFile;
use crate::checkpoint::format::OutputLength;

/// Receives the rows a worker produces.
pub trait RowSink: 'static {
    /// Final window rows (drain them).
    fn window_rows(&mut self, rows: &mut Vec<WindowRow>);
    /// Result rows of a query with its own columns, as CSV lines without
    /// line ends (drain them).
    fn result_lines(&mut self, lines: &mut Vec<String>);
    /// Late events (drain them).
    fn late_rows(&mut self, rows: &mut Vec<LateRow>);
    /// Hands everything written so far to the OS and returns the files'
    /// lengths, for a checkpoint, with the files that must be made durable
    /// before the checkpoint may be committed.
    fn commit_point(&mut self) -> std::io::Result<(Vec<OutputLength>, Vec<DurableFile>)> {
        Ok((Vec::new(), Vec::new()))
    }
    /// The files' lengths as written so far (not necessarily durable yet),
    /// in the order [`RowSink::commit_point`] gives them.
    fn lengths(&self) -> Vec<OutputLength> {
        Vec::new()
    }
    /// Sees a batch of rows when the dataflow emits it (before any holding).
    fn observe(&mut self, _rows: &[OutputRow]) {}
    /// Records a failure for the driver to report.
    fn fail(&mut self, error: std::io::Error) {
        panic!("output failed: {error}");
    }
}

/// Sees every window row when the dataflow emits it (before an
/// exactly-once output holds it for the next checkpoint).
pub trait RowObserver: Send + Sync + std::fmt::Debug {
    /// The window rows of one emitted batch: one call per batch, so that an
    /// observer takes its locks and reads its clock once per batch, not once
    /// per row, on the workers' path.
    fn window_rows(&self, rows: &mut dyn Iterator<Item = &WindowRow>);
}
