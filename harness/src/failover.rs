//! `weir-harness failover`: a primary with a cold tier is killed (its
//! process group, with `kill -9`) and a standby in another data directory
//! takes over from the cold tier (`weir run --restore-from`). Measures:
//!
//! - **RPO**: the checkpoints the primary had committed locally that the
//!   cold tier did not have at the kill, and the input events the standby
//!   has to read again because of that (those between the cold
//!   checkpoint's resume offsets and the primary's newest local one's);
//! - **RTO**: from the kill to the standby's first commit that covers a
//!   new window row (restored, replayed, and durable output again), with
//!   the moment it restored (its first commit, the taken-over checkpoint)
//!   on the way.
//!
//! The primary reads a file input as fast as it can (not a paced load) and
//! tails it (no `--until-end`): it is killed `--kill-after` after the cold
//! tier first holds a checkpoint. The primary's committed rows (within the
//! cold checkpoint's output lengths) plus the standby's must equal a
//! failure-free run's. Results: `results/failover-<t>/summary.json` and
//! `timeline.csv`; non-zero exit if the outputs differ.

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use weir::checkpoint::format::CommitRecord;
use weir::checkpoint::store::read_commits;
use weir::checkpoint::tier::{newest_cold_record, open_cold_store};
use weir_dataflows::duration::parse_duration_ms;

use crate::RunHeader;

/// Waits that end a stuck experiment (fail-safes, not speed assumptions).
const DEADLINE: Duration = Duration::from_secs(600);

/// Arguments of the failover mode.
#[derive(clap::Parser, Debug)]
pub struct FailoverArgs {
    /// Events in the input.
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// Worker threads of the primary and the standby.
    #[arg(long, default_value_t = 2)]
    workers: u64,
    /// Checkpoint interval of the primary and the standby.
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    checkpoint_interval: u64,
    /// How long after the cold tier first holds a checkpoint the primary is killed.
    #[arg(long, default_value = "2s", value_parser = parse_duration_ms)]
    kill_after: u64,
    /// The cold tier (default: `file://WORK_DIR/cold`).
    #[arg(long)]
    cold_store: Option<String>,
    /// Work directory (emptied first).
    #[arg(long, default_value = "target/harness/failover")]
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
    checkpoint_interval_ms: u64,
    cold_store: String,
    /// Checkpoints committed locally by the primary and not in the cold
    /// tier at the kill.
    rpo_checkpoints: u64,
    /// Input events between the cold checkpoint's resume offsets and the
    /// primary's newest local checkpoint's: read again by the standby.
    rpo_events: u64,
    /// The checkpoint the standby took over.
    taken_over_checkpoint: u64,
    /// Kill to the standby's first commit (restored, replayed to a cut).
    restored_ms: u64,
    /// Kill to the standby's first commit covering a new window row.
    rto_ms: u64,
    /// The taken-over checkpoint's data bytes.
    state_bytes: u64,
    identical: bool,
    window_rows: usize,
}

fn run_args(input: &Path, data: &Path, out: &Path, args: &FailoverArgs) -> Vec<String> {
    let mut run: Vec<String> = ["run", "--window", "sliding:20s/5s", "--lateness", "2s"]
        .map(str::to_owned)
        .to_vec();
    run.extend([
        "--workers".to_owned(),
        args.workers.to_string(),
        "--checkpoint-interval".to_owned(),
        format!("{}ms", args.checkpoint_interval),
    ]);
    for (flag, path) in [("--input", input), ("--data-dir", data), ("--out", out)] {
        run.push(flag.to_owned());
        run.push(path.display().to_string());
    }
    run
}

/// The rows of `out`'s `prefix` files: within `record`'s committed lengths
/// if given, else whole.
fn rows(out: &Path, prefix: &str, record: Option<&CommitRecord>) -> Result<Vec<String>> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(out).with_context(|| format!("reading {}", out.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let mut bytes = std::fs::read(&path)?;
        if let Some(record) = record {
            let committed = record.outputs.iter().find(|o| o.file_name == name);
            bytes.truncate(committed.map_or(0, |o| o.length_bytes as usize));
        }
        rows.extend(String::from_utf8(bytes)?.lines().skip(1).map(str::to_owned));
    }
    rows.sort();
    Ok(rows)
}

/// Whether `record` commits a window row: a windows file longer than its
/// header line.
fn covers_a_row(record: &CommitRecord) -> bool {
    let header = weir::sink::WINDOW_ROWS_HEADER.len() as u64 + 1;
    record
        .outputs
        .iter()
        .any(|o| o.file_name.starts_with("windows-") && o.length_bytes > header)
}

/// Runs the failover experiment.
#[allow(clippy::too_many_lines)] // one experiment, read top to bottom
pub fn failover(args: &FailoverArgs) -> Result<()> {
    let weir = crate::weir_binary()?;
    crate::fresh_work_dir(&args.work_dir)?;
    let work = &args.work_dir;
    let input = work.join("input");
    crate::generate_kill_input(args.events, &input)?;
    let url = match &args.cold_store {
        Some(url) => url.clone(),
        None => format!(
            "file://{}",
            std::path::absolute(work.join("cold"))?.display()
        ),
    };
    let blob = open_cold_store(&url)?;

    let reference_out = work.join("reference-out");
    let mut reference = run_args(&input, &work.join("reference-data"), &reference_out, args);
    reference.extend(["--until-end".to_owned(), "--no-checkpoint".to_owned()]);
    let status = Command::new(&weir)
        .args(&reference)
        .stdout(Stdio::null())
        .status()?;
    ensure!(status.success(), "the failure-free run failed");

    let mut timeline = String::from("t_ms,event,checkpoint_id\n");
    let started = Instant::now();
    let mut event = |what: &str, id: u64| {
        let _ = writeln!(timeline, "{},{what},{id}", started.elapsed().as_millis());
    };
    let (primary_data, primary_out) = (work.join("primary-data"), work.join("primary-out"));
    let mut primary = run_args(&input, &primary_data, &primary_out, args);
    primary.extend(["--cold-store".to_owned(), url.clone()]);
    let mut child = Command::new(&weir)
        .args(&primary)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(crate::append_file(&work.join("primary.log"))?)
        .spawn()?;
    event("primary-start", 0);
    loop {
        ensure!(
            started.elapsed() < DEADLINE,
            "no checkpoint reached the cold tier"
        );
        if child.try_wait()?.is_some() {
            bail!(
                "the primary ended; see {}",
                work.join("primary.log").display()
            );
        }
        if let Some((_, record)) =
            newest_cold_record(blob.as_ref()).map_err(|e| anyhow::anyhow!(e))?
        {
            event("first-cold-checkpoint", record.checkpoint_id);
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(args.kill_after));
    if child.try_wait()?.is_some() {
        bail!(
            "the primary ended before the kill; see {}",
            work.join("primary.log").display()
        );
    }
    let _ = Command::new("kill")
        .args(["-9", "--", &format!("-{}", child.id())])
        .status();
    let killed = Instant::now();
    let _ = child.wait();
    let local = read_commits(&primary_data.join("checkpoints"))?;
    let (_, cold_record) = newest_cold_record(blob.as_ref())
        .map_err(|e| anyhow::anyhow!(e))?
        .context("an empty cold tier")?;
    let cold_newest = cold_record.checkpoint_id;
    let local_newest = local
        .last()
        .context("the primary committed nothing locally")?;
    event("kill", local_newest.checkpoint_id);
    let resume = |r: &CommitRecord, p: u32| {
        r.partitions
            .iter()
            .find(|x| x.partition == p)
            .map_or(0, |x| x.resume_offset)
    };
    let rpo_events: u64 = local_newest
        .partitions
        .iter()
        .map(|p| {
            p.resume_offset
                .saturating_sub(resume(&cold_record, p.partition))
        })
        .sum();

    let (standby_data, standby_out) = (work.join("standby-data"), work.join("standby-out"));
    let mut standby = run_args(&input, &standby_data, &standby_out, args);
    standby.extend([
        "--until-end".to_owned(),
        "--restore-from".to_owned(),
        url.clone(),
    ]);
    let mut child = Command::new(&weir)
        .args(&standby)
        .stdout(Stdio::null())
        .stderr(crate::append_file(&work.join("standby.log"))?)
        .spawn()?;
    event("standby-start", cold_newest);
    let (mut restored_ms, mut rto_ms) = (None, None);
    let standby_checkpoints = standby_data.join("checkpoints");
    let mut seen = 0;
    loop {
        ensure!(killed.elapsed() < DEADLINE, "the standby made no progress");
        let exited = child.try_wait()?;
        let commits = read_commits(&standby_checkpoints).unwrap_or_default();
        for record in commits.iter().skip(seen) {
            let ms = killed.elapsed().as_millis() as u64;
            event("standby-commit", record.checkpoint_id);
            // The first record is the taken-over one, written at restore.
            if restored_ms.is_none() {
                restored_ms = Some(ms);
            } else if rto_ms.is_none() && covers_a_row(record) {
                rto_ms = Some(ms);
                event("first-new-row-committed", record.checkpoint_id);
            }
        }
        seen = commits.len();
        if let Some(status) = exited {
            ensure!(
                status.success(),
                "the standby failed; see {}",
                work.join("standby.log").display()
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    event("standby-done", 0);

    let mut identical = true;
    let mut window_rows = 0;
    for kind in ["windows-", "late-"] {
        let mut got = rows(&primary_out, kind, Some(&cold_record))?;
        got.extend(rows(&standby_out, kind, None)?);
        got.sort();
        let expected = rows(&reference_out, kind, None)?;
        if kind == "windows-" {
            window_rows = expected.len();
        }
        identical &= got == expected;
    }
    let summary = Summary {
        header: RunHeader::new("failover"),
        events: args.events,
        workers: args.workers,
        checkpoint_interval_ms: args.checkpoint_interval,
        cold_store: url,
        rpo_checkpoints: local_newest.checkpoint_id.saturating_sub(cold_newest),
        rpo_events,
        taken_over_checkpoint: cold_newest,
        restored_ms: restored_ms.context("the standby committed nothing")?,
        rto_ms: rto_ms.context("the standby committed no new window row")?,
        state_bytes: cold_record.files.iter().map(|f| f.size_bytes).sum(),
        identical,
        window_rows,
    };
    let dir = crate::write_summary(&args.results, "failover", &summary)?;
    std::fs::write(dir.join("timeline.csv"), &timeline)?;
    println!("{}", dir.display());
    if !identical {
        bail!("the primary's committed rows plus the standby's differ from the failure-free run");
    }
    eprintln!(
        "failover: RPO {} checkpoint(s), {} events; restored in {} ms, RTO {} ms; output identical",
        summary.rpo_checkpoints, summary.rpo_events, summary.restored_ms, summary.rto_ms
    );
    Ok(())
}
