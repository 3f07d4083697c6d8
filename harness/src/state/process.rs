//! The processes of a `weir-harness state` run: a `weir run` in its own
//! process group, sampled while it runs (peak RSS of it and its sidecar,
//! the engine's metrics), and killed with `-9` on request.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::latency::samplers::{free_loopback_port, metric_value, scrape_metrics};
use crate::soak::newest_commit;

/// Longest a run (or a rerun) may take before the harness gives up.
const RUN_MAX: Duration = Duration::from_secs(3 * 60 * 60);
/// How often process memory is sampled.
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// How often the engine's metrics are scraped (one time-series row each).
const METRICS_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// What the samples of one run add up to.
#[derive(Default)]
pub(super) struct Samples {
    pub(super) engine_peak: u64,
    pub(super) sidecar_peak: u64,
    pub(super) max_memory: u64,
    pub(super) max_disk: u64,
    pub(super) checkpoint_lags: Vec<f64>,
    pub(super) frontier: Option<f64>,
    /// The newest commit seen and when it was first seen.
    pub(super) newest_commit: Option<(u64, Instant)>,
    /// Wall-clock gaps between newly seen commits, seconds.
    pub(super) commit_gaps: Vec<f64>,
}

/// How one process of a run ended.
pub(super) enum Attempt {
    /// It exited successfully with this summary on stdout.
    Finished(String),
    /// The harness killed it.
    Killed,
}

/// Runs one process of a run until it exits, or, once checkpoint
/// `kill_after` (> 0) has committed, kills it; `watch` sees the samples
/// after each sampling.
pub(super) fn attempt(
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
        self.child.take().map_or(Ok(()), crate::kill_process_group)
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
    crate::sidecar_child_of(pid)?.trim().parse().ok()
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
