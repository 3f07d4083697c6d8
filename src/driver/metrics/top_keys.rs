//! The keys with the most events in one window, from the rows each worker
//! emits (a bounded-cardinality proxy for per-key state size).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use weir_dataflows::WindowRow;

use super::TOP_KEYS;
use crate::sink::RowObserver;

/// The top keys of one worker's window rows (see [`EngineMetrics`]).
#[derive(Debug)]
pub(super) struct TopKeys {
    /// The interval being collected: `(key, largest count)`, at most [`TOP_KEYS`].
    current: Vec<(String, u64)>,
    since: Instant,
    rows: u64,
    /// The last completed interval with rows.
    published: Vec<(String, u64)>,
}

impl TopKeys {
    pub(super) fn new() -> Self {
        Self {
            current: Vec::new(),
            since: Instant::now(),
            rows: 0,
            published: Vec::new(),
        }
    }

    fn observe(&mut self, key: &str, count: u64) {
        self.rows += 1;
        if self.rows.is_multiple_of(256) && self.since.elapsed() >= Duration::from_secs(1) {
            self.rotate();
        }
        if let Some(entry) = self.current.iter_mut().find(|(k, _)| k == key) {
            entry.1 = entry.1.max(count);
        } else if self.current.len() < TOP_KEYS {
            self.current.push((key.to_owned(), count));
        } else if let Some(min) = self.current.iter_mut().min_by_key(|(_, c)| *c) {
            if count > min.1 {
                *min = (key.to_owned(), count);
            }
        }
    }

    fn rotate(&mut self) {
        if !self.current.is_empty() {
            self.published = std::mem::take(&mut self.current);
        }
        self.since = Instant::now();
    }

    /// The published list, or the current one once its interval is over.
    pub(super) fn snapshot(&mut self) -> Vec<(String, u64)> {
        if self.since.elapsed() >= Duration::from_secs(1) {
            self.rotate();
        }
        self.published.clone()
    }
}

/// One worker's row observer: feeds its [`TopKeys`], then the run's own
/// observer (a harness's), if any.
pub(super) struct TopKeysObserver {
    pub(super) top: Arc<Mutex<TopKeys>>,
    pub(super) inner: Option<Arc<dyn RowObserver>>,
}

impl std::fmt::Debug for TopKeysObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopKeysObserver").finish_non_exhaustive()
    }
}

impl RowObserver for TopKeysObserver {
    fn window_rows(&self, rows: &mut dyn Iterator<Item = &WindowRow>) {
        let mut top = self.top.lock().unwrap_or_else(PoisonError::into_inner);
        let mut seen = rows.inspect(|row| top.observe(&row.key, row.agg.count));
        match &self.inner {
            Some(inner) => inner.window_rows(&mut seen),
            None => seen.for_each(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_top_keys_keep_the_largest_counts_per_key_bounded() {
        let mut top = TopKeys::new();
        for i in 0..100u64 {
            top.observe(&format!("key{i}"), i);
        }
        top.observe("key3", 1_000);
        top.observe("key99", 5);
        top.since -= Duration::from_secs(2);
        let mut snapshot = top.snapshot();
        snapshot.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        assert_eq!(snapshot.len(), TOP_KEYS);
        assert_eq!(snapshot[0], ("key3".to_owned(), 1_000));
        assert_eq!(snapshot[1], ("key99".to_owned(), 99));
        assert_eq!(snapshot[TOP_KEYS - 1].1, 91);
        // An interval without rows keeps the last published list.
        top.since -= Duration::from_secs(2);
        assert_eq!(top.snapshot().len(), TOP_KEYS);
    }
}
