//! Partials that arrived before their time: packed on arrival, applied when
//! the window operator reaches their time.
//!
//! A pane's partials arrive as updates of ~100 bytes each (key text,
//! pane, a 40-byte aggregate, time, diff), a pane's worth at once, and wait
//! for the frontier to pass their time. Kept as they came they made the
//! largest spike of a 2M-key run's memory; packed here (the key as its
//! slot, the rest as varints) they take ~10 bytes. A key with staged
//! partials keeps its slot even when its last live pane leaves.

use super::codec::{encode_staged, Entry, StagedEntries};
use super::{entry_of, PaneStore};
use crate::agg::Agg;
use crate::key::Key;
use crate::window::round_down;

impl PaneStore {
    /// Stages `partials`, each `(key, pane_start, aggregate, copies)`, for
    /// time `time` (at or after the pane's release time).
    pub fn stage(&mut self, time: u64, partials: impl IntoIterator<Item = (Key, u64, Agg, u64)>) {
        let hint = self.staged_bytes_hint;
        let (mut bytes, mut count) = self
            .staged
            .remove(&time)
            .unwrap_or_else(|| (Vec::with_capacity(hint), 0));
        for (key, pane_start, agg, copies) in partials {
            count += 1;
            assert!(
                pane_start <= time && pane_start.is_multiple_of(self.slide_ms),
                "pane {pane_start} staged at {time}"
            );
            let slot = self.slot_of(key);
            self.staged_refs[slot as usize] += 1;
            let slides_back = (round_down(time, self.slide_ms) - pane_start) / self.slide_ms;
            encode_staged(&mut bytes, slides_back, entry_of(slot, agg, copies));
        }
        if !bytes.is_empty() {
            self.staged.insert(time, (bytes, count));
        }
    }

    /// The least time with staged partials.
    pub fn first_staged_time(&self) -> Option<u64> {
        self.staged.keys().next().copied()
    }

    /// Applies every partial staged for a time at or before `time`, pane by
    /// pane.
    pub fn apply_staged_through(&mut self, time: u64) {
        while let Some(entry) = self.staged.first_entry() {
            if *entry.key() > time {
                break;
            }
            let (staged_at, (bytes, count)) = entry.remove_entry();
            self.staged_bytes_hint = bytes.len();
            let newest_pane = round_down(staged_at, self.slide_ms);
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.clear();
            // Sized once: grown by doubling, a pane of a million partials
            // copied ~100 MB into freshly faulted pages.
            scratch.reserve_exact(count);
            // Live partials are all of one pane; a restore brings many.
            let mut others: Vec<(u64, Entry)> = Vec::new();
            let mut first_back = None;
            for (slides_back, entry) in StagedEntries::new(&bytes) {
                self.staged_refs[entry.0 as usize] -= 1;
                if *first_back.get_or_insert(slides_back) == slides_back {
                    scratch.push(entry);
                } else {
                    others.push((slides_back, entry));
                }
            }
            if let Some(back) = first_back {
                self.insert_entries(newest_pane - back * self.slide_ms, &mut scratch);
            }
            others.sort_unstable_by_key(|&(back, entry)| (back, entry.0));
            for pane in others.chunk_by(|a, b| a.0 == b.0) {
                scratch.clear();
                scratch.extend(pane.iter().map(|p| p.1));
                self.insert_entries(newest_pane - pane[0].0 * self.slide_ms, &mut scratch);
            }
            self.keep_scratch(scratch);
        }
    }
}
