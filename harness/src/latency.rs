//! `weir-harness latency`: an open-loop load into the input log while the
//! engine runs in this process, tailing it; every emitted window row's
//! latency is `emit wall time - (window end + lateness)`.
//!
//! Writes `results/<run-id>/summary.json`, `latency.hgrm` and
//! `timeseries.csv`, and prints a progress line every second.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;
use weir::event::encode_event;
use weir::gen::{SplitMix64, ZipfSampler};
use weir::job::WindowQuery;
use weir::log::{partition_dir, FsyncPolicy, LogConfig, PartitionWriter};
use weir::run::{run, CheckpointOptions, RowObserver, RunHooks, RunOptions, EVENTS_TOPIC};
use weir_dataflows::duration::parse_duration_ms;
use weir_dataflows::{WindowRow, WindowSpec};

use crate::latency_stats::{LatencyStats, Percentiles};
use crate::pacing::Pacer;
use crate::{git_commit, machine, Machine};

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
    /// Work directory (log, checkpoints, outputs); emptied first.
    #[arg(long, default_value = "target/harness/latency")]
    work_dir: PathBuf,
    /// Results directory.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

/// Records the latency of every emitted row.
#[derive(Debug)]
struct Recorder {
    lateness_ms: u64,
    stats: Mutex<LatencyStats>,
    rows: AtomicU64,
    newest_window_end: AtomicU64,
    /// Rows emitted after the load stopped are the end-of-input flush, not
    /// steady state: they are counted but not recorded.
    stopped: AtomicBool,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl RowObserver for Recorder {
    fn window_row(&self, row: &WindowRow) {
        self.rows.fetch_add(1, Ordering::Relaxed);
        self.newest_window_end
            .fetch_max(row.window_end, Ordering::Relaxed);
        if self.stopped.load(Ordering::Relaxed) {
            return;
        }
        let due_us = (row.window_end + self.lateness_ms) * 1_000;
        let latency_us = now_us().saturating_sub(due_us);
        self.stats
            .lock()
            .expect("stats poisoned")
            .record_us(latency_us);
    }
}

#[derive(Serialize)]
struct Summary {
    mode: &'static str,
    command: String,
    git_commit: String,
    machine: Machine,
    config: Config,
    events: u64,
    /// Events appended per second of load, as achieved.
    throughput: f64,
    window_rows: u64,
    /// Latency of window rows emitted during the load, ms.
    latency_ms: Percentiles,
    checkpoints_committed: Option<u64>,
    last_commit_latency_us: Option<u64>,
    peak_rss_bytes: u64,
}

#[derive(Serialize)]
struct Config {
    rate: u64,
    duration_ms: u64,
    workers: usize,
    window: String,
    lateness_ms: u64,
    partitions: u32,
    keys: u32,
    checkpoint_interval_ms: Option<u64>,
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1_024)
}

/// Runs the latency measurement.
pub fn latency(args: &LatencyArgs) -> Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.partitions > 0,
        "--rate and --partitions must be positive"
    );
    if args.work_dir.exists() {
        std::fs::remove_dir_all(&args.work_dir)
            .with_context(|| format!("emptying {}", args.work_dir.display()))?;
    }
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

    let recorder = Arc::new(Recorder {
        lateness_ms: args.lateness,
        stats: Mutex::new(LatencyStats::default()),
        rows: AtomicU64::new(0),
        newest_window_end: AtomicU64::new(0),
        stopped: AtomicBool::new(false),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let checkpoint = (!args.no_checkpoint).then_some(CheckpointOptions {
        interval_ms: args.checkpoint_interval,
        sidecar: None,
    });
    let options = RunOptions {
        data_dir: data_dir.clone(),
        out_dir: args.work_dir.join("out"),
        inputs: Vec::new(),
        query: WindowQuery {
            spec: args.window,
            granularity_ms: args.window.default_granularity_ms(),
            lateness_ms: args.lateness,
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
        },
    };
    let engine = std::thread::spawn(move || run(&options));

    let start_ms = now_us() / 1_000;
    let pacer = Pacer {
        start_ms,
        rate_per_s: args.rate,
    };
    let started = Instant::now();
    let mut rng = SplitMix64::new(42);
    let sampler = ZipfSampler::new(args.keys, 1.0);
    let mut payload = Vec::with_capacity(64);
    let mut key = String::new();
    let mut sent = 0u64;
    let mut series = String::from("second,input_rate,output_rate,frontier_lag_ms,rss_bytes\n");
    let (mut last_sent, mut last_rows, mut peak_rss) = (0u64, 0u64, 0u64);
    let mut next_report = Duration::from_secs(1);
    let total = Pacer {
        start_ms: 0,
        rate_per_s: args.rate,
    }
    .due_before(args.duration * 1_000);
    while sent < total {
        let elapsed = started.elapsed();
        let due = pacer.due_before(elapsed.as_micros() as u64).min(total);
        while sent < due {
            let ts = pacer.intended_ms(sent);
            key.clear();
            write!(key, "key{}", sampler.sample(&mut rng)).expect("writing to a String");
            payload.clear();
            encode_event(ts, &key, (rng.below(1_000) as i64) - 100, &mut payload);
            writers[(sent % u64::from(args.partitions)) as usize].append(&payload)?;
            sent += 1;
        }
        for w in &mut writers {
            w.flush()?;
        }
        if engine.is_finished() {
            break;
        }
        if elapsed >= next_report {
            let rows = recorder.rows.load(Ordering::Relaxed);
            let newest_end = recorder.newest_window_end.load(Ordering::Relaxed);
            let lag = if newest_end == 0 {
                String::new()
            } else {
                (now_us() / 1_000)
                    .saturating_sub(newest_end + args.lateness)
                    .to_string()
            };
            let rss = rss_bytes();
            peak_rss = peak_rss.max(rss);
            writeln!(
                series,
                "{},{},{},{lag},{rss}",
                next_report.as_secs(),
                sent - last_sent,
                rows - last_rows
            )
            .ok();
            eprintln!(
                "[{:>3}s] in {:>8}/s  out {:>7} rows/s  frontier lag {:>6} ms  rss {} MB",
                next_report.as_secs(),
                sent - last_sent,
                rows - last_rows,
                lag,
                rss >> 20
            );
            (last_sent, last_rows) = (sent, rows);
            next_report += Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let load_secs = started.elapsed().as_secs_f64();
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

    let stats = recorder.stats.lock().expect("stats poisoned").clone();
    let percentiles = stats.percentiles();
    let out = Summary {
        mode: "latency",
        command: std::env::args().collect::<Vec<_>>().join(" "),
        git_commit: git_commit(),
        machine: machine(),
        config: Config {
            rate: args.rate,
            duration_ms: args.duration,
            workers: args.workers,
            window: args.window.to_string(),
            lateness_ms: args.lateness,
            partitions: args.partitions,
            keys: args.keys,
            checkpoint_interval_ms: checkpoint.map(|c| c.interval_ms),
        },
        events: sent,
        throughput: sent as f64 / load_secs,
        window_rows: summary.window_rows,
        latency_ms: percentiles,
        checkpoints_committed: summary
            .checkpoints
            .as_ref()
            .and_then(|c| c.last_committed.map(|(id, _)| id)),
        last_commit_latency_us: summary
            .checkpoints
            .as_ref()
            .and_then(|c| c.last_commit_latency_us),
        peak_rss_bytes: peak_rss.max(rss_bytes()),
    };
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = args.results.join(format!("latency-{secs}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&out)?,
    )?;
    std::fs::write(dir.join("latency.hgrm"), stats.hgrm())?;
    std::fs::write(dir.join("timeseries.csv"), series)?;
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
