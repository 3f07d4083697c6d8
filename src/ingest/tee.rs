//! Hooks through which a caller receives the records of the new partitions
//! an ingest writes, as they are appended (decision 72: `weir run --input`
//! runs its dataflow on them while the ingest goes on, instead of reading
//! them back from the log once the ingest is done).
//!
//! The ingest knows nothing of what is done with the records: it hands each
//! record appended to the new partition's [`RecordTee`] (on the thread
//! writing that partition), then says when the file is written. A file
//! that fails, or is never started because an earlier file failed, is
//! never reported written: its tee is dropped without it. Whether the
//! partitions were then committed is the ingest's result.

use crate::event::EventRef;

/// Receives one new partition's records, in order, as they are appended.
pub trait RecordTee: Send {
    /// The record at `offset` was appended. `false`: the receiver is gone,
    /// no more records are wanted (the ingest goes on without the tee).
    fn record(&mut self, offset: u64, event: EventRef<'_>) -> bool;

    /// The file is written: every row appended, the file checked unchanged
    /// since it was opened, the partition synced with its marker; only its
    /// commit (rename, manifest) is left. Not called for a file that fails.
    fn written(&mut self);
}

/// The tees of an ingest's new partitions.
pub trait IngestTees: Sync {
    /// The tee of new partition `partition`, taken once by the thread that
    /// writes it (`None`: its records are not wanted).
    fn writer(&self, partition: u32) -> Option<Box<dyn RecordTee>>;
}
