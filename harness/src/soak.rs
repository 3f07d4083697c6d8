//! `weir-harness soak`: a long open-loop load (issue 13's soak) into the log
//! while a separate `weir run` process tails it with checkpoints, with
//! sidecar and engine `kill -9`s at fixed moments, each followed by a
//! restart that restores. Every second it samples the engine's and the
//! sidecar's RSS, the frontier and checkpoint lag (the engine's metrics),
//! the checkpoint store, the commit stream and the log on disk
//! (`timeseries.csv`). When the load stops, the tailing engine is killed
//! once more and a `--until-end` run finishes the log; its committed output
//! (all attempts together) must equal the rows the generator expects
//! ([`expected`], folded as it appends), compared per event-time minute by
//! an order-free digest ([`digest`]). The engine runs with
//! `--log-retention checkpointed`, so the log stays about two checkpoints
//! plus a segment per partition, whatever the rate and the duration.
//!
//! Kills fall between 25 % and 60 % of the duration, alternating sidecar
//! and engine, so the engine process that serves the last 40 % is long
//! lived and its last 10 minutes show whether memory creeps.

pub(crate) mod digest;
mod engine;
mod expected;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use weir::checkpoint::store::read_commits;
use weir::event::encode_event;
use weir::gen::{SplitMix64, ZipfSampler};
use weir::log::{partition_dir, FsyncPolicy, LogConfig, PartitionWriter};
use weir::run::EVENTS_TOPIC;
use weir_dataflows::duration::parse_duration_ms;
use weir_dataflows::WindowSpec;

use self::digest::OutputDigest;
use self::engine::Engine;
use self::expected::ExpectedWindows;
use crate::latency::samplers::{metric_value, rss_of, scrape_metrics};
use crate::pacing::Shape;
use crate::RunHeader;

/// Arguments of the soak mode.
#[derive(clap::Parser, Debug)]
pub struct SoakArgs {
    /// Events per second of the open-loop load.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// How long the load runs.
    #[arg(long, default_value = "1h", value_parser = parse_duration_ms)]
    duration: u64,
    /// Worker threads of the engine.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Window of the query.
    #[arg(long, default_value = "sliding:10s/1s")]
    window: WindowSpec,
    /// Allowed lateness (the generated events arrive in order).
    #[arg(long, default_value = "0s", value_parser = parse_duration_ms)]
    lateness: u64,
    /// Input partitions.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Distinct Zipf keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u32,
    /// Checkpoint interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    checkpoint_interval: u64,
    /// `kill -9`s of the sidecar (the engine then ends and is restarted).
    #[arg(long, default_value_t = 2)]
    sidecar_kills: u32,
    /// `kill -9`s of the engine's process group (engine and its sidecar).
    #[arg(long, default_value_t = 2)]
    engine_kills: u32,
    /// Work directory (log, checkpoints, outputs); emptied first.
    #[arg(long, default_value = "target/harness/soak")]
    work_dir: PathBuf,
    /// Results directory.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    header: RunHeader,
    rate: u64,
    duration_ms: u64,
    workers: usize,
    window: String,
    lateness_ms: u64,
    partitions: u32,
    keys: u32,
    checkpoint_interval_ms: u64,
    /// Events appended during the load.
    events: u64,
    kills: Vec<Kill>,
    /// Mean engine RSS over minutes 5–15 of a 1 h run (1/12 to 1/4 of the
    /// duration) and over its last 10 minutes (the last 1/6), bytes.
    engine_rss_early_mean_bytes: u64,
    engine_rss_last_mean_bytes: u64,
    /// last / early.
    engine_rss_ratio: f64,
    engine_rss_peak_bytes: u64,
    sidecar_rss_peak_bytes: u64,
    checkpoint_store_peak_bytes: u64,
    checkpoint_store_last_bytes: u64,
    commit_stream_peak_bytes: u64,
    commit_stream_last_bytes: u64,
    /// The log on disk: its peak (sampled each second) and at the end
    /// (the engine runs with `--log-retention checkpointed`).
    log_bytes_peak: u64,
    log_bytes: u64,
    /// Per minute of the load: the 99th percentile of the frontier lag
    /// sampled each second (ms; null for a minute with no sample), measured
    /// on the event clock (start wall clock + monotonic time).
    frontier_lag_p99_ms_per_minute: Vec<Option<u64>>,
    /// The `--until-end` run that finished the log after the load, s.
    final_run_secs: f64,
    window_rows: u64,
    late_rows: u64,
    /// The committed output equals the expected rows.
    identical: bool,
    first_difference: Option<String>,
}

#[derive(Serialize)]
struct Kill {
    at_s: u64,
    target: &'static str,
    /// From the kill to the first commit newer than any before it, ms
    /// (sampled each 50 ms while waiting, each second after).
    recovery_ms: Option<u64>,
}

/// The longest a run to the end of the log may take before the soak fails.
const RUN_TO_END_MAX: Duration = Duration::from_secs(30 * 60);

/// Runs `weir args` to completion (stderr to the engine's file) and returns
/// its stdout (the run's summary); fails on an error exit or after
/// [`RUN_TO_END_MAX`].
fn run_to_end(weir: &Path, args: &[String], engine: &Engine, what: &str) -> Result<String> {
    let mut child = Command::new(weir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(engine.stderr_file()?)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
    });
    let deadline = Instant::now() + RUN_TO_END_MAX;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "{what} did not finish within {} s",
                RUN_TO_END_MAX.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    anyhow::ensure!(
        status.success(),
        "{what} failed ({status}); {}",
        crate::stderr_tail(&engine.stderr, 30)
    );
    Ok(reader.join().expect("stdout reader")?)
}

/// The id of the newest checkpoint committed in `checkpoints` (0: none).
pub(crate) fn newest_commit(checkpoints: &Path) -> u64 {
    read_commits(checkpoints)
        .ok()
        .and_then(|c| c.last().map(|r| r.checkpoint_id))
        .unwrap_or(0)
}

/// Bytes of the files under `dir`, recursively.
pub(crate) fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The kill moments (s into the load) and targets: evenly between 25 % and
/// 60 % of the duration, sidecar first, alternating while both remain.
fn kill_plan(args: &SoakArgs) -> Vec<(u64, &'static str)> {
    let total = args.sidecar_kills + args.engine_kills;
    let (mut sidecar, mut engine) = (args.sidecar_kills, args.engine_kills);
    let steps = u64::from(total.max(2) - 1);
    (0..total)
        .map(|i| {
            // 25 % + 35 % * i / steps of the duration, in whole seconds.
            let percent_x_steps = 25 * steps + 35 * u64::from(i);
            let at_s = args.duration * percent_x_steps / (100 * steps) / 1_000;
            let target = if sidecar > 0 && (i % 2 == 0 || engine == 0) {
                sidecar -= 1;
                "sidecar"
            } else {
                engine -= 1;
                "engine"
            };
            (at_s, target)
        })
        .collect()
}

fn mean(values: &[u64]) -> u64 {
    if values.is_empty() {
        return 0;
    }
    (values.iter().map(|&v| u128::from(v)).sum::<u128>() / values.len() as u128) as u64
}

/// Runs the soak.
#[allow(clippy::too_many_lines)]
pub fn soak(args: &SoakArgs) -> Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.partitions > 0 && args.keys > 0,
        "--rate, --partitions and --keys must be positive"
    );
    // The commit at the start: a soak lasts long enough for HEAD to move.
    let header = RunHeader::new("soak");
    let weir = crate::weir_binary()?;
    crate::fresh_work_dir(&args.work_dir)?;
    let work = std::path::absolute(&args.work_dir)?;
    let data = work.join("data");
    let out = work.join("out");
    let log_config = LogConfig {
        fsync: FsyncPolicy::Never,
        ..LogConfig::default()
    };
    let mut writers = (0..args.partitions)
        .map(|p| {
            PartitionWriter::open(
                &partition_dir(&data.join("log"), EVENTS_TOPIC, p),
                log_config,
            )
        })
        .collect::<Result<Vec<_>, _>>()
        .context("creating the log partitions")?;
    let query_args = |data: &Path, out: &Path| -> Vec<String> {
        let mut a: Vec<String> = ["run", "--query", "window", "--window"]
            .map(str::to_owned)
            .to_vec();
        a.push(args.window.to_string());
        a.extend(["--lateness".to_owned(), format!("{}ms", args.lateness)]);
        a.extend(["--workers".to_owned(), args.workers.to_string()]);
        a.extend(["--data-dir".to_owned(), data.display().to_string()]);
        a.extend(["--out".to_owned(), out.display().to_string()]);
        a
    };
    let mut engine_args = query_args(&data, &out);
    engine_args.extend([
        "--checkpoint-interval".to_owned(),
        format!("{}ms", args.checkpoint_interval),
        "--log-retention".to_owned(),
        "checkpointed".to_owned(),
    ]);
    let mut engine = Engine::new(weir.clone(), engine_args, work.join("engine.stderr"));
    engine.start()?;

    let plan = kill_plan(args);
    let mut kills: Vec<Kill> = Vec::new();
    let mut awaiting: Option<(Instant, u64)> = None;
    let checkpoints = data.join("checkpoints");
    let commits_file = checkpoints.join(weir::checkpoint::format::COMMITS_FILE_NAME);
    let mut series = String::from(
        "second,events,engine_up,engine_rss_bytes,sidecar_rss_bytes,frontier_lag_ms,checkpoint_lag_ms,newest_checkpoint,checkpoint_store_bytes,commit_stream_bytes,log_bytes,wall_clock_ahead_ms\n",
    );
    let (mut engine_rss, mut lag_by_minute): (Vec<(u64, u64)>, Vec<Vec<u64>>) =
        (Vec::new(), Vec::new());
    let (mut sidecar_peak, mut store_peak, mut commits_peak) = (0u64, 0u64, 0u64);
    let mut expected = ExpectedWindows::new(args.window)?;
    let mut log_peak = 0u64;
    let mut rng = SplitMix64::new(7);
    let sampler = ZipfSampler::new(args.keys, 1.0);
    let (mut payload, mut key, mut sent) = (Vec::with_capacity(64), String::new(), 0u64);
    let start_ms = now_ms();
    let started = Instant::now();
    let total = Shape::Steady.due_before(args.rate, args.duration * 1_000);
    let mut next_sample = Duration::from_secs(1);
    let mut next_commit_check = Instant::now();
    while sent < total {
        let elapsed = started.elapsed();
        let due = Shape::Steady
            .due_before(args.rate, elapsed.as_micros() as u64)
            .min(total);
        let ts = start_ms + elapsed.as_millis() as u64;
        while sent < due {
            let key_id = sampler.sample(&mut rng);
            let value = (rng.below(1_000) as i64) - 100;
            key.clear();
            write!(key, "key{key_id}").expect("writing to a String");
            payload.clear();
            encode_event(ts, &key, value, &mut payload);
            writers[(sent % u64::from(args.partitions)) as usize].append(&payload)?;
            expected.add(ts, key_id, value);
            sent += 1;
        }
        for w in &mut writers {
            w.flush()?;
        }
        if awaiting.is_some() && Instant::now() >= next_commit_check {
            next_commit_check = Instant::now() + Duration::from_millis(50);
            engine.poll()?;
            if let Some((killed_at, before)) = awaiting {
                if newest_commit(&checkpoints) > before {
                    kills.last_mut().expect("a kill").recovery_ms =
                        Some(killed_at.elapsed().as_millis() as u64);
                    awaiting = None;
                }
            }
        }
        if elapsed >= next_sample {
            // Labelled by the second it is taken in; a second the loop
            // missed is left out rather than sampled late.
            let second = elapsed.as_secs();
            next_sample = Duration::from_secs(second + 1);
            engine.poll()?;
            if let Some(&(at_s, target)) = plan.get(kills.len()) {
                if second >= at_s {
                    eprintln!("soak: {second} s: kill -9 of the {target}");
                    if target == "sidecar" {
                        engine.kill_sidecar()?;
                    } else {
                        engine.kill_engine()?;
                    }
                    // Read after the kill: with the sidecar dead nothing
                    // newer commits until the restarted engine's.
                    let before = newest_commit(&checkpoints);
                    kills.push(Kill {
                        at_s: second,
                        target,
                        recovery_ms: None,
                    });
                    awaiting = Some((Instant::now(), before));
                }
            }
            let running = engine.running();
            let rss = running.map_or(0, |(pid, _)| rss_of(&pid.to_string()));
            let sidecar_rss = engine.sidecar_pid().map_or(0, |p| rss_of(&p));
            let scraped = running.and_then(|(_, addr)| addr).and_then(scrape_metrics);
            let gauge = |name: &str| {
                scraped
                    .as_deref()
                    .and_then(|m| metric_value(m, name))
                    .map(|s| (s * 1_000.0) as u64)
            };
            // The lag is measured on the clock the events are stamped with
            // (the start's wall clock plus monotonic time), not the engine's
            // wall clock: a paused VM (a snapshot) steps the wall clock
            // forward, which would show as lag that no component has.
            let event_clock_ms = start_ms + started.elapsed().as_millis() as u64;
            let wall_clock_ahead_ms = now_ms() as i64 - event_clock_ms as i64;
            let lag = gauge("weir_output_frontier_timestamp_seconds")
                .map(|frontier_ms| event_clock_ms.saturating_sub(frontier_ms));
            let checkpoint_lag = gauge("weir_checkpoint_lag_seconds");
            let minute = (second - 1) as usize / 60;
            if lag_by_minute.len() <= minute {
                lag_by_minute.resize(minute + 1, Vec::new());
            }
            lag_by_minute[minute].extend(lag);
            if rss > 0 {
                engine_rss.push((second, rss));
            }
            let store = dir_bytes(&checkpoints);
            let log_bytes = dir_bytes(&data.join("log"));
            log_peak = log_peak.max(log_bytes);
            let commits = std::fs::metadata(&commits_file).map_or(0, |m| m.len());
            (sidecar_peak, store_peak, commits_peak) = (
                sidecar_peak.max(sidecar_rss),
                store_peak.max(store),
                commits_peak.max(commits),
            );
            let opt = |v: Option<u64>| v.map_or(String::new(), |v| v.to_string());
            writeln!(
                series,
                "{second},{sent},{},{rss},{sidecar_rss},{},{},{},{store},{commits},{},{wall_clock_ahead_ms}",
                u8::from(scraped.is_some()),
                opt(lag),
                opt(checkpoint_lag),
                newest_commit(&checkpoints),
                log_bytes,
            )?;
            if second.is_multiple_of(60) {
                eprintln!(
                    "soak: {second} s, {sent} events, engine rss {} MiB, frontier lag {} ms",
                    rss >> 20,
                    opt(lag)
                );
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    for w in &mut writers {
        w.sync()?;
    }
    drop(writers);

    eprintln!("soak: load done ({sent} events); finishing the log with --until-end");
    engine.kill_group()?;
    let finished = Instant::now();
    let mut final_args = engine.args.clone();
    final_args.push("--until-end".to_owned());
    run_to_end(&weir, &final_args, &engine, "the final --until-end run")?;
    let final_run_secs = finished.elapsed().as_secs_f64();

    let got = OutputDigest::of_dir(&out)?;
    let expected = expected.finish();
    anyhow::ensure!(expected.rows('w') > 0, "the load made no window row");
    let first_difference = got.first_difference(&expected);

    let duration_s = args.duration / 1_000;
    let in_range = |from: u64, to: u64| -> Vec<u64> {
        engine_rss
            .iter()
            .filter(|(s, _)| (from..to).contains(s))
            .map(|&(_, r)| r)
            .collect()
    };
    let early = mean(&in_range(duration_s / 12, duration_s / 4));
    let last = mean(&in_range(duration_s - duration_s / 6, duration_s + 1));
    let summary = Summary {
        header,
        rate: args.rate,
        duration_ms: args.duration,
        workers: args.workers,
        window: args.window.to_string(),
        lateness_ms: args.lateness,
        partitions: args.partitions,
        keys: args.keys,
        checkpoint_interval_ms: args.checkpoint_interval,
        events: sent,
        kills,
        engine_rss_early_mean_bytes: early,
        engine_rss_last_mean_bytes: last,
        engine_rss_ratio: last as f64 / early.max(1) as f64,
        engine_rss_peak_bytes: engine_rss.iter().map(|&(_, r)| r).max().unwrap_or(0),
        sidecar_rss_peak_bytes: sidecar_peak,
        checkpoint_store_peak_bytes: store_peak,
        checkpoint_store_last_bytes: dir_bytes(&checkpoints),
        commit_stream_peak_bytes: commits_peak,
        commit_stream_last_bytes: std::fs::metadata(&commits_file).map_or(0, |m| m.len()),
        log_bytes_peak: log_peak,
        log_bytes: dir_bytes(&data.join("log")),
        frontier_lag_p99_ms_per_minute: lag_by_minute
            .iter_mut()
            .map(|lags| {
                lags.sort_unstable();
                lags.get((lags.len() * 99).div_ceil(100).saturating_sub(1))
                    .copied()
            })
            .collect(),
        final_run_secs,
        window_rows: got.rows('w'),
        late_rows: got.rows('l'),
        identical: first_difference.is_none(),
        first_difference,
    };
    let dir = crate::write_summary(&args.results, "soak", &summary)?;
    std::fs::write(dir.join("timeseries.csv"), &series)?;
    println!("{}", dir.display());
    if let Some(difference) = &summary.first_difference {
        bail!("the soak's output differs from the expected rows: {difference}");
    }
    eprintln!(
        "soak: output identical ({} window rows); engine RSS last/early {:.3}",
        summary.window_rows, summary.engine_rss_ratio
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn kills_fall_between_a_quarter_and_three_fifths_alternating() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: SoakArgs,
        }
        let cli = Cli::parse_from(["soak", "--duration", "1h"]);
        let plan = kill_plan(&cli.args);
        assert_eq!(
            plan,
            vec![
                (900, "sidecar"),
                (1_320, "engine"),
                (1_740, "sidecar"),
                (2_160, "engine")
            ]
        );
        let cli = Cli::parse_from([
            "soak",
            "--duration",
            "100s",
            "--sidecar-kills",
            "0",
            "--engine-kills",
            "1",
        ]);
        assert_eq!(kill_plan(&cli.args), vec![(25, "engine")]);
    }
}
