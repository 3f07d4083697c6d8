//! `weir-harness failover`: a region lost under steady load. A primary
//! tails a log that a paced load appends to (`--rate`, after an optional
//! `--prefill`), with a cold tier and a replica (`--cold-store`,
//! `--replica`; both `file://` in the work directory by default). Once the
//! replica holds a checkpoint past the prefill and `--kill-after` more has
//! passed, the primary's process group is killed with `kill -9` and the
//! load stops: the region, with its log and data dir, is gone. A standby
//! in another data directory takes over from the replica alone
//! (`weir run --restore-from REPLICA --until-end`, no input: the log the
//! primary shipped). Measures:
//!
//! - **RPO**: the checkpoints the primary had committed locally that the
//!   replica did not have at the kill, and the events the load had
//!   appended that never reached the replica (lost with the region);
//! - **restore**: kill to the standby's first commit (the taken-over
//!   checkpoint, its files and the shipped log fetched and verified);
//! - **RTO**: kill to the standby's first commit that covers a new window
//!   row (restored, replayed, and durable output again).
//!
//! The primary's committed rows (within the taken-over checkpoint's output
//! lengths) plus the standby's must equal a failure-free run over the
//! replicated log (`--until-end`, no checkpoints). Results:
//! `results/failover-<t>/summary.json` and `timeline.csv`; non-zero exit
//! if the outputs differ.

mod load;

use std::fmt::Write as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use weir::checkpoint::format::CommitRecord;
use weir::checkpoint::store::read_commits;
use weir::checkpoint::tier::{newest_cold_record, open_cold_store, Blob};
use weir_dataflows::duration::parse_duration_ms;

use self::load::{Load, Loader};
use crate::RunHeader;

/// Waits that end a stuck experiment (fail-safes, not speed assumptions).
const DEADLINE: Duration = Duration::from_secs(600);

/// Arguments of the failover mode.
#[derive(clap::Parser, Debug)]
pub struct FailoverArgs {
    /// Events the load appends at most (it stops at the kill).
    #[arg(long, default_value_t = 5_000_000)]
    events: u64,
    /// Events appended at once before the primary starts (state to build).
    #[arg(long, default_value_t = 0)]
    prefill: u64,
    /// Paced events per second after the prefill.
    #[arg(long, default_value_t = 200_000)]
    rate: u64,
    /// Event-time seconds per wall-clock second (windows close this much
    /// faster than real time).
    #[arg(long, default_value_t = 1)]
    time_scale: u64,
    /// Log partitions.
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// The window of the query.
    #[arg(long, default_value = "sliding:20s/5s")]
    window: String,
    /// Worker threads of the primary and the standby.
    #[arg(long, default_value_t = 2)]
    workers: u64,
    /// Checkpoint interval of the primary and the standby.
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    checkpoint_interval: u64,
    /// How long after the replica first holds a checkpoint past the
    /// prefill the primary is killed.
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    kill_after: u64,
    /// The cold tier (default: `file://WORK_DIR/cold`).
    #[arg(long)]
    cold_store: Option<String>,
    /// The replica the standby takes over from (default:
    /// `file://WORK_DIR/replica`).
    #[arg(long)]
    replica: Option<String>,
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
    /// Events the load appended before the kill.
    events: u64,
    prefill: u64,
    rate_per_s: u64,
    time_scale: u64,
    keys: u64,
    window: String,
    workers: u64,
    checkpoint_interval_ms: u64,
    cold_store: String,
    replica: String,
    /// Checkpoints committed locally by the primary and not in the replica
    /// at the kill.
    rpo_checkpoints: u64,
    /// Events appended before the kill that never reached the replica.
    rpo_events: u64,
    /// Events the standby replayed after the checkpoint it took over.
    replayed_events: u64,
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

fn run_args(data: &Path, out: &Path, args: &FailoverArgs) -> Vec<String> {
    let mut run: Vec<String> = ["run", "--lateness", "2s", "--window", &args.window]
        .map(str::to_owned)
        .to_vec();
    run.extend([
        "--workers".to_owned(),
        args.workers.to_string(),
        "--checkpoint-interval".to_owned(),
        format!("{}ms", args.checkpoint_interval),
    ]);
    for (flag, path) in [("--data-dir", data), ("--out", out)] {
        run.push(flag.to_owned());
        run.push(path.display().to_string());
    }
    run
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

fn default_url(given: Option<&String>, dir: &Path) -> Result<String> {
    Ok(match given {
        Some(url) => url.clone(),
        None => format!("file://{}", std::path::absolute(dir)?.display()),
    })
}

/// The newest usable checkpoint of `blob` if it resumes every partition
/// past `offset_each` (it covers events of the paced load).
fn replica_past(blob: &dyn Blob, offset_each: u64) -> Result<Option<u64>> {
    let Some((_, record)) = newest_cold_record(blob).map_err(|e| anyhow::anyhow!(e))? else {
        return Ok(None);
    };
    let past = !record.partitions.is_empty()
        && record
            .partitions
            .iter()
            .all(|p| p.resume_offset > offset_each);
    Ok(past.then_some(record.checkpoint_id))
}

/// Runs the failover experiment.
#[allow(clippy::too_many_lines)] // one experiment, read top to bottom
pub fn failover(args: &FailoverArgs) -> Result<()> {
    let weir = crate::weir_binary()?;
    crate::fresh_work_dir(&args.work_dir)?;
    let work = &args.work_dir;
    let cold_url = default_url(args.cold_store.as_ref(), &work.join("cold"))?;
    let replica_url = default_url(args.replica.as_ref(), &work.join("replica"))?;
    let replica = open_cold_store(&replica_url)?;
    let load = Load {
        events: args.events,
        prefill: args.prefill,
        rate_per_s: args.rate,
        time_scale: args.time_scale,
        partitions: args.partitions,
        keys: args.keys,
    };

    let mut timeline = String::from("t_ms,event,checkpoint_id\n");
    let started = Instant::now();
    let mut event = |what: &str, id: u64| {
        let _ = writeln!(timeline, "{},{what},{id}", started.elapsed().as_millis());
    };
    let (primary_data, primary_out) = (work.join("primary-data"), work.join("primary-out"));
    let (writers, prefilled) = Loader::prefill(load, &primary_data.join("log"))?;
    let mut primary = run_args(&primary_data, &primary_out, args);
    primary.extend([
        "--cold-store".to_owned(),
        cold_url.clone(),
        "--replica".to_owned(),
        replica_url.clone(),
    ]);
    let mut child = Command::new(&weir)
        .args(&primary)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(crate::append_file(&work.join("primary.log"))?)
        .spawn()?;
    let loader = Loader::start(load, writers, prefilled);
    event("primary-start", 0);
    let prefill_each = prefilled / u64::from(args.partitions.max(1));
    loop {
        ensure!(
            started.elapsed() < DEADLINE,
            "no checkpoint past the prefill reached the replica"
        );
        if child.try_wait()?.is_some() {
            bail!(
                "the primary ended; see {}",
                work.join("primary.log").display()
            );
        }
        if let Some(id) = replica_past(replica.as_ref(), prefill_each)? {
            event("first-cold-checkpoint", id);
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
    // The region goes: the primary's processes, then its load.
    let _ = Command::new("kill")
        .args(["-9", "--", &format!("-{}", child.id())])
        .status();
    let killed = Instant::now();
    let appended_at_kill = loader.appended.load(Ordering::Acquire);
    let _ = child.wait();
    let appended = loader.stop()?.max(appended_at_kill);
    let local = read_commits(&primary_data.join("checkpoints"))?;
    let (taken_epoch, taken) = newest_cold_record(replica.as_ref())
        .map_err(|e| anyhow::anyhow!(e))?
        .context("an empty replica")?;
    let local_newest = local
        .last()
        .context("the primary committed nothing locally")?;
    event("kill", local_newest.checkpoint_id);

    let (standby_data, standby_out) = (work.join("standby-data"), work.join("standby-out"));
    let mut standby = run_args(&standby_data, &standby_out, args);
    standby.extend([
        "--until-end".to_owned(),
        "--restore-from".to_owned(),
        replica_url.clone(),
    ]);
    let mut child = Command::new(&weir)
        .args(&standby)
        .stdout(Stdio::null())
        .stderr(crate::append_file(&work.join("standby.log"))?)
        .spawn()?;
    event("standby-start", taken.checkpoint_id);
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

    // The failure-free run: over all that reached the replica (the
    // standby fetched only what it resumes from).
    let reference_data = work.join("reference-data");
    // (The primary keeps its whole log, so the chunks start at offset 0
    // and the records fetched are the events that reached the replica.)
    let shipped = weir::checkpoint::tier::log_ship::fetch_log(
        replica.as_ref(),
        taken_epoch,
        &reference_data.join("log"),
        ((0, 0), false),
    )
    .map_err(|e| anyhow::anyhow!("fetching the replicated log: {e}"))?
    .records;
    let reference_out = work.join("reference-out");
    let mut reference = run_args(&reference_data, &reference_out, args);
    reference.extend(["--until-end".to_owned(), "--no-checkpoint".to_owned()]);
    let status = Command::new(&weir)
        .args(&reference)
        .stdout(Stdio::null())
        .stderr(crate::append_file(&work.join("reference.log"))?)
        .status()?;
    ensure!(status.success(), "the failure-free run failed");

    let mut identical = true;
    let mut window_rows = 0;
    for kind in ["windows-", "late-"] {
        let mut got = crate::sorted_rows(&primary_out, kind, Some(&taken))?;
        got.extend(crate::sorted_rows(&standby_out, kind, None)?);
        got.sort();
        let expected = crate::sorted_rows(&reference_out, kind, None)?;
        if kind == "windows-" {
            window_rows = expected.len();
        }
        identical &= got == expected;
    }
    let resumed: u64 = taken.partitions.iter().map(|p| p.resume_offset).sum();
    let summary = Summary {
        header: RunHeader::new("failover"),
        events: appended,
        prefill: prefilled,
        rate_per_s: args.rate,
        time_scale: args.time_scale,
        keys: args.keys,
        window: args.window.clone(),
        workers: args.workers,
        checkpoint_interval_ms: args.checkpoint_interval,
        cold_store: cold_url,
        replica: replica_url,
        rpo_checkpoints: local_newest
            .checkpoint_id
            .saturating_sub(taken.checkpoint_id),
        rpo_events: appended.saturating_sub(shipped),
        replayed_events: shipped.saturating_sub(resumed),
        taken_over_checkpoint: taken.checkpoint_id,
        restored_ms: restored_ms.context("the standby committed nothing")?,
        rto_ms: rto_ms.context("the standby committed no new window row")?,
        state_bytes: taken.files.iter().map(|f| f.size_bytes).sum(),
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
        "failover: RPO {} checkpoint(s), {} events; restored in {} ms, RTO {} ms; {} MB of state; output identical",
        summary.rpo_checkpoints,
        summary.rpo_events,
        summary.restored_ms,
        summary.rto_ms,
        summary.state_bytes / 1_000_000
    );
    Ok(())
}
