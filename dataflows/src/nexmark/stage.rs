//! A stage that sees all rows of one window together.
//!
//! Rows are exchanged by window, so each window's rows meet on one worker;
//! they are held per timely time until the frontier passes it (all rows of a
//! window share its close time), then handed to the stage function window by
//! window, in window order, and its results are emitted at that same time.

use std::collections::BTreeMap;

use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Capability;
use timely::dataflow::Stream;

use crate::combiner::FastMap;
use crate::key::key_hash;
use crate::row::WindowRow;

/// Applies `stage` to the rows of each window `(start, end)` once all of
/// them have arrived.
pub fn per_window<'scope>(
    rows: Stream<'scope, u64, Vec<WindowRow>>,
    name: &str,
    stage: fn(&[WindowRow], &mut Vec<String>),
) -> Stream<'scope, u64, Vec<String>> {
    let exchange = Exchange::new(|row: &WindowRow| {
        key_hash(&format!("{}:{}", row.window_start, row.window_end))
    });
    rows.unary_frontier(exchange, name, move |_cap, _info| {
        type Windows = FastMap<(u64, u64), Vec<WindowRow>>;
        let mut pending: BTreeMap<u64, (Capability<u64>, Windows)> = BTreeMap::new();
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
                    stage(&rows, &mut results);
                }
                if !results.is_empty() {
                    output.session(&cap).give_iterator(results.drain(..));
                }
            }
        }
    })
}
