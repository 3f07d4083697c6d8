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

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use weir::gen::{generate_zipf, ZipfParams};
use weir_dataflows::duration::parse_duration_ms;
use weir_dataflows::emit::Emit;
use weir_dataflows::WindowSpec;

use crate::latency::samplers::{free_loopback_port, metric_value, scrape_metrics};
use crate::soak::digest::OutputDigest;
use crate::soak::newest_commit;
use crate::RunHeader;

/// Longest a run (or a rerun) may take before the harness gives up.
const RUN_MAX: Duration = Duration::from_secs(3 * 60 * 60);
/// How often process memory is sampled.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// How often the engine's metrics are scraped (one time-series row each).
const METRICS_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

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

/// What the samples of one run add up to.
#[derive(Default)]
struct Samples {
    engine_peak: u64,
    sidecar_peak: u64,
    max_memory: u64,
    max_disk: u64,
    checkpoint_lags: Vec<f64>,
    frontier: Option<f64>,
    /// The newest commit seen and when it was first seen.
    newest_commit: Option<(u64, Instant)>,
    /// Wall-clock gaps between newly seen commits, seconds.
    commit_gaps: Vec<f64>,
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

/// How one process of a run ended.
enum Attempt {
    /// It exited successfully with this summary on stdout.
    Finished(String),
    /// The harness killed it.
    Killed,
}

/// Runs one process of a run until it exits, or, once checkpoint
/// `kill_after` (> 0) has committed, kills it; `watch` sees the samples
/// after each sampling.
fn attempt(
    weir: &Path,
    (argv, stderr): (&[String], &Path),
    (clock, kill_after): ((Instant, u32), u64),
    samples: &mut Samples,
    series: &mut String,
    watch: &mut dyn FnMut(&Samples),
) -> Result<Attempt> {
    let checkpoints = argv_value(argv, "--data-dir").join("checkpoints");
    let mut child = Spawned::start(weir, argv, stderr, checkpoints.clone())?;
    loop {
        if let Some(stdout) = child.finished(stderr)? {
            return Ok(Attempt::Finished(stdout));
        }
        if kill_after > 0 && newest_commit(&checkpoints) >= kill_after {
            child.kill_group()?;
            return Ok(Attempt::Killed);
        }
        child.sample(clock, samples, series);
        watch(samples);
        std::thread::sleep(RSS_SAMPLE_INTERVAL);
    }
}

fn argv_value(argv: &[String], flag: &str) -> PathBuf {
    argv.iter()
        .position(|a| a == flag)
        .and_then(|i| argv.get(i + 1))
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// A `weir run` process in its own process group.
struct Spawned {
    child: Option<Child>,
    stdout: Option<std::thread::JoinHandle<std::io::Result<String>>>,
    metrics: Option<std::net::SocketAddr>,
    started: Instant,
    last_scrape: Option<Instant>,
    checkpoints: PathBuf,
}

impl Spawned {
    fn start(weir: &Path, argv: &[String], stderr: &Path, checkpoints: PathBuf) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let metrics = free_loopback_port();
        let mut argv = argv.to_vec();
        if let Some(addr) = metrics {
            argv.extend(["--metrics-addr".to_owned(), addr.to_string()]);
        }
        let mut child = Command::new(weir)
            .args(&argv)
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(crate::append_file(stderr)?)
            .spawn()
            .context("starting weir run")?;
        let mut stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stdout, &mut text).map(|_| text)
        });
        Ok(Spawned {
            child: Some(child),
            stdout: Some(reader),
            metrics,
            started: Instant::now(),
            last_scrape: None,
            checkpoints,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its summary once it has exited successfully; an error if it failed
    /// or ran past [`RUN_MAX`].
    fn finished(&mut self, stderr: &Path) -> Result<Option<String>> {
        let Some(child) = self.child.as_mut() else {
            bail!("the run was killed");
        };
        let Some(status) = child.try_wait()? else {
            if self.started.elapsed() > RUN_MAX {
                self.kill_group()?;
                bail!("the run took longer than {} s", RUN_MAX.as_secs());
            }
            return Ok(None);
        };
        self.child = None;
        anyhow::ensure!(
            status.success(),
            "weir run failed ({status}); {}",
            crate::stderr_tail(stderr, 30)
        );
        let reader = self.stdout.take().expect("read once");
        Ok(Some(reader.join().expect("stdout reader")?))
    }

    /// `kill -9` of the process group (engine and sidecar), and the wait.
    fn kill_group(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let killed = Command::new("kill")
                .args(["-9", "--", &group])
                .status()
                .is_ok_and(|s| s.success());
            if !killed {
                let _ = child.kill();
            }
            child.wait()?;
        }
        Ok(())
    }

    /// Peak RSS of the engine and its sidecar; once a second, a row of
    /// metrics.
    fn sample(
        &mut self,
        (t0, attempt): (Instant, u32),
        samples: &mut Samples,
        series: &mut String,
    ) {
        let Some(pid) = self.pid() else { return };
        let sidecar = sidecar_of(pid);
        samples.engine_peak = samples.engine_peak.max(status_kib(pid, "VmHWM:") * 1024);
        if let Some(s) = sidecar {
            samples.sidecar_peak = samples.sidecar_peak.max(status_kib(s, "VmHWM:") * 1024);
        }
        let newest = newest_commit(&self.checkpoints);
        match samples.newest_commit {
            Some((id, _)) if id == newest => {}
            Some((_, seen)) => {
                samples.commit_gaps.push(seen.elapsed().as_secs_f64());
                samples.newest_commit = Some((newest, Instant::now()));
            }
            None => samples.newest_commit = Some((newest, Instant::now())),
        }
        if self
            .last_scrape
            .is_some_and(|t| t.elapsed() < METRICS_SAMPLE_INTERVAL)
        {
            return;
        }
        self.last_scrape = Some(Instant::now());
        let metrics = self.metrics.and_then(scrape_metrics).unwrap_or_default();
        let memory = tier_bytes(&metrics, "memory");
        let disk = tier_bytes(&metrics, "disk");
        samples.max_memory = samples.max_memory.max(memory);
        samples.max_disk = samples.max_disk.max(disk);
        let lag = metric_value(&metrics, "weir_checkpoint_lag_seconds");
        samples.checkpoint_lags.extend(lag);
        let frontier = metric_value(&metrics, "weir_output_frontier_timestamp_seconds");
        if frontier.is_some() {
            samples.frontier = frontier;
        }
        let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
        let _ = writeln!(
            series,
            "{},{attempt},{},{},{memory},{disk},{},{},{}",
            t0.elapsed().as_secs(),
            status_kib(pid, "VmRSS:") * 1024,
            sidecar.map_or(0, |s| status_kib(s, "VmRSS:") * 1024),
            opt(lag),
            opt(frontier),
            newest
        );
    }
}

/// The sidecar the engine `pid` started (its child), if running.
fn sidecar_of(pid: u32) -> Option<u32> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string(), "-f", "sidecar"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// A `/proc/<pid>/status` field in KiB (0 once the process is gone).
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse().ok())
        })
        .unwrap_or(0)
}

/// The windows' state bytes of `tier`, summed over the workers.
fn tier_bytes(metrics: &str, tier: &str) -> u64 {
    let label = format!("tier=\"{tier}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("weir_state_bytes{") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
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
    report.summary = stdout.to_owned();
}
