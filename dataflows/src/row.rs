//! Result rows of the generic window query and dead-letter rows.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};

use crate::agg::Agg;

/// One output row: the aggregate of one key in one window `[start, end)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowRow {
    /// Window start (inclusive), ms.
    pub window_start: u64,
    /// Window end (exclusive), ms.
    pub window_end: u64,
    /// The key (inline up to 24 bytes: a sliding window emits a row per key
    /// and slide, and a heap string per row was measurable).
    pub key: CompactString,
    /// Count, sum, min and max of the key's accepted events in the window.
    pub agg: Agg,
}

/// An event refused as late, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LateRow {
    /// Input partition.
    pub partition: u32,
    /// Offset of the event in its partition.
    pub offset: u64,
    /// Event time, ms.
    pub ts: u64,
    /// The key.
    pub key: String,
    /// The value.
    pub value: i64,
}
