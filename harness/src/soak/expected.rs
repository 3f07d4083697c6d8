//! The soak's expected output, computed by the load generator as it appends
//! (so the log may be trimmed by retention and no failure-free run is
//! needed): every window row of a tumbling or sliding window over the
//! generated events, into an [`OutputDigest`].
//!
//! The generator stamps events with a clock that never goes back and the
//! engine's lateness rule then refuses nothing, so the expected rows are
//! plain folds: per window `[k*slide, k*slide + size)`, per key with an
//! event in it, count, sum, min and max. Events are folded per key into
//! slide-long panes; a window is emitted once an event at or past its end
//! arrives (nothing older can come), and the panes no window needs any more
//! are dropped: memory is keys × panes per window.

use std::collections::VecDeque;
use std::fmt::Write as _;

use anyhow::{bail, Result};
use weir::sink::format_window_fields;
use weir_dataflows::aggregates::{Aggregates, SketchColumns};
use weir_dataflows::combiner::FastMap;
use weir_dataflows::{Agg, WindowSpec};

use super::digest::OutputDigest;

/// Folds generated events into the rows a correct run writes.
pub struct ExpectedWindows {
    size_ms: u64,
    slide_ms: u64,
    /// Live panes, oldest first: `(pane start, partial per key id)`.
    panes: VecDeque<(u64, FastMap<u32, Agg>)>,
    /// The end of the next window to emit (`None` before the first event).
    next_end: Option<u64>,
    last_ts: u64,
    digest: OutputDigest,
    line: Vec<u8>,
}

impl ExpectedWindows {
    /// For `window` (tumbling or sliding).
    pub fn new(window: WindowSpec) -> Result<Self> {
        let Some(slide_ms) = window.slide_ms() else {
            bail!("the soak computes its expected output for tumbling and sliding windows only, not {window}");
        };
        Ok(ExpectedWindows {
            size_ms: window.size_ms(),
            slide_ms,
            panes: VecDeque::new(),
            next_end: None,
            last_ts: 0,
            digest: OutputDigest::default(),
            line: Vec::new(),
        })
    }

    /// One event of key `key{key_id}`; `ts` never below the previous one.
    pub fn add(&mut self, ts: u64, key_id: u32, value: i64) {
        assert!(ts >= self.last_ts, "events must come in time order");
        self.last_ts = ts;
        let next_end = *self
            .next_end
            .get_or_insert((ts / self.slide_ms + 1) * self.slide_ms);
        if ts >= next_end {
            self.emit_through(ts);
        }
        let pane_start = ts - ts % self.slide_ms;
        if self
            .panes
            .back()
            .is_none_or(|(start, _)| *start != pane_start)
        {
            self.panes.push_back((pane_start, FastMap::default()));
        }
        let pane = &mut self.panes.back_mut().expect("pushed above").1;
        match pane.get_mut(&key_id) {
            Some(agg) => agg.add(value),
            None => {
                pane.insert(key_id, Agg::of(value));
            }
        }
    }

    /// Emits every window that ends at or before `ts`.
    fn emit_through(&mut self, ts: u64) {
        while let Some(end) = self.next_end.filter(|&end| end <= ts) {
            self.emit(end);
            self.next_end = Some(end + self.slide_ms);
        }
    }

    fn emit(&mut self, end: u64) {
        let start = end.saturating_sub(self.size_ms);
        while self.panes.front().is_some_and(|(s, _)| *s < start) {
            self.panes.pop_front();
        }
        let mut window: FastMap<u32, Agg> = FastMap::default();
        for (_, pane) in self.panes.iter().take_while(|(s, _)| *s < end) {
            for (key_id, agg) in pane {
                match window.get_mut(key_id) {
                    Some(merged) => merged.merge(agg),
                    None => {
                        window.insert(*key_id, *agg);
                    }
                }
            }
        }
        let mut key = String::new();
        for (key_id, agg) in window {
            key.clear();
            write!(key, "key{key_id}").expect("writing to a String");
            self.line.clear();
            format_window_fields(
                (start, end, &key),
                &agg,
                SketchColumns::default(),
                Aggregates::default(),
                &mut self.line,
            );
            self.digest
                .add('w', std::str::from_utf8(&self.line).expect("CSV is UTF-8"));
        }
    }

    /// The digest once every event is in: the windows holding the last
    /// event are emitted too (a run to the end of the log closes them).
    pub fn finish(mut self) -> OutputDigest {
        let last_window_end = self.last_ts - self.last_ts % self.slide_ms + self.size_ms;
        if self.next_end.is_some() {
            self.emit_through(last_window_end);
        }
        self.digest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_dataflows::reference::reference;

    /// Equal to the plain reference's rows on random in-order events.
    #[test]
    fn the_fold_equals_the_reference() {
        let mut rng = weir::gen::SplitMix64::new(3);
        for window in [
            "tumbling:2s",
            "sliding:10s/1s",
            "sliding:3s/3s",
            "sliding:6s/2s",
        ] {
            let spec: WindowSpec = window.parse().unwrap();
            let mut expected = ExpectedWindows::new(spec).unwrap();
            let mut events = Vec::new();
            let mut ts = 1_700_000_000_123;
            for _ in 0..5_000 {
                ts += rng.below(20);
                let (key_id, value) = (rng.below(30) as u32, rng.below(1_000) as i64 - 100);
                expected.add(ts, key_id, value);
                events.push((ts, format!("key{key_id}"), value));
            }
            let got = expected.finish();
            let mut want = OutputDigest::default();
            let mut line = Vec::new();
            for row in reference(&[events], spec, 0).rows {
                line.clear();
                format_window_fields(
                    (row.window_start, row.window_end, &row.key),
                    &row.agg,
                    SketchColumns::default(),
                    Aggregates::default(),
                    &mut line,
                );
                want.add('w', std::str::from_utf8(&line).unwrap());
            }
            assert!(want.rows('w') > 100, "{window}");
            assert_eq!(got.first_difference(&want), None, "{window}");
            assert_eq!(got, want, "{window}");
        }
    }
}
