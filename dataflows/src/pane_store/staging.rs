//! Partials that arrived before their time: packed on arrival, applied when
//! the window operator reaches their time.
//!
//! A pane's partials arrive as updates of ~100 bytes each (key text,
//! pane, a 40-byte aggregate, time, diff), a pane's worth at once, and wait
//! for the frontier to pass their time. Kept as they came they made the
//! largest spike of a 2M-key run's memory; packed here (the key as its
//! slot, the rest as varints) they take ~10 bytes. A key with staged
//! partials keeps its slot even when its last live pane leaves.
//!
//! Under a memory budget, staged runs go to disk too once every pane is
//! there (a restore stages all of a worker's partials at one time): each
//! run written is a spill file of its own, read back when its time comes,
//! so a restore never holds the restored state in memory at once.

use super::codec::{encode_staged, StagedEntries};
use super::spill::SpilledPane;
use super::{entry_of, merge_entry, PaneStore};
use crate::agg::Agg;
use crate::key::Key;
use crate::window::round_down;

/// A staged run this large is written to disk when the store is over its
/// budget (or 1/16 of the budget, if less): a restore stages a little at a
/// time into every pane, and a file per small run would make tens of
/// thousands of tiny files.
const MAX_STAGED_SPILL_FLOOR_BYTES: usize = 64 << 10;

/// The partials staged for one (time, pane).
#[derive(Debug, Default)]
pub(super) struct Staged {
    /// Packed partials ([`encode_staged`]) in memory.
    bytes: Vec<u8>,
    /// Partials staged, in memory and on disk.
    count: usize,
    /// Earlier runs of packed partials, on disk.
    on_disk: Vec<SpilledPane>,
}

impl PaneStore {
    /// Stages `partials`, each `(key, pane_start, aggregate, copies)`, for
    /// time `time` (at or after the pane's release time). Kept per (time,
    /// pane): a restore brings every live pane at one time, and each pane
    /// then enters (and, under a memory budget, spills) on its own, so
    /// the restored state is never decoded all at once.
    pub fn stage(&mut self, time: u64, partials: impl IntoIterator<Item = (Key, u64, Agg, u64)>) {
        // Live partials of one time are all of one pane: one map lookup
        // per run of equal panes.
        let mut current: Option<(u64, Staged)> = None;
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
                let staged = self
                    .staged
                    .remove(&(time, pane_start))
                    .unwrap_or_else(|| Staged {
                        bytes: Vec::with_capacity(hint),
                        ..Staged::default()
                    });
                current = Some((pane_start, staged));
            }
            let (_, staged) = current.as_mut().expect("set above");
            staged.count += 1;
            let slot = self.slot_of(key);
            self.staged_refs[slot as usize] += 1;
            let slides_back = (round_down(time, self.slide_ms) - pane_start) / self.slide_ms;
            encode_staged(&mut staged.bytes, slides_back, entry_of(slot, agg, copies));
        }
        if let Some(done) = current {
            self.put_staged(time, done);
        }
        self.enforce_budget();
    }

    fn put_staged(&mut self, time: u64, (pane_start, staged): (u64, Staged)) {
        if staged.count > 0 {
            self.staged.insert((time, pane_start), staged);
        }
    }

    /// Bytes of staged partials in memory.
    pub(super) fn staged_heap_bytes(&self) -> usize {
        self.staged.values().map(|s| s.bytes.capacity()).sum()
    }

    /// Writes the largest staged runs to disk until `over` bytes are freed
    /// or no run as large as the floor is left in memory.
    pub(super) fn spill_staged(&mut self, mut over: usize) {
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        let floor = (spill.budget_bytes() / 16).clamp(1, MAX_STAGED_SPILL_FLOOR_BYTES);
        let mut runs: Vec<(usize, (u64, u64))> = self
            .staged
            .iter()
            .filter(|(_, s)| s.bytes.len() >= floor)
            .map(|(&at, s)| (s.bytes.len(), at))
            .collect();
        runs.sort_unstable_by(|a, b| b.cmp(a));
        for (_, at) in runs {
            if over == 0 {
                break;
            }
            let staged = self.staged.get_mut(&at).expect("listed above");
            match spill.write(at.1, &staged.bytes) {
                Ok(spilled) => {
                    over = over.saturating_sub(staged.bytes.capacity());
                    staged.on_disk.push(spilled);
                    staged.bytes = Vec::new();
                }
                Err(e) => {
                    self.failure.get_or_insert(e);
                    return;
                }
            }
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
            let ((_, pane_start), staged) = entry.remove_entry();
            self.staged_bytes_hint = staged.bytes.len();
            // Runs on disk first, then the one in memory: one buffer of
            // packed partials for the pane.
            let mut run = Vec::new();
            for spilled in &staged.on_disk {
                let spill = self.spill.as_mut().expect("runs on disk have a spill");
                match spill.take(pane_start, spilled) {
                    Ok(bytes) => run.extend_from_slice(&bytes),
                    // The store is failed: its aggregates are not emitted.
                    Err(e) => drop(self.failure.get_or_insert(e)),
                }
            }
            let run = if run.is_empty() {
                staged.bytes
            } else {
                run.extend_from_slice(&staged.bytes);
                run
            };
            self.apply_run(pane_start, &run);
        }
    }

    /// Adds the packed partials `run` as pane `pane_start`: sorted by slot
    /// through 8-byte keys (slot, offset), each slot's partials merged.
    fn apply_run(&mut self, pane_start: u64, run: &[u8]) {
        let mut order = std::mem::take(&mut self.order);
        order.clear();
        let mut entries = StagedEntries::new(run);
        loop {
            let offset = entries.position();
            let Some((_, (slot, ..))) = entries.next() else {
                break;
            };
            // The key's slot is no longer held by this partial.
            self.staged_refs[slot as usize] -= 1;
            order.push(u64::from(slot) << 32 | offset_key(offset));
        }
        order.sort_unstable();
        let at = |key: u64| {
            let offset = (key & u64::from(u32::MAX)) as usize;
            let (_, entry) = StagedEntries::new(&run[offset..])
                .next()
                .expect("an offset of an entry");
            entry
        };
        let mut keys = order.iter().copied().peekable();
        let merged = std::iter::from_fn(|| {
            let mut entry = at(keys.next()?);
            while let Some(key) = keys.next_if(|k| (k >> 32) as u32 == entry.0) {
                merge_entry(&mut entry, &at(key));
            }
            Some(entry)
        });
        self.insert_entries(pane_start, merged);
        self.order = order;
    }
}

/// `offset` as the low half of a sort key: a run of one (time, pane) on one
/// worker holds less than 4 GiB of packed partials (~400M partials).
fn offset_key(offset: usize) -> u64 {
    u32::try_from(offset)
        .map(u64::from)
        .expect("a pane's staged partials on one worker take less than 4 GiB")
}
