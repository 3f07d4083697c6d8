//! Partials that arrived before their time: packed on arrival, applied when
//! the window operator reaches their time.
//!
//! A pane's partials arrive as updates of ~100 bytes each (key text,
//! pane, a 40-byte aggregate, time, diff), a pane's worth at once, and wait
//! for the frontier to pass their time. Kept as they came they made the
//! largest spike of a 2M-key run's memory; packed here (the key as its
//! slot, the rest as varints) they take ~10 bytes. A key with staged
//! partials keeps its slot even when its last live pane leaves.

use super::codec::{encode_staged, StagedEntries};
use super::{entry_of, PaneStore};
use crate::agg::Agg;
use crate::key::Key;
use crate::window::round_down;

impl PaneStore {
    /// Stages `partials`, each `(key, pane_start, aggregate, copies)`, for
    /// time `time` (at or after the pane's release time). Kept per (time,
    /// pane): a restore brings every live pane at one time, and each pane
    /// then enters (and, under a memory budget, spills) on its own, so
    /// the restored state is never decoded all at once.
    pub fn stage(&mut self, time: u64, partials: impl IntoIterator<Item = (Key, u64, Agg, u64)>) {
        // Live partials of one time are all of one pane: one map lookup
        // per run of equal panes.
        let mut current: Option<(u64, Vec<u8>, usize)> = None;
        for (key, pane_start, agg, copies) in partials {
            assert!(
                pane_start <= time && pane_start.is_multiple_of(self.slide_ms),
                "pane {pane_start} staged at {time}"
            );
            if current.as_ref().is_none_or(|c| c.0 != pane_start) {
                if let Some(done) = current.take() {
                    self.put_staged(time, done);
                }
                let hint = self.staged_bytes_hint;
                let (bytes, count) = self
                    .staged
                    .remove(&(time, pane_start))
                    .unwrap_or_else(|| (Vec::with_capacity(hint), 0));
                current = Some((pane_start, bytes, count));
            }
            let (_, bytes, count) = current.as_mut().expect("set above");
            *count += 1;
            let slot = self.slot_of(key);
            self.staged_refs[slot as usize] += 1;
            let slides_back = (round_down(time, self.slide_ms) - pane_start) / self.slide_ms;
            encode_staged(bytes, slides_back, entry_of(slot, agg, copies));
        }
        if let Some(done) = current {
            self.put_staged(time, done);
        }
    }

    fn put_staged(&mut self, time: u64, (pane_start, bytes, count): (u64, Vec<u8>, usize)) {
        if !bytes.is_empty() {
            self.staged.insert((time, pane_start), (bytes, count));
        }
    }

    /// The least time with staged partials.
    pub fn first_staged_time(&self) -> Option<u64> {
        self.staged.keys().next().map(|&(time, _)| time)
    }

    /// Applies every partial staged for a time at or before `time`, pane by
    /// pane.
    pub fn apply_staged_through(&mut self, time: u64) {
        while let Some(entry) = self.staged.first_entry() {
            if entry.key().0 > time {
                break;
            }
            let ((_, pane_start), (bytes, count)) = entry.remove_entry();
            self.staged_bytes_hint = bytes.len();
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            // Sized once: grown by doubling, a pane of a million partials
            // copied ~100 MB into freshly faulted pages.
            scratch.reserve_exact(count);
            for (_, entry) in StagedEntries::new(&bytes) {
                self.staged_refs[entry.0 as usize] -= 1;
                scratch.push(entry);
            }
            drop(bytes);
            self.insert_entries(pane_start, &mut scratch);
            self.keep_scratch(scratch);
        }
    }
}
