//! A stage that sees the rows of one window together, computed in two steps
//! so that it scales with workers rather than with windows.
//!
//! Every row of a window is emitted at the window's close time, and at one
//! close time there is usually a single window (q5, q7 and q8 each close one
//! window per slide). Sending all its rows to one worker would put the whole
//! stage on that worker. Instead:
//!
//! 1. **Local step** (no exchange): a stage that only wants the rows with the
//!    window's largest score (q5: the bid count, q7: the price) keeps, per
//!    window, just the rows reaching the largest score *seen on this worker*
//!    ([`Best`]), dropping the rest as they arrive. Any row reaching the
//!    window's maximum reaches its worker's maximum, so nothing that could
//!    be a result is dropped, ties across workers included.
//! 2. **Combine step**: the kept rows are exchanged by window (or by window
//!    and a routing field, when the stage splits by it, as q8 does by person
//!    id) and, once the frontier passes their time, handed to the stage
//!    function window by window, in window order; its results are emitted at
//!    that same time.
//!
//! Rows are hashed by their fields, not formatted: only result rows are text.

use std::collections::BTreeMap;
use std::hash::BuildHasher;

use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::combiner::FastMap;
use crate::row::WindowRow;

/// How one per-window stage runs.
#[derive(Clone, Copy, Debug)]
pub struct WindowStage {
    /// Operator name prefix.
    pub name: &'static str,
    /// The local step: a row's score (`None`: never a result). With it, each
    /// worker keeps per window only the rows with its largest score; without
    /// it, every row goes on.
    pub score: Option<fn(&WindowRow) -> Option<i128>>,
    /// The field that, beside the window, picks the combining worker (`None`:
    /// the window alone). Only for stages whose result for a window is the
    /// union of their results on the groups of rows sharing this field.
    pub route: Option<fn(&WindowRow) -> &str>,
    /// The stage: the combined rows of one window (sorted) to result lines.
    pub finish: fn(&[WindowRow], &mut Vec<String>),
}

/// The rows with the largest score seen so far (of one window on one worker).
#[derive(Debug, Default)]
pub struct Best {
    score: Option<i128>,
    rows: Vec<WindowRow>,
}

impl Best {
    /// Offers `row` with `score`: kept if the score is at least the largest
    /// so far (a larger one drops the rows kept before).
    pub fn offer(&mut self, score: i128, row: WindowRow) {
        match self.score {
            Some(best) if score < best => {}
            Some(best) if score == best => self.rows.push(row),
            _ => {
                self.score = Some(score);
                self.rows.clear();
                self.rows.push(row);
            }
        }
    }

    /// The rows kept.
    pub fn into_rows(self) -> Vec<WindowRow> {
        self.rows
    }
}

/// Rows of one timely time, by window.
type Windows<T> = FastMap<(u64, u64), T>;

/// Applies `stage` to the rows of each window `(start, end)` once all of
/// them have arrived (after the local step, if the stage has one).
pub fn per_window(
    rows: Stream<'_, u64, Vec<WindowRow>>,
    stage: WindowStage,
) -> Stream<'_, u64, Vec<String>> {
    let rows = match stage.score {
        Some(score) => keep_best(rows, stage.name, score),
        None => rows,
    };
    combine(rows, stage)
}

/// The local step: per time and window, the rows with this worker's largest
/// score, emitted once the frontier passes their time.
fn keep_best<'scope>(
    rows: Stream<'scope, u64, Vec<WindowRow>>,
    name: &str,
    score: fn(&WindowRow) -> Option<i128>,
) -> Stream<'scope, u64, Vec<WindowRow>> {
    let name = format!("{name}Local");
    rows.unary_frontier(Pipeline, &name, move |_cap, _info| {
        let mut pending: BTreeMap<u64, (Capability<u64>, Windows<Best>)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|cap, batch| {
                let time = *cap.least().expect("a stamp holds a time");
                let entry = pending
                    .entry(time)
                    .or_insert_with(|| (cap.delayed(&time, 0), Windows::default()));
                for row in batch.drain(..) {
                    if let Some(s) = score(&row) {
                        let window = (row.window_start, row.window_end);
                        entry.1.entry(window).or_default().offer(s, row);
                    }
                }
            });
            while let Some(entry) = pending.first_entry() {
                if frontier.frontier().less_equal(entry.key()) {
                    break;
                }
                let (cap, windows) = entry.remove();
                let mut session = output.session(&cap);
                for best in windows.into_values() {
                    session.give_iterator(best.into_rows().into_iter());
                }
            }
        }
    })
}

/// Which worker combines `row`: a hash of its window and routing field.
fn route_hash(row: &WindowRow, route: Option<fn(&WindowRow) -> &str>) -> u64 {
    let hasher = foldhash::fast::FixedState::with_seed(0x7765_6972);
    let field = route.map_or("", |f| f(row));
    hasher.hash_one((row.window_start, row.window_end, field))
}

/// The combine step: rows exchanged by window (and routing field), held per
/// time until the frontier passes it, then handed to the stage window by
/// window.
fn combine(
    rows: Stream<'_, u64, Vec<WindowRow>>,
    stage: WindowStage,
) -> Stream<'_, u64, Vec<String>> {
    let route = stage.route;
    let exchange = Exchange::new(move |row: &WindowRow| route_hash(row, route));
    rows.unary_frontier(exchange, stage.name, move |_cap, _info| {
        let mut pending: BTreeMap<u64, (Capability<u64>, Windows<Vec<WindowRow>>)> =
            BTreeMap::new();
        let mut results: Vec<String> = Vec::new();
        move |(input, frontier), output| {
            input.for_each(|cap, batch| {
                let time = *cap.least().expect("a stamp holds a time");
                let entry = pending
                    .entry(time)
                    .or_insert_with(|| (cap.delayed(&time, 0), Windows::default()));
                for row in batch.drain(..) {
                    let window = (row.window_start, row.window_end);
                    entry.1.entry(window).or_default().push(row);
                }
            });
            while let Some(entry) = pending.first_entry() {
                if frontier.frontier().less_equal(entry.key()) {
                    break;
                }
                let (cap, windows) = entry.remove();
                let mut windows: Vec<_> = windows.into_iter().collect();
                windows.sort_unstable_by_key(|(window, _)| *window);
                for (_, mut rows) in windows {
                    rows.sort_unstable();
                    (stage.finish)(&rows, &mut results);
                }
                if !results.is_empty() {
                    output.session(&cap).give_iterator(results.drain(..));
                }
            }
        }
    })
}
