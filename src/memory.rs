//! Runs the window query on partitions held in memory, on a number of worker
//! threads in this process, and collects the rows. Used by tests and benches
//! that want the dataflow without files.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use weir_dataflows::pane_store::SpillConfig;
use weir_dataflows::{LateRow, WindowRow};

use crate::job::{
    build_window_query, max_ahead_ms, track_arrangements, ArrangementGauge, WindowQuery,
};
use crate::nexmark::feed::ProjectedFeed;
use crate::nexmark::{source_partition, NexmarkQuery, NexmarkTable};
use crate::sink::RowSink;
use crate::source::{
    ErrorSlot, MemoryFeed, PartitionFeed, PartitionInput, SourceConfig, SourceCounters,
    IDLE_POLL_MAX_MS,
};

/// The rows of a run, sorted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectedRows {
    /// Window rows.
    pub rows: Vec<WindowRow>,
    /// Late events.
    pub late: Vec<LateRow>,
    /// Result rows of queries with their own columns (CSV lines).
    pub lines: Vec<String>,
    /// The largest number of records any worker held in its arrangements.
    pub peak_arranged_records: i64,
    /// The largest number of live partials any worker's fixed-window
    /// operator held (sampled after every step).
    pub peak_window_partials: u64,
}

#[derive(Default)]
struct CollectSink {
    rows: Vec<WindowRow>,
    late: Vec<LateRow>,
    lines: Vec<String>,
}

impl RowSink for CollectSink {
    fn window_rows(&mut self, rows: &mut Vec<WindowRow>) {
        self.rows.append(rows);
    }
    fn result_lines(&mut self, lines: &mut Vec<String>) {
        self.lines.append(lines);
    }
    fn late_rows(&mut self, rows: &mut Vec<LateRow>) {
        self.late.append(rows);
    }
}

/// Runs `query` over `partitions` on `workers` threads.
pub fn run_in_memory(
    partitions: &[Vec<(u64, String, i64)>],
    query: WindowQuery,
    workers: usize,
    batch_records: usize,
) -> Result<CollectedRows, String> {
    execute(generic(partitions), query, workers, batch_records, None)
}

/// The partitions of the generic query, numbered in order.
fn generic(partitions: &[Partition]) -> Vec<(u32, Option<NexmarkTable>, Arc<Partition>)> {
    partitions
        .iter()
        .enumerate()
        .map(|(p, events)| (p as u32, None, Arc::new(events.clone())))
        .collect()
}

/// [`run_in_memory`] with sliding windows keeping at most
/// `spill.budget_bytes` of state in memory per worker, the rest in files
/// under `spill.dir` (one directory per worker).
pub fn run_in_memory_with_spill(
    partitions: &[Vec<(u64, String, i64)>],
    query: WindowQuery,
    workers: usize,
    batch_records: usize,
    spill: SpillConfig,
) -> Result<CollectedRows, String> {
    execute(
        generic(partitions),
        query,
        workers,
        batch_records,
        Some(spill),
    )
}

/// Runs the Nexmark query `query` (with `lateness_ms`) over stored records
/// `(date_time, stored key, value)` of each table's partitions, on `workers`
/// threads; returns the result lines, sorted.
pub fn run_nexmark_in_memory(
    tables: &[(NexmarkTable, Vec<Partition>)],
    query: NexmarkQuery,
    lateness_ms: u64,
    workers: usize,
    batch_records: usize,
) -> Result<Vec<String>, String> {
    let mut partitions = Vec::new();
    for (table, table_partitions) in tables {
        if !query.tables().contains(table) {
            continue;
        }
        for (p, events) in table_partitions.iter().enumerate() {
            partitions.push((
                source_partition(*table, p as u32),
                Some(*table),
                Arc::new(events.clone()),
            ));
        }
    }
    let query = WindowQuery::nexmark(query, lateness_ms);
    execute(partitions, query, workers, batch_records, None).map(|c| c.lines)
}

/// Events `(ts, key, value)` of one partition.
pub type Partition = Vec<(u64, String, i64)>;

fn execute(
    partitions: Vec<(u32, Option<NexmarkTable>, Arc<Partition>)>,
    query: WindowQuery,
    workers: usize,
    batch_records: usize,
    spill: Option<SpillConfig>,
) -> Result<CollectedRows, String> {
    let collected = Arc::new(Mutex::new(CollectedRows::default()));
    let errors: ErrorSlot = ErrorSlot::default();
    let counters = Arc::new(SourceCounters::default());
    let config = crate::driver::timely_config(workers, None);
    let result = {
        let collected = Arc::clone(&collected);
        let errors = Arc::clone(&errors);
        timely::execute(config, move |worker| {
            let (index, peers) = (worker.index(), worker.peers());
            let gauge = Arc::new(ArrangementGauge::default());
            track_arrangements(worker, Arc::clone(&gauge));
            let feeds: Vec<PartitionInput<Box<dyn PartitionFeed>>> = partitions
                .iter()
                .filter(|(p, _, _)| *p as usize % peers == index)
                .map(|(p, table, events)| {
                    let memory = MemoryFeed::new(Arc::clone(events));
                    let feed: Box<dyn PartitionFeed> = match (query.nexmark, table) {
                        (Some(q), Some(t)) => Box::new(ProjectedFeed::new(
                            memory,
                            *p,
                            (q, *t),
                            (query.lateness_ms, None),
                        )),
                        _ => Box::new(memory),
                    };
                    PartitionInput {
                        partition: *p,
                        feed,
                        start_offset: 0,
                        max_ts_before: None,
                    }
                })
                .collect();
            let sink = Rc::new(RefCell::new(CollectSink::default()));
            let source_config = SourceConfig {
                granularity_ms: query.granularity_ms,
                lateness_ms: query.lateness_ms,
                batch_records,
                idle_poll_ms: 1,
                idle_poll_max_ms: IDLE_POLL_MAX_MS,
                max_ahead_ms: max_ahead_ms(&query),
                cut_step_ms: 0,
                restored_cut_ms: None,
            };
            let probe = build_window_query(
                worker,
                feeds,
                query,
                source_config,
                Rc::clone(&sink),
                Arc::clone(&errors),
                Arc::clone(&counters),
                None,
                spill.clone(),
            );
            let window_state: Vec<_> = counters
                .window_state
                .lock()
                .expect("poisoned")
                .iter()
                .filter(|(w, _)| *w == index)
                .map(|(_, g)| Arc::clone(g))
                .collect();
            let mut peak_window_partials = 0;
            while !probe.done() {
                worker.step();
                let partials = window_state.iter().map(|g| g.partials()).sum::<u64>();
                peak_window_partials = peak_window_partials.max(partials);
            }
            let mut sink = sink.borrow_mut();
            let mut out = collected.lock().expect("collector poisoned");
            out.rows.append(&mut sink.rows);
            out.late.append(&mut sink.late);
            out.lines.append(&mut sink.lines);
            let peak = gauge
                .peak_records
                .load(std::sync::atomic::Ordering::Relaxed);
            out.peak_arranged_records = out.peak_arranged_records.max(peak);
            out.peak_window_partials = out.peak_window_partials.max(peak_window_partials);
        })?
        .join()
    };
    for worker in result {
        worker?;
    }
    if let Some(e) = errors.lock().expect("error slot poisoned").take() {
        return Err(e.to_string());
    }
    let mut out = std::mem::take(&mut *collected.lock().expect("collector poisoned"));
    out.rows.sort();
    out.late.sort();
    out.lines.sort();
    Ok(out)
}
