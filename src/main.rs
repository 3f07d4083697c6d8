//! The `weir` command line: `run`, `ingest` and `gen`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use weir::gen::{generate_zipf, ZipfParams};
use weir::ingest::ingest_files;
use weir::job::WindowQuery;
use weir::log::{FsyncPolicy, LogConfig};
use weir::run::{
    read_hostfile, run, CheckpointOptions, ClusterOptions, RunOptions, RunSummary, EVENTS_TOPIC,
};
use weir_dataflows::duration::{format_duration_ms, parse_duration_ms};
use weir_dataflows::WindowSpec;

// The engine allocates many small strings and vectors across threads;
// mimalloc measured faster than the system allocator (see docs/decisions.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "Windowed stream computations on differential dataflow"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a query over the input log (with no arguments: a demo on generated Zipf data).
    Run(RunArgs),
    /// Append CSV files (`ts,key,value`) to the input log; one file = one partition; idempotent.
    Ingest(IngestArgs),
    /// Generate reproducible input files.
    Gen {
        #[command(subcommand)]
        kind: GenKind,
    },
    /// The checkpoint sidecar (`weir run` starts one itself unless given --sidecar).
    Sidecar(SidecarArgs),
    /// Show the input log and the committed checkpoints of a data directory.
    Inspect {
        /// The data directory.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
    },
}

#[derive(Args, Debug)]
struct SidecarArgs {
    /// Data directory: checkpoints go to <data-dir>/checkpoints.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// `unix` (socket <data-dir>/sidecar.sock, mode 0600) or `tcp:127.0.0.1:PORT`
    /// (token in <data-dir>/sidecar.token, mode 0600). Loopback only.
    #[arg(long, default_value = "unix")]
    listen: String,
    /// Exit once every engine process that connected has said goodbye.
    #[arg(long)]
    exit_when_idle: bool,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum Query {
    /// The generic window query: count, sum, min, max per key and window.
    Window,
}

#[derive(Parser, Debug)]
struct RunArgs {
    /// The query to run.
    #[arg(long, value_enum, default_value = "window")]
    query: Query,
    /// Input CSV files or directories of them (ingested idempotently). Without
    /// it, a demo dataset is generated under the data dir and the run stops at its end.
    #[arg(long, num_args = 1..)]
    input: Vec<PathBuf>,
    /// tumbling:SIZE, sliding:SIZE/SLIDE or session:GAP.
    #[arg(long, default_value = "sliding:60s/10s")]
    window: WindowSpec,
    /// Time granularity (default: the slide, or min(gap, 1s) for sessions).
    #[arg(long, value_parser = parse_duration_ms)]
    granularity: Option<u64>,
    /// Allowed lateness: an event is late if its time is below the partition's max time minus this.
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    lateness: u64,
    /// Directory of the input log.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Directory of the output files.
    #[arg(long, default_value = "./out")]
    out: PathBuf,
    /// Worker threads per process.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Processes in the cluster (needs --process and --hostfile).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Index of this process in the cluster.
    #[arg(long, default_value_t = 0)]
    process: usize,
    /// File with one host:port per process.
    #[arg(long)]
    hostfile: Option<PathBuf>,
    /// Stop once every partition is read to its end and all windows are flushed.
    #[arg(long)]
    until_end: bool,
    /// Records read from one partition per source step.
    #[arg(long, default_value_t = 8_192)]
    batch_records: usize,
    /// Events of the demo dataset (when no --input is given).
    #[arg(long, default_value_t = 5_000_000)]
    demo_events: u64,
    /// At most one checkpoint per this much wall clock (cuts fall on multiples of the slide).
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    checkpoint_interval: u64,
    /// Run without checkpoints (no sidecar, no restore, output written as produced).
    #[arg(long)]
    no_checkpoint: bool,
    /// A sidecar started separately: unix:PATH or tcp:127.0.0.1:PORT.
    #[arg(long)]
    sidecar: Option<String>,
    /// Serve Prometheus metrics (`GET /metrics`) on this loopback address, e.g. 127.0.0.1:9464.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
struct IngestArgs {
    /// CSV files with header ts,key,value.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Directory of the input log.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// always, never, interval or interval:<ms>.
    #[arg(long, default_value = "interval")]
    fsync: FsyncPolicy,
}

#[derive(Subcommand, Debug)]
enum GenKind {
    /// Skewed keys (Zipf), out-of-order and some late events.
    Zipf(ZipfArgs),
}

#[derive(Args, Debug)]
struct ZipfArgs {
    /// Events over all partitions.
    #[arg(long)]
    events: u64,
    /// Output directory (files zipf-<p>.csv).
    #[arg(long)]
    out: PathBuf,
    /// Number of partitions (files).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Distinct keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u32,
    /// Zipf exponent.
    #[arg(long, default_value_t = 1.0)]
    exponent: f64,
    /// Events per second of event time, over all partitions.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Fraction of events delayed by up to 30 s (most become late).
    #[arg(long, default_value_t = 0.001)]
    late_fraction: f64,
    /// PRNG seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        None => run_command(&RunArgs::parse_from(["weir-run"])),
        Some(Command::Run(args)) => run_command(&args),
        Some(Command::Ingest(args)) => ingest_command(&args),
        Some(Command::Gen {
            kind: GenKind::Zipf(args),
        }) => gen_command(&args),
        Some(Command::Sidecar(args)) => sidecar_command(&args),
        Some(Command::Inspect { data_dir }) => weir::inspect::inspect(&data_dir)
            .map(|report| print!("{report}"))
            .map_err(Into::into),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_command(args: &RunArgs) -> Result<()> {
    let Query::Window = args.query;
    let granularity_ms = args
        .granularity
        .unwrap_or_else(|| args.window.default_granularity_ms());
    args.window
        .check_granularity(granularity_ms)
        .map_err(|e| anyhow::anyhow!("--granularity: {e}"))?;
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let cluster = if args.processes > 1 {
        let Some(hostfile) = &args.hostfile else {
            bail!("--processes {} needs --hostfile", args.processes)
        };
        if args.process >= args.processes {
            bail!(
                "--process {} is not below --processes {}",
                args.process,
                args.processes
            );
        }
        Some(ClusterOptions {
            processes: args.processes,
            process: args.process,
            addresses: read_hostfile(hostfile, args.processes)?,
        })
    } else {
        None
    };
    let mut inputs = args.input.clone();
    let mut until_end = args.until_end;
    let mut data_dir = args.data_dir.clone();
    if inputs.is_empty() {
        // The demo keeps its input, log and checkpoints apart from any real data.
        data_dir = args.data_dir.join("demo");
        let input_dir = data_dir.join("input");
        let params = ZipfParams {
            events: args.demo_events,
            ..ZipfParams::default()
        };
        let existing =
            (0..params.partitions).all(|p| input_dir.join(format!("zipf-{p}.csv")).is_file());
        if !existing {
            eprintln!(
                "no --input: generating a demo dataset of {} Zipf events ({} keys) in {}",
                params.events,
                params.keys,
                input_dir.display()
            );
            generate_zipf(&params, &input_dir)
                .with_context(|| format!("generating into {}", input_dir.display()))?;
        }
        let checkpoints = data_dir.join("checkpoints");
        let finished = weir::checkpoint::store::read_commits(&checkpoints)
            .ok()
            .and_then(|c| {
                c.last()
                    .map(|r| r.cut_time == weir::checkpoint::cut::FINAL_CUT)
            })
            .unwrap_or(false);
        if finished {
            // A finished demo would restore and do nothing: start it over.
            eprintln!("the previous demo run completed: starting it over");
            std::fs::remove_dir_all(&checkpoints)
                .with_context(|| format!("removing {}", checkpoints.display()))?;
        }
        inputs.push(input_dir);
        until_end = true;
    }
    let options = RunOptions {
        data_dir,
        out_dir: args.out.clone(),
        inputs,
        query: WindowQuery {
            spec: args.window,
            granularity_ms,
            lateness_ms: args.lateness,
        },
        workers: args.workers,
        cluster,
        until_end,
        batch_records: args.batch_records,
        log_config: LogConfig::default(),
        checkpoint: (!args.no_checkpoint).then(|| CheckpointOptions {
            interval_ms: args.checkpoint_interval,
            sidecar: args.sidecar.clone(),
        }),
        hooks: weir::run::RunHooks::default(),
        metrics_addr: args.metrics_addr,
    };
    eprintln!(
        "running window {} (granularity {}, lateness {}) on {} worker(s) x {} process(es)",
        args.window,
        format_duration_ms(granularity_ms),
        format_duration_ms(args.lateness),
        args.workers,
        args.processes
    );
    let summary = run(&options)?;
    print_summary(&summary, args.workers);
    Ok(())
}

fn print_summary(s: &RunSummary, workers: usize) {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let rate = s.events_read as f64 / secs;
    println!("events read       {}", s.events_read);
    println!("late events       {}", s.events_late);
    println!(
        "window rows       {} (late rows written: {})",
        s.window_rows, s.late_rows
    );
    println!("elapsed           {secs:.3} s");
    println!(
        "throughput        {:.0} events/s ({:.0} events/s/worker)",
        rate,
        rate / workers as f64
    );
    println!(
        "peak arranged     {} records (largest worker)",
        s.peak_arranged_records
    );
    println!(
        "partitions        {} (workers in cluster: {})",
        s.partitions, s.total_workers
    );
    match &s.checkpoints {
        None => println!("checkpoints       off"),
        Some(c) => {
            if let Some((id, cut)) = c.restored_from {
                println!(
                    "restored from     checkpoint {id} (cut {})",
                    format_cut(cut)
                );
                println!(
                    "restore load      {} updates in {:.3} s (slowest worker)",
                    c.restored_updates,
                    c.restore_load.as_secs_f64()
                );
                if cut == u64::MAX {
                    println!("                  (this run had completed before: its output stands as committed)");
                }
            }
            match c.last_committed {
                Some((id, cut)) => println!(
                    "last checkpoint   {id} (cut {}), commit latency {} us",
                    format_cut(cut),
                    c.last_commit_latency_us.unwrap_or(0)
                ),
                None => println!("last checkpoint   none committed"),
            }
        }
    }
    println!(
        "output            {}/windows-*.csv, late-*.csv",
        s.out_dir.display()
    );
}

fn format_cut(cut: u64) -> String {
    if cut == u64::MAX {
        "final".to_owned()
    } else {
        format!("{cut} ms")
    }
}

fn sidecar_command(args: &SidecarArgs) -> Result<()> {
    use weir::checkpoint::sidecar::{run_sidecar, Listen, SidecarConfig};
    let listen = match args.listen.as_str() {
        "unix" => Listen::Unix,
        other => match other.strip_prefix("tcp:") {
            Some(addr) => Listen::Tcp(
                addr.parse()
                    .with_context(|| format!("--listen {other}: not an address"))?,
            ),
            None => bail!("--listen must be `unix` or `tcp:127.0.0.1:PORT`, not {other:?}"),
        },
    };
    run_sidecar(SidecarConfig {
        data_dir: args.data_dir.clone(),
        listen,
        exit_when_idle: args.exit_when_idle,
    })?;
    Ok(())
}

fn ingest_command(args: &IngestArgs) -> Result<()> {
    let config = LogConfig {
        fsync: args.fsync,
        ..LogConfig::default()
    };
    let report = ingest_files(
        &args.data_dir.join("log"),
        EVENTS_TOPIC,
        &args.files,
        &config,
    )?;
    for file in &report.files {
        let what = if file.skipped {
            "already ingested as"
        } else {
            "ingested into"
        };
        println!(
            "{}: {what} partition {} ({} events)",
            file.path.display(),
            file.partition,
            file.records
        );
    }
    Ok(())
}

fn gen_command(args: &ZipfArgs) -> Result<()> {
    let params = ZipfParams {
        events: args.events,
        partitions: args.partitions,
        keys: args.keys,
        exponent: args.exponent,
        rate_per_s: args.rate,
        late_fraction: args.late_fraction,
        seed: args.seed,
        ..ZipfParams::default()
    };
    if params.partitions == 0 || params.keys == 0 || params.rate_per_s == 0 {
        bail!("--partitions, --keys and --rate must be positive");
    }
    let paths = generate_zipf(&params, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    for path in paths {
        println!("{}", path.display());
    }
    Ok(())
}
