//! `weir-harness`: measurements of weir that end up in `results/<run-id>/`.
//!
//! - `throughput`: generate a Zipf input, ingest it into a log, run the
//!   window query from the log with each worker count, and write
//!   `summary.json` with events/s and events/s/worker, both of the whole
//!   stream (`--events`) and of the events the query read (a Nexmark query
//!   reads only its tables).
//! - `latency`: an open-loop load at a fixed rate into the log while the
//!   engine tails it; latency percentiles, `latency.hgrm`, `timeseries.csv`.
//! - `chaos`: kill the engine or the sidecar at random during a job and
//!   compare the final output with a failure-free run.
//! - `cluster`: P processes x W workers on loopback with one sidecar.
//! - `soak`: a long load into the log, a separate engine process with
//!   checkpoints killed and restarted a few times; memory, disk, lag over
//!   time, and the output compared with a failure-free run.
//! - `state`: window state beyond a memory budget (issue 14): a large
//!   input run with checkpoints, with and without a budget, killed and
//!   rerun; peak memory of engine and sidecar, checkpoint lag, and the
//!   outputs compared.

mod chaos;
mod cluster;
mod failover;
mod latency;
mod latency_stats;
mod pacing;
mod soak;
mod source;
mod state;

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use serde::Serialize;
use weir::checkpoint::pressure::DEFAULT_MAX_TAP_BUFFER_BYTES;
use weir::driver::run;
use weir::gen::{generate_zipf, ZipfParams};
use weir::job::WindowQuery;
use weir::log::LogConfig;
use weir::nexmark::NexmarkQuery;
use weir::run::{CheckpointOptions, GeneratedInput, RunOptions};
use weir_dataflows::duration::parse_duration_ms;
use weir_dataflows::WindowSpec;

// Same allocator as the `weir` binary, so the harness measures what users run.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "weir-harness",
    about = "Measure weir; results go to results/<run-id>/"
)]
struct Cli {
    #[command(subcommand)]
    command: Mode,
}

#[derive(Subcommand, Debug)]
enum Mode {
    /// Throughput of the window query from the log, per worker count.
    Throughput(ThroughputArgs),
    /// Latency of window results under an open-loop load at a fixed rate.
    Latency(latency::LatencyArgs),
    /// Kill the engine or the sidecar at random while a job runs; the output must not change.
    Chaos(chaos::ChaosArgs),
    /// A region lost under a paced load: the primary killed, a standby takes over from its replica: RPO, RTO, output exactly once.
    Failover(failover::FailoverArgs),
    /// Run a job as P processes x W workers on loopback with one sidecar.
    Cluster(cluster::ClusterArgs),
    /// A long load with sidecar and engine kills: memory, disk and lag over time, output exactly once.
    Soak(soak::SoakArgs),
    /// Window state beyond a memory budget: a checkpointed run over a large input, killed and rerun; memory, lag, output exactly once.
    State(state::StateArgs),
    /// Messages per second from a NATS JetStream stream into the log (`weir ingest --from`).
    Source(source::SourceArgs),
}

#[derive(Parser, Debug)]
struct ThroughputArgs {
    /// Events in the input.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    /// Distinct Zipf keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u32,
    /// Zipf exponent of the keys (0: uniform).
    #[arg(long, default_value_t = ZipfParams::default().exponent)]
    exponent: f64,
    /// Events per second of event time.
    #[arg(long, default_value_t = ZipfParams::default().rate_per_s)]
    rate: u64,
    /// Rows of fixed windows: all or changes.
    #[arg(long, default_value = "all")]
    emit: weir_dataflows::emit::Emit,
    /// Input partitions (files).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Window of the query.
    #[arg(long, default_value = "tumbling:10s")]
    window: WindowSpec,
    /// Allowed lateness.
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    lateness: u64,
    /// Worker counts to measure, comma separated.
    #[arg(long, default_value = "1,2", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Runs per worker count; the best is reported (and all are kept).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Where input, log and outputs are kept between runs.
    #[arg(long, default_value = "target/harness")]
    work_dir: PathBuf,
    /// Results directory.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// Take checkpoints at most this often (through a sidecar); off without it.
    #[arg(long, value_parser = parse_duration_ms)]
    checkpoint_interval: Option<u64>,
    /// Measure this Nexmark query (q5, q7, q8, q11, q12) instead, reading
    /// `--events` events straight from the generator (no files, no log);
    /// `throughput_events_per_s` counts all generated events, as Nexmark
    /// reports do, and `events_read_per_s` only those of the query's tables.
    #[arg(long, value_parser = parse_nexmark)]
    nexmark: Option<NexmarkQuery>,
}

fn parse_nexmark(text: &str) -> Result<NexmarkQuery, String> {
    NexmarkQuery::parse(text).ok_or_else(|| format!("{text:?} is not q5, q7, q8, q11 or q12"))
}

#[derive(Serialize)]
struct Measurement {
    workers: usize,
    elapsed_s: Vec<f64>,
    best_elapsed_s: f64,
    /// Stream rate: `--events` (every generated event, of all tables, as
    /// Nexmark reports count them) over the best elapsed time.
    throughput_events_per_s: f64,
    throughput_events_per_s_per_worker: f64,
    /// Events the query read (a Nexmark query reads only its tables: q8
    /// reads persons and auctions, 8 % of the stream; the others bids, 92 %).
    events_read: u64,
    /// `events_read` over the best elapsed time.
    events_read_per_s: f64,
    events_read_per_s_per_worker: f64,
    window_rows: u64,
    late_events: u64,
    peak_arranged_records: i64,
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    header: RunHeader,
    events: u64,
    keys: u32,
    partitions: u32,
    query: String,
    window: String,
    lateness_ms: u64,
    checkpoint_interval_ms: Option<u64>,
    runs: Vec<Measurement>,
}

/// What every results summary starts with: the mode, the command line, the
/// git commit and the machine.
#[derive(Serialize)]
pub struct RunHeader {
    mode: &'static str,
    command: String,
    git_commit: String,
    machine: Machine,
}

impl RunHeader {
    /// The header of a `mode` run of this process.
    pub fn new(mode: &'static str) -> Self {
        RunHeader {
            mode,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            git_commit: git_commit(),
            machine: machine(),
        }
    }
}

/// The machine a measurement ran on.
#[derive(Serialize)]
pub struct Machine {
    cpus: usize,
    cpu_model: String,
}

/// This machine.
pub fn machine() -> Machine {
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        cpu_model: std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
            })
            .unwrap_or_default(),
    }
}

/// The `weir` binary (next to this one, or `$WEIR_BIN`).
pub fn weir_binary() -> Result<PathBuf> {
    weir::driver::weir_binary().context("cannot find the weir binary (build it, or set WEIR_BIN)")
}

/// The `*.csv` files directly in `dir` (an output directory), as
/// `(file name, path)`.
pub fn csv_files(dir: &std::path::Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "csv") {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            files.push((name, path));
        }
    }
    Ok(files)
}

/// The rows (header skipped) of `dir`'s `<prefix>*.csv` files, sorted:
/// within `committed`'s output lengths if given (what a killed run
/// delivered), else whole.
pub fn sorted_rows(
    dir: &std::path::Path,
    prefix: &str,
    committed: Option<&weir::checkpoint::format::CommitRecord>,
) -> Result<Vec<String>> {
    let mut rows = Vec::new();
    for (name, path) in csv_files(dir)? {
        if !name.starts_with(prefix) {
            continue;
        }
        let mut bytes = std::fs::read(&path)?;
        if let Some(record) = committed {
            let length = record.outputs.iter().find(|o| o.file_name == name);
            bytes.truncate(length.map_or(0, |o| o.length_bytes as usize));
        }
        rows.extend(String::from_utf8(bytes)?.lines().skip(1).map(str::to_owned));
    }
    rows.sort();
    Ok(rows)
}

/// Empties `dir` (a harness work directory) if it exists.
pub fn fresh_work_dir(dir: &std::path::Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `summary` as `<results>/<mode>-<unix time>/summary.json`; returns the directory.
pub fn write_summary(
    results: &std::path::Path,
    mode: &str,
    summary: &impl Serialize,
) -> Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let dir = results.join(format!("{mode}-{secs}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(summary)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(dir)
}

/// Opens `path` for appending (a child's stderr across its restarts).
pub fn append_file(path: &std::path::Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// The last `lines` lines of a child's stderr file, indented, for an error
/// message: CI shows what the harness prints, not the files it leaves.
pub fn stderr_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    let mut out = format!("last {} line(s) of {}:", tail.len(), path.display());
    for line in tail {
        out.push_str("\n  ");
        out.push_str(line);
    }
    out
}

/// `kill -9` of `child`'s process group (the child was started as a group
/// leader: an engine and the sidecar it started), or of the child alone if
/// that fails; then the wait for it.
pub fn kill_process_group(mut child: std::process::Child) -> Result<()> {
    let killed = Command::new("kill")
        .args(["-9", "--", &format!("-{}", child.id())])
        .status()
        .is_ok_and(|s| s.success());
    if !killed {
        // The group is gone or `kill` failed: at least the child.
        let _ = child.kill();
    }
    child.wait()?;
    Ok(())
}

/// The pid of the sidecar that the engine `pid` started (its child), as
/// `pgrep` prints it, if one is running.
pub fn sidecar_child_of(pid: u32) -> Option<String> {
    let out = Command::new("pgrep")
        .args(["-P", &pid.to_string(), "-f", "sidecar"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_owned)
}

/// The commit the harness was built from (empty outside a git checkout).
pub fn git_commit() -> String {
    command_output("git", &["rev-parse", "HEAD"])
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Mode::Throughput(args) => throughput(&args),
        Mode::Latency(args) => latency::latency(&args),
        Mode::Chaos(args) => chaos::chaos(&args),
        Mode::Failover(args) => failover::failover(&args),
        Mode::Cluster(args) => cluster::cluster(&args),
        Mode::Soak(args) => soak::soak(&args),
        Mode::State(args) => state::state(&args),
        Mode::Source(args) => source::source(&args),
    }
}

fn throughput(args: &ThroughputArgs) -> Result<()> {
    let (tag, query, inputs, generated) = if let Some(q) = args.nexmark {
        let tag = format!("nexmark-{q}-{}-{}", args.events, args.partitions);
        let generated = GeneratedInput {
            events: args.events,
            partitions: args.partitions,
        };
        (
            tag,
            WindowQuery::nexmark(q, args.lateness),
            Vec::new(),
            Some(generated),
        )
    } else {
        let tag = format!(
            "zipf-{}-{}-{}-s{}-r{}",
            args.events, args.keys, args.partitions, args.exponent, args.rate
        );
        let input = args.work_dir.join(&tag).join("input");
        let params = ZipfParams {
            events: args.events,
            keys: args.keys,
            partitions: args.partitions,
            exponent: args.exponent,
            rate_per_s: args.rate,
            ..ZipfParams::default()
        };
        if !(0..args.partitions).all(|p| input.join(format!("zipf-{p}.csv")).is_file()) {
            eprintln!("generating {} events into {}", args.events, input.display());
            generate_zipf(&params, &input)
                .with_context(|| format!("generating {}", input.display()))?;
        }
        let query = WindowQuery {
            spec: args.window,
            granularity_ms: args.window.default_granularity_ms(),
            lateness_ms: args.lateness,
            nexmark: None,
            emit: args.emit,
            aggregates: weir_dataflows::aggregates::Aggregates::default(),
        };
        (tag, query, vec![input], None)
    };
    let mut runs = Vec::new();
    for &workers in &args.workers {
        let options = RunOptions {
            data_dir: args.work_dir.join(&tag).join("data"),
            out_dir: args.work_dir.join(&tag).join(format!("out-{workers}")),
            inputs: inputs.clone(),
            ingest_first: false,
            generated,
            query,
            workers,
            cluster: None,
            until_end: true,
            batch_records: 8_192,
            log_config: LogConfig::default(),
            checkpoint: args
                .checkpoint_interval
                .map(|interval_ms| CheckpointOptions {
                    interval_ms,
                    adaptive: false,
                    sidecar: None,
                    max_tap_buffer_bytes: DEFAULT_MAX_TAP_BUFFER_BYTES,
                    log_retention: weir::run::LogRetention::Keep,
                    sidecar_reconnect_ms: 0,
                    cold_store: None,
                    restore_from: None,
                    keep_local: weir::checkpoint::store::RETAINED_CHECKPOINTS,
                    replica: None,
                }),
            hooks: weir::run::RunHooks::default(),
            metrics_addr: None,
            memory_budget_bytes: None,
        };
        let mut elapsed_s = Vec::new();
        let mut last = None;
        for _ in 0..args.repeat.max(1) {
            // Each measured run starts from scratch: no checkpoint to resume from.
            let checkpoints = options.data_dir.join("checkpoints");
            if checkpoints.exists() {
                std::fs::remove_dir_all(&checkpoints)
                    .with_context(|| format!("removing {}", checkpoints.display()))?;
            }
            let summary = run(&options)?;
            // A Nexmark query reads its tables' events only.
            anyhow::ensure!(
                summary.events_read == args.events
                    || (generated.is_some() && summary.events_read > 0),
                "read {} of {} events",
                summary.events_read,
                args.events
            );
            elapsed_s.push(summary.elapsed.as_secs_f64());
            last = Some(summary);
        }
        let last = last.expect("at least one run");
        let best = elapsed_s.iter().copied().fold(f64::INFINITY, f64::min);
        let rate = args.events as f64 / best;
        let read_rate = last.events_read as f64 / best;
        eprintln!(
            "{workers} worker(s): best {best:.3} s; stream {rate:.0} events/s ({:.0}/worker) \
             over {} events; read {read_rate:.0} events/s ({:.0}/worker) over {} events read",
            rate / workers as f64,
            args.events,
            read_rate / workers as f64,
            last.events_read,
        );
        runs.push(Measurement {
            workers,
            elapsed_s,
            best_elapsed_s: best,
            throughput_events_per_s: rate,
            throughput_events_per_s_per_worker: rate / workers as f64,
            events_read: last.events_read,
            events_read_per_s: read_rate,
            events_read_per_s_per_worker: read_rate / workers as f64,
            window_rows: last.window_rows,
            late_events: last.events_late,
            peak_arranged_records: last.peak_arranged_records,
        });
    }
    let summary = Summary {
        header: RunHeader::new("throughput"),
        events: args.events,
        keys: args.keys,
        partitions: args.partitions,
        query: args
            .nexmark
            .map_or_else(|| "window".to_owned(), |q| q.to_string()),
        window: query.spec.to_string(),
        lateness_ms: args.lateness,
        checkpoint_interval_ms: args.checkpoint_interval,
        runs,
    };
    let dir = crate::write_summary(&args.results, "throughput", &summary)?;
    println!("{}", dir.join("summary.json").display());
    Ok(())
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
