//! The size of a window operator's state on one worker, published for
//! metrics: the dataflows hold their state in maps of their own (not only in
//! arrangements), and this is how the engine sees it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live partials, keys and bytes of one window operator on one worker.
#[derive(Debug, Default)]
pub struct StateGauge {
    partials: AtomicU64,
    keys: AtomicU64,
    bytes: AtomicU64,
    peak_partials: AtomicU64,
    peak_bytes: AtomicU64,
    disk_bytes: AtomicU64,
    peak_disk_bytes: AtomicU64,
    /// Files and bytes written to disk, files and bytes read back, panes
    /// found in memory and read from disk
    /// ([`crate::pane_store::PaneStore::spill_counts`]).
    spill_counts: [AtomicU64; 6],
    /// Why the operator stopped (its state failed), if it did.
    failure: std::sync::Mutex<Option<String>>,
}

impl StateGauge {
    /// Publishes the operator's current state size.
    pub fn set(&self, partials: usize, keys: usize, bytes: usize) {
        self.partials.store(partials as u64, Ordering::Relaxed);
        self.keys.store(keys as u64, Ordering::Relaxed);
        self.bytes.store(bytes as u64, Ordering::Relaxed);
        self.peak_partials
            .fetch_max(partials as u64, Ordering::Relaxed);
        self.peak_bytes.fetch_max(bytes as u64, Ordering::Relaxed);
    }

    /// Publishes the bytes of state on disk and the spill counts
    /// ([`crate::pane_store::PaneStore::spill_counts`]).
    pub fn set_disk(&self, disk_bytes: usize, spill_counts: [u64; 6]) {
        self.disk_bytes.store(disk_bytes as u64, Ordering::Relaxed);
        self.peak_disk_bytes
            .fetch_max(disk_bytes as u64, Ordering::Relaxed);
        for (counter, value) in self.spill_counts.iter().zip(spill_counts) {
            counter.store(value, Ordering::Relaxed);
        }
    }

    /// Records why the operator's state failed; it emits nothing more and
    /// holds its capabilities, so no frontier passes what it did not emit
    /// (the run must stop: see [`StateGauge::failure`]).
    pub fn fail(&self, reason: String) {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(reason);
    }

    /// Why the operator's state failed, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Bytes of state on disk.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed)
    }

    /// The most bytes on disk so far.
    pub fn peak_disk_bytes(&self) -> u64 {
        self.peak_disk_bytes.load(Ordering::Relaxed)
    }

    /// Files and bytes written to disk, files and bytes read back, panes
    /// found in memory and read from disk.
    pub fn spill_counts(&self) -> [u64; 6] {
        self.spill_counts
            .each_ref()
            .map(|c| c.load(Ordering::Relaxed))
    }

    /// The most partials published so far.
    pub fn peak_partials(&self) -> u64 {
        self.peak_partials.load(Ordering::Relaxed)
    }

    /// The most bytes published so far.
    pub fn peak_bytes(&self) -> u64 {
        self.peak_bytes.load(Ordering::Relaxed)
    }

    /// Live (key, pane) partials (for tumbling windows: open (key, window)
    /// aggregates).
    pub fn partials(&self) -> u64 {
        self.partials.load(Ordering::Relaxed)
    }

    /// Keys with live state (tumbling windows: the keys of the largest open
    /// window).
    pub fn keys(&self) -> u64 {
        self.keys.load(Ordering::Relaxed)
    }

    /// Bytes of state held (column capacities and tables).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
