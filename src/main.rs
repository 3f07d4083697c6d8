//! The `weir` command line: `run`, `ingest` and `gen`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use weir::checkpoint::pressure::DEFAULT_MAX_TAP_BUFFER_BYTES;
use weir::gen::{generate_zipf, ZipfParams};
use weir::nexmark::NexmarkQuery;
use weir_dataflows::aggregates::Aggregates;
use weir_dataflows::duration::parse_duration_ms;
use weir_dataflows::emit::Emit;
use weir_dataflows::WindowSpec;

// The engine allocates many small strings and vectors across threads;
// mimalloc measured faster than the system allocator (see docs/decisions.md),
// built without transparent-huge-page advice (decision 65).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "main/explain_command.rs"]
mod explain_command;
#[path = "main/ingest_command.rs"]
mod ingest_command;
#[path = "main/run_command.rs"]
mod run_command;
#[path = "main/run_stream.rs"]
mod run_stream;
#[path = "main/upgrade_check.rs"]
mod upgrade_check;

use ingest_command::{ingest_command, FormatArg, IngestArgs};
use run_command::run_command;

#[derive(Parser, Debug)]
#[command(
    name = "weir",
    version,
    about = "Windowed stream computations on differential dataflow"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log lines on stderr as text or as JSON objects (one per line); the
    /// level comes from `RUST_LOG` (default: info). A sidecar started by
    /// `weir run` inherits the choice.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (spans with their fields).
    Json,
}

/// Sets up `tracing` on stderr: `RUST_LOG` filters (default `info`); spans
/// (checkpoint cut, ship, commit, restore, replay) log when they close, with
/// their `elapsed_ms`. Without `--log-format`, `WEIR_LOG_FORMAT` decides
/// (so a sidecar started by `weir run` logs as its engine does).
fn init_tracing(format: Option<LogFormat>) {
    use tracing_subscriber::fmt::format::FmtSpan;
    const ENV: &str = "WEIR_LOG_FORMAT";
    let format = format.unwrap_or_else(|| match std::env::var(ENV).as_deref() {
        Ok("json") => LogFormat::Json,
        _ => LogFormat::Text,
    });
    if format == LogFormat::Json && std::env::var_os(ENV).is_none() {
        // Before any thread starts; children (the sidecar) inherit it.
        std::env::set_var(ENV, "json");
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::CLOSE)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().with_span_list(false).init(),
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a query over the input log (with no arguments: over the log in the data dir, or the Nexmark q5 demo if that is empty).
    Run(Box<RunArgs>),
    /// Append CSV files (`ts,key,value`) to the input log; one file = one partition; idempotent.
    Ingest(IngestArgs),
    /// Generate reproducible input files.
    Gen {
        #[command(subcommand)]
        kind: GenKind,
    },
    /// The checkpoint sidecar (`weir run` starts one itself unless given --sidecar).
    Sidecar(SidecarArgs),
    /// Canary for a new binary: the old and this one each restore the
    /// newest checkpoint of a copy of the job and run to the end of its log;
    /// their outputs are compared row by row.
    UpgradeCheck(upgrade_check::UpgradeCheckArgs),
    /// Lineage of an output row of the window query: the checkpoint that
    /// committed it, the input partitions and offsets of its events, and the
    /// late events of its key and window that were refused.
    Explain(explain_command::ExplainArgs),
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
    /// Serve the sidecar's Prometheus metrics (`GET /metrics`) on this loopback address.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Wait this long for the checkpoint store's lock while another sidecar
    /// holds it (one killed just before still does until its last write
    /// returns), then refuse.
    #[arg(long, default_value = "10s", value_parser = parse_duration_ms)]
    lock_wait: u64,
    /// The most memory a compaction holds at once: it merges a checkpoint's
    /// files one key group (1/256 of the state) at a time, in the
    /// background, and stops with an error naming the group if one needs
    /// more (e.g. `512MiB`, `4GiB`).
    #[arg(long, default_value = "1GiB", value_parser = weir::size::parse_size_bytes)]
    memory_budget: u64,
    /// Copy each committed checkpoint to this cold tier (`file:///PATH`, e.g.
    /// a cheaper or remote-mounted volume), in commit order, the commit
    /// record after its files; a restore whose local checkpoint files are
    /// damaged or gone reads them from there.
    #[arg(long, value_name = "URL")]
    cold_store: Option<String>,
    /// Copy each committed checkpoint, and the log it resumes from, to this
    /// second store too (another region: `file:///PATH` or
    /// `s3://BUCKET/PREFIX`), on its own copier, with its own epoch; a
    /// standby elsewhere takes over from it with `weir run --restore-from`.
    #[arg(long, value_name = "URL")]
    replica: Option<String>,
    /// How many of the newest checkpoints keep their files in the data dir
    /// (2 to 64): the newest is what a restart restores, the ones before it
    /// are the fallback when it is damaged. Older ones are deleted after
    /// each commit (a cold tier keeps its own copies of the newest).
    #[arg(long, value_name = "N", default_value_t = weir::checkpoint::store::RETAINED_CHECKPOINTS, value_parser = parse_keep_local)]
    keep_local: usize,
}

/// How checkpoints are paced (see `weir::checkpoint::cadence`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum CheckpointCadence {
    /// One checkpoint per `--checkpoint-interval`.
    Fixed,
    /// Longer intervals (up to 8x) while the sidecar is behind.
    Adaptive,
}

/// `--log-retention` (see [`weir::run::LogRetention`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum LogRetentionArg {
    /// Keep every segment.
    Keep,
    /// Delete the segments no retained checkpoint needs.
    Checkpointed,
}

impl From<LogRetentionArg> for weir::run::LogRetention {
    fn from(arg: LogRetentionArg) -> Self {
        match arg {
            LogRetentionArg::Keep => Self::Keep,
            LogRetentionArg::Checkpointed => Self::Checkpointed,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Query {
    /// The generic window query: count, sum, min, max per key and window.
    Window,
    /// Nexmark q5, hot items: per sliding 10 s / 2 s window, the auctions with the most bids.
    Q5,
    /// Nexmark q7, highest bid: per tumbling 10 s window, every bid at the highest price.
    Q7,
    /// Nexmark q8, new users: persons who opened an auction in the 10 s window they registered in.
    Q8,
    /// Nexmark q11, user sessions: bids per bidder session (gap 10 s).
    Q11,
    /// Nexmark q12: bids per bidder per tumbling 10 s window.
    Q12,
}

impl Query {
    fn nexmark(self) -> Option<NexmarkQuery> {
        match self {
            Query::Window => None,
            Query::Q5 => Some(NexmarkQuery::Q5),
            Query::Q7 => Some(NexmarkQuery::Q7),
            Query::Q8 => Some(NexmarkQuery::Q8),
            Query::Q11 => Some(NexmarkQuery::Q11),
            Query::Q12 => Some(NexmarkQuery::Q12),
        }
    }
}

#[derive(Parser, Debug)]
struct RunArgs {
    /// The query to run (default: `window` with --input or on a log holding
    /// `events`; the Nexmark q5 demo with no input and an empty log).
    #[arg(long, value_enum)]
    query: Option<Query>,
    /// Input CSV files or directories of them (ingested idempotently): `ts,key,value`
    /// files for `window`, person-/auction-/bid-<n>.csv (from `weir gen nexmark`) for
    /// the Nexmark queries. Without it, the run reads the data dir's log if
    /// that holds partitions (tailing unless --until-end); if the log is
    /// empty, a demo dataset is generated under the data dir and the run stops
    /// at its end.
    #[arg(long, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Ingest every --input file before the run starts. By default the run
    /// reads new files while they are ingested, one thread per file, and
    /// cuts its first checkpoint once they are all in.
    #[arg(long)]
    ingest_first: bool,
    /// Read a stream into the data dir's log while running on it:
    /// nats://HOST:PORT/STREAM or kafka://HOST:PORT/TOPIC (as `weir ingest
    /// --from`, into topic `events`, a log partition per topic partition).
    /// The run tails the log; with --until-end it stops once every message
    /// the stream held at the start is in.
    #[arg(long, value_name = "URL", conflicts_with_all = ["input", "generate_events"])]
    from: Option<weir::ingest::stream::StreamSource>,
    /// How --from messages are written: one CSV row or one JSON object.
    #[arg(long, value_enum, default_value = "csv", requires = "from")]
    from_format: FormatArg,
    /// With a kafka:// --from of several partitions: a partition with no
    /// new message for this long gets an idle marker, so a quiet partition
    /// does not hold back every window (as `weir ingest --idle-timeout`).
    #[arg(long, value_parser = parse_duration_ms, requires = "from")]
    idle_timeout: Option<u64>,
    /// Nexmark queries: read this many events straight from the generator
    /// (no files, no log; for throughput runs).
    #[arg(long, conflicts_with = "input")]
    generate_events: Option<u64>,
    /// Partitions of the generated input (with --generate-events).
    #[arg(long, default_value_t = 4, requires = "generate_events")]
    generate_partitions: u32,
    /// The generic query's window: tumbling:SIZE, sliding:SIZE/SLIDE or session:GAP
    /// [default: sliding:60s/10s]. The Nexmark queries have their own.
    #[arg(long)]
    window: Option<WindowSpec>,
    /// Time granularity (default: the slide, or min(gap, 1s) for sessions).
    #[arg(long, value_parser = parse_duration_ms)]
    granularity: Option<u64>,
    /// Allowed lateness: an event is late if its time is below the partition's max time minus this.
    #[arg(long, default_value = "5s", value_parser = parse_duration_ms)]
    lateness: u64,
    /// Rows of tumbling and sliding windows: `all` (a row per key and window)
    /// or `changes` (a key's row only when its aggregate differs from the
    /// previous window's, and a row with count 0 when it leaves; README, "Formats").
    #[arg(long, default_value = "all")]
    emit: Emit,
    /// Aggregate columns of the generic query, comma-separated, written in
    /// the order count,sum,min,max,distinct,topk: `distinct` is a
    /// HyperLogLog estimate (1.6 % standard error), `topk` the most frequent
    /// values as `v1:c1|v2:c2|...` (README, "Formats").
    #[arg(long, default_value = "count,sum,min,max")]
    aggregates: Aggregates,
    /// Values listed by the `topk` column, 1 to 1000 [default: 10]; each
    /// (key, pane) keeps 8x as many, and a count is low by at most the
    /// window's events / (8 x TOPK + 1).
    #[arg(long)]
    topk: Option<u16>,
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
    /// How long a process of a cluster waits for the others to connect
    /// before it exits with an error.
    #[arg(long, default_value = "2m", value_parser = parse_duration_ms)]
    connect_timeout: u64,
    /// Stop once every partition is read to its end and all windows are flushed.
    #[arg(long)]
    until_end: bool,
    /// Records read from one partition per source step.
    #[arg(long, default_value_t = 8_192)]
    batch_records: usize,
    /// Events of the demo dataset (no --input and an empty log).
    #[arg(long, default_value_t = 5_000_000)]
    demo_events: u64,
    /// At most one checkpoint per this much wall clock (cuts fall on multiples of the slide).
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    checkpoint_interval: u64,
    /// `fixed`: one checkpoint per interval; `adaptive`: the interval doubles
    /// (up to 8x) while the sidecar is behind and comes back once it catches up.
    /// Either way at most 4 checkpoints are in flight.
    #[arg(long, value_enum, default_value = "fixed")]
    checkpoint_cadence: CheckpointCadence,
    /// Run without checkpoints (no sidecar, no restore, output written as produced).
    #[arg(long)]
    no_checkpoint: bool,
    /// A sidecar started separately: unix:PATH or tcp:127.0.0.1:PORT.
    #[arg(long)]
    sidecar: Option<String>,
    /// MiB the checkpoint taps of this process may buffer, while a checkpoint
    /// is uncommitted, before the sources stop reading (backpressure from a
    /// slow or stopped sidecar; they also stop while 4 checkpoints are
    /// uncommitted).
    #[arg(long, default_value_t = DEFAULT_MAX_TAP_BUFFER_BYTES >> 20)]
    max_tap_buffer_mb: u64,
    /// With --sidecar: how long to keep reconnecting after the sidecar is
    /// lost (a sidecar restarted by hand on the same data dir continues the
    /// run exactly once; 0s: a lost sidecar ends the run).
    #[arg(long, default_value = "5m", value_parser = parse_duration_ms)]
    sidecar_reconnect: u64,
    /// Copy committed checkpoints to this cold tier (`file:///PATH`) and,
    /// when the local checkpoint files are damaged or gone, restore from it
    /// (see `weir sidecar --cold-store`; with --sidecar, give it to that
    /// sidecar too).
    #[arg(long, value_name = "URL", conflicts_with = "no_checkpoint")]
    cold_store: Option<String>,
    /// Copy committed checkpoints and the log they resume from to this
    /// second store too (another region), asynchronously, in commit order
    /// (see `weir sidecar --replica`); a standby takes over from it with
    /// --restore-from.
    #[arg(long, value_name = "URL", conflicts_with = "no_checkpoint")]
    replica: Option<String>,
    /// How many of the newest checkpoints keep their files in the data dir
    /// (see `weir sidecar --keep-local`; with --sidecar, give it to that
    /// sidecar).
    #[arg(long, value_name = "N", default_value_t = weir::checkpoint::store::RETAINED_CHECKPOINTS, value_parser = parse_keep_local, conflicts_with = "no_checkpoint")]
    keep_local: usize,
    /// A standby taking over from a failed primary: restore the newest
    /// checkpoint of this cold tier (`file:///PATH` or `s3://BUCKET/PREFIX`)
    /// into this empty data dir and write the output rows after it (the
    /// rows before it are those the primary committed). Give the same
    /// query; the input is the log shipped with that checkpoint (or give
    /// the same --input). With --cold-store (e.g. the same URL) the
    /// standby's own checkpoints go there in turn. Its claim fences off
    /// the old primary (decision 42).
    #[arg(long, value_name = "URL", conflicts_with = "no_checkpoint")]
    restore_from: Option<String>,
    /// `keep` every log segment, or delete, as checkpoints commit, the
    /// `checkpointed` segments that neither retained checkpoint needs (a
    /// long tailing run's log then stays bounded; a later run without
    /// checkpoints cannot read the log from its start).
    #[arg(long, value_enum, default_value = "keep")]
    log_retention: LogRetentionArg,
    /// Serve Prometheus metrics (`GET /metrics`) on this loopback address, e.g. 127.0.0.1:9464.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Sliding windows move panes to files under <data-dir>/state/ while
    /// their state in memory is above this (per process, split over its
    /// workers, at least 1MiB each; e.g. 4GiB; default: no limit). Each
    /// key's window aggregate (about 100 bytes per live key) and partials
    /// waiting for their time stay in memory. For sliding windows of the
    /// generic query with count, sum, min and max.
    #[arg(long, value_parser = weir::size::parse_size_bytes)]
    memory_budget: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum GenKind {
    /// Skewed keys (Zipf), out-of-order and some late events.
    Zipf(ZipfArgs),
    /// Nexmark persons, auctions and bids (the `nexmark` crate, fixed base time).
    Nexmark(NexmarkArgs),
}

#[derive(Args, Debug)]
struct NexmarkArgs {
    /// Events of all tables and partitions together.
    #[arg(long)]
    events: u64,
    /// Output directory (files person-<p>.csv, auction-<p>.csv, bid-<p>.csv).
    #[arg(long)]
    out: PathBuf,
    /// Number of partitions (files per table).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
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

pub(crate) fn main() -> ExitCode {
    // The fixture feature makes sums deliberately wrong, for the
    // `weir-fixture-changed-sum` test binary only; a `weir` built with it
    // (`--all-features`) must not run.
    if cfg!(feature = "fixture-changed-sum") && option_env!("CARGO_BIN_NAME") == Some("weir") {
        eprintln!(
            "error: this weir was built with the test-fixture feature `fixture-changed-sum`, \
             whose sums are deliberately wrong; build it without that feature (not with \
             --all-features)"
        );
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    let result = match cli.command {
        None => run_command(&RunArgs::parse_from(["weir-run"])),
        Some(Command::Run(args)) => run_command(&args),
        Some(Command::Ingest(args)) => ingest_command(&args),
        Some(Command::Gen {
            kind: GenKind::Zipf(args),
        }) => gen_command(&args),
        Some(Command::Gen {
            kind: GenKind::Nexmark(args),
        }) => gen_nexmark_command(&args),
        Some(Command::Sidecar(args)) => sidecar_command(&args),
        Some(Command::UpgradeCheck(args)) => upgrade_check::upgrade_check_command(&args),
        Some(Command::Explain(args)) => explain_command::explain_command(&args),
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

fn sidecar_command(args: &SidecarArgs) -> Result<()> {
    use weir::checkpoint::sidecar::{run_sidecar_with_metrics, Listen, SidecarConfig};
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
    run_sidecar_with_metrics(
        SidecarConfig {
            data_dir: args.data_dir.clone(),
            listen,
            exit_when_idle: args.exit_when_idle,
            lock_wait_ms: args.lock_wait,
            compaction_budget_bytes: args.memory_budget,
            cold_store: args.cold_store.clone(),
            replica: args.replica.clone(),
            keep_local: args.keep_local,
        },
        args.metrics_addr,
    )?;
    Ok(())
}

fn gen_nexmark_command(args: &NexmarkArgs) -> Result<()> {
    if args.partitions == 0 {
        bail!("--partitions must be at least 1");
    }
    let paths = weir::nexmark::gen::generate_files(args.events, args.partitions, &args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    for path in paths {
        println!("{}", path.display());
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

/// `--keep-local N`: a count of checkpoints within the store's limits.
fn parse_keep_local(text: &str) -> Result<usize, String> {
    use weir::checkpoint::store::{MAX_KEEP_LOCAL, RETAINED_CHECKPOINTS};
    let n: usize = text
        .parse()
        .map_err(|_| format!("{text:?} is not a count of checkpoints"))?;
    if (RETAINED_CHECKPOINTS..=MAX_KEEP_LOCAL).contains(&n) {
        Ok(n)
    } else {
        Err(format!(
            "{n} is outside {RETAINED_CHECKPOINTS}..={MAX_KEEP_LOCAL}: the checkpoint before the newest is \
             the local fallback when the newest is damaged, and the commit stream keeps {MAX_KEEP_LOCAL} records"
        ))
    }
}
