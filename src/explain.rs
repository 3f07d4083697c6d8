//! Lineage of a committed output row of the generic window query
//! (`weir explain`): the checkpoint that committed it, the input partitions
//! and offsets of the events it aggregates, and the late events of its key
//! and window that were refused. Everything comes from what is on disk: the
//! data dir's `QUERY` (the windows and lateness), its commit stream (which
//! checkpoint covered the row's bytes) and its log (read again with the
//! source's lateness rule, which depends on the log alone), so the answer
//! holds across restarts. The row's count, sum, min and max are computed
//! again from the events found; a row they do not give is refused (an
//! output directory of another run or query).

mod row;
mod scan;

use std::path::{Path, PathBuf};

pub use row::{find_row, split_csv_fields, FoundRow};
pub use scan::{window_events, InputEvent, LateEvent, WindowEvents};

use crate::checkpoint::format::CommitRecord;
use crate::checkpoint::store::{read_commits, StoreError};
use crate::job::query_file::{read_query, QueryFileError, QUERY_FILE_NAME};
use crate::job::WindowQuery;
use crate::log::LogError;
use crate::storage::IoError;
use weir_dataflows::emit::Emit;

/// Which row to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowSelector {
    /// The row as printed in the output CSV.
    Line(String),
    /// The row of this window start and key.
    WindowKey {
        /// The window's start, ms.
        window_start: u64,
        /// The key.
        key: String,
    },
}

/// Which checkpoint committed the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Committed {
    /// This checkpoint's commit record is the first to cover the row.
    By {
        /// Its id.
        checkpoint_id: u64,
        /// Its cut, ms.
        cut_time: u64,
        /// The oldest record the commit stream keeps covers the row, and
        /// older ones were dropped by compaction: an earlier checkpoint may
        /// have committed it.
        or_earlier: bool,
    },
    /// No commit record covers it yet (written after the newest one; a
    /// restart would write it again, identically).
    NotYet {
        /// The newest checkpoint, if any: `(id, cut)`.
        newest: Option<(u64, u64)>,
    },
}

/// The answer of [`explain`].
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The query of the data dir.
    pub query: WindowQuery,
    /// The row and where it is.
    pub row: FoundRow,
    /// Which checkpoint committed it.
    pub committed: Committed,
    /// The events of its key and window, accepted and late.
    pub events: WindowEvents,
    /// The aggregate columns checked against the events.
    pub checked_columns: Vec<&'static str>,
}

/// A request that does not fit the data (a mistake of the caller).
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// The data dir has no `QUERY`.
    #[error("{}: no {QUERY_FILE_NAME} file: not the data directory of a `weir run` (or of one older than `weir explain`)", data_dir.display())]
    NoQuery {
        /// The data dir.
        data_dir: PathBuf,
    },
    /// The data dir is of a Nexmark query.
    #[error("the data directory is of Nexmark {query}; `weir explain` explains rows of the generic window query (--query window)")]
    NotWindowQuery {
        /// The query's name.
        query: &'static str,
    },
    /// Rows of `--emit changes` are not final.
    #[error("the run wrote --emit changes rows (a key's row when it changed); `weir explain` explains the final rows of --emit all")]
    EmitChanges,
    /// The out dir has no window rows.
    #[error("{}: no windows-<worker>.csv files: not the output directory of a window query run", out_dir.display())]
    NoOutput {
        /// The out dir.
        out_dir: PathBuf,
    },
    /// No output line is the row given.
    #[error("the row {row:?} is not in {}/windows-*.csv (give it as printed there, or use --window START --key KEY)", out_dir.display())]
    RowNotFound {
        /// The row given.
        row: String,
        /// The out dir.
        out_dir: PathBuf,
    },
    /// The key has no rows.
    #[error("no row of key {key:?} in {}: unknown key (no window starting at {window_start} either)", out_dir.display())]
    KeyNotFound {
        /// The key.
        key: String,
        /// The window start given.
        window_start: u64,
        /// The out dir.
        out_dir: PathBuf,
    },
    /// The key has rows, none of that window.
    #[error("key {key:?} has {rows_of_key} row(s), none of a window starting at {window_start}; some of its windows start at {some_starts:?}")]
    WindowNotFound {
        /// The key.
        key: String,
        /// The window start given.
        window_start: u64,
        /// The key's rows.
        rows_of_key: u64,
        /// Some of their window starts.
        some_starts: Vec<u64>,
    },
    /// The commit stream is of another query than `QUERY`.
    #[error("the checkpoints in {} are of another query (fingerprint {found:016x}) than {QUERY_FILE_NAME} says ({expected:016x}): the data directory was reused for another query", data_dir.display())]
    OtherQuery {
        /// The data dir.
        data_dir: PathBuf,
        /// The fingerprint of `QUERY`.
        expected: u64,
        /// The fingerprint of a commit record.
        found: u64,
    },
    /// The row's window is not one of the query's.
    #[error("the row's window [{start}, {end}) is not a window of {spec} ({QUERY_FILE_NAME}): the output directory is of another query")]
    NotAWindowOfTheQuery {
        /// The window start.
        start: u64,
        /// The window end.
        end: u64,
        /// The query's windows.
        spec: weir_dataflows::WindowSpec,
    },
    /// The row's aggregates do not follow from the events of the log.
    #[error("the row does not follow from this data directory's log: its {column} is {in_row}, the {events} events of key {key:?} in [{start}, {end}) give {from_log}; the output directory is of another run or query")]
    RowNotFromLog {
        /// The column.
        column: &'static str,
        /// The row's value.
        in_row: String,
        /// The value computed from the log.
        from_log: String,
        /// The accepted events found.
        events: usize,
        /// The key.
        key: String,
        /// The window start.
        start: u64,
        /// The window end.
        end: u64,
    },
}

/// Why a row could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// What was asked does not fit the data.
    #[error(transparent)]
    Usage(#[from] UsageError),
    /// The `QUERY` file.
    #[error(transparent)]
    QueryFile(QueryFileError),
    /// The commit stream.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log.
    #[error(transparent)]
    Log(#[from] LogError),
    /// An output file.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A line of an output file is not a window row.
    #[error("{}: line {line}: {reason}", path.display())]
    BadOutput {
        /// The file.
        path: PathBuf,
        /// The line, from 1.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// A log record does not decode.
    #[error("{}: the record at offset {offset} does not decode: {reason}", dir.display())]
    BadRecord {
        /// The partition.
        dir: PathBuf,
        /// The record's offset.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// The log has no `events` partitions.
    #[error("{}: no partitions of topic `events`: the log the row was computed from is not there", log_dir.display())]
    NoLog {
        /// The log dir.
        log_dir: PathBuf,
    },
    /// Records the row needs were deleted.
    #[error("{}: offsets from {needed} are needed but the partition starts at {first} (earlier segments were deleted, e.g. by --log-retention checkpointed)", dir.display())]
    LogDeleted {
        /// The partition.
        dir: PathBuf,
        /// The first offset needed.
        needed: u64,
        /// The first offset held.
        first: u64,
    },
}

/// Explains the row `selector` names in `out_dir`, computed from the log
/// in `data_dir`.
pub fn explain(
    data_dir: &Path,
    out_dir: &Path,
    selector: &RowSelector,
) -> Result<Explanation, ExplainError> {
    let query = match read_query(data_dir) {
        Ok(query) => query,
        Err(QueryFileError::Io(e)) if e.source.kind() == std::io::ErrorKind::NotFound => {
            return Err(UsageError::NoQuery {
                data_dir: data_dir.to_owned(),
            }
            .into())
        }
        Err(e) => return Err(ExplainError::QueryFile(e)),
    };
    if let Some(q) = query.nexmark {
        return Err(UsageError::NotWindowQuery { query: q.name() }.into());
    }
    if query.emit == Emit::Changes {
        return Err(UsageError::EmitChanges.into());
    }
    let commits = read_commits(&data_dir.join("checkpoints"))?;
    if let Some(other) = commits
        .iter()
        .find(|c| c.query_fingerprint != query.fingerprint())
    {
        return Err(UsageError::OtherQuery {
            data_dir: data_dir.to_owned(),
            expected: query.fingerprint(),
            found: other.query_fingerprint,
        }
        .into());
    }
    let row = find_row(out_dir, selector)?;
    let (start, end) = row.window;
    let shaped = match query.spec.slide_ms() {
        Some(slide) => end.checked_sub(start) == Some(query.spec.size_ms()) && start % slide == 0,
        // A session lasts at least its gap.
        None => end
            .checked_sub(start)
            .is_some_and(|d| d >= query.spec.size_ms()),
    };
    if !shaped {
        return Err(UsageError::NotAWindowOfTheQuery {
            start,
            end,
            spec: query.spec,
        }
        .into());
    }
    let committed = committed_by(&commits, &row);
    let events = window_events(
        data_dir,
        &commits,
        (&row.key, row.window),
        query.lateness_ms,
    )?;
    let checked_columns = check_aggregates(&row, &events.accepted)?;
    Ok(Explanation {
        query,
        row,
        committed,
        events,
        checked_columns,
    })
}

/// The first commit record whose committed length of the row's file
/// covers the row.
fn committed_by(commits: &[CommitRecord], row: &FoundRow) -> Committed {
    let covers = |c: &CommitRecord| {
        c.outputs
            .iter()
            .any(|o| o.file_name == row.file_name && o.length_bytes >= row.end_offset())
    };
    match commits.iter().position(covers) {
        Some(i) => Committed::By {
            checkpoint_id: commits[i].checkpoint_id,
            cut_time: commits[i].cut_time,
            or_earlier: i == 0 && commits[0].checkpoint_id > 1,
        },
        None => Committed::NotYet {
            newest: commits.last().map(|c| (c.checkpoint_id, c.cut_time)),
        },
    }
}

/// Computes the row's count, sum, min and max columns (those it has) again
/// from `accepted`; the names of those checked.
fn check_aggregates(
    row: &FoundRow,
    accepted: &[InputEvent],
) -> Result<Vec<&'static str>, UsageError> {
    let values = accepted.iter().map(|e| i128::from(e.value));
    let computed: [(&'static str, Option<i128>); 4] = [
        ("count", Some(accepted.len() as i128)),
        ("sum", Some(values.clone().sum())),
        ("min", values.clone().min()),
        ("max", values.max()),
    ];
    let mut checked = Vec::new();
    for (column, from_log) in computed {
        let Some(in_row) = row.column(column) else {
            continue;
        };
        let from_log = from_log.map_or_else(String::new, |v| v.to_string());
        if in_row != from_log {
            return Err(UsageError::RowNotFromLog {
                column,
                in_row: in_row.to_owned(),
                from_log,
                events: accepted.len(),
                key: row.key.clone(),
                start: row.window.0,
                end: row.window.1,
            });
        }
        checked.push(column);
    }
    Ok(checked)
}
