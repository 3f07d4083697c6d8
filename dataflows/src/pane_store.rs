//! The state of sliding windows on one worker: one packed copy of each live
//! (key, pane) partial, and each key's aggregate over the current window,
//! kept up to date in O(1) amortized work per partial, whatever the number
//! of panes in a window.
//!
//! Layout (decision 25 in `docs/decisions.md`):
//! - **Keys** get a slot (`u32`) on first sight; per slot, columns hold the
//!   key, the window's count and sum (added when a pane enters, subtracted
//!   when it leaves) and the four extremes below. A hash table of slots
//!   (hashed by the key's precomputed hash) finds a key's slot.
//! - **Panes** hold one entry per key present in the pane (slot, count,
//!   sum, min, max), packed as varints in slot order ([`codec`]): 6–10
//!   bytes for typical values instead of 32 for fixed-width columns. Counts
//!   and sums are exact at any size (the sum is an `i128` zigzag varint),
//!   and so is each key's running sum (`i128`): no input within the
//!   contract (`i64` values, fewer than 2^63 events) overflows.
//! - **Min and max** come from the two-stack queue (a FIFO aggregated with
//!   two stacks), done for all keys at once: panes older than `front_end`
//!   form the front stack, the others the back stack. Per key, `back_*` is
//!   the extreme over the key's back panes, updated as a pane enters;
//!   `front_*` the extreme over its front panes. When the oldest pane
//!   leaves and the front is empty, every pane moves to the front: a pass
//!   from the newest to the oldest pane replaces each entry's min and max by
//!   the extremes of the key's *later* front panes, so that when an entry
//!   leaves, its key's `front_*` becomes that value in O(1). The pass costs
//!   one step per live partial once per window length: O(1) amortized per
//!   partial and slide.

mod changes;
mod codec;
mod spill;
mod staging;

use std::collections::VecDeque;
use std::mem::size_of;

use hashbrown::HashTable;

use self::changes::ChangeLog;
use self::codec::{encode, Encoder, Entries, Entry};
use self::spill::{Spill, SpilledPane};
pub use self::spill::{SpillConfig, SpillError, SPILL_DISK_FULL_FAILPOINT, SPILL_FORMAT_VERSION};
use crate::agg::{Agg, Sum};
use crate::key::Key;

/// The most panes a sliding window may have (`size / slide`): a larger
/// window specification is refused when it is parsed, before anything runs.
pub const MAX_PANES_PER_WINDOW: u64 = 1 << 20;

/// The entries of one pane, encoded by [`codec`] in slot order.
#[derive(Debug)]
struct Pane {
    start: u64,
    entries: usize,
    /// In the back stack, each entry's own min and max; in the front
    /// stack, the min and max over the key's later front panes.
    bytes: PaneBytes,
}

/// Where a pane's encoded entries are.
#[derive(Debug)]
enum PaneBytes {
    Memory(Box<[u8]>),
    Disk(SpilledPane),
}

impl Pane {
    fn heap_bytes(&self) -> usize {
        match &self.bytes {
            PaneBytes::Memory(bytes) => bytes.len(),
            PaneBytes::Disk(_) => 0,
        }
    }
}

/// Sliding-window state of one worker; see the module doc.
#[derive(Debug)]
pub struct PaneStore {
    slide_ms: u64,
    table: HashTable<u32>,
    keys: Vec<Key>,
    counts: Vec<u64>,
    sums: Vec<i128>,
    front_min: Vec<i64>,
    front_max: Vec<i64>,
    back_min: Vec<i64>,
    back_max: Vec<i64>,
    /// Slots of keys that left the window, for reuse.
    free: Vec<u32>,
    /// Live panes, by start, oldest first.
    panes: VecDeque<Pane>,
    /// Panes starting before this are the front stack.
    front_end: u64,
    live_partials: usize,
    /// Bytes of key text stored outside the keys (longer than inline).
    spilled_text_bytes: usize,
    /// Sort keys of a staged run being applied (`slot << 32 | offset`),
    /// reused: 8 bytes a partial, where decoded entries took 48 and, freed
    /// after each pane, made a million-key pane fault in fresh pages.
    order: Vec<u64>,
    /// A pane's bytes being encoded, reused.
    encoded: Vec<u8>,
    /// What changed since the last window, when changes are tracked.
    changes: Option<ChangeLog>,
    /// Partials staged for times not yet reached, packed, by time and
    /// pane start, with their number.
    staged: std::collections::BTreeMap<(u64, u64), staging::Staged>,
    /// Per slot, the partials staged for it.
    staged_refs: Vec<u32>,
    /// Bytes the last time applied had staged: a new time's buffer starts
    /// that large rather than doubling its way up.
    staged_bytes_hint: usize,
    /// Cold panes on disk, with a memory budget ([`PaneStore::with_spill`]).
    spill: Option<Spill>,
    /// The first spill file that could not be written or read back: the
    /// store's aggregates are not to be trusted from then on.
    failure: Option<SpillError>,
}

/// Key text up to this length is stored inline in a [`Key`].
const INLINE_KEY_BYTES: usize = 24;

fn spilled_bytes(key: &Key) -> usize {
    let len = key.as_str().len();
    if len > INLINE_KEY_BYTES {
        len
    } else {
        0
    }
}

impl PaneStore {
    /// An empty store for panes of `slide_ms`.
    pub fn new(slide_ms: u64) -> Self {
        assert!(slide_ms > 0);
        PaneStore {
            slide_ms,
            table: HashTable::new(),
            keys: Vec::new(),
            counts: Vec::new(),
            sums: Vec::new(),
            front_min: Vec::new(),
            front_max: Vec::new(),
            back_min: Vec::new(),
            back_max: Vec::new(),
            free: Vec::new(),
            panes: VecDeque::new(),
            front_end: 0,
            live_partials: 0,
            spilled_text_bytes: 0,
            order: Vec::new(),
            encoded: Vec::new(),
            changes: None,
            staged: std::collections::BTreeMap::new(),
            staged_refs: Vec::new(),
            staged_bytes_hint: 0,
            spill: None,
            failure: None,
        }
    }

    /// The spill failure that made this store unusable, if any: its
    /// aggregates must not be emitted once this is set.
    pub fn failure(&self) -> Option<&SpillError> {
        self.failure.as_ref()
    }

    /// An empty store that keeps at most `config.budget_bytes` of state in
    /// memory ([`PaneStore::heap_bytes`]) by moving its newest panes' bytes
    /// to files in `config.dir` (see [`spill`]); every aggregate and row is
    /// the same as without.
    pub fn with_spill(slide_ms: u64, config: SpillConfig) -> Result<Self, SpillError> {
        let mut store = Self::new(slide_ms);
        store.spill = Some(Spill::open(config)?);
        Ok(store)
    }

    /// Bytes of panes on disk.
    pub fn disk_bytes(&self) -> usize {
        self.spill.as_ref().map_or(0, |s| s.disk_bytes)
    }

    /// Under a budget: files (panes or staged runs) written to disk and
    /// their bytes; files read back and their bytes; panes needed found in
    /// memory and read from disk (the hot set's hit rate).
    pub fn spill_counts(&self) -> [u64; 6] {
        self.spill.as_ref().map_or([0; 6], |s| {
            [
                s.spills,
                s.spilled_bytes,
                s.fetches,
                s.fetched_bytes,
                s.memory_reads,
                s.disk_reads,
            ]
        })
    }

    /// The bytes of pane `pane` (read back, and its file removed, if it
    /// was on disk). A file that cannot be read back sets
    /// [`PaneStore::failure`] and gives no entries.
    fn take_bytes(&mut self, pane: &mut Pane) -> Box<[u8]> {
        match std::mem::replace(&mut pane.bytes, PaneBytes::Memory(Box::default())) {
            PaneBytes::Memory(bytes) => {
                if let Some(spill) = self.spill.as_mut() {
                    spill.memory_reads += 1;
                }
                bytes
            }
            PaneBytes::Disk(spilled) => {
                let spill = self
                    .spill
                    .as_mut()
                    .expect("only a store with a spill has panes on disk");
                spill.disk_reads += 1;
                match spill.take(pane.start, &spilled) {
                    Ok(bytes) => bytes.into_boxed_slice(),
                    Err(e) => {
                        self.failure.get_or_insert(e);
                        Box::default()
                    }
                }
            }
        }
    }

    /// Moves the newest panes' bytes to disk until the state fits the
    /// budget; then, if every pane is on disk, staged partials.
    fn enforce_budget(&mut self) {
        let Some(budget) = self.spill.as_ref().map(Spill::budget_bytes) else {
            return;
        };
        if self.failure.is_some() {
            return;
        }
        let held = self.heap_bytes();
        if held <= budget {
            return;
        }
        let spill = self.spill.as_mut().expect("checked above");
        let mut over = held - budget;
        for pane in self.panes.iter_mut().rev() {
            if over == 0 {
                break;
            }
            let PaneBytes::Memory(bytes) = &pane.bytes else {
                continue;
            };
            match spill.write(pane.start, bytes) {
                Ok(spilled) => {
                    over = over.saturating_sub(bytes.len());
                    pane.bytes = PaneBytes::Disk(spilled);
                }
                Err(e) => {
                    // The pane stays in memory; the run must stop.
                    self.failure.get_or_insert(e);
                    return;
                }
            }
        }
        if over > 0 {
            self.spill_staged(over);
        }
    }

    /// Whether no pane is live.
    pub fn is_empty(&self) -> bool {
        self.panes.is_empty()
    }

    /// Live (key, pane) partials.
    pub fn live_partials(&self) -> usize {
        self.live_partials
    }

    /// Keys with at least one live partial.
    pub fn live_keys(&self) -> usize {
        self.keys.len() - self.free.len()
    }

    /// Bytes held: the columns of panes and keys (by capacity), the slot
    /// table, and key text that does not fit inline.
    pub fn heap_bytes(&self) -> usize {
        let per_slot = size_of::<Key>()
            + size_of::<u64>()
            + size_of::<i128>()
            + 4 * size_of::<i64>()
            + size_of::<u32>();
        self.keys.capacity() * per_slot
            + self.table.capacity() * (size_of::<u32>() + 1)
            + self.free.capacity() * size_of::<u32>()
            + self.panes.iter().map(Pane::heap_bytes).sum::<usize>()
            + self.panes.capacity() * size_of::<Pane>()
            + self.order.capacity() * size_of::<u64>()
            + self.encoded.capacity()
            + self.staged_heap_bytes()
            + self.changes.as_ref().map_or(0, ChangeLog::heap_bytes)
            + self.spilled_text_bytes
    }

    /// The slot of `key`, allocated if the key is new.
    fn slot_of(&mut self, key: Key) -> u32 {
        let hash = key.hash_value();
        let keys = &self.keys;
        if let Some(&slot) = self.table.find(hash, |&s| keys[s as usize] == key) {
            return slot;
        }
        self.spilled_text_bytes += spilled_bytes(&key);
        let slot = if let Some(slot) = self.free.pop() {
            self.keys[slot as usize] = key;
            slot
        } else {
            let slot =
                u32::try_from(self.keys.len()).expect("fewer than 2^32 live keys per worker");
            self.keys.push(key);
            self.counts.push(0);
            self.sums.push(0);
            self.front_min.push(i64::MAX);
            self.front_max.push(i64::MIN);
            self.back_min.push(i64::MAX);
            self.back_max.push(i64::MIN);
            self.staged_refs.push(0);
            slot
        };
        let keys = &self.keys;
        self.table
            .insert_unique(hash, slot, |&s| keys[s as usize].hash_value());
        slot
    }

    fn release(&mut self, slot: u32) {
        let s = slot as usize;
        debug_assert_eq!(self.sums[s], 0, "a key left with a non-zero sum");
        debug_assert!(self.front_min[s] == i64::MAX && self.back_min[s] == i64::MAX);
        let hash = self.keys[s].hash_value();
        self.table
            .find_entry(hash, |&other| other == slot)
            .expect("a live slot is in the table")
            .remove();
        self.spilled_text_bytes -= spilled_bytes(&self.keys[s]);
        self.keys[s] = Key::new("");
        self.free.push(slot);
    }

    /// Adds the partials of the pane starting at `pane_start`: `(key,
    /// aggregate, copies)`, a key possibly more than once (one partial per
    /// worker that saw it). The pane must not be in the front stack; panes
    /// enter in any order otherwise (a restore brings many at once).
    pub fn insert_pane(
        &mut self,
        pane_start: u64,
        partials: impl IntoIterator<Item = (Key, Agg, u64)>,
    ) {
        assert!(
            pane_start >= self.front_end,
            "pane {pane_start} enters below the front stack's end {}",
            self.front_end
        );
        assert!(
            pane_start.is_multiple_of(self.slide_ms),
            "pane {pane_start} off the slide"
        );
        let mut entries = Vec::new();
        for (key, agg, copies) in partials {
            let slot = self.slot_of(key);
            entries.push(entry_of(slot, agg, copies));
        }
        // One entry per key: merge the partials of several workers.
        merge_by_slot(&mut entries);
        self.insert_entries(pane_start, entries.into_iter());
    }

    /// Adds `entries` (of slots already allocated; sorted by slot, one per
    /// slot) as the pane starting at `pane_start`; see
    /// [`PaneStore::insert_pane`].
    fn insert_entries(&mut self, pane_start: u64, entries: impl Iterator<Item = Entry>) {
        assert!(
            pane_start >= self.front_end,
            "pane {pane_start} enters below the front stack's end {}",
            self.front_end
        );
        let mut encoded = std::mem::take(&mut self.encoded);
        encoded.clear();
        let mut encoder = Encoder::default();
        let mut added = 0;
        for entry in entries {
            let (slot, count, sum, min, max) = entry;
            let s = slot as usize;
            self.note_change(slot);
            self.counts[s] += count;
            self.sums[s] += sum;
            self.back_min[s] = self.back_min[s].min(min);
            self.back_max[s] = self.back_max[s].max(max);
            encoder.push(&mut encoded, entry);
            added += 1;
        }
        let position = self.panes.partition_point(|p| p.start < pane_start);
        let pane = if self
            .panes
            .get(position)
            .is_some_and(|p| p.start == pane_start)
        {
            // The same pane again (a restored pane meeting live partials at
            // one time): its entries join the existing ones.
            let mut old = self.panes.remove(position).expect("found above");
            self.live_partials -= old.entries;
            let old_bytes = self.take_bytes(&mut old);
            let mut merged: Vec<Entry> = Entries::new(&encoded).collect();
            merged.extend(Entries::new(&old_bytes));
            merge_by_slot(&mut merged);
            encoded.clear();
            encode(merged.iter().copied(), &mut encoded);
            Pane {
                start: pane_start,
                entries: merged.len(),
                bytes: PaneBytes::Memory(encoded.as_slice().into()),
            }
        } else {
            Pane {
                start: pane_start,
                entries: added,
                bytes: PaneBytes::Memory(encoded.as_slice().into()),
            }
        };
        self.live_partials += pane.entries;
        self.panes.insert(position, pane);
        self.encoded = encoded;
        self.keep_buffers();
        self.enforce_budget();
    }

    /// Keeps the sort keys and the encoding buffer for the next pane up to
    /// a bound: a pane of a million keys keeps ~20 MB between panes.
    fn keep_buffers(&mut self) {
        if self.order.capacity() > KEEP_ORDER_ENTRIES {
            self.order = Vec::new();
        }
        if self.encoded.capacity() > KEEP_ENCODED_BYTES {
            self.encoded = Vec::new();
        }
    }

    /// Removes every pane that starts before `window_start`; keys left with
    /// no pane lose their slot.
    pub fn evict_before(&mut self, window_start: u64) {
        while self.panes.front().is_some_and(|p| p.start < window_start) {
            if self.panes[0].start >= self.front_end {
                self.flip();
            }
            let mut pane = self.panes.pop_front().expect("checked above");
            self.live_partials -= pane.entries;
            let bytes = self.take_bytes(&mut pane);
            for (slot, count, sum, later_min, later_max) in Entries::new(&bytes) {
                let s = slot as usize;
                self.note_change(slot);
                self.counts[s] -= count;
                self.sums[s] -= sum;
                self.front_min[s] = later_min;
                self.front_max[s] = later_max;
                if self.counts[s] == 0 {
                    if let Some(log) = self.changes.as_mut() {
                        log.left(slot, &self.keys[s]);
                    }
                    // A key with partials staged for a later time keeps
                    // its slot: they refer to it.
                    if self.staged_refs[s] == 0 {
                        self.release(slot);
                    }
                }
            }
        }
    }

    /// Moves every pane to the front stack (see the module doc).
    fn flip(&mut self) {
        let Some(newest) = self.panes.back() else {
            return;
        };
        self.front_end = newest.start + self.slide_ms;
        // Every key's front extremes are the identity here: the front was
        // emptied, and each key's last front entry carried the identity.
        let mut panes = std::mem::take(&mut self.panes);
        for pane in panes.iter_mut().rev() {
            // A pane on disk goes back to disk: the flip must not bring the
            // whole window into memory.
            let was_on_disk = matches!(pane.bytes, PaneBytes::Disk(_));
            let bytes = self.take_bytes(pane);
            self.encoded.clear();
            let (front_min, front_max) = (&mut self.front_min, &mut self.front_max);
            let entries = Entries::new(&bytes).map(|(slot, count, sum, min, max)| {
                let s = slot as usize;
                let later = (front_min[s], front_max[s]);
                front_min[s] = front_min[s].min(min);
                front_max[s] = front_max[s].max(max);
                (slot, count, sum, later.0, later.1)
            });
            encode(entries, &mut self.encoded);
            let written = self
                .spill
                .as_mut()
                .filter(|_| was_on_disk && self.failure.is_none())
                .map(|spill| spill.write(pane.start, &self.encoded));
            pane.bytes = match written {
                Some(Ok(spilled)) => PaneBytes::Disk(spilled),
                Some(Err(e)) => {
                    self.failure.get_or_insert(e);
                    PaneBytes::Memory(self.encoded.as_slice().into())
                }
                None => PaneBytes::Memory(self.encoded.as_slice().into()),
            };
        }
        self.panes = panes;
        self.keep_buffers();
        self.back_min.fill(i64::MAX);
        self.back_max.fill(i64::MIN);
    }

    /// Every live key with its aggregate over the live panes, from slot
    /// `from` on, at most `limit` of them; returns the slot to continue at
    /// (`None`: done).
    pub fn aggregates_from(
        &self,
        from: usize,
        limit: usize,
        mut each: impl FnMut(&Key, Agg),
    ) -> Option<usize> {
        let mut given = 0;
        for slot in from..self.keys.len() {
            if given == limit {
                return Some(slot);
            }
            if self.counts[slot] == 0 {
                continue;
            }
            each(&self.keys[slot], self.aggregate(slot));
            given += 1;
        }
        None
    }

    #[inline]
    fn aggregate(&self, slot: usize) -> Agg {
        Agg {
            count: self.counts[slot],
            sum: Sum::from(self.sums[slot]),
            min: self.front_min[slot].min(self.back_min[slot]),
            max: self.front_max[slot].max(self.back_max[slot]),
        }
    }
}

/// Sort keys beyond this many are freed after a pane (16 MiB).
const KEEP_ORDER_ENTRIES: usize = 1 << 21;
/// An encoding buffer larger than this is freed after a pane.
const KEEP_ENCODED_BYTES: usize = 32 << 20;

/// The entry of `copies` copies of `agg` for `slot`.
fn entry_of(slot: u32, agg: Agg, copies: u64) -> Entry {
    assert!(copies > 0, "pane partials are only ever inserted");
    let total = agg.repeated(copies);
    (slot, total.count, total.sum.get(), total.min, total.max)
}

/// Sorts `entries` by slot and merges the entries of each slot into one.
fn merge_by_slot(entries: &mut Vec<Entry>) {
    entries.sort_unstable_by_key(|e| e.0);
    entries.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            merge_entry(kept, later);
        }
        same
    });
}

/// Folds `more`, a partial of the same slot, into `kept`.
fn merge_entry(kept: &mut Entry, more: &Entry) {
    debug_assert_eq!(kept.0, more.0, "partials of different slots");
    kept.1 += more.1;
    kept.2 += more.2;
    kept.3 = kept.3.min(more.3);
    kept.4 = kept.4.max(more.4);
}

#[cfg(test)]
mod tests;
