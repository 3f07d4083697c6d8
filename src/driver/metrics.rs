//! The engine process's figures for its `GET /metrics` endpoint: they know
//! the engine's types (source counters, arrangements, output counts, the
//! sidecar client), so they live beside the driver and render into the
//! leaf [`crate::metrics`] exposition, which serves them.
//!
//! The figures come from the run's shared counters and gauges (atomics the
//! workers and the sidecar client update as they go); a scrape also lists
//! the input log and the checkpoint directory (a few dozen files).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::checkpoint::client::ClientStats;
use crate::job::ArrangementGauge;
use crate::run::RunGauges;
use crate::sink::OutputCounts;
use crate::sink::RowObserver;
use crate::source::SourceCounters;

use crate::checkpoint::store::is_temp_or_lock;
use crate::metrics::{dir_usage, label_value, millis, now_ms, serve_text, Exposition};

mod log_usage;
mod top_keys;
mod window_state;

use log_usage::log_usage;
use top_keys::{TopKeys, TopKeysObserver};
use window_state::render_window_state;

/// How many keys `weir_top_key_window_events` lists at most.
pub const TOP_KEYS: usize = 10;

/// Milliseconds as seconds.
fn secs(ms: u64) -> f64 {
    ms as f64 / 1e3
}

/// Figures of an engine process beyond the sources' and the sidecar
/// client's: output rows, closed windows, recovery, top keys; and the
/// `replay` tracing span.
#[derive(Debug)]
pub struct EngineMetrics {
    data_dir: PathBuf,
    local_workers: usize,
    slide_ms: Option<u64>,
    started: Instant,
    outputs: Arc<OutputCounts>,
    windows_closed: AtomicU64,
    restored_cut_ms: u64,
    restored: bool,
    restored_updates: AtomicU64,
    restore_load_ns: AtomicU64,
    caught_up_ns: AtomicU64,
    replay_span: Mutex<Option<tracing::Span>>,
    top_keys: Option<Mutex<Vec<Arc<Mutex<TopKeys>>>>>,
}

impl EngineMetrics {
    /// For a run over `data_dir` with `local_workers` workers in this
    /// process; `slide_ms` for fixed windows (windows end on its
    /// multiples); `restored_from` the checkpoint `(id, cut)` it resumes
    /// from; `top_keys` to track the top keys (a cost per window row).
    /// Opens the `replay` span.
    pub fn new(
        data_dir: &Path,
        local_workers: usize,
        slide_ms: Option<u64>,
        restored_from: Option<(u64, u64)>,
        top_keys: bool,
    ) -> Self {
        let replay_span = tracing::info_span!(
            "replay",
            restored_checkpoint = restored_from.map(|(id, _)| id),
            restored_cut_ms = restored_from.map(|(_, cut)| cut),
            events = tracing::field::Empty,
            elapsed_ms = tracing::field::Empty,
        );
        Self {
            data_dir: data_dir.to_owned(),
            local_workers,
            slide_ms,
            started: Instant::now(),
            outputs: Arc::default(),
            windows_closed: AtomicU64::new(0),
            restored_cut_ms: restored_from.map_or(0, |(_, cut)| cut),
            restored: restored_from.is_some(),
            restored_updates: AtomicU64::new(0),
            restore_load_ns: AtomicU64::new(0),
            caught_up_ns: AtomicU64::new(u64::MAX),
            replay_span: Mutex::new(Some(replay_span)),
            top_keys: top_keys.then(Mutex::default),
        }
    }

    /// The counts the output files add to.
    pub fn output_counts(&self) -> Arc<OutputCounts> {
        Arc::clone(&self.outputs)
    }

    /// A worker restored `updates` in `took` (the slowest worker counts).
    pub fn restored(&self, updates: usize, took: Duration) {
        self.restored_updates
            .fetch_add(updates as u64, Ordering::Relaxed);
        self.restore_load_ns
            .fetch_max(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// A worker's row observer: top keys (if tracked), then `inner`.
    pub fn observer(&self, inner: Option<Arc<dyn RowObserver>>) -> Option<Arc<dyn RowObserver>> {
        let Some(list) = &self.top_keys else {
            return inner;
        };
        let top = Arc::new(Mutex::new(TopKeys::new()));
        list.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&top));
        Some(Arc::new(TopKeysObserver { top, inner }))
    }

    /// Called often by the process's first worker with the output frontier
    /// (`u64::MAX`: done):
    /// counts closed windows and notices when the sources caught up.
    pub fn first_worker_tick(&self, frontier: u64, counters: &SourceCounters) {
        let first_ms = counters.min_event_ms.load(Ordering::Relaxed);
        if let Some(slide) = self.slide_ms.filter(|&s| s > 0) {
            if frontier != u64::MAX && first_ms != u64::MAX {
                // Window ends `e` (multiples of the slide) with
                // `first < e <= frontier`: closed since this run's first event.
                let first = first_ms.max(self.restored_cut_ms);
                let closed = (frontier / slide).saturating_sub(first / slide);
                self.windows_closed.fetch_max(closed, Ordering::Relaxed);
            }
        }
        if self.caught_up_ns.load(Ordering::Relaxed) == u64::MAX
            && counters.caught_up.load(Ordering::Relaxed) >= self.local_workers
        {
            let took = self.started.elapsed();
            self.caught_up_ns
                .store(took.as_nanos() as u64, Ordering::Relaxed);
            if let Some(span) = self
                .replay_span
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
            {
                span.record("events", counters.events_read.load(Ordering::Relaxed));
                span.record("elapsed_ms", millis(took));
            }
        }
    }

    fn top_keys(&self) -> Vec<(String, u64)> {
        let Some(list) = &self.top_keys else {
            return Vec::new();
        };
        let mut all: Vec<(String, u64)> = list
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(|t| t.lock().unwrap_or_else(PoisonError::into_inner).snapshot())
            .collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(TOP_KEYS);
        all
    }
}

/// What the engine's endpoint reports.
#[derive(Clone)]
pub struct MetricsSources {
    /// Events read and late, watermarks.
    pub counters: Arc<SourceCounters>,
    /// Frontier, committed cut, sidecar queue.
    pub gauges: Arc<RunGauges>,
    /// Records held in arrangements, per worker of this process.
    pub arrangements: Arc<Mutex<Vec<Arc<ArrangementGauge>>>>,
    /// Output rows, closed windows, recovery, top keys, data dir.
    pub engine: Arc<EngineMetrics>,
    /// The sidecar connection's figures (checkpoints on).
    pub client: Option<Arc<ClientStats>>,
    /// Backpressure from the checkpoint path (checkpoints on).
    pub pressure: Option<Arc<crate::checkpoint::pressure::SidecarPressure>>,
    /// Metrics of something beside the engine, appended as they render.
    pub extra: Option<crate::run::ExtraMetrics>,
}

/// The engine's metrics in the Prometheus text exposition format.
pub fn render(sources: &MetricsSources) -> String {
    let mut out = Exposition::new();
    let counters = &sources.counters;
    let engine = &sources.engine;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    out.counter(
        "events_in_total",
        "Events read from the input log (late ones included).",
        load(&counters.events_read),
    );
    out.counter(
        "late_events_total",
        "Events refused as late (written to late-*.csv, not into windows).",
        load(&counters.events_late),
    );
    out.counter(
        "idle_markers_in_total",
        "Idle markers read from the input log: a quiet partition's appender advanced its watermark.",
        load(&counters.idle_markers),
    );
    out.counter(
        "log_segments_deleted_total",
        "Input log segments deleted by --log-retention checkpointed (no restorable checkpoint needed them).",
        load(&counters.log_segments_deleted),
    );
    out.counter(
        "log_deleted_bytes_total",
        "Bytes of the input log segments (and indexes) deleted by --log-retention checkpointed.",
        load(&counters.log_bytes_deleted),
    );
    out.counter(
        "source_activations_total",
        "Times a source operator ran (an idle source polls every 16 ms; one paused ahead of the output frontier not at all).",
        load(&counters.activations),
    );
    out.counter(
        "events_out_total",
        "Window rows written to the output files (with checkpoints: once a committed cut covers them).",
        load(&engine.outputs.window_rows),
    );
    out.counter(
        "late_rows_out_total",
        "Late-event rows written to the output files.",
        load(&engine.outputs.late_rows),
    );
    let now = now_ms();
    let gauges = &sources.gauges;
    let frontier = load(&gauges.output_frontier_ms);
    let committed = load(&gauges.committed_cut_ms);
    if frontier != u64::MAX {
        out.gauge(
            "output_frontier_timestamp_seconds",
            "Event time below which every result has been emitted.",
            secs(frontier),
        );
        out.gauge(
            "frontier_lag_seconds",
            "Wall clock minus the output frontier.",
            secs(now.saturating_sub(frontier)),
        );
        if committed != u64::MAX {
            out.gauge(
                "checkpoint_lag_seconds",
                "Output frontier minus the cut of the newest committed checkpoint (event time).",
                secs(frontier.saturating_sub(committed)),
            );
        }
    }
    if let Some(w) = counters.watermark_ms().filter(|&w| w != u64::MAX) {
        out.gauge(
            "watermark_timestamp_seconds",
            "Least input watermark of this process's sources (max event time read minus the lateness, per partition).",
            secs(w),
        );
        out.gauge(
            "watermark_lag_seconds",
            "Wall clock minus the least input watermark.",
            secs(now.saturating_sub(w)),
        );
    }
    if committed != u64::MAX {
        out.gauge(
            "committed_cut_timestamp_seconds",
            "Cut time of the newest committed checkpoint.",
            secs(committed),
        );
    }
    if let Some(client) = &sources.client {
        out.counter(
            "checkpoints_committed_total",
            "Checkpoints the sidecar acknowledged as committed.",
            load(&client.acks),
        );
        out.histogram(
            "commit_latency_seconds",
            "Per checkpoint: from this process writing its first share to the sidecar until the sidecar's commit acknowledgement.",
            &client.commit_latency,
        );
        out.gauge(
            "checkpoint_delta_bytes",
            "Bytes this process shipped to the sidecar for the newest acknowledged checkpoint (its delta).",
            load(&client.last_checkpoint_bytes),
        );
        out.counter(
            "checkpoint_shipped_bytes_total",
            "Bytes of checkpoint shares this process shipped to the sidecar.",
            load(&client.shipped_bytes),
        );
        client.stall.expose(&mut out);
        let (files, bytes) = dir_usage(&engine.data_dir.join("checkpoints"), |n| {
            !is_temp_or_lock(n)
        });
        out.gauge(
            "checkpoint_store_bytes",
            "Bytes of the checkpoint directory on disk: the commit stream and every retained delta and base file.",
            bytes,
        );
        out.gauge(
            "checkpoint_store_files",
            "Files in the checkpoint directory.",
            files,
        );
    }
    if engine.restored {
        out.gauge(
            "recovery_restore_load_seconds",
            "Time the slowest worker took to load and decode its share of the restored checkpoint.",
            load(&engine.restore_load_ns) as f64 / 1e9,
        );
        out.gauge(
            "recovery_restored_updates",
            "State updates loaded from the restored checkpoint by this process.",
            load(&engine.restored_updates),
        );
    }
    let caught_up = load(&engine.caught_up_ns);
    if caught_up != u64::MAX {
        out.gauge(
            "recovery_replay_seconds",
            "From the start of the workers until every source had read its partitions to their end (as of then): the replay of the log after a restore, or the catch-up with the backlog.",
            caught_up as f64 / 1e9,
        );
    }
    out.gauge(
        "sidecar_queue_fill",
        "Checkpoint shares queued for the sidecar client thread.",
        load(&gauges.sidecar_queued),
    );
    out.gauge(
        "sidecar_queue_capacity",
        "Capacity of the sidecar queue.",
        load(&gauges.sidecar_capacity),
    );
    if let Some(pressure) = &sources.pressure {
        pressure.expose(&mut out);
    }
    let arrangements: Vec<Arc<ArrangementGauge>> = sources
        .arrangements
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let per_worker: Vec<(String, String)> = arrangements
        .iter()
        .enumerate()
        .map(|(w, a)| {
            (
                format!("worker=\"{w}\""),
                a.records.load(Ordering::Relaxed).to_string(),
            )
        })
        .collect();
    out.labelled(
        "state_records",
        "gauge",
        "Records held in all arrangements of a worker of this process.",
        &per_worker,
    );
    render_window_state(&mut out, counters);
    let mut partials: Vec<(usize, u64)> = counters
        .combiner_partials
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .map(|(w, n)| (*w, n.load(Ordering::Relaxed)))
        .collect();
    partials.sort_unstable();
    let partials: Vec<(String, String)> = partials
        .into_iter()
        .map(|(w, n)| (format!("worker=\"{w}\""), n.to_string()))
        .collect();
    out.labelled(
        "combiner_partials",
        "gauge",
        "Pre-aggregated partials a worker's source holds for buckets not yet released (open panes or granules): the windows' state before they close; all of it for tumbling windows, which arrange nothing.",
        &partials,
    );
    let per_arrangement: Vec<(String, String)> = arrangements
        .iter()
        .enumerate()
        .flat_map(|(w, a)| {
            a.per_operator()
                .into_iter()
                .map(move |(op, n)| (format!("worker=\"{w}\",operator=\"{op}\""), n.to_string()))
        })
        .collect();
    out.labelled(
        "arrangement_records",
        "gauge",
        "Records held per arrangement (timely operator id) and worker.",
        &per_arrangement,
    );
    let sum = |f: fn(&ArrangementGauge) -> u64| arrangements.iter().map(|a| f(a)).sum::<u64>();
    out.counter(
        "arrangement_merges_total",
        "Batch merges completed in the arrangements of this process.",
        sum(|a| a.merges.load(Ordering::Relaxed)),
    );
    out.counter(
        "arrangement_records_compacted_total",
        "Records merges consolidated away (retired window state physically dropped): evictions.",
        sum(|a| a.records_compacted.load(Ordering::Relaxed)),
    );
    if engine.slide_ms.is_some() {
        out.counter(
            "windows_closed_total",
            "Windows closed (emitted and retired) in this run: window ends the output frontier passed after the least accepted event time read (or the restored cut).",
            load(&engine.windows_closed),
        );
    }
    if engine.top_keys.is_some() {
        let top: Vec<(String, String)> = engine
            .top_keys()
            .into_iter()
            .enumerate()
            .map(|(rank, (key, count))| {
                (
                    format!("rank=\"{}\",key=\"{}\"", rank + 1, label_value(&key)),
                    count.to_string(),
                )
            })
            .collect();
        out.labelled(
            "top_key_window_events",
            "gauge",
            "Top 10 keys by events in one window (the count column of the window rows this process emitted in the last second with output). Approximates per-key state weight; every key holds one partial record per open pane.",
            &top,
        );
    }
    let (mut partitions, mut segments, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
    for (topic, usage) in log_usage(&engine.data_dir.join(crate::log::LOG_DIR_NAME)) {
        let label = format!("topic=\"{}\"", label_value(&topic));
        partitions.push((label.clone(), usage.0.to_string()));
        segments.push((label.clone(), usage.1.to_string()));
        bytes.push((label, usage.2.to_string()));
    }
    out.labelled(
        "log_partitions",
        "gauge",
        "Partitions of each input log topic.",
        &partitions,
    );
    out.labelled(
        "log_segments",
        "gauge",
        "Segment files of each input log topic.",
        &segments,
    );
    out.labelled(
        "log_bytes",
        "gauge",
        "Bytes of each input log topic's segment files.",
        &bytes,
    );
    out.finish()
}

/// Serves the engine's `GET /metrics` on `addr` (loopback only) until
/// `stop` is set. Returns the bound address (useful with port 0).
pub fn serve(
    addr: SocketAddr,
    sources: MetricsSources,
    stop: Arc<AtomicBool>,
) -> std::io::Result<SocketAddr> {
    let text = move || {
        let mut text = render(&sources);
        if let Some(extra) = &sources.extra {
            text.push_str(&extra());
        }
        text
    };
    serve_text(addr, Box::new(text), stop)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    #[test]
    fn serves_prometheus_text_on_loopback_and_refuses_other_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let sources = MetricsSources {
            counters: Arc::default(),
            gauges: Arc::default(),
            arrangements: Arc::default(),
            engine: Arc::new(EngineMetrics::new(dir.path(), 1, Some(1000), None, true)),
            client: Some(Arc::default()),
            pressure: Some(Arc::new(crate::checkpoint::pressure::SidecarPressure::new(
                crate::checkpoint::pressure::PressureLimits {
                    max_uncommitted: 4,
                    max_tap_buffer_bytes: 1 << 20,
                },
                0,
            ))),
            extra: Some(Arc::new(|| "weir_source_beside_total 5\n".to_owned())),
        };
        sources.counters.events_read.store(42, Ordering::Relaxed);
        sources
            .gauges
            .output_frontier_ms
            .store(10_000, Ordering::Relaxed);
        sources
            .gauges
            .committed_cut_ms
            .store(7_000, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        assert!(serve(
            "0.0.0.0:0".parse().unwrap(),
            sources.clone(),
            Arc::clone(&stop)
        )
        .is_err());
        let addr = serve("127.0.0.1:0".parse().unwrap(), sources, Arc::clone(&stop)).unwrap();
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        stop.store(true, Ordering::Release);
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(
            response.contains("\nweir_events_in_total 42\n"),
            "{response}"
        );
        assert!(
            response.ends_with("\nweir_source_beside_total 5\n"),
            "{response}"
        );
        assert!(
            response.contains("\nweir_checkpoint_lag_seconds 3\n"),
            "{response}"
        );
        assert!(
            response.contains("# TYPE weir_commit_latency_seconds histogram\n"),
            "{response}"
        );
    }
}
