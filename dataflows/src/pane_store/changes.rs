//! Change tracking for `--emit changes`: which keys' window aggregates may
//! have changed since the last window, and which keys left.
//!
//! Per step (the panes entering and leaving before one window is emitted)
//! a slot's aggregate before its first change is noted once, in a list in
//! the order of first touch, packed like staged partials (~10 bytes instead
//! of 56: a slide of a 2M-key window touches every key); two bits per slot
//! say whether it was noted and whether the key was in the window before. The window's rows are
//! read from the list as they are emitted (not gathered first), and the
//! list is cleared once they all are.

use crate::agg::{Agg, Sum};
use crate::aggregates::Aggregates;
use crate::emit::LEFT;
use crate::key::Key;

use super::codec::{encode_staged, StagedEntries};
use super::PaneStore;

/// The slots touched since the last [`PaneStore::clear_changes`].
#[derive(Debug, Default)]
pub(super) struct ChangeLog {
    /// Each touched slot with its aggregate before the first touch, as
    /// [`encode_staged`] entries whose first field says whether the key had
    /// a live pane then (1) or not (0, the aggregate's fields 0).
    before: Vec<u8>,
    /// Per slot: noted in `before` this step.
    touched: Vec<u64>,
    /// Per slot: the key was in the window before this step.
    present: Vec<u64>,
    /// Keys that were in the window before and have left.
    left: Vec<Key>,
    /// The columns written: a change elsewhere is not a change.
    columns: Aggregates,
}

fn bit(bits: &[u64], slot: u32) -> bool {
    bits.get(slot as usize / 64)
        .is_some_and(|word| word & (1 << (slot % 64)) != 0)
}

fn set_bit(bits: &mut Vec<u64>, slot: u32, on: bool) {
    let word = slot as usize / 64;
    if bits.len() <= word {
        bits.resize(word + 1, 0);
    }
    if on {
        bits[word] |= 1 << (slot % 64);
    } else {
        bits[word] &= !(1 << (slot % 64));
    }
}

impl ChangeLog {
    /// Bytes held, by capacity.
    pub(super) fn heap_bytes(&self) -> usize {
        self.before.capacity()
            + (self.touched.capacity() + self.present.capacity()) * 8
            + self.left.capacity() * std::mem::size_of::<Key>()
    }

    /// Slot `slot`, holding `key`, loses its last pane.
    pub(super) fn left(&mut self, slot: u32, key: &Key) {
        // A key that entered and left within the step had no row before and
        // has none now: nothing to say.
        if bit(&self.present, slot) {
            self.left.push(key.clone());
        }
    }
}

impl PaneStore {
    /// Tracks changes of `columns` from now on, for [`PaneStore::changes_from`].
    pub fn track_changes(&mut self, columns: Aggregates) {
        self.changes.get_or_insert_with(|| ChangeLog {
            columns,
            ..ChangeLog::default()
        });
    }

    /// Remembers slot `slot`'s aggregate before it first changes.
    #[inline]
    pub(super) fn note_change(&mut self, slot: u32) {
        let Some(log) = self.changes.as_ref() else {
            return;
        };
        if bit(&log.touched, slot) {
            return;
        }
        let s = slot as usize;
        let before = (self.counts[s] > 0).then(|| self.aggregate(s));
        let log = self.changes.as_mut().expect("checked above");
        set_bit(&mut log.touched, slot, true);
        set_bit(&mut log.present, slot, before.is_some());
        let (present, agg) = before.map_or((0, (0, 0, 0, 0)), |a| {
            (1, (a.count, a.sum.get(), a.min, a.max))
        });
        encode_staged(&mut log.before, present, (slot, agg.0, agg.1, agg.2, agg.3));
    }

    /// Whether anything was touched since the last [`PaneStore::clear_changes`].
    pub fn has_changes(&self) -> bool {
        self.changes
            .as_ref()
            .is_some_and(|log| !log.before.is_empty() || !log.left.is_empty())
    }

    /// The rows of `--emit changes` for the current window, from position
    /// `from` on, at most `limit` of them: each live key whose aggregate
    /// differs from the one it had before the step, then each key that was
    /// in the window before and is not now (with the count-0 aggregate
    /// [`LEFT`]). Returns the position to continue at (`None`: done). The
    /// store must not change between calls until [`PaneStore::clear_changes`].
    pub fn changes_from(
        &self,
        from: usize,
        limit: usize,
        mut each: impl FnMut(&Key, Agg),
    ) -> Option<usize> {
        let log = self.changes.as_ref()?;
        let project = |agg: &Agg| log.columns.project(agg);
        let mut given = 0;
        // Positions below `before.len()` are byte offsets into `before`,
        // the others index `left` after it.
        let before_len = log.before.len();
        let mut position = from;
        if position < before_len {
            let mut reader = StagedEntries::new(&log.before[position..]);
            loop {
                if given == limit {
                    return Some(position);
                }
                let Some((present, (slot, count, sum, min, max))) = reader.next() else {
                    break;
                };
                position = from + reader.position();
                let s = slot as usize;
                // Count 0: the key left (listed below), or the slot was
                // freed and taken by a key whose partials are still staged.
                if self.counts[s] == 0 {
                    continue;
                }
                let before = (present == 1).then(|| Agg {
                    count,
                    sum: Sum::from(sum),
                    min,
                    max,
                });
                let now = self.aggregate(s);
                if before.as_ref().map(project) != Some(project(&now)) {
                    each(&self.keys[s], now);
                    given += 1;
                }
            }
            position = before_len;
        }
        for index in position - before_len..log.left.len() {
            if given == limit {
                return Some(before_len + index);
            }
            each(&log.left[index], LEFT);
            given += 1;
        }
        None
    }

    /// Forgets the changes of the window just emitted.
    pub fn clear_changes(&mut self) {
        if let Some(log) = self.changes.as_mut() {
            for (_, (slot, ..)) in StagedEntries::new(&log.before) {
                set_bit(&mut log.touched, slot, false);
                set_bit(&mut log.present, slot, false);
            }
            log.before.clear();
            log.left.clear();
        }
    }
}
