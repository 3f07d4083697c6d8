//! `weir-harness state`: issue 14's benchmark of window state larger than a
//! memory budget. A uniform Zipf input (many keys, an hour or more of event
//! time) is generated and ingested once into a log kept in the work
//! directory; then `weir run --until-end` runs over it, checkpointed, as a
//! separate process, twice:
//!
//! 1. the **reference** run, without a fault, with `--reference-budget`
//!    (`none`: no budget);
//! 2. the **measured** run with `--memory-budget`, `kill -9`ed (engine and
//!    sidecar, the process group) once `--kill-after-checkpoint` has
//!    committed, and rerun to the end: it restores and catches up.
//!
//! Every 200 ms it samples both processes' RSS and peak RSS (`VmHWM`), and
//! every second the engine's metrics (checkpoint lag, state bytes per tier,
//! output frontier) into `timeseries-<run>.csv`. The output of each run is
//! reduced to an order-free digest and deleted (an hour of a 10M-key window
//! is tens of GB of rows); equal digests mean the measured run, kill and
//! all, wrote exactly the reference's rows.

mod process;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::Serialize;
use weir::gen::{generate_zipf, ZipfParams};
use weir_dataflows::duration::parse_duration_ms;
use weir_dataflows::emit::Emit;
use weir_dataflows::WindowSpec;

use self::process::{attempt, Attempt, Samples};
use crate::soak::digest::OutputDigest;
use crate::soak::newest_commit;
use crate::RunHeader;

/// Arguments of the state mode.
#[derive(clap::Parser, Debug)]
pub struct StateArgs {
    /// Events in the input.
    #[arg(long, default_value_t = 120_000_000)]
    events: u64,
    /// Distinct keys (uniform: each is drawn with the same probability).
    #[arg(long, default_value_t = 10_000_000)]
    keys: u32,
    /// Events per second of event time (with the window's size, this sets
    /// the live partials: about rate x size for keys >> rate x slide).
    #[arg(long, default_value_t = 30_000)]
    rate: u64,
    /// Input partitions.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Window of the query.
    #[arg(long, default_value = "sliding:1h/10s")]
    window: WindowSpec,
    /// Allowed lateness.
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    lateness: u64,
    /// Rows of the windows.
    #[arg(long, default_value = "changes")]
    emit: Emit,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Checkpoint interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    checkpoint_interval: u64,
    /// `--memory-budget` of the measured run (`none`: no budget).
    #[arg(long, default_value = "4GiB")]
    memory_budget: String,
    /// `--memory-budget` of the reference run (`none`: no budget).
    #[arg(long, default_value = "none")]
    reference_budget: String,
    /// Kill the measured run once this checkpoint has committed, then
    /// rerun it to the end (0: no kill).
    #[arg(long, default_value_t = 0)]
    kill_after_checkpoint: u64,
    /// Work directory (the log is kept between invocations with the same
    /// input; checkpoints and outputs are not).
    #[arg(long, default_value = "target/harness/state")]
    work_dir: PathBuf,
    /// Results directory.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

/// One run's measurements.
#[derive(Serialize, Default)]
struct RunReport {
    label: &'static str,
    memory_budget: String,
    killed_after_checkpoint: Option<u64>,
    /// The last (or only) process's summary figures.
    events_read: u64,
    dataflow_elapsed_s: f64,
    /// Events read over the dataflow's elapsed time (the run without a
    /// kill; the rerun's own after one).
    events_read_per_s: f64,
    /// Wall clock of all the run's processes, start to exit.
    wall_s: f64,
    peak_live_partials: u64,
    engine_peak_rss_bytes: u64,
    sidecar_peak_rss_bytes: u64,
    max_state_memory_bytes: u64,
    max_state_disk_bytes: u64,
    checkpoints_committed: u64,
    /// Output frontier minus the newest committed cut, in event time (the
    /// engine's `weir_checkpoint_lag_seconds`, sampled each second): a run
    /// over a log of past events covers many event-time seconds per second.
    checkpoint_lag_p50_s: f64,
    checkpoint_lag_p99_s: f64,
    checkpoint_lag_max_s: f64,
    /// Wall-clock time between consecutive commits (as seen every 200 ms).
    commit_interval_p50_s: f64,
    commit_interval_p99_s: f64,
    commit_interval_max_s: f64,
    /// After the kill: the rerun's restore (verify + load, from its
    /// summary) and the time from its start until its output frontier
    /// passed the killed run's.
    restore_s: Option<f64>,
    catch_up_s: Option<f64>,
    output_rows: u64,
    output_bytes: u64,
    summary: String,
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    header: RunHeader,
    events: u64,
    keys: u32,
    rate: u64,
    window: String,
    lateness_ms: u64,
    emit: String,
    workers: usize,
    checkpoint_interval_ms: u64,
    log_bytes: u64,
    runs: Vec<RunReport>,
    /// The measured run's output (all its attempts) equals the reference's.
    outputs_equal: bool,
    /// Measured over reference events/s (meaningful without a kill).
    throughput_ratio: f64,
}

/// Runs the benchmark; see the module doc.
pub fn state(args: &StateArgs) -> Result<()> {
    let header = RunHeader::new("state");
    let weir = crate::weir_binary()?;
    let work = std::path::absolute(&args.work_dir)?;
    let data = prepare_input(&weir, args, &work)?;
    let mut series = String::new();
    let (reference, reference_digest) = measured_run(
        &weir,
        args,
        &data,
        ("reference", &args.reference_budget, 0),
        &mut series,
    )?;
    std::fs::write(work.join("timeseries-reference.csv"), &series)?;
    series.clear();
    let (measured, measured_digest) = measured_run(
        &weir,
        args,
        &data,
        ("measured", &args.memory_budget, args.kill_after_checkpoint),
        &mut series,
    )?;
    let difference = measured_digest.first_difference(&reference_digest);
    if let Some(d) = &difference {
        eprintln!("state: OUTPUTS DIFFER: {d}");
    }
    let outputs_equal = difference.is_none();
    let summary = Summary {
        header,
        events: args.events,
        keys: args.keys,
        rate: args.rate,
        window: args.window.to_string(),
        lateness_ms: args.lateness,
        emit: args.emit.to_string(),
        workers: args.workers,
        checkpoint_interval_ms: args.checkpoint_interval,
        log_bytes: crate::soak::dir_bytes(&data.join("log")),
        throughput_ratio: measured.events_read_per_s / reference.events_read_per_s.max(1.0),
        runs: vec![reference, measured],
        outputs_equal,
    };
    let dir = crate::write_summary(&args.results, "state", &summary)?;
    std::fs::write(dir.join("timeseries-measured.csv"), &series)?;
    std::fs::rename(
        work.join("timeseries-reference.csv"),
        dir.join("timeseries-reference.csv"),
    )?;
    println!("{}", dir.join("summary.json").display());
    anyhow::ensure!(outputs_equal, "the measured run's output differs");
    Ok(())
}

/// Generates and ingests the input once (kept while the arguments that
/// shape it are the same); returns the data dir holding its log.
fn prepare_input(weir: &Path, args: &StateArgs, work: &Path) -> Result<PathBuf> {
    let tag = format!(
        "zipf-{}-{}-{}-r{}",
        args.events, args.keys, args.partitions, args.rate
    );
    let input = work.join(&tag);
    let data = input.join("data");
    let ready = input.join("ingested");
    if ready.is_file() {
        return Ok(data);
    }
    if work.exists() {
        // Another input's log: the disk holds one at a time.
        std::fs::remove_dir_all(work).with_context(|| format!("emptying {}", work.display()))?;
    }
    let csv = input.join("csv");
    let params = ZipfParams {
        events: args.events,
        keys: args.keys,
        partitions: args.partitions,
        exponent: 0.0,
        rate_per_s: args.rate,
        ..ZipfParams::default()
    };
    eprintln!(
        "state: generating {} events into {}",
        args.events,
        csv.display()
    );
    let files = generate_zipf(&params, &csv).context("generating the input")?;
    eprintln!("state: ingesting into {}", data.display());
    let status = Command::new(weir)
        .arg("ingest")
        .arg("--data-dir")
        .arg(&data)
        .args(&files)
        .stdout(Stdio::null())
        .status()
        .context("starting weir ingest")?;
    anyhow::ensure!(status.success(), "weir ingest failed ({status})");
    // The log holds the input now; the CSV would only take disk.
    std::fs::remove_dir_all(&csv)?;
    std::fs::write(&ready, b"")?;
    Ok(data)
}

/// The `weir run` arguments of one run.
fn run_args(args: &StateArgs, data: &Path, out: &Path, budget: &str) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--query",
        "window",
        "--until-end",
        "--window",
        &args.window.to_string(),
        "--lateness",
        &format!("{}ms", args.lateness),
        "--emit",
        &args.emit.to_string(),
        "--workers",
        &args.workers.to_string(),
        "--checkpoint-interval",
        &format!("{}ms", args.checkpoint_interval),
    ]
    .map(str::to_owned)
    .to_vec();
    a.extend(["--data-dir".to_owned(), data.display().to_string()]);
    a.extend(["--out".to_owned(), out.display().to_string()]);
    if budget != "none" {
        a.extend(["--memory-budget".to_owned(), budget.to_owned()]);
    }
    a
}

/// One run from a fresh start (no checkpoints, no output): killed and rerun
/// when `kill_after` > 0. Returns its report and its output's digest (the
/// output itself is deleted).
fn measured_run(
    weir: &Path,
    args: &StateArgs,
    data: &Path,
    (label, budget, kill_after): (&'static str, &str, u64),
    series: &mut String,
) -> Result<(RunReport, OutputDigest)> {
    let work = data.parent().expect("the data dir is in the input dir");
    let out = work.join(format!("out-{label}"));
    for dir in [data.join("checkpoints"), data.join("state"), out.clone()] {
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
    }
    let stderr = work.join(format!("{label}.stderr"));
    let _ = std::fs::remove_file(&stderr);
    series.push_str(
        "second,attempt,engine_rss_bytes,sidecar_rss_bytes,state_memory_bytes,state_disk_bytes,checkpoint_lag_s,output_frontier_s,newest_checkpoint\n",
    );
    let started = Instant::now();
    let argv = run_args(args, data, &out, budget);
    let mut samples = Samples::default();
    let mut report = RunReport {
        label,
        memory_budget: budget.to_owned(),
        ..RunReport::default()
    };
    eprintln!("state: {label} run: weir {}", argv.join(" "));
    let first = attempt(
        weir,
        (&argv, &stderr),
        ((started, 0), kill_after),
        &mut samples,
        series,
        &mut |_| {},
    )?;
    let stdout = match first {
        Attempt::Finished(stdout) => stdout,
        Attempt::Killed => {
            report.killed_after_checkpoint = Some(kill_after);
            let frontier_at_kill = samples.frontier;
            samples.frontier = None;
            eprintln!("state: killed after checkpoint {kill_after}; rerunning");
            let rerun_started = Instant::now();
            let mut caught_up = None;
            let rerun = attempt(
                weir,
                (&argv, &stderr),
                ((started, 1), 0),
                &mut samples,
                series,
                &mut |s: &Samples| {
                    if caught_up.is_none()
                        && frontier_at_kill.is_some_and(|k| s.frontier.is_some_and(|f| f >= k))
                    {
                        caught_up = Some(rerun_started.elapsed().as_secs_f64());
                    }
                },
            )?;
            report.catch_up_s = caught_up;
            match rerun {
                Attempt::Finished(stdout) => stdout,
                Attempt::Killed => unreachable!("a rerun is not killed"),
            }
        }
    };
    report.wall_s = started.elapsed().as_secs_f64();
    fill_from_summary(&mut report, &stdout);
    report.engine_peak_rss_bytes = samples.engine_peak;
    report.sidecar_peak_rss_bytes = samples.sidecar_peak;
    report.max_state_memory_bytes = samples.max_memory;
    report.max_state_disk_bytes = samples.max_disk;
    report.checkpoints_committed = newest_commit(&data.join("checkpoints"));
    [
        report.checkpoint_lag_p50_s,
        report.checkpoint_lag_p99_s,
        report.checkpoint_lag_max_s,
    ] = percentiles(samples.checkpoint_lags);
    [
        report.commit_interval_p50_s,
        report.commit_interval_p99_s,
        report.commit_interval_max_s,
    ] = percentiles(samples.commit_gaps);
    report.output_bytes = crate::soak::dir_bytes(&out);
    let digest = OutputDigest::of_dir(&out)?;
    report.output_rows = digest.rows('w') + digest.rows('l');
    std::fs::remove_dir_all(&out)?;
    eprintln!(
        "state: {label}: {:.0} events/s, engine peak {} MiB, sidecar peak {} MiB, checkpoint lag p99 {:.1} s, {} rows",
        report.events_read_per_s,
        report.engine_peak_rss_bytes >> 20,
        report.sidecar_peak_rss_bytes >> 20,
        report.checkpoint_lag_p99_s,
        report.output_rows
    );
    Ok((report, digest))
}

/// The 50th and 99th percentiles and the maximum of `values` (zeros if
/// there are none).
fn percentiles(mut values: Vec<f64>) -> [f64; 3] {
    values.sort_by(f64::total_cmp);
    let pick = |q: usize| {
        values
            .get((values.len() * q).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    [pick(50), pick(99), values.last().copied().unwrap_or(0.0)]
}

/// The figures of `weir run`'s summary the report keeps.
fn fill_from_summary(report: &mut RunReport, stdout: &str) {
    let field = |name: &str| -> Option<&str> {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim_start))
    };
    let first_number = |text: Option<&str>| -> Option<f64> {
        text?
            .split_whitespace()
            .next()?
            .trim_end_matches(',')
            .parse()
            .ok()
    };
    report.events_read = first_number(field("events read")).unwrap_or(0.0) as u64;
    report.dataflow_elapsed_s = first_number(field("elapsed")).unwrap_or(0.0);
    report.events_read_per_s = report.events_read as f64 / report.dataflow_elapsed_s.max(1e-9);
    report.peak_live_partials = first_number(field("window state")).unwrap_or(0.0) as u64;
    // "restore verify    X MB checksummed in S s", "restore load  N updates in S s"
    let seconds = |line: Option<&str>| -> Option<f64> {
        let words: Vec<&str> = line?.split_whitespace().collect();
        let at = words.iter().rposition(|w| *w == "in")?;
        words.get(at + 1)?.parse().ok()
    };
    let verify = seconds(field("restore verify"));
    let load = seconds(field("restore load"));
    if verify.is_some() || load.is_some() {
        report.restore_s = Some(verify.unwrap_or(0.0) + load.unwrap_or(0.0));
    }
    stdout.clone_into(&mut report.summary);
}
