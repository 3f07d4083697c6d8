//! The fixed-window operators' own state per worker, in the exposition:
//! live partials, keys, bytes by tier (memory, disk) and the panes moved
//! between them under a memory budget.

use std::sync::PoisonError;

use crate::metrics::Exposition;
use crate::source::SourceCounters;

/// One worker's figures: worker, partials, keys, memory bytes, disk bytes,
/// and the spill counts (panes and bytes written, panes and bytes read).
type Row = (usize, u64, u64, u64, u64, [u64; 6]);

/// Appends the `window_*` and `state_bytes` series of every worker.
pub(super) fn render_window_state(out: &mut Exposition, counters: &SourceCounters) {
    let mut rows: Vec<Row> = counters
        .window_state
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(w, g)| {
            (
                *w,
                g.partials(),
                g.keys(),
                g.bytes(),
                g.disk_bytes(),
                g.spill_counts(),
            )
        })
        .collect();
    rows.sort_unstable();
    let series = |f: &dyn Fn(&Row) -> u64, labels: &str| -> Vec<(String, String)> {
        rows.iter()
            .map(|r| (format!("worker=\"{}\"{labels}", r.0), f(r).to_string()))
            .collect()
    };
    out.labelled(
        "window_partials",
        "gauge",
        "Live (key, pane) partials a worker's window operator holds (tumbling windows: open (key, window) aggregates).",
        &series(&|r| r.1, ""),
    );
    out.labelled(
        "window_keys",
        "gauge",
        "Keys with live window state on a worker.",
        &series(&|r| r.2, ""),
    );
    let mut bytes = series(&|r| r.3, ",structure=\"windows\",tier=\"memory\"");
    bytes.extend(series(&|r| r.4, ",structure=\"windows\",tier=\"disk\""));
    out.labelled(
        "state_bytes",
        "gauge",
        "Bytes of state a worker holds, per structure and tier (windows: the window operator's packed panes, key columns and tables in memory; panes moved to disk under --memory-budget).",
        &bytes,
    );
    out.labelled(
        "window_spills_total",
        "counter",
        "Files a worker's sliding windows wrote to disk under --memory-budget (a pane each, or a run of staged partials).",
        &series(&|r| r.5[0], ""),
    );
    out.labelled(
        "window_spill_bytes_total",
        "counter",
        "Bytes of spill files written under --memory-budget.",
        &series(&|r| r.5[1], ""),
    );
    out.labelled(
        "window_fetches_total",
        "counter",
        "Spill files read back (a pane as it leaves the window or when the two-stack queue flips, a staged run when its time comes).",
        &series(&|r| r.5[2], ""),
    );
    out.labelled(
        "window_fetch_bytes_total",
        "counter",
        "Bytes of spill files read back.",
        &series(&|r| r.5[3], ""),
    );
    let mut reads = series(&|r| r.5[4], ",tier=\"memory\"");
    reads.extend(series(&|r| r.5[5], ",tier=\"disk\""));
    out.labelled(
        "window_pane_reads_total",
        "counter",
        "Panes a worker's sliding windows needed under --memory-budget (entering, flipping, leaving), by where they were found: memory / (memory + disk) is the hot set's hit rate.",
        &reads,
    );
}
