//! `weir-harness source`: throughput of a stream source into the log
//! (issue 15). Starts the broker on loopback, a free port, its store in the
//! work directory: `nats-server` (JetStream on) or `tansu` (Kafka protocol,
//! SQLite storage); publishes `--messages` rows of `ts,key,value` (or JSON
//! objects), acknowledged batch by batch; then times `weir ingest --from
//! nats://…/BENCH` (or `kafka://…/bench`) `--until-caught-up` as a separate
//! process reading all of them into an empty log. Reports the messages per
//! second into the log (publishing excluded: the broker holds them all
//! before the ingest starts) and checks the log holds every message.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use weir::kafka::KafkaClient;
use weir::nats::jetstream::JetStream;

use crate::RunHeader;

/// Arguments of the source mode.
#[derive(clap::Parser, Debug)]
pub struct SourceArgs {
    /// Messages published and then ingested.
    #[arg(long, default_value_t = 2_000_000)]
    messages: u64,
    /// The broker: nats or kafka.
    #[arg(long, default_value = "nats")]
    broker: String,
    /// Topic partitions (kafka).
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Payload format: csv or json.
    #[arg(long, default_value = "csv")]
    format: String,
    /// Messages per acknowledged publish batch.
    #[arg(long, default_value_t = 2_000)]
    publish_batch: u64,
    /// Work directory (emptied first).
    #[arg(long, default_value = "target/harness/source")]
    work_dir: PathBuf,
    /// Where `source-<unix time>/summary.json` goes.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    header: RunHeader,
    broker: String,
    broker_version: String,
    partitions: u32,
    format: String,
    messages: u64,
    payload_bytes: u64,
    publish_s: f64,
    /// Ingest wall time: process start (connect included) to its exit.
    ingest_s: f64,
    /// Messages into the log per second of ingest wall time.
    messages_per_s: f64,
    /// Payload megabytes (10^6) per second of ingest wall time.
    payload_mb_per_s: f64,
    log_bytes: u64,
    ingest_report: String,
}

/// Kills and reaps the server when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Message `i`'s payload.
fn payload(i: u64, json: bool) -> Vec<u8> {
    let (ts, key, value) = (1_000 + i, i.wrapping_mul(7_919) % 100_000, i % 1_000);
    if json {
        format!(r#"{{"ts":{ts},"key":"k{key}","value":{value}}}"#).into_bytes()
    } else {
        format!("{ts},k{key},{value}").into_bytes()
    }
}

fn find_binary(name: &str, env: &str, cached: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .chain(cached)
        .find(|p| p.is_file())
        .with_context(|| {
            format!("no {name} binary (scripts/ensure-{name} installs it; or set {env})")
        })
}

/// Spawns `command` (a broker on `port`) and waits until `ready` says it
/// answers.
fn start_broker(mut command: Command, work: &Path, ready: impl Fn() -> bool) -> Result<Server> {
    let server = Server(
        command
            .stdout(Stdio::null())
            .stderr(crate::append_file(&work.join("broker.log"))?)
            .spawn()
            .context("starting the broker")?,
    );
    let started = Instant::now();
    while !ready() {
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "the broker did not come up (see {}/broker.log)",
                work.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(server)
}

/// Starts the broker, fills it with `args.messages` messages; returns it,
/// the source URL, its version and the payload bytes.
fn fill_broker(
    args: &SourceArgs,
    json: bool,
    work: &Path,
) -> Result<(Server, String, String, u64)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let timeout = Duration::from_secs(30);
    let batches = (0..args.messages).step_by(usize::try_from(args.publish_batch.max(1))?);
    let batch_of = |start: u64| -> Vec<Vec<u8>> {
        (start..(start + args.publish_batch.max(1)).min(args.messages))
            .map(|i| payload(i, json))
            .collect()
    };
    let mut payload_bytes = 0;
    match args.broker.as_str() {
        "nats" => {
            let binary = find_binary("nats-server", "NATS_BIN", None)?;
            let mut command = Command::new(&binary);
            command
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
                .arg("-sd")
                .arg(work.join("store"));
            let server = start_broker(command, work, || {
                JetStream::connect(&addr, Duration::from_secs(5))
                    .is_ok_and(|mut js| js.stream_state("PROBE").is_err_and(|e| !e.is_transient()))
            })?;
            let mut js = JetStream::connect(&addr, timeout)?;
            js.create_stream("BENCH", &["bench"])?;
            for start in batches {
                let batch = batch_of(start);
                payload_bytes += batch.iter().map(|p| p.len() as u64).sum::<u64>();
                js.publish_acked("bench", &batch)?;
            }
            let version = crate::command_output(&binary.to_string_lossy(), &["--version"]);
            Ok((
                server,
                format!("nats://{addr}/BENCH"),
                version,
                payload_bytes,
            ))
        }
        "kafka" => {
            let cached = std::env::var_os("HOME").map(|home| {
                PathBuf::from(home).join(".cache/weir-tools/tansu-0.6.0-libsql/bin/tansu")
            });
            let binary = find_binary("tansu", "TANSU_BIN", cached)?;
            let url = format!("tcp://{addr}");
            let mut command = Command::new(&binary);
            command
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                // Relative to the broker's directory: tansu 0.6 reads an
                // absolute path in the URL as relative.
                .args(["--storage-engine", "sqlite://tansu.db"])
                .current_dir(work);
            let server = start_broker(command, work, || {
                KafkaClient::connect(&addr, Duration::from_secs(5))
                    .is_ok_and(|mut c| c.partitions("probe").is_err_and(|e| !e.is_transient()))
            })?;
            let mut client = KafkaClient::connect(&addr, timeout)?;
            client.create_topic("bench", i32::try_from(args.partitions.max(1))?)?;
            for (n, start) in batches.enumerate() {
                let batch = batch_of(start);
                payload_bytes += batch.iter().map(|p| p.len() as u64).sum::<u64>();
                let values: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                let partition = i32::try_from(n % args.partitions.max(1) as usize)?;
                client.produce("bench", partition, &values)?;
            }
            let version = crate::command_output(&binary.to_string_lossy(), &["--version"]);
            Ok((
                server,
                format!("kafka://{addr}/bench"),
                version,
                payload_bytes,
            ))
        }
        other => bail!("--broker {other}: nats or kafka"),
    }
}

/// Runs the benchmark; see the module doc.
pub fn source(args: &SourceArgs) -> Result<()> {
    let header = RunHeader::new("source");
    let json = match args.format.as_str() {
        "csv" => false,
        "json" => true,
        other => bail!("--format {other}: csv or json"),
    };
    let weir = crate::weir_binary()?;
    let work = std::path::absolute(&args.work_dir)?;
    crate::fresh_work_dir(&work)?;
    std::fs::create_dir_all(&work)?;
    let started = Instant::now();
    let (_server, url, broker_version, payload_bytes) = fill_broker(args, json, &work)?;
    let publish_s = started.elapsed().as_secs_f64();
    eprintln!(
        "source: published {} messages in {publish_s:.1} s",
        args.messages
    );
    let data = work.join("data");
    let started = Instant::now();
    let out = Command::new(&weir)
        .args(["ingest", "--from", &url])
        .args(["--format", &args.format, "--until-caught-up", "--data-dir"])
        .arg(&data)
        .stderr(crate::append_file(&work.join("ingest.log"))?)
        .output()
        .context("running weir ingest")?;
    let ingest_s = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "weir ingest failed ({}); {}",
            out.status,
            crate::stderr_tail(&work.join("ingest.log"), 20)
        );
    }
    let report = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let expected = format!(
        "{} messages read ({} appended",
        args.messages, args.messages
    );
    if !report.contains(&expected) {
        bail!("the ingest did not append every message: {report}");
    }
    let summary = Summary {
        header,
        broker: args.broker.clone(),
        broker_version,
        partitions: args.partitions,
        format: args.format.clone(),
        messages: args.messages,
        payload_bytes,
        publish_s,
        ingest_s,
        messages_per_s: args.messages as f64 / ingest_s,
        payload_mb_per_s: payload_bytes as f64 / 1e6 / ingest_s,
        log_bytes: crate::soak::dir_bytes(&data.join("log")),
        ingest_report: report,
    };
    println!(
        "source: {} messages ({:.1} MB of {} payload) from {} into the log in {ingest_s:.2} s: {:.0} messages/s, {:.1} MB/s",
        args.messages,
        payload_bytes as f64 / 1e6,
        args.format,
        args.broker,
        summary.messages_per_s,
        summary.payload_mb_per_s
    );
    let dir = crate::write_summary(&args.results, "source", &summary)?;
    println!("{}", dir.join("summary.json").display());
    Ok(())
}
