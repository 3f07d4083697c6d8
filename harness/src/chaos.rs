//! `weir-harness chaos`: runs a finite job while killing, every so often, either
//! the whole engine process group (engine + sidecar) or only the sidecar with
//! SIGKILL, restarting it each time; at the end the committed output must
//! equal a failure-free run's as a multiset of rows.
//!
//! Kill moments: a quarter of the kills land a random delay (up to
//! `--max-kill-delay`, or a quarter of the failure-free run's wall time if
//! that is shorter) after an attempt starts, wherever it is (ingest,
//! restore, replay); the others the same random delay after the attempt has
//! committed a checkpoint of its own, so those attempts make durable
//! progress however slow the machine is. Once `--kills` kills have landed,
//! the attempt running runs to its end: a round always finishes, and waits
//! are bounded (an attempt that commits nothing for 10 minutes fails it).
//!
//! Recovery time of a kill: from the kill until the restarted run commits a
//! checkpoint newer than any before the kill (it has restored, replayed and
//! made durable progress again). Results: `results/chaos-<t>/summary.json`
//! and `timeline.csv` (ms since the first chaos round: each start of an
//! attempt, kill, new commit seen in the commit stream with its id and cut
//! time, recovery and finished round); the exit status is non-zero if the
//! outputs differ.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use weir::checkpoint::store::read_commits;
use weir::gen::{generate_zipf, SplitMix64, ZipfParams};
use weir_dataflows::duration::parse_duration_ms;

use crate::RunHeader;

/// Arguments of the chaos mode.
#[derive(clap::Parser, Debug)]
pub struct ChaosArgs {
    /// Events in the input.
    #[arg(long, default_value_t = 3_000_000)]
    events: u64,
    /// Kills to inflict (rounds restart from scratch when a run completes first).
    #[arg(long, default_value_t = 10)]
    kills: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    workers: u64,
    /// The longest wait before a kill (each wait is uniform up to this).
    #[arg(long, default_value = "900ms", value_parser = parse_duration_ms)]
    max_kill_delay: u64,
    /// PRNG seed of the kill moments and targets.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Work directory (emptied first).
    #[arg(long, default_value = "target/harness/chaos")]
    work_dir: PathBuf,
    /// Results directory.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    header: RunHeader,
    events: u64,
    workers: u64,
    kills: u64,
    engine_kills: u64,
    sidecar_kills: u64,
    rounds: u64,
    /// Per kill, ms from the kill to the next new commit (absent when the
    /// restarted run was itself killed first).
    recovery_ms: Vec<u64>,
    recovery_ms_max: Option<u64>,
    identical: bool,
    window_rows: usize,
}

fn run_args(weir_input: &Path, data: &Path, out: &Path, workers: u64) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--window",
        "sliding:20s/5s",
        "--lateness",
        "2s",
        "--until-end",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend([
        "--workers".to_owned(),
        workers.to_string(),
        "--checkpoint-interval".to_owned(),
        "50ms".to_owned(),
    ]);
    for (flag, path) in [
        ("--input", weir_input),
        ("--data-dir", data),
        ("--out", out),
    ] {
        args.push(flag.to_owned());
        args.push(path.display().to_string());
    }
    args
}

/// Events of the chaos rounds, as `timeline.csv`.
struct Timeline {
    started: Instant,
    csv: String,
}

impl Timeline {
    fn new() -> Self {
        Timeline {
            started: Instant::now(),
            csv: "t_ms,round,event,checkpoint_id,cut_time_ms\n".to_owned(),
        }
    }

    /// `event` now, with the commit it concerns if any (the final
    /// checkpoint's cut, `u64::MAX`, is written as an empty cut time).
    fn event(&mut self, round: u64, event: &str, commit: Option<(u64, u64)>) {
        let (id, cut) = commit.map_or((String::new(), String::new()), |(id, cut)| {
            let cut = if cut == u64::MAX {
                String::new()
            } else {
                cut.to_string()
            };
            (id.to_string(), cut)
        });
        let t_ms = self.started.elapsed().as_millis();
        writeln!(self.csv, "{t_ms},{round},{event},{id},{cut}").expect("writing to a String");
    }
}

/// The newest commit of a commit stream, re-read only when the file grew.
#[derive(Default)]
struct CommitWatch {
    len: u64,
    newest: Option<(u64, u64)>,
}

impl CommitWatch {
    /// The newest `(id, cut time)` if it changed since the last call.
    fn poll(&mut self, checkpoints: &Path) -> Option<(u64, u64)> {
        let len = std::fs::metadata(checkpoints.join(weir::checkpoint::format::COMMITS_FILE_NAME))
            .map_or(0, |m| m.len());
        if len == self.len {
            return None;
        }
        self.len = len;
        let newest = read_commits(checkpoints)
            .ok()
            .and_then(|c| c.last().map(|r| (r.checkpoint_id, r.cut_time)));
        if newest.is_none() || newest == self.newest {
            return None;
        }
        self.newest = newest;
        newest
    }
}

fn newest_commit(checkpoints: &Path) -> u64 {
    read_commits(checkpoints)
        .ok()
        .and_then(|c| c.last().map(|r| r.checkpoint_id))
        .unwrap_or(0)
}

/// Runs the chaos experiment.
pub fn chaos(args: &ChaosArgs) -> Result<()> {
    let weir = crate::weir_binary()?;
    crate::fresh_work_dir(&args.work_dir)?;
    let input = args.work_dir.join("input");
    let params = ZipfParams {
        events: args.events,
        keys: 3_000,
        rate_per_s: 20_000,
        late_fraction: 0.002,
        ..ZipfParams::default()
    };
    generate_zipf(&params, &input).context("generating the input")?;
    let reference_out = args.work_dir.join("reference-out");
    let mut reference = run_args(
        &input,
        &args.work_dir.join("reference-data"),
        &reference_out,
        args.workers,
    );
    reference.push("--no-checkpoint".to_owned());
    let started = Instant::now();
    let status = Command::new(&weir)
        .args(&reference)
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "the failure-free run failed");
    let max_delay_ms = kill_delay_cap_ms(args.max_kill_delay, started.elapsed());

    let mut rng = SplitMix64::new(args.seed);
    let (mut kills, mut engine_kills, mut sidecar_kills, mut rounds) = (0u64, 0u64, 0u64, 0u64);
    let mut recovery_ms = Vec::new();
    let mut identical = true;
    let mut window_rows = 0;
    let mut timeline = Timeline::new();
    while kills < args.kills {
        if rounds >= max_rounds(args.kills) {
            bail!(
                "only {kills} of {} kills landed in {rounds} rounds: the runs end before \
                 the kill moments (more --events, or a shorter --max-kill-delay)",
                args.kills
            );
        }
        rounds += 1;
        let data = args.work_dir.join(format!("data-{rounds}"));
        let out = args.work_dir.join(format!("out-{rounds}"));
        let run = run_args(&input, &data, &out, args.workers);
        let mut round = Round {
            number: rounds,
            checkpoints: data.join("checkpoints"),
            stderr_path: args.work_dir.join(format!("stderr-{rounds}.log")),
            awaiting: None,
            watch: CommitWatch::default(),
            timeline: &mut timeline,
            recovery_ms: &mut recovery_ms,
        };
        let sidecar_pattern = format!("sidecar --exit-when-idle --data-dir {}", data.display());
        loop {
            let mut child = Command::new(&weir)
                .args(&run)
                .process_group(0)
                .stdout(Stdio::null())
                .stderr(crate::append_file(&round.stderr_path)?)
                .spawn()?;
            round.timeline.event(rounds, "start", round.watch.newest);
            if kills >= args.kills {
                // Every kill has landed: this attempt runs to the end, so a
                // round ends on any machine, however slow its progress.
                round.finish(&mut child)?;
                break;
            }
            // The target and the moment are drawn first. A quarter of the
            // kills land at a random moment after the start (during
            // ingest, restore or replay); the others only once the attempt
            // committed a checkpoint of its own, so that every such attempt
            // makes durable progress whatever the machine's speed.
            let kill_engine = rng.below(2) == 0;
            let before_first_commit = rng.below(4) == 0;
            let delay = Duration::from_millis(20 + rng.below(max_delay_ms));
            if !kill_engine {
                // A sidecar starts only after the engine's ingest.
                wait_for_sidecar(&mut child, &sidecar_pattern)?;
            }
            if !before_first_commit {
                round.wait_for_a_new_commit(&mut child)?;
            }
            round.watch_for(delay, &mut child)?;
            if let Some(status) = child.try_wait()? {
                round.exited(status)?;
                break;
            }
            if kill_engine {
                let pid = child.id();
                Command::new("kill")
                    .args(["-9", "--", &format!("-{pid}")])
                    .status()?;
                engine_kills += 1;
                round
                    .timeline
                    .event(rounds, "kill_engine", round.watch.newest);
            } else {
                let landed = Command::new("pkill")
                    .args(["-9", "-f", &sidecar_pattern])
                    .status()?
                    .success();
                if !landed {
                    // The sidecar had exited: the run was finishing.
                    let status = child.wait()?;
                    round.exited(status)?;
                    break;
                }
                sidecar_kills += 1;
                round
                    .timeline
                    .event(rounds, "kill_sidecar", round.watch.newest);
            }
            kills += 1;
            let killed_at = Instant::now();
            let _ = child.wait();
            // Read after the kill: nothing can commit once the sidecar is dead.
            round.awaiting = Some((killed_at, newest_commit(&round.checkpoints)));
        }
        let got = crate::sorted_rows(&out, "windows", None)?;
        let expected = crate::sorted_rows(&reference_out, "windows", None)?;
        let same = got == expected
            && crate::sorted_rows(&out, "late", None)?
                == crate::sorted_rows(&reference_out, "late", None)?;
        window_rows = got.len();
        eprintln!(
            "round {rounds}: {kills} kills so far, output {}",
            if same { "identical" } else { "DIFFERENT" }
        );
        identical &= same;
    }
    let summary = Summary {
        header: RunHeader::new("chaos"),
        events: args.events,
        workers: args.workers,
        kills,
        engine_kills,
        sidecar_kills,
        rounds,
        recovery_ms_max: recovery_ms.iter().copied().max(),
        recovery_ms,
        identical,
        window_rows,
    };
    let dir = crate::write_summary(&args.results, "chaos", &summary)?;
    std::fs::write(dir.join("timeline.csv"), &timeline.csv)?;
    println!("{}", dir.display());
    if !identical {
        bail!("the output after {kills} kills differs from the failure-free run");
    }
    eprintln!("{kills} kills ({engine_kills} engine, {sidecar_kills} sidecar): output identical");
    Ok(())
}

/// The random kill delays are drawn below this many ms: `--max-kill-delay`,
/// or a quarter of the failure-free run's wall time if that is shorter (the
/// run's wall time includes its ingest, which a kill after the first commit
/// comes after), so that on
/// a machine fast enough to finish an attempt within the delay most kills
/// still land inside a run (a clean-clone CI run landed only 9 of 10 kills
/// in 22 rounds with 400 ms delays against ~0.2 s runs).
fn kill_delay_cap_ms(max_kill_delay_ms: u64, reference: Duration) -> u64 {
    let quarter_run_ms = u64::try_from(reference.as_millis() / 4).unwrap_or(u64::MAX);
    max_kill_delay_ms.min(quarter_run_ms).max(1)
}

/// The most rounds a run that wants `kills` kills may take: a round whose
/// runs end before any kill moment adds none, and the loop must end anyway.
fn max_rounds(kills: u64) -> u64 {
    4 * kills + 4
}

/// Longest an attempt may take to commit, or to finish once no kill is due.
const ATTEMPT_MAX: Duration = Duration::from_secs(600);

/// One chaos round's view of its commit stream and its pending recovery.
struct Round<'a> {
    number: u64,
    checkpoints: PathBuf,
    stderr_path: PathBuf,
    /// (kill moment, newest commit before it) of the last kill, awaiting recovery.
    awaiting: Option<(Instant, u64)>,
    watch: CommitWatch,
    /// The run's timeline and kill recoveries, over all rounds.
    timeline: &'a mut Timeline,
    recovery_ms: &'a mut Vec<u64>,
}

impl Round<'_> {
    /// Records new commits, and the recovery of the last kill once a
    /// commit newer than any before it appears.
    fn observe(&mut self) {
        if let Some(commit) = self.watch.poll(&self.checkpoints) {
            self.timeline.event(self.number, "commit", Some(commit));
        }
        if let Some((killed_at, before)) = self.awaiting {
            if self.watch.newest.is_some_and(|(id, _)| id > before) {
                self.recovery_ms
                    .push(killed_at.elapsed().as_millis() as u64);
                self.timeline
                    .event(self.number, "recovered", self.watch.newest);
                self.awaiting = None;
            }
        }
    }

    /// Watches the commit stream for `duration` or until `child` exits.
    fn watch_for(&mut self, duration: Duration, child: &mut Child) -> Result<()> {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline && child.try_wait()?.is_none() {
            self.observe();
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Waits until the attempt commits a checkpoint newer than the newest
    /// at its start, or exits (bounded by [`ATTEMPT_MAX`]).
    fn wait_for_a_new_commit(&mut self, child: &mut Child) -> Result<()> {
        let started = Instant::now();
        let before = newest_commit(&self.checkpoints);
        while child.try_wait()?.is_none() {
            self.observe();
            if self.watch.newest.is_some_and(|(id, _)| id > before) {
                return Ok(());
            }
            if started.elapsed() > ATTEMPT_MAX {
                let _ = child.kill();
                bail!(
                    "round {}: an attempt committed nothing within {} s; {}",
                    self.number,
                    ATTEMPT_MAX.as_secs(),
                    crate::stderr_tail(&self.stderr_path, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Lets the attempt run to its end (bounded by [`ATTEMPT_MAX`]).
    fn finish(&mut self, child: &mut Child) -> Result<()> {
        self.watch_for(ATTEMPT_MAX, child)?;
        let Some(status) = child.try_wait()? else {
            let _ = child.kill();
            bail!(
                "round {}: the last attempt did not finish within {} s; {}",
                self.number,
                ATTEMPT_MAX.as_secs(),
                crate::stderr_tail(&self.stderr_path, 30)
            );
        };
        self.exited(status)
    }

    /// An attempt exited while nothing killed it: it must have finished.
    fn exited(&mut self, status: ExitStatus) -> Result<()> {
        if !status.success() {
            bail!(
                "an attempt failed by itself ({status}) in round {}; {}",
                self.number,
                crate::stderr_tail(&self.stderr_path, 30)
            );
        }
        self.observe();
        if let Some((killed_at, _)) = self.awaiting.take() {
            self.recovery_ms
                .push(killed_at.elapsed().as_millis() as u64);
            self.timeline
                .event(self.number, "recovered", self.watch.newest);
        }
        self.timeline
            .event(self.number, "finished", self.watch.newest);
        Ok(())
    }
}

/// Waits until the sidecar of `child` (a process whose command line
/// contains `pattern`) exists, or `child` exits; fails after two minutes.
fn wait_for_sidecar(child: &mut Child, pattern: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let found = Command::new("pgrep")
            .args(["-f", pattern])
            .stdout(Stdio::null())
            .status()?
            .success();
        if found || child.try_wait()?.is_some() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the engine started no sidecar within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_delays_follow_a_run_shorter_than_the_maximum() {
        assert_eq!(kill_delay_cap_ms(400, Duration::from_millis(180)), 45);
        assert_eq!(kill_delay_cap_ms(400, Duration::from_secs(3)), 400);
        assert_eq!(kill_delay_cap_ms(400, Duration::ZERO), 1);
    }
}
