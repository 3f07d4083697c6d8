//! `weir-harness source`: throughput of the NATS JetStream source into the
//! log (issue 15). Starts `nats-server` (JetStream on, loopback, a free
//! port, its store in the work directory), publishes `--messages` rows of
//! `ts,key,value` (or JSON objects), acknowledged in pipelined batches, and
//! then times `weir ingest --from nats://…/BENCH --until-caught-up` as a
//! separate process reading all of them into an empty log. Reports the
//! messages per second into the log (publishing excluded: the stream is
//! full before the ingest starts) and checks the log holds every message.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use weir::nats::jetstream::JetStream;

use crate::RunHeader;

/// Arguments of the source mode.
#[derive(clap::Parser, Debug)]
pub struct SourceArgs {
    /// Messages published and then ingested.
    #[arg(long, default_value_t = 2_000_000)]
    messages: u64,
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
    nats_server: String,
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

fn nats_server_binary() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .context("no nats-server binary (scripts/ensure-nats-server installs it)")
}

fn start_server(binary: &Path, work: &Path) -> Result<(Server, String)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let server = Server(
        Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-sd")
            .arg(work.join("store"))
            .stdout(Stdio::null())
            .stderr(crate::append_file(&work.join("nats-server.log"))?)
            .spawn()
            .context("starting nats-server")?,
    );
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        if let Ok(mut js) = JetStream::connect(&addr, Duration::from_secs(5)) {
            if js.stream_state("PROBE").is_err_and(|e| !e.is_transient()) {
                return Ok((server, addr));
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "nats-server did not come up (see {}/nats-server.log)",
                work.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
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
    let binary = nats_server_binary()?;
    let work = std::path::absolute(&args.work_dir)?;
    crate::fresh_work_dir(&work)?;
    std::fs::create_dir_all(&work)?;
    let (_server, addr) = start_server(&binary, &work)?;
    let mut js = JetStream::connect(&addr, Duration::from_secs(30))?;
    js.create_stream("BENCH", &["bench"])?;
    let started = Instant::now();
    let mut payload_bytes = 0;
    let mut i = 0;
    while i < args.messages {
        let end = (i + args.publish_batch.max(1)).min(args.messages);
        let batch: Vec<Vec<u8>> = (i..end).map(|i| payload(i, json)).collect();
        payload_bytes += batch.iter().map(|p| p.len() as u64).sum::<u64>();
        js.publish_acked("bench", &batch)?;
        i = end;
    }
    let publish_s = started.elapsed().as_secs_f64();
    eprintln!(
        "source: published {} messages in {publish_s:.1} s",
        args.messages
    );
    let data = work.join("data");
    let started = Instant::now();
    let out = Command::new(&weir)
        .args(["ingest", "--from", &format!("nats://{addr}/BENCH")])
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
        nats_server: crate::command_output(&binary.to_string_lossy(), &["--version"]),
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
        "source: {} messages ({:.1} MB of {} payload) into the log in {ingest_s:.2} s: {:.0} messages/s, {:.1} MB/s",
        args.messages,
        payload_bytes as f64 / 1e6,
        args.format,
        summary.messages_per_s,
        summary.payload_mb_per_s
    );
    let dir = crate::write_summary(&args.results, "source", &summary)?;
    println!("{}", dir.join("summary.json").display());
    Ok(())
}
