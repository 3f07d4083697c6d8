//! `weir-harness latency`: an open-loop load into the input log while the
//! engine runs in this process, tailing it; every emitted window row's
//! latency is `emit wall time - (window end + lateness)`.
//!
//! Writes `results/<run-id>/summary.json`, `latency.hgrm` and
//! `timeseries.csv`, and prints a progress line every second. The time
//! series samples, once a second: rates, lags, latency percentiles of the
//! rows emitted in that second, the newest committed checkpoint (from the
//! commit stream: its size and the bytes its new files added), its commit
//! latency, and the records held in arrangements (scraped from the engine's
//! own `/metrics` endpoint on a free loopback port).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;
use weir::checkpoint::pressure::DEFAULT_MAX_TAP_BUFFER_BYTES;
use weir::driver::run;
use weir::event::encode_event;
use weir::gen::{SplitMix64, ZipfSampler};
use weir::ingest::idle::IdleMarkers;
use weir::job::WindowQuery;
use weir::log::{partition_dir, FsyncPolicy, LogConfig, PartitionWriter};
use weir::run::{CheckpointOptions, RowObserver, RunGauges, RunHooks, RunOptions, EVENTS_TOPIC};
use weir_dataflows::duration::parse_duration_ms;
use weir_dataflows::{WindowRow, WindowSpec};

pub(crate) mod samplers;

use self::samplers::{free_loopback_port, scrape_metrics, sum_per_worker, CheckpointSampler};
use crate::latency_stats::{LatencyStats, Percentiles};
use crate::pacing::{in_burst, Shape};
use crate::RunHeader;

/// Arguments of the latency mode.
#[derive(clap::Parser, Debug)]
pub struct LatencyArgs {
    /// Events per second of the open-loop load.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// How long the load runs.
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms)]
    duration: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Window of the query.
    #[arg(long, default_value = "tumbling:1s")]
    window: WindowSpec,
    /// Allowed lateness (the generated events arrive in order).
    #[arg(long, default_value = "0s", value_parser = parse_duration_ms)]
    lateness: u64,
    /// Shape of the load over time.
    #[arg(long, value_enum, default_value = "steady")]
    shape: Shape,
    /// Input partitions.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Distinct Zipf keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u32,
    /// Checkpoint interval; with `--no-checkpoint`, none.
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    checkpoint_interval: u64,
    /// Run without checkpoints.
    #[arg(long)]
    no_checkpoint: bool,
    /// Windows that end within this long after the load starts are warm-up
    /// (process start, first allocations, first checkpoint): their rows are
    /// counted and in the time series, but not in the run's percentiles.
    #[arg(long, default_value = "2s", value_parser = parse_duration_ms)]
    warmup: u64,
    /// Work directory (log, checkpoints, outputs); emptied first.
    #[arg(long, default_value = "target/harness/latency")]
    work_dir: PathBuf,
    /// Results directory.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Find the highest sustainable rate (starting from --rate, doubling,
    /// then bisecting with runs of --probe-duration), then measure latency
    /// at half of it for --duration.
    #[arg(long)]
    max_throughput: bool,
    /// Length of each probe run of --max-throughput.
    #[arg(long, default_value = "8s", value_parser = parse_duration_ms)]
    probe_duration: u64,
    /// Append an idle marker (decision 29) to a partition that had nothing
    /// new for this long, so a quiet partition does not hold the windows
    /// back; `0s`: never.
    #[arg(long, default_value = "0s", value_parser = parse_duration_ms)]
    idle_timeout: u64,
    /// Serve the engine's Prometheus metrics on this loopback address
    /// during the measured run (not during --max-throughput probes).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// `weir run --memory-budget` (sliding windows): panes above it move
    /// to disk; the time series shows both tiers.
    #[arg(long, value_parser = weir::size::parse_size_bytes)]
    memory_budget: Option<u64>,
}

/// Records the latency of every emitted row.
#[derive(Debug)]
struct Recorder {
    lateness_ms: u64,
    /// The whole run, and the current second of the time series.
    stats: Mutex<(LatencyStats, LatencyStats)>,
    rows: AtomicU64,
    newest_window_end: AtomicU64,
    /// Rows emitted after the load stopped are the end-of-input flush, not
    /// steady state: they are counted but not recorded.
    stopped: AtomicBool,
    /// Rows of windows ending before this (Unix ms: the load's start plus
    /// `--warmup`) are warm-up: counted and in the time series, but not in
    /// the run's percentiles. `u64::MAX` until the load starts.
    measured_from_ms: AtomicU64,
}

impl Recorder {
    fn new(lateness_ms: u64) -> Self {
        Recorder {
            lateness_ms,
            stats: Mutex::default(),
            rows: AtomicU64::new(0),
            newest_window_end: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            measured_from_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Records a batch of rows emitted at `now_us`: each row's latency is
    /// `now - (window end + lateness)`.
    fn record_batch(&self, now_us: u64, rows: &mut dyn Iterator<Item = &WindowRow>) {
        let stopped = self.stopped.load(Ordering::Relaxed);
        let measured_from_ms = self.measured_from_ms.load(Ordering::Relaxed);
        let (mut count, mut newest_end) = (0u64, 0u64);
        let mut stats = self.stats.lock().expect("stats poisoned");
        for row in rows {
            count += 1;
            newest_end = newest_end.max(row.window_end);
            if !stopped {
                let due_us = (row.window_end + self.lateness_ms) * 1_000;
                let latency_us = now_us.saturating_sub(due_us);
                if row.window_end >= measured_from_ms {
                    stats.0.record_us(latency_us);
                }
                stats.1.record_us(latency_us);
            }
        }
        drop(stats);
        self.rows.fetch_add(count, Ordering::Relaxed);
        self.newest_window_end
            .fetch_max(newest_end, Ordering::Relaxed);
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl RowObserver for Recorder {
    fn window_rows(&self, rows: &mut dyn Iterator<Item = &WindowRow>) {
        // One clock reading for the batch: its rows are emitted together.
        self.record_batch(now_us(), rows);
    }
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    header: RunHeader,
    config: Config,
    events: u64,
    /// Events appended per second of load, as achieved.
    throughput: f64,
    /// With --max-throughput: the highest rate sustained.
    max_sustainable_throughput: Option<u64>,
    /// The same per worker.
    max_sustainable_throughput_per_worker: Option<f64>,
    window_rows: u64,
    /// Latency of window rows emitted during the load, ms.
    latency_ms: Percentiles,
    checkpoints_committed: Option<u64>,
    last_commit_latency_us: Option<u64>,
    peak_rss_bytes: u64,
    /// How far the newest emitted window end trailed the wall clock when
    /// the load stopped, ms (None: no window emitted during the load).
    final_lag_ms: Option<u64>,
    /// Idle markers appended to quiet partitions (`--idle-timeout`).
    idle_markers: usize,
}

#[derive(Serialize)]
struct Config {
    rate: u64,
    shape: String,
    duration_ms: u64,
    workers: usize,
    window: String,
    lateness_ms: u64,
    partitions: u32,
    keys: u32,
    checkpoint_interval_ms: Option<u64>,
    warmup_ms: u64,
    /// None: no idle markers.
    idle_timeout_ms: Option<u64>,
    /// None: no memory budget.
    memory_budget_bytes: Option<u64>,
}

fn rss_bytes() -> u64 {
    samplers::rss_of("self")
}

/// What one run at a fixed rate measured.
struct Measured {
    events: u64,
    load_secs: f64,
    stats: LatencyStats,
    series: String,
    peak_rss: u64,
    run: weir::run::RunSummary,
    /// How far the newest emitted window end trailed the wall clock when the
    /// load stopped (None: no window was emitted).
    final_lag_ms: Option<u64>,
    /// Idle markers appended to quiet partitions.
    idle_markers: usize,
}

/// Runs the load at `rate` for `duration_ms` with the engine tailing it.
fn measure(args: &LatencyArgs, rate: u64, duration_ms: u64, quiet: bool) -> Result<Measured> {
    anyhow::ensure!(
        rate > 0 && args.partitions > 0,
        "--rate and --partitions must be positive"
    );
    anyhow::ensure!(
        args.idle_timeout == 0 || args.idle_timeout >= weir::ingest::idle::MIN_IDLE_TIMEOUT_MS,
        "--idle-timeout must be 0s (off) or at least {} ms",
        weir::ingest::idle::MIN_IDLE_TIMEOUT_MS
    );
    crate::fresh_work_dir(&args.work_dir)?;
    let data_dir = args.work_dir.join("data");
    let log_dir = data_dir.join("log");
    let log_config = LogConfig {
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let mut writers = (0..args.partitions)
        .map(|p| PartitionWriter::open(&partition_dir(&log_dir, EVENTS_TOPIC, p), log_config))
        .collect::<Result<Vec<_>, _>>()
        .context("creating the log partitions")?;

    let recorder = Arc::new(Recorder::new(args.lateness));
    let stop = Arc::new(AtomicBool::new(false));
    let gauges = Arc::new(RunGauges::default());
    let checkpoint = (!args.no_checkpoint).then_some(CheckpointOptions {
        interval_ms: args.checkpoint_interval,
        adaptive: false,
        sidecar: None,
        max_tap_buffer_bytes: DEFAULT_MAX_TAP_BUFFER_BYTES,
        log_retention: weir::run::LogRetention::Keep,
        sidecar_reconnect_ms: 0,
        cold_store: None,
        restore_from: None,
        replica: None,
        keep_local: weir::checkpoint::store::RETAINED_CHECKPOINTS,
    });
    let options = RunOptions {
        data_dir: data_dir.clone(),
        out_dir: args.work_dir.join("out"),
        inputs: Vec::new(),
        ingest_first: false,
        generated: None,
        query: WindowQuery {
            spec: args.window,
            granularity_ms: args.window.default_granularity_ms(),
            lateness_ms: args.lateness,
            nexmark: None,
            emit: weir_dataflows::emit::Emit::All,
            aggregates: weir_dataflows::aggregates::Aggregates::default(),
        },
        workers: args.workers,
        cluster: None,
        until_end: false,
        batch_records: 8_192,
        log_config,
        checkpoint: checkpoint.clone(),
        hooks: RunHooks {
            observer: Some(recorder.clone() as Arc<dyn RowObserver>),
            stop: Some(Arc::clone(&stop)),
            gauges: Some(Arc::clone(&gauges)),
            extra_metrics: None,
        },
        // The time series scrapes the engine's own endpoint (state records).
        metrics_addr: if quiet {
            None
        } else {
            args.metrics_addr.or_else(free_loopback_port)
        },
        memory_budget_bytes: args.memory_budget,
    };
    let metrics_addr = options.metrics_addr;
    let checkpoint_dir = data_dir.join("checkpoints");
    let mut checkpoints = CheckpointSampler::default();
    let engine = std::thread::spawn(move || run(&options));

    let start_ms = now_us() / 1_000;
    recorder
        .measured_from_ms
        .store(start_ms + args.warmup, Ordering::Relaxed);
    let started = Instant::now();
    let mut rng = SplitMix64::new(42);
    let sampler = ZipfSampler::new(args.keys, 1.0);
    let mut payload = Vec::with_capacity(64);
    let mut key = String::new();
    let mut sent = 0u64;
    let mut series = String::from(
        "second,input_rate,output_rate,frontier_lag_ms,checkpoint_lag_ms,sidecar_fill,rss_bytes,\
         latency_p50_ms,latency_p99_ms,latency_max_ms,committed_cut_ms,checkpoint_id,\
         checkpoint_bytes,checkpoint_delta_bytes,checkpoint_files,commit_latency_us,state_records,\
         combiner_partials,window_memory_bytes,window_disk_bytes\n",
    );
    let (mut last_sent, mut last_rows, mut peak_rss) = (0u64, 0u64, 0u64);
    let mut next_report = Duration::from_secs(1);
    let total = args.shape.due_before(rate, duration_ms * 1_000);
    let mut idle_markers = (args.idle_timeout > 0)
        .then(|| IdleMarkers::new(writers.len(), args.idle_timeout, start_ms));
    let mut markers_written = 0usize;
    while sent < total {
        let elapsed = started.elapsed();
        let elapsed_ms = elapsed.as_millis() as u64;
        let due = args
            .shape
            .due_before(rate, elapsed.as_micros() as u64)
            .min(total);
        while sent < due {
            // Intended at this tick (events become due within the 0.5 ms loop).
            let mut ts = start_ms + elapsed_ms;
            key.clear();
            match args.shape {
                Shape::HotKey if rng.below(2) == 0 => key.push_str("hot"),
                Shape::KeyGrowth => {
                    let epoch = elapsed_ms / 10_000;
                    let rank =
                        u64::from(sampler.sample(&mut rng)) + epoch * u64::from(args.keys) / 2;
                    write!(key, "key{rank}").expect("writing to a String");
                }
                _ => write!(key, "key{}", sampler.sample(&mut rng)).expect("writing to a String"),
            }
            if args.shape == Shape::LateBursts && in_burst(elapsed_ms) && rng.below(10) == 0 {
                ts = ts.saturating_sub(3 * (args.window.size_ms() + args.lateness));
            }
            payload.clear();
            encode_event(ts, &key, (rng.below(1_000) as i64) - 100, &mut payload);
            let last_quiet = args.shape == Shape::QuietPartition && elapsed_ms >= args.warmup;
            let partitions =
                u64::from(args.partitions) - u64::from(last_quiet && args.partitions > 1);
            let partition = (sent % partitions) as usize;
            writers[partition].append(&payload)?;
            if let Some(markers) = idle_markers.as_mut() {
                markers.appended(partition, ts, start_ms + elapsed_ms);
            }
            sent += 1;
        }
        if let Some(markers) = idle_markers.as_mut() {
            markers_written += markers.append_due(start_ms + elapsed_ms, &mut writers)?;
        }
        for w in &mut writers {
            w.flush()?;
        }
        if engine.is_finished() {
            break;
        }
        if elapsed >= next_report {
            let rows = recorder.rows.load(Ordering::Relaxed);
            let frontier = gauges.output_frontier_ms.load(Ordering::Relaxed);
            let committed = gauges.committed_cut_ms.load(Ordering::Relaxed);
            // Wall clock minus the output frontier (event time = send time here).
            let lag = if frontier == u64::MAX {
                String::new()
            } else {
                (now_us() / 1_000).saturating_sub(frontier).to_string()
            };
            // DESIGN §4: frontier minus the last committed cut.
            let checkpoint_lag = if frontier == u64::MAX || committed == u64::MAX {
                String::new()
            } else {
                frontier.saturating_sub(committed).to_string()
            };
            let fill = format!(
                "{}/{}",
                gauges.sidecar_queued.load(Ordering::Relaxed),
                gauges.sidecar_capacity.load(Ordering::Relaxed)
            );
            let rss = rss_bytes();
            peak_rss = peak_rss.max(rss);
            let second = std::mem::take(&mut recorder.stats.lock().expect("stats poisoned").1);
            let p = second.percentiles();
            let percentiles = if p.count == 0 {
                ",,".to_owned()
            } else {
                format!("{},{},{}", p.p50, p.p99, p.max)
            };
            let committed_cut = if committed == u64::MAX {
                String::new()
            } else {
                committed.to_string()
            };
            let commit_latency = gauges.last_commit_latency_us.load(Ordering::Relaxed);
            let commit_latency = if commit_latency == u64::MAX {
                String::new()
            } else {
                commit_latency.to_string()
            };
            let scraped = metrics_addr.and_then(scrape_metrics);
            let summed = |name: &str| {
                scraped
                    .as_deref()
                    .and_then(|text| sum_per_worker(text, name))
                    .map_or(String::new(), |r| r.to_string())
            };
            let state = summed("weir_state_records");
            let partials = summed("weir_combiner_partials");
            let tier = |t: &str| {
                let text = scraped.as_deref().unwrap_or("");
                samplers::sum_with_label(text, "weir_state_bytes", &format!("tier=\"{t}\""))
                    .map_or(String::new(), |b| b.to_string())
            };
            let (memory, disk) = (tier("memory"), tier("disk"));
            writeln!(
                series,
                "{},{},{},{lag},{checkpoint_lag},{fill},{rss},{percentiles},{committed_cut},{},{commit_latency},{state},{partials},{memory},{disk}",
                next_report.as_secs(),
                sent - last_sent,
                rows - last_rows,
                checkpoints.sample(&checkpoint_dir),
            )
            .ok();
            if !quiet {
                eprintln!(
                    "[{:>3}s] in {:>8}/s  out {:>7} rows/s  frontier lag {:>6} ms  checkpoint lag {:>6} ms  sidecar queue {fill}  rss {} MB",
                    next_report.as_secs(),
                    sent - last_sent,
                    rows - last_rows,
                    lag,
                    checkpoint_lag,
                    rss >> 20
                );
            }
            (last_sent, last_rows) = (sent, rows);
            next_report += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let load_secs = started.elapsed().as_secs_f64();
    let newest_end = recorder.newest_window_end.load(Ordering::Relaxed);
    let final_lag_ms =
        (newest_end > 0).then(|| (now_us() / 1_000).saturating_sub(newest_end + args.lateness));
    recorder.stopped.store(true, Ordering::Relaxed);
    stop.store(true, Ordering::Release);
    let summary = engine
        .join()
        .map_err(|_| anyhow::anyhow!("the engine thread panicked"))??;
    anyhow::ensure!(
        summary.events_read == sent,
        "the engine read {} of {sent} events",
        summary.events_read
    );

    let stats = recorder.stats.lock().expect("stats poisoned").0.clone();
    Ok(Measured {
        events: sent,
        load_secs,
        stats,
        series,
        peak_rss: peak_rss.max(rss_bytes()),
        run: summary,
        final_lag_ms,
        idle_markers: markers_written,
    })
}

/// Whether a run kept up: the generator reached 95 % of the rate and the
/// newest emitted window trailed the clock by at most two windows and a second.
fn sustainable(args: &LatencyArgs, rate: u64, m: &Measured) -> bool {
    let achieved = m.events as f64 / m.load_secs;
    let bound_ms = 2 * args.window.size_ms() + args.lateness + 1_000;
    achieved >= 0.95 * rate as f64 && m.final_lag_ms.is_some_and(|lag| lag <= bound_ms)
}

/// Runs the latency measurement (or the search for the highest sustainable
/// rate first) and writes the results.
pub fn latency(args: &LatencyArgs) -> Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.partitions > 0,
        "--rate and --partitions must be positive"
    );
    anyhow::ensure!(
        args.warmup < args.duration,
        "--warmup ({} ms) must be shorter than --duration ({} ms)",
        args.warmup,
        args.duration
    );
    let mut max_rate = None;
    let rate = if args.max_throughput {
        let (mut good, mut bad) = (0u64, None::<u64>);
        let mut probe = args.rate;
        for _ in 0..12 {
            let m = measure(args, probe, args.probe_duration, true)?;
            let ok = sustainable(args, probe, &m);
            eprintln!(
                "probe {probe:>9} events/s: achieved {:>9.0}/s, lag {:?} ms -> {}",
                m.events as f64 / m.load_secs,
                m.final_lag_ms,
                if ok { "sustained" } else { "not sustained" }
            );
            if ok {
                good = probe;
            } else {
                bad = Some(probe);
            }
            probe = match bad {
                None => probe * 2,
                Some(b) if b - good > b / 10 => good + (b - good) / 2,
                Some(_) => break,
            };
        }
        anyhow::ensure!(good > 0, "not even --rate {} was sustained", args.rate);
        max_rate = Some(good);
        eprintln!("highest sustained rate: {good} events/s; measuring latency at half of it");
        good / 2
    } else {
        args.rate
    };
    let m = measure(args, rate, args.duration, false)?;
    let percentiles = m.stats.percentiles();
    let out = Summary {
        header: RunHeader::new("latency"),
        config: Config {
            rate,
            shape: format!("{:?}", args.shape),
            duration_ms: args.duration,
            workers: args.workers,
            window: args.window.to_string(),
            lateness_ms: args.lateness,
            partitions: args.partitions,
            keys: args.keys,
            checkpoint_interval_ms: (!args.no_checkpoint).then_some(args.checkpoint_interval),
            warmup_ms: args.warmup,
            idle_timeout_ms: (args.idle_timeout > 0).then_some(args.idle_timeout),
            memory_budget_bytes: args.memory_budget,
        },
        events: m.events,
        throughput: m.events as f64 / m.load_secs,
        max_sustainable_throughput: max_rate,
        max_sustainable_throughput_per_worker: max_rate.map(|r| r as f64 / args.workers as f64),
        window_rows: m.run.window_rows,
        latency_ms: percentiles,
        checkpoints_committed: m
            .run
            .checkpoints
            .as_ref()
            .and_then(|c| c.last_committed.map(|(id, _)| id)),
        last_commit_latency_us: m
            .run
            .checkpoints
            .as_ref()
            .and_then(|c| c.last_commit_latency_us),
        peak_rss_bytes: m.peak_rss,
        final_lag_ms: m.final_lag_ms,
        idle_markers: m.idle_markers,
    };
    let dir = crate::write_summary(&args.results, "latency", &out)?;
    std::fs::write(dir.join("latency.hgrm"), m.stats.hgrm())?;
    std::fs::write(dir.join("timeseries.csv"), &m.series)?;
    eprintln!(
        "latency (ms) p50 {:.3}  p90 {:.3}  p99 {:.3}  p999 {:.3}  max {:.3}  over {} rows",
        percentiles.p50,
        percentiles.p90,
        percentiles.p99,
        percentiles.p999,
        percentiles.max,
        percentiles.count
    );
    println!("{}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests;
