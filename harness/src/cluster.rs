//! `weir-harness cluster`: runs a finite job as P engine processes × W
//! workers on loopback, with one sidecar started by the harness, and
//! collects each process's summary and the combined throughput.
//!
//! Results: `results/cluster-<t>/summary.json` and the processes' stdout.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use weir::gen::{generate_zipf, ZipfParams};
use weir_dataflows::duration::parse_duration_ms;
use weir_dataflows::WindowSpec;

use crate::RunHeader;

/// Arguments of the cluster mode.
#[derive(clap::Parser, Debug)]
pub struct ClusterArgs {
    /// Engine processes.
    #[arg(long, default_value_t = 2)]
    processes: usize,
    /// Worker threads per process.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Events in the input.
    #[arg(long, default_value_t = 4_000_000)]
    events: u64,
    /// Distinct Zipf keys.
    #[arg(long, default_value_t = 100_000)]
    keys: u32,
    /// Window of the query.
    #[arg(long, default_value = "tumbling:10s")]
    window: WindowSpec,
    /// Checkpoint interval.
    #[arg(long, default_value = "1s", value_parser = parse_duration_ms)]
    checkpoint_interval: u64,
    /// First loopback port; process I listens on `base_port + I`.
    #[arg(long, default_value_t = 7400)]
    base_port: u16,
    /// Work directory (emptied first).
    #[arg(long, default_value = "target/harness/cluster")]
    work_dir: PathBuf,
    /// Results directory.
    #[arg(long, default_value = "results")]
    results: PathBuf,
}

#[derive(Serialize)]
struct ProcessResult {
    process: usize,
    events_read: u64,
    elapsed_s: f64,
    window_rows: u64,
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    header: RunHeader,
    processes: usize,
    workers_per_process: usize,
    events: u64,
    window: String,
    checkpoint_interval_ms: u64,
    wall_s: f64,
    throughput: f64,
    throughput_per_worker: f64,
    per_process: Vec<ProcessResult>,
}

/// The number after `label` on a line of a `weir run` summary.
fn summary_value(stdout: &str, label: &str) -> Option<f64> {
    stdout
        .lines()
        .find(|l| l.starts_with(label))
        .and_then(|l| l[label.len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Runs the cluster experiment.
pub fn cluster(args: &ClusterArgs) -> Result<()> {
    anyhow::ensure!(
        args.processes >= 1 && args.workers >= 1,
        "need at least one process and worker"
    );
    let weir = crate::weir_binary()?;
    crate::fresh_work_dir(&args.work_dir)?;
    let input = args.work_dir.join("input");
    let params = ZipfParams {
        events: args.events,
        keys: args.keys,
        ..ZipfParams::default()
    };
    generate_zipf(&params, &input).context("generating the input")?;
    let data = args.work_dir.join("data");
    let out = args.work_dir.join("out");
    std::fs::create_dir_all(&data)?;
    let hostfile = args.work_dir.join("hosts");
    let hosts: Vec<String> = (0..args.processes)
        .map(|i| format!("127.0.0.1:{}", usize::from(args.base_port) + i))
        .collect();
    std::fs::write(&hostfile, hosts.join("\n"))?;

    let mut sidecar = Command::new(&weir)
        .args(["sidecar", "--exit-when-idle", "--data-dir"])
        .arg(&data)
        .spawn()
        .context("starting the sidecar")?;
    let socket = data.join("sidecar.sock");
    let started = Instant::now();
    let children: Vec<Child> = (0..args.processes)
        .map(|i| {
            Command::new(&weir)
                .args(["run", "--until-end", "--window", &args.window.to_string()])
                .args([
                    "--workers",
                    &args.workers.to_string(),
                    "--processes",
                    &args.processes.to_string(),
                ])
                .args([
                    "--process",
                    &i.to_string(),
                    "--checkpoint-interval",
                    &format!("{}ms", args.checkpoint_interval),
                ])
                .arg("--hostfile")
                .arg(&hostfile)
                .arg("--input")
                .arg(&input)
                .arg("--data-dir")
                .arg(&data)
                .arg("--out")
                .arg(&out)
                .arg("--sidecar")
                .arg(format!("unix:{}", socket.display()))
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()
        .context("starting the engine processes")?;
    let mut per_process = Vec::new();
    let mut failed = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let output = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            failed.push(format!("process {i}: {}", output.status));
        }
        per_process.push(ProcessResult {
            process: i,
            events_read: summary_value(&stdout, "events read").unwrap_or(0.0) as u64,
            elapsed_s: summary_value(&stdout, "elapsed").unwrap_or(0.0),
            window_rows: summary_value(&stdout, "window rows").unwrap_or(0.0) as u64,
        });
    }
    let wall_s = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sidecar.try_wait()?.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = sidecar.kill();
    if !failed.is_empty() {
        bail!("engine processes failed: {}", failed.join(", "));
    }
    let read: u64 = per_process.iter().map(|p| p.events_read).sum();
    anyhow::ensure!(
        read == args.events,
        "the processes read {read} of {} events",
        args.events
    );
    // The dataflow's time, not the processes' start-up: the slowest process.
    let elapsed = per_process
        .iter()
        .map(|p| p.elapsed_s)
        .fold(0.0, f64::max)
        .max(1e-9);
    let throughput = args.events as f64 / elapsed;
    let summary = Summary {
        header: RunHeader::new("cluster"),
        processes: args.processes,
        workers_per_process: args.workers,
        events: args.events,
        window: args.window.to_string(),
        checkpoint_interval_ms: args.checkpoint_interval,
        wall_s,
        throughput,
        throughput_per_worker: throughput / (args.processes * args.workers) as f64,
        per_process,
    };
    let dir = crate::write_summary(&args.results, "cluster", &summary)?;
    eprintln!(
        "{} processes x {} workers: {:.0} events/s ({:.0} per worker), wall {:.2} s",
        args.processes, args.workers, throughput, summary.throughput_per_worker, wall_s
    );
    println!("{}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::summary_value;

    #[test]
    fn reads_numbers_from_a_run_summary() {
        let stdout = "events read       5000000\nwindow rows       948101 (late rows written: 4237)\nelapsed           2.192 s\n";
        assert_eq!(summary_value(stdout, "events read"), Some(5_000_000.0));
        assert_eq!(summary_value(stdout, "window rows"), Some(948_101.0));
        assert_eq!(summary_value(stdout, "elapsed"), Some(2.192));
        assert_eq!(summary_value(stdout, "throughput"), None);
    }
}
