//! Change tracking for `--emit changes`: which keys' window aggregates
//! changed since the last window, and which keys left.

use crate::agg::Agg;
use crate::combiner::FastMap;
use crate::emit::LEFT;
use crate::key::Key;

use super::PaneStore;

/// The keys touched since the last [`PaneStore::take_changes`].
#[derive(Debug, Default)]
pub(super) struct ChangeLog {
    /// Each touched slot with its aggregate before the first touch (`None`:
    /// the key had no live pane then).
    before: FastMap<u32, Option<Agg>>,
    /// Keys that were in the last window and have left.
    left: Vec<Key>,
}

impl ChangeLog {
    /// Slot `slot`, holding `key`, loses its last pane.
    pub(super) fn left(&mut self, slot: u32, key: &Key) {
        // A key that entered and left since the last window had no row
        // there and has none now: nothing to say.
        if let Some(Some(_)) = self.before.remove(&slot) {
            self.left.push(key.clone());
        }
    }
}

impl PaneStore {
    /// Tracks changes from now on, for [`PaneStore::take_changes`].
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(ChangeLog::default);
    }

    /// Remembers slot `slot`'s aggregate before it first changes.
    #[inline]
    pub(super) fn note_change(&mut self, slot: u32) {
        if self.changes.is_none() {
            return;
        }
        let s = slot as usize;
        let before = (self.counts[s] > 0).then(|| self.aggregate(s));
        if let Some(log) = self.changes.as_mut() {
            log.before.entry(slot).or_insert(before);
        }
    }

    /// Moves into `out` the rows of `--emit changes` for the current
    /// window: each live key whose aggregate differs from the one it had at
    /// the last call, and each key that was live then and is not now (with
    /// the count-0 aggregate [`LEFT`]).
    pub fn take_changes(&mut self, out: &mut Vec<(Key, Agg)>) {
        let Some(mut log) = self.changes.take() else {
            return;
        };
        for (slot, before) in log.before.drain() {
            let s = slot as usize;
            debug_assert!(self.counts[s] > 0, "a touched slot left without a note");
            let now = self.aggregate(s);
            if before != Some(now) {
                out.push((self.keys[s].clone(), now));
            }
        }
        out.extend(log.left.drain(..).map(|key| (key, LEFT)));
        self.changes = Some(log);
    }
}
