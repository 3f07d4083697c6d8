//! Output files of the generic window query, and the operator that writes
//! them.
//!
//! Worker `g` (global index over all processes) writes `windows-<g>.csv` and
//! `late-<g>.csv` in the output directory. One writer per file keeps byte
//! lengths exact, which is what checkpoints record: with checkpoints on,
//! rows are written in time order once the frontier has passed their time
//! (not held until a cut), and the files' length before each time's rows is
//! remembered; when an announced cut `T` has been passed, the lengths of
//! exactly the rows below `T` become the worker's share of the cut (the
//! sidecar client syncs the files before it sends the share). A restore
//! truncates the files to those lengths and drops regenerated rows of times
//! below `T`, so each row is in the output exactly once.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::Stream;
use weir_dataflows::aggregates::{Aggregates, SketchColumns};
use weir_dataflows::{Agg, LateRow, WindowRow};

use crate::checkpoint::client::DurableFile;
use crate::checkpoint::cut::{Announcement, CutAssembler};
use crate::checkpoint::format::OutputLength;
use crate::csv_input::write_csv_field;
use crate::source::AheadWaker;

mod rows;
mod writer;

pub use rows::{RowObserver, RowSink};
use writer::BackgroundWriter;

/// Header of the window rows file.
pub const WINDOW_ROWS_HEADER: &str = "window_start,window_end,key,count,sum,min,max";
/// Header of the late events file.
pub const LATE_ROWS_HEADER: &str = "partition,offset,ts,key,value";

/// The file names worker `worker` (global index) writes.
pub fn output_file_names(worker: usize) -> (String, String) {
    (
        format!("windows-{worker}.csv"),
        format!("late-{worker}.csv"),
    )
}

/// Whether `name` is an output file name of some worker.
pub fn is_output_file_name(name: &str) -> bool {
    let stem = name.strip_suffix(".csv");
    let index = stem.and_then(|s| {
        s.strip_prefix("windows-")
            .or_else(|| s.strip_prefix("late-"))
    });
    index.is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
}

/// One CSV output file with its exact length.
#[derive(Debug)]
struct OutputFile {
    name: String,
    path: PathBuf,
    writer: BackgroundWriter,
    /// The same file, for the sidecar client thread to make durable.
    durable: DurableFile,
    length_bytes: u64,
}

impl OutputFile {
    /// Opens `dir/name`: truncated if `fresh`, else appended to (after a
    /// restore truncated it). Writes `header` into an empty file.
    fn open(dir: &Path, name: String, header: &str, fresh: bool) -> std::io::Result<Self> {
        let path = dir.join(&name);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(fresh)
            .append(!fresh)
            .open(&path)?;
        let length_bytes = file.metadata()?.len();
        let durable = DurableFile {
            path: path.clone(),
            file: std::sync::Arc::new(file.try_clone()?),
        };
        let writer = BackgroundWriter::new(file, &name)?;
        let mut out = OutputFile {
            name,
            path,
            writer,
            durable,
            length_bytes,
        };
        if out.length_bytes == 0 {
            let mut line = header.as_bytes().to_vec();
            line.push(b'\n');
            out.write(&line)?;
        }
        Ok(out)
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)?;
        self.length_bytes += bytes.len() as u64;
        Ok(())
    }

    /// Appends what `format` writes into the output buffer (no copy
    /// through a line buffer).
    fn write_with(&mut self, format: impl FnOnce(&mut Vec<u8>)) -> std::io::Result<()> {
        let written = self.writer.append_with(format)?;
        self.length_bytes += written as u64;
        Ok(())
    }

    /// Hands the buffered bytes to the OS; the length so far. Not durable
    /// yet: [`OutputFile::durable`] is synced before a checkpoint is sent.
    fn flush(&mut self) -> std::io::Result<OutputLength> {
        self.writer.flush()?;
        Ok(self.length())
    }

    /// The length written so far (buffered bytes included).
    fn length(&self) -> OutputLength {
        OutputLength {
            file_name: self.name.clone(),
            length_bytes: self.length_bytes,
        }
    }
}

/// Rows written to the output files, live, over the workers of a process.
#[derive(Debug, Default)]
pub struct OutputCounts {
    /// Window rows written.
    pub window_rows: AtomicU64,
    /// Late-event rows written.
    pub late_rows: AtomicU64,
}

/// A worker's two output files.
#[derive(Debug)]
pub struct WorkerOutputs {
    windows: OutputFile,
    late: OutputFile,
    window_rows: u64,
    late_rows: u64,
    window_prefix: WindowPrefix,
    error: Option<std::io::Error>,
    observer: Option<std::sync::Arc<dyn RowObserver>>,
    counts: Option<std::sync::Arc<OutputCounts>>,
}

impl WorkerOutputs {
    /// Opens worker `worker`'s files in `dir` (see [`OutputFile::open`] for `fresh`).
    pub fn open(dir: &Path, worker: usize, fresh: bool) -> std::io::Result<Self> {
        Self::open_with_header(dir, worker, fresh, WINDOW_ROWS_HEADER)
    }

    /// As [`WorkerOutputs::open`], with `header` for the result rows file
    /// (queries whose rows are not generic window rows).
    pub fn open_with_header(
        dir: &Path,
        worker: usize,
        fresh: bool,
        header: &str,
    ) -> std::io::Result<Self> {
        let (windows, late) = output_file_names(worker);
        Ok(WorkerOutputs {
            windows: OutputFile::open(dir, windows, header, fresh)?,
            late: OutputFile::open(dir, late, LATE_ROWS_HEADER, fresh)?,
            window_rows: 0,
            late_rows: 0,
            window_prefix: WindowPrefix::default(),
            error: None,
            observer: None,
            counts: None,
        })
    }

    /// Reports every emitted window row to `observer` as well.
    #[must_use]
    pub fn with_observer(mut self, observer: Option<std::sync::Arc<dyn RowObserver>>) -> Self {
        self.observer = observer;
        self
    }

    /// Adds the rows this worker writes to `counts` as well.
    #[must_use]
    pub fn with_counts(mut self, counts: Option<std::sync::Arc<OutputCounts>>) -> Self {
        self.counts = counts;
        self
    }

    /// Window rows written by this run.
    pub fn window_rows_written(&self) -> u64 {
        self.window_rows
    }

    /// Late rows written by this run.
    pub fn late_rows_written(&self) -> u64 {
        self.late_rows
    }

    /// The window rows file.
    pub fn windows_path(&self) -> &Path {
        &self.windows.path
    }

    /// Flushes both files to the operating system; returns the first error
    /// any write hit.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        self.windows.writer.flush()?;
        self.late.writer.flush()
    }

    fn record(&mut self, result: std::io::Result<()>) {
        if let Err(e) = result {
            self.error.get_or_insert(e);
        }
    }
}

impl RowSink for WorkerOutputs {
    fn window_rows(&mut self, rows: &mut Vec<WindowRow>) {
        if let Some(counts) = &self.counts {
            counts
                .window_rows
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
        }
        let prefix = &mut self.window_prefix;
        for row in rows.drain(..) {
            if let Err(e) = self.windows.write_with(|out| prefix.format_row(&row, out)) {
                self.error.get_or_insert(e);
            }
            self.window_rows += 1;
        }
    }

    fn result_lines(&mut self, lines: &mut Vec<String>) {
        for mut line in lines.drain(..) {
            line.push('\n');
            let result = self.windows.write(line.as_bytes());
            self.record(result);
            self.window_rows += 1;
        }
    }

    fn late_rows(&mut self, rows: &mut Vec<LateRow>) {
        if let Some(counts) = &self.counts {
            counts
                .late_rows
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
        }
        for row in rows.drain(..) {
            let result = self.late.write_with(|out| format_late_row(&row, out));
            self.record(result);
            self.late_rows += 1;
        }
    }

    fn commit_point(&mut self) -> std::io::Result<(Vec<OutputLength>, Vec<DurableFile>)> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        Ok((
            vec![self.windows.flush()?, self.late.flush()?],
            vec![self.windows.durable.clone(), self.late.durable.clone()],
        ))
    }

    fn lengths(&self) -> Vec<OutputLength> {
        vec![self.windows.length(), self.late.length()]
    }

    fn fail(&mut self, error: std::io::Error) {
        self.error.get_or_insert(error);
    }

    fn observe(&mut self, rows: &[OutputRow]) {
        if let Some(observer) = &self.observer {
            observer.window_rows(&mut rows.iter().filter_map(|row| match row {
                OutputRow::Window(w) => Some(w),
                _ => None,
            }));
        }
    }
}

/// The `window_start,window_end,` of the last window a row was written of:
/// a window's rows follow one another, and formatting its two 13-digit
/// bounds again for each of a million keys was a tenth of a sliding run's
/// formatting (perf).
#[derive(Debug, Default)]
struct WindowPrefix {
    window: Option<(u64, u64)>,
    text: Vec<u8>,
}

impl WindowPrefix {
    /// Appends `row` as [`format_window_row`] does.
    fn format_row(&mut self, row: &WindowRow, out: &mut Vec<u8>) {
        let window = (row.window_start, row.window_end);
        if self.window != Some(window) {
            self.text.clear();
            format_window_bounds(window, &mut self.text);
            self.window = Some(window);
        }
        out.extend_from_slice(&self.text);
        format_key_and_columns(
            &row.key,
            &row.agg,
            SketchColumns::default(),
            Aggregates::default(),
            out,
        );
        out.push(b'\n');
    }
}

/// Formats one window row as a CSV line.
pub fn format_window_row(row: &WindowRow, out: &mut Vec<u8>) {
    let (start, end) = (row.window_start, row.window_end);
    format_window_fields(
        (start, end, &row.key),
        &row.agg,
        SketchColumns::default(),
        Aggregates::default(),
        out,
    );
    out.push(b'\n');
}

/// Appends `window_start,window_end,key` and the `columns` of a row (no line
/// end); `sketches` holds its sketch columns when they are selected.
pub fn format_window_fields(
    (window_start, window_end, key): (u64, u64, &str),
    agg: &Agg,
    sketches: SketchColumns<'_>,
    columns: Aggregates,
    out: &mut Vec<u8>,
) {
    format_window_bounds((window_start, window_end), out);
    format_key_and_columns(key, agg, sketches, columns, out);
}

/// Appends `window_start,window_end,`.
fn format_window_bounds((window_start, window_end): (u64, u64), out: &mut Vec<u8>) {
    // itoa rather than `write!`: a sliding window writes a row per key and
    // slide, and core::fmt's machinery was a sixth of such a run (perf).
    let mut number = itoa::Buffer::new();
    out.extend_from_slice(number.format(window_start).as_bytes());
    out.push(b',');
    out.extend_from_slice(number.format(window_end).as_bytes());
    out.push(b',');
}

/// Appends `key` as a CSV field and the `columns` of a row.
fn format_key_and_columns(
    key: &str,
    agg: &Agg,
    sketches: SketchColumns<'_>,
    columns: Aggregates,
    out: &mut Vec<u8>,
) {
    write_csv_field(out, key).expect("writing to a Vec");
    columns.format_columns(agg, sketches, out);
}

/// Formats one late event as a CSV line.
pub fn format_late_row(row: &LateRow, out: &mut Vec<u8>) {
    write!(out, "{},{},{},", row.partition, row.offset, row.ts).expect("writing to a Vec");
    write_csv_field(out, &row.key).expect("writing to a Vec");
    writeln!(out, ",{}", row.value).expect("writing to a Vec");
}

/// A row of either output.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum OutputRow {
    /// A window result.
    Window(WindowRow),
    /// A late event.
    Late(LateRow),
    /// A result row of a query with its own columns (a CSV line without
    /// its line end), written to the result rows file.
    Result(String),
}

/// The announcements a checkpointed output operator follows, and where its
/// shares go.
pub type CutInputs<'a, 'scope> = (
    &'a Stream<'scope, u64, Vec<Announcement>>,
    std::rc::Rc<std::cell::RefCell<CutAssembler>>,
);

/// Writes `rows` into `sink`. With `cuts`, rows are held until the input
/// frontier has passed their time, then written in time order (rows of
/// times below `restored_cut` were committed before and are dropped); the
/// files' lengths before each time's rows are remembered, so that when an
/// announced cut `T` has been passed the sink can hand `assembler` the
/// lengths of exactly the rows below `T` (with the files, which the sidecar
/// client makes durable before it sends the share). Rows at and above `T`
/// may already be in the files: a restore truncates them away and computes
/// them again.
///
/// Either way the operator reports every input frontier it sees to `waker`,
/// which wakes the sources paused for being too far ahead of it.
pub fn output_operator<'scope, S: RowSink>(
    rows: &Stream<'scope, u64, Vec<OutputRow>>,
    cuts: Option<CutInputs<'_, 'scope>>,
    restored_cut: u64,
    (sink, waker): (std::rc::Rc<std::cell::RefCell<S>>, AheadWaker),
) {
    let Some((announcements, assembler)) = cuts else {
        let mut split = SplitRows::default();
        rows.clone()
            .sink(Pipeline, "OutputSink", move |(input, frontier)| {
                waker.frontier_seen(frontier.frontier().first().copied().unwrap_or(u64::MAX));
                let mut sink = sink.borrow_mut();
                input.for_each_stamp(|_stamp, batches| {
                    for batch in batches {
                        sink.observe(batch);
                        split.write(&mut *sink, batch.drain(..));
                    }
                });
            });
        return;
    };
    rows.clone()
        .binary_frontier::<_, CapacityContainerBuilder<Vec<()>>, _, _, _, _>(
            announcements.clone(),
            Pipeline,
            Pipeline,
            "CheckpointedOutputSink",
            move |_cap, _info| {
                // Rows of times the frontier has not passed yet, as the
                // batches they came in (moved, never copied or regrown: a
                // pane of 2.5M keys' rows was regrown by doubling, then
                // copied twice more on its way out).
                let mut held: BTreeMap<u64, Vec<Vec<OutputRow>>> = BTreeMap::new();
                let mut split = SplitRows::default();
                // (time, the files' lengths before that time's rows), for
                // times written since the last cut, in order.
                let mut marks: std::collections::VecDeque<(u64, Vec<OutputLength>)> =
                    std::collections::VecDeque::new();
                let mut queue: std::collections::VecDeque<Announcement> =
                    std::collections::VecDeque::new();
                move |(input, frontier), (cut_input, _), _output| {
                    input.for_each_stamp(|stamp, batches| {
                        // Rows are given in sessions of one capability: the stamp is their time.
                        debug_assert_eq!(
                            stamp.stamp().iter().count(),
                            1,
                            "rows under several times"
                        );
                        let time = *stamp.least().expect("non-empty stamp");
                        for batch in batches {
                            sink.borrow_mut().observe(batch);
                            if time >= restored_cut && !batch.is_empty() {
                                held.entry(time).or_default().push(std::mem::take(batch));
                            } else {
                                batch.clear();
                            }
                        }
                    });
                    let front = frontier.frontier().first().copied();
                    waker.frontier_seen(front.unwrap_or(u64::MAX));
                    // Whole times, in order: a file's prefix up to a mark is
                    // exactly the rows below that time.
                    while let Some(entry) = held.first_entry() {
                        if front.is_some_and(|f| *entry.key() >= f) {
                            break;
                        }
                        let (time, batches) = entry.remove_entry();
                        let mut sink = sink.borrow_mut();
                        marks.push_back((time, sink.lengths()));
                        for batch in batches {
                            split.write(&mut *sink, batch);
                        }
                    }
                    cut_input.for_each_stamp(|_, batches| {
                        for batch in batches {
                            queue.extend(batch.drain(..));
                        }
                    });
                    while let Some(&(id, cut)) = queue.front() {
                        if front.is_some_and(|f| f < cut) {
                            break;
                        }
                        queue.pop_front();
                        while marks.front().is_some_and(|(t, _)| *t < cut) {
                            marks.pop_front();
                        }
                        let mut sink = sink.borrow_mut();
                        match sink.commit_point() {
                            Ok((now, files)) => {
                                // Every row below the cut is written (the
                                // frontier passed it); the first mark at or
                                // above it, if any, is where they end.
                                let lengths = marks.front().map_or(now, |(_, l)| l.clone());
                                assembler.borrow_mut().sink_share(id, cut, lengths, files);
                            }
                            Err(e) => {
                                // No share: the checkpoint never completes; the driver reports it.
                                tracing::error!(error = %e, "writing output failed");
                                sink.fail(e);
                                queue.clear();
                                return;
                            }
                        }
                    }
                }
            },
        );
}

/// Rows of a batch by kind, on their way into a [`RowSink`] (its buffers
/// reused from batch to batch).
#[derive(Default)]
struct SplitRows {
    windows: Vec<WindowRow>,
    late: Vec<LateRow>,
    lines: Vec<String>,
}

impl SplitRows {
    fn write<S: RowSink>(&mut self, sink: &mut S, rows: impl IntoIterator<Item = OutputRow>) {
        for row in rows {
            match row {
                OutputRow::Window(w) => self.windows.push(w),
                OutputRow::Late(l) => self.late.push(l),
                OutputRow::Result(line) => self.lines.push(line),
            }
        }
        sink.window_rows(&mut self.windows);
        sink.result_lines(&mut self.lines);
        sink.late_rows(&mut self.late);
        // A sink is asked to drain them; one that did not must not see
        // them again.
        self.windows.clear();
        self.lines.clear();
        self.late.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_formatted_with_a_cached_window_prefix_equal_the_plain_format() {
        let row = |start: u64, key: &str, sum: i128| WindowRow {
            window_start: start,
            window_end: start + 3_600_000,
            key: key.into(),
            agg: Agg {
                count: 3,
                sum: sum.into(),
                min: i64::MIN,
                max: i64::MAX,
            },
        };
        let rows = [
            row(1_796_000_000_000, "a", 5),
            row(1_796_000_000_000, "b,\"quoted\"", -7),
            row(1_796_000_000_000, "c", i128::from(i64::MAX) * 3),
            row(1_796_000_300_000, "a", i128::from(i64::MIN) - 1),
            row(0, "", 0),
        ];
        let (mut plain, mut cached) = (Vec::new(), Vec::new());
        let mut prefix = WindowPrefix::default();
        for r in &rows {
            format_window_row(r, &mut plain);
            prefix.format_row(r, &mut cached);
        }
        assert_eq!(
            String::from_utf8(cached).unwrap(),
            String::from_utf8(plain).unwrap()
        );
    }
}
