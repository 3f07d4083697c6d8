//! The reference implementation of the generic window query: the semantics
//! of DESIGN §2 written as plainly as possible, for tests to compare with.

use std::collections::BTreeMap;

use crate::agg::Agg;
use crate::row::{LateRow, WindowRow};
use crate::window::WindowSpec;

/// What the generic window query must produce for some input.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReferenceOutput {
    /// Window rows, sorted.
    pub rows: Vec<WindowRow>,
    /// Late events, sorted.
    pub late: Vec<LateRow>,
}

/// Runs the query on `partitions` (events `(ts, key, value)` in log order).
pub fn reference(
    partitions: &[Vec<(u64, String, i64)>],
    spec: WindowSpec,
    lateness_ms: u64,
) -> ReferenceOutput {
    let (windows, late) = reference_window_values(partitions, spec, lateness_ms);
    let rows = windows
        .into_iter()
        .map(|((window_start, window_end, key), values)| {
            let mut agg = Agg::of(values[0]);
            for &v in &values[1..] {
                agg.add(v);
            }
            WindowRow {
                window_start,
                window_end,
                key: key.into(),
                agg,
            }
        })
        .collect();
    ReferenceOutput { rows, late }
}

/// The accepted values of every (window start, window end, key), in log
/// order per partition, and the late events, sorted: what any aggregate of
/// the query is computed from.
#[allow(clippy::type_complexity)]
pub fn reference_window_values(
    partitions: &[Vec<(u64, String, i64)>],
    spec: WindowSpec,
    lateness_ms: u64,
) -> (BTreeMap<(u64, u64, String), Vec<i64>>, Vec<LateRow>) {
    let mut accepted: Vec<(u64, String, i64)> = Vec::new();
    let mut late = Vec::new();
    for (partition, events) in partitions.iter().enumerate() {
        let mut max_ts: Option<u64> = None;
        for (offset, (ts, key, value)) in events.iter().enumerate() {
            let is_late = max_ts.is_some_and(|m| *ts < m.saturating_sub(lateness_ms));
            if is_late {
                late.push(LateRow {
                    partition: partition as u32,
                    offset: offset as u64,
                    ts: *ts,
                    key: key.clone(),
                    value: *value,
                });
            } else {
                accepted.push((*ts, key.clone(), *value));
            }
            max_ts = Some(max_ts.map_or(*ts, |m| m.max(*ts)));
        }
    }

    let mut windows: BTreeMap<(u64, u64, String), Vec<i64>> = BTreeMap::new();
    let mut add = |start: u64, end: u64, key: &str, value: i64| {
        windows
            .entry((start, end, key.to_owned()))
            .or_default()
            .push(value);
    };
    match spec {
        WindowSpec::Tumbling { .. } | WindowSpec::Sliding { .. } => {
            let size = i128::from(spec.size_ms());
            let slide = i128::from(spec.slide_ms().expect("fixed window"));
            for (ts, key, value) in &accepted {
                let ts = i128::from(*ts);
                // Every window start s (a multiple of slide) with s <= ts < s + size.
                let mut start = ts - ts.rem_euclid(slide);
                while start + size > ts {
                    // Before the epoch there are no events: report such windows from 0.
                    add(start.max(0) as u64, (start + size) as u64, key, *value);
                    start -= slide;
                }
            }
        }
        WindowSpec::Session { gap_ms } => {
            let mut by_key: BTreeMap<&str, Vec<(u64, i64)>> = BTreeMap::new();
            for (ts, key, value) in &accepted {
                by_key.entry(key).or_default().push((*ts, *value));
            }
            for (key, mut events) in by_key {
                events.sort_unstable();
                let mut session: Vec<(u64, i64)> = Vec::new();
                for (ts, value) in events {
                    if let Some(&(last, _)) = session.last() {
                        if ts - last >= gap_ms {
                            close_session(&mut session, gap_ms, key, &mut add);
                        }
                    }
                    session.push((ts, value));
                }
                close_session(&mut session, gap_ms, key, &mut add);
            }
        }
    }
    late.sort();
    (windows, late)
}

fn close_session(
    session: &mut Vec<(u64, i64)>,
    gap_ms: u64,
    key: &str,
    add: &mut impl FnMut(u64, u64, &str, i64),
) {
    if let (Some(&(first, _)), Some(&(last, _))) = (session.first(), session.last()) {
        for &(_, value) in session.iter() {
            add(first, last + gap_ms, key, value);
        }
    }
    session.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ts: u64, key: &str, value: i64) -> (u64, String, i64) {
        (ts, key.to_owned(), value)
    }

    #[test]
    fn lateness_is_per_partition_and_uses_the_max_before() {
        let parts = vec![
            vec![ev(10_000, "a", 1), ev(4_000, "a", 2), ev(5_000, "a", 3)],
            vec![ev(0, "b", 1)],
        ];
        let out = reference(&parts, "tumbling:10s".parse().unwrap(), 5_000);
        assert_eq!(out.late.len(), 1);
        assert_eq!(
            (out.late[0].partition, out.late[0].offset, out.late[0].ts),
            (0, 1, 4_000)
        );
        assert_eq!(out.rows.len(), 3);
    }

    #[test]
    fn sliding_windows_cover_size_over_slide_windows() {
        let out = reference(
            &[vec![ev(25_000, "k", 7)]],
            "sliding:30s/10s".parse().unwrap(),
            0,
        );
        let spans: Vec<_> = out
            .rows
            .iter()
            .map(|r| (r.window_start, r.window_end))
            .collect();
        assert_eq!(spans, vec![(0, 30_000), (10_000, 40_000), (20_000, 50_000)]);
        let early = reference(
            &[vec![ev(5_000, "k", 7)]],
            "sliding:30s/10s".parse().unwrap(),
            0,
        );
        let spans: Vec<_> = early
            .rows
            .iter()
            .map(|r| (r.window_start, r.window_end))
            .collect();
        assert_eq!(spans, vec![(0, 10_000), (0, 20_000), (0, 30_000)]);
    }

    #[test]
    fn sessions_split_at_the_gap_exactly() {
        let parts = vec![vec![
            ev(0, "k", 1),
            ev(4_999, "k", 1),
            ev(9_999, "k", 1),
            ev(20_000, "k", 1),
        ]];
        let out = reference(&parts, "session:5s".parse().unwrap(), u64::MAX);
        let spans: Vec<_> = out
            .rows
            .iter()
            .map(|r| (r.window_start, r.window_end, r.agg.count))
            .collect();
        assert_eq!(
            spans,
            vec![(0, 9_999, 2), (9_999, 14_999, 1), (20_000, 25_000, 1)]
        );
    }
}
