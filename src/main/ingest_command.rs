//! `weir ingest`: CSV files into the log (once each), or a stream source
//! (`--from nats://HOST:PORT/STREAM`) into a partition, continuously.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use weir::csv_input::RowSchema;
use weir::ingest::stream::message::MessageFormat;
use weir::ingest::stream::metrics::SourceMetrics;
use weir::ingest::stream::{ingest_stream, SourceKind, StreamIngestOptions, StreamSource};
use weir::ingest::{default_ingest_threads, ingest_files_with_threads};
use weir::log::{FsyncPolicy, LogConfig};
use weir::nexmark::NexmarkTable;
use weir::run::EVENTS_TOPIC;
use weir_dataflows::duration::parse_duration_ms;

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// CSV files with header ts,key,value (or, with --table, the table's header).
    #[arg(required_unless_present = "from", conflicts_with = "from")]
    files: Vec<PathBuf>,
    /// Read a stream instead of files, until stopped: nats://HOST:PORT/STREAM
    /// (a JetStream stream, into partition 0 of the topic) or
    /// kafka://HOST:PORT/TOPIC (each topic partition into the log partition
    /// of its number). One message is one row; exactly once across restarts.
    #[arg(long, value_name = "URL")]
    from: Option<StreamSource>,
    /// How --from messages are written: one CSV row (no header) or one JSON
    /// object with the columns as members.
    #[arg(long, value_enum, default_value = "csv", requires = "from")]
    format: FormatArg,
    /// With --from: stop once every message the stream held at the start is
    /// in the log.
    #[arg(long, requires = "from")]
    until_caught_up: bool,
    /// With --from: pause reading while the partition's log segments take
    /// more than this (e.g. 10GiB); nothing is dropped.
    #[arg(long, value_parser = weir::size::parse_size_bytes, requires = "from")]
    max_log_bytes: Option<u64>,
    /// With --from: where malformed messages go (default
    /// DATA_DIR/dead-letter/<topic>-source.csv).
    #[arg(long, requires = "from")]
    dead_letter: Option<PathBuf>,
    /// With --from: how often what was read is committed.
    #[arg(long, default_value = "100ms", value_parser = parse_duration_ms, requires = "from")]
    commit_interval: u64,
    /// With --from: serve Prometheus metrics (GET /metrics) on this loopback
    /// address: committed messages, dead letters, sequence per partition.
    #[arg(long, requires = "from")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// With a kafka:// --from: how long one request may take once sent (a
    /// broker may take seconds to serve a fetch of a large backlog).
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms, requires = "from")]
    request_timeout: u64,
    /// With a kafka:// --from of several partitions: a partition with no
    /// new message for this long gets an idle marker in its log partition,
    /// carrying the event time of the others, so a quiet partition does not
    /// hold back every window (decision 29). Off by default.
    #[arg(long, value_parser = parse_duration_ms, requires = "from")]
    idle_timeout: Option<u64>,
    /// With --from: give up after the server has been unreachable this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration_ms, requires = "from")]
    reconnect_limit: u64,
    /// Ingest Nexmark table files (as `weir gen nexmark` writes) into that
    /// table's topic instead of `events`.
    #[arg(long, value_enum)]
    table: Option<TableArg>,
    /// Directory of the input log.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// always, never, interval or interval:<ms>.
    #[arg(long, default_value = "interval")]
    fsync: FsyncPolicy,
    /// Files parsed and written at once (default: one per core); they are
    /// still numbered and committed in the order given.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum TableArg {
    /// person-<n>.csv
    Person,
    /// auction-<n>.csv
    Auction,
    /// bid-<n>.csv
    Bid,
}

/// `--format` of stream messages (also `weir run --from-format`).
#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum FormatArg {
    /// One CSV row per message.
    Csv,
    /// One JSON object per message.
    Json,
}

impl From<FormatArg> for MessageFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Csv => MessageFormat::Csv,
            FormatArg::Json => MessageFormat::Json,
        }
    }
}

pub fn ingest_command(args: &IngestArgs) -> Result<()> {
    let config = LogConfig {
        fsync: args.fsync,
        ..LogConfig::default()
    };
    let (topic, schema) = match args.table {
        None => (EVENTS_TOPIC, RowSchema::Generic),
        Some(t) => {
            let table = match t {
                TableArg::Person => NexmarkTable::Person,
                TableArg::Auction => NexmarkTable::Auction,
                TableArg::Bid => NexmarkTable::Bid,
            };
            (table.name(), RowSchema::Nexmark(table))
        }
    };
    if let Some(source) = &args.from {
        return stream_command(args, source, topic, schema, config);
    }
    let threads = args
        .threads
        .map_or_else(default_ingest_threads, usize::from);
    let report = ingest_files_with_threads(
        &args.data_dir.join(weir::log::LOG_DIR_NAME),
        topic,
        schema,
        &args.files,
        &config,
        threads,
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

fn stream_command(
    args: &IngestArgs,
    source: &StreamSource,
    topic: &str,
    schema: RowSchema,
    log_config: LogConfig,
) -> Result<()> {
    if args.threads.is_some() {
        bail!("--threads is for files; a stream is read by one thread");
    }
    let mut options = StreamIngestOptions::new(topic, schema, args.format.into(), &args.data_dir);
    options.log_config = log_config;
    if let Some(path) = &args.dead_letter {
        options.dead_letter_path.clone_from(path);
    }
    options.until_caught_up = args.until_caught_up;
    options.max_log_bytes = args.max_log_bytes;
    options.commit_interval_ms = args.commit_interval;
    options.reconnect_limit_ms = args.reconnect_limit;
    if let Some(ms) = args.idle_timeout {
        if ms < weir::ingest::idle::MIN_IDLE_TIMEOUT_MS {
            anyhow::bail!(
                "--idle-timeout must be at least {} ms",
                weir::ingest::idle::MIN_IDLE_TIMEOUT_MS
            );
        }
        options.idle_timeout_ms = Some(ms);
    }
    options.request_timeout_ms = args.request_timeout;
    let metrics_stop = Arc::new(AtomicBool::new(false));
    if let Some(addr) = args.metrics_addr {
        let metrics = Arc::new(SourceMetrics::new(&source.to_string()));
        options.metrics = Some(Arc::clone(&metrics));
        let bound = weir::metrics::serve_text(
            addr,
            Box::new(move || metrics.render()),
            Arc::clone(&metrics_stop),
        )
        .with_context(|| format!("--metrics-addr {addr}"))?;
        tracing::info!(%bound, "source metrics endpoint");
    }
    let stop = AtomicBool::new(false);
    let report = ingest_stream(
        &args.data_dir.join(weir::log::LOG_DIR_NAME),
        source,
        &options,
        &stop,
    );
    metrics_stop.store(true, std::sync::atomic::Ordering::Release);
    let report = report?;
    println!(
        "{source}: {} messages read ({} appended, {} already in the log, {} dead-lettered); {} reconnects; {} pauses (log full)",
        report.messages,
        report.appended,
        report.matched,
        report.dead_letters,
        report.reconnects,
        report.pauses,
    );
    for &(partition, seq, offset) in &report.partitions {
        println!(
            "  topic {topic} partition {partition}: source up to sequence {seq}, log up to offset {offset}"
        );
    }
    match source.kind {
        SourceKind::Nats => println!("  dead letters: {}", options.dead_letter_path.display()),
        SourceKind::Kafka => println!(
            "  dead letters: {} with -<partition> before .csv",
            options.dead_letter_path.display()
        ),
    }
    Ok(())
}
