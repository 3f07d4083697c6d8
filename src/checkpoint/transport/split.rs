//! Splitting a worker's checkpoint share that is too large for one frame
//! into [`CutUpdates`] frames followed by its [`WorkerCut`].

use super::{CutUpdates, WorkerCut};
use crate::checkpoint::format::PersistedUpdate;

/// Bytes one update takes in a frame.
pub fn encoded_update_bytes(update: &PersistedUpdate) -> usize {
    2 + 4 + update.data.len() + 8 + 8
}

/// Bytes `updates` take in a frame.
pub fn encoded_bytes(updates: &[PersistedUpdate]) -> usize {
    updates.iter().map(encoded_update_bytes).sum()
}

/// Splits `cut` so that no frame's updates take more than `budget_bytes`:
/// the leading updates go into [`CutUpdates`] frames, to be sent first, and
/// the rest stays in `cut`. Each frame gets at least one update.
pub fn split_share(cut: &mut WorkerCut, budget_bytes: usize) -> Vec<CutUpdates> {
    let total = encoded_bytes(&cut.updates);
    if total <= budget_bytes {
        return Vec::new();
    }
    let mut parts = Vec::new();
    let mut rest = std::mem::take(&mut cut.updates).into_iter().peekable();
    let mut remaining = total;
    while remaining > budget_bytes {
        let mut part = Vec::new();
        let mut part_bytes = 0usize;
        while let Some(u) = rest.peek() {
            let size = encoded_update_bytes(u);
            if !part.is_empty() && part_bytes + size > budget_bytes {
                break;
            }
            part_bytes += size;
            part.push(rest.next().expect("peeked"));
        }
        remaining -= part_bytes;
        parts.push(CutUpdates {
            worker: cut.worker,
            checkpoint_id: cut.checkpoint_id,
            updates: part,
        });
    }
    cut.updates = rest.collect();
    parts
}
