//! `weir run` (a module of the binary): the query its options describe,
//! the demo dataset, the run itself and its printed summary.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use weir::driver::run;
use weir::gen::{generate_zipf, ZipfParams};
use weir::ingest::MANIFEST_FILE_NAME;
use weir::job::WindowQuery;
use weir::log::{list_partitions, LogConfig};
use weir::run::{
    read_hostfile, CheckpointOptions, ClusterOptions, GeneratedInput, RunOptions, RunSummary,
    EVENTS_TOPIC,
};
use weir_dataflows::aggregates::Aggregate;
use weir_dataflows::duration::format_duration_ms;
use weir_dataflows::emit::Emit;
use weir_dataflows::WindowSpec;

use super::{CheckpointCadence, LogRetentionArg, Query, RunArgs};

/// Where a run's input comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputSource {
    /// `--input` files, ingested first.
    Files,
    /// `--generate-events`: the Nexmark generator, read directly.
    Generator,
    /// No input given, and the data dir's log holds partitions: run on them
    /// (tailing unless `--until-end` or `finished`).
    Log {
        /// The log holds the generic query's topic.
        events: bool,
        /// Every topic with partitions was written by `weir ingest` (it has
        /// a manifest): its partitions are whole files, nothing appends to
        /// them, so the run stops at their end.
        finished: bool,
    },
    /// No input given and an empty log: the demo dataset.
    Demo,
    /// No input given, `--restore-from`: a standby, on the log the cold
    /// tier shipped with the checkpoint it takes over.
    Standby,
    /// `--from`: a stream read into the log while the run reads it.
    Stream,
}

fn input_source(args: &RunArgs) -> Result<InputSource> {
    if args.from.is_some() {
        return Ok(InputSource::Stream);
    }
    if !args.input.is_empty() {
        return Ok(InputSource::Files);
    }
    if args.generate_events.is_some() {
        return Ok(InputSource::Generator);
    }
    if args.restore_from.is_some() {
        return Ok(InputSource::Standby);
    }
    let log_dir = args.data_dir.join("log");
    let topics = match std::fs::read_dir(&log_dir) {
        Ok(entries) => entries
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("listing {}", log_dir.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", log_dir.display())),
    };
    let (mut holds_partitions, mut finished) = (false, true);
    for topic in topics.iter().filter(|t| log_dir.join(t).is_dir()) {
        let has_partitions = !list_partitions(&log_dir, topic)
            .with_context(|| {
                format!(
                    "listing the partitions of {}",
                    log_dir.join(topic).display()
                )
            })?
            .is_empty();
        holds_partitions |= has_partitions;
        finished &= !has_partitions || log_dir.join(topic).join(MANIFEST_FILE_NAME).is_file();
    }
    Ok(if holds_partitions {
        InputSource::Log {
            events: !list_partitions(&log_dir, EVENTS_TOPIC)?.is_empty(),
            finished,
        }
    } else {
        InputSource::Demo
    })
}

/// Refuses to tail a log whose last run finished: its final checkpoint
/// covers every window, so a restore would skip whatever is appended next.
fn refuse_tailing_after_a_final_checkpoint(data_dir: &std::path::Path) -> Result<()> {
    let checkpoints = data_dir.join("checkpoints");
    let last = weir::checkpoint::store::read_commits(&checkpoints)
        .ok()
        .and_then(|c| c.last().map(|r| r.cut_time));
    if last == Some(weir::checkpoint::cut::FINAL_CUT) {
        bail!(
            "the last run over the log in {} read it to its end (--until-end) and committed its final \
             checkpoint: a tailing run would restore it and skip anything appended since. Rerun with \
             --until-end (nothing new to do), or remove {} to compute the query again from the start",
            data_dir.join("log").display(),
            checkpoints.display()
        );
    }
    Ok(())
}

/// Refuses a `--memory-budget` that cannot apply: below the minimum per
/// worker, or for windows whose state does not spill (decision 35).
fn check_memory_budget(
    budget: u64,
    workers: usize,
    window: WindowSpec,
    aggregates: weir_dataflows::aggregates::Aggregates,
) -> Result<()> {
    let minimum = weir::run::MIN_MEMORY_BUDGET_PER_WORKER_BYTES * workers as u64;
    if budget < minimum {
        bail!(
            "--memory-budget {budget} bytes is below the minimum of {minimum} bytes \
             (1MiB per worker, --workers {workers})"
        );
    }
    match window {
        WindowSpec::Sliding { size_ms, slide_ms } if size_ms != slide_ms => {}
        _ => bail!(
            "--memory-budget applies to sliding windows, whose panes spill to disk; \
             tumbling windows hold only their open windows and sessions their open sessions"
        ),
    }
    if aggregates.needs_sketches() {
        bail!("--memory-budget: the state of distinct and topk windows does not spill yet");
    }
    Ok(())
}

/// The query of `args` reading `source`: the generic window query, or a
/// Nexmark query.
fn query_of(args: &RunArgs, source: InputSource) -> Result<WindowQuery> {
    let default = match source {
        InputSource::Demo | InputSource::Log { events: false, .. } => Query::Q5,
        InputSource::Files
        | InputSource::Generator
        | InputSource::Stream
        | InputSource::Standby
        | InputSource::Log { events: true, .. } => Query::Window,
    };
    let query = args.query.unwrap_or(default);
    if let Some(nexmark) = query.nexmark() {
        if args.window.is_some() || args.granularity.is_some() {
            bail!(
                "--window and --granularity are for --query window; {nexmark} has its own window"
            );
        }
        if args.emit != Emit::All {
            bail!("--emit changes is for the generic window query; {nexmark} writes its own rows");
        }
        if !args.aggregates.is_default() || args.topk.is_some() {
            bail!("--aggregates and --topk are for the generic window query; {nexmark} writes its own rows");
        }
        if args.memory_budget.is_some() {
            bail!("--memory-budget applies to the sliding windows of the generic window query, not {nexmark}");
        }
        return Ok(WindowQuery::nexmark(nexmark, args.lateness));
    }
    if source == InputSource::Stream && query.nexmark().is_some() {
        bail!("--from feeds topic `events`, the generic window query's; the Nexmark queries read three topics (ingest them with `weir ingest --from ... --table`)");
    }
    if args.generate_events.is_some() {
        bail!("--generate-events is for the Nexmark queries (--query q5|q7|q8|q11|q12)");
    }
    let window = args.window.unwrap_or(WindowSpec::Sliding {
        size_ms: 60_000,
        slide_ms: 10_000,
    });
    let granularity_ms = args
        .granularity
        .unwrap_or_else(|| window.default_granularity_ms());
    window
        .check_granularity(granularity_ms)
        .map_err(|e| anyhow::anyhow!("--granularity: {e}"))?;
    if args.emit == Emit::Changes && window.slide_ms().is_none() {
        bail!(
            "--emit changes is for tumbling and sliding windows; a session's row is written once"
        );
    }
    if args.aggregates.needs_sketches() && window.slide_ms().is_none() {
        bail!("--aggregates distinct and topk are for tumbling and sliding windows, not sessions");
    }
    let aggregates = match args.topk {
        Some(_) if !args.aggregates.contains(Aggregate::TopK) => {
            bail!("--topk sets the values of the topk column: add topk to --aggregates")
        }
        Some(k) => args.aggregates.with_topk(usize::from(k))?,
        None => args.aggregates,
    };
    if let Some(budget) = args.memory_budget {
        check_memory_budget(budget, args.workers, window, args.aggregates)?;
    }
    if args.emit == Emit::Changes && !args.aggregates.contains(Aggregate::Count) {
        bail!(
            "--emit changes needs count among --aggregates: a row with count 0 marks a key leaving"
        );
    }
    Ok(WindowQuery {
        spec: window,
        granularity_ms,
        lateness_ms: args.lateness,
        nexmark: None,
        emit: args.emit,
        aggregates,
    })
}

/// Generates the demo dataset for `query` under `<data-dir>/demo` unless it
/// is there; returns the data dir and input dir to use.
fn prepare_demo(args: &RunArgs, query: &WindowQuery) -> Result<(PathBuf, PathBuf)> {
    // The demo keeps its input, log and checkpoints apart from any real data,
    // and apart per dataset.
    let kind = if query.nexmark.is_some() {
        "nexmark"
    } else {
        "zipf"
    };
    let data_dir = args.data_dir.join("demo").join(kind);
    let input_dir = data_dir.join("input");
    if query.nexmark.is_some() {
        let partitions = 4;
        let existing = (0..partitions).all(|p| input_dir.join(format!("bid-{p}.csv")).is_file());
        if !existing {
            eprintln!(
                "no --input: generating a demo dataset of {} Nexmark events in {}",
                args.demo_events,
                input_dir.display()
            );
            weir::nexmark::gen::generate_files(args.demo_events, partitions, &input_dir)
                .with_context(|| format!("generating into {}", input_dir.display()))?;
        }
    } else {
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
    Ok((data_dir, input_dir))
}

pub(super) fn run_command(args: &RunArgs) -> Result<()> {
    if args.no_checkpoint && args.log_retention == LogRetentionArg::Checkpointed {
        bail!(
            "--log-retention checkpointed deletes the log below the checkpoints' resume \
             offsets: it needs checkpoints (drop --no-checkpoint)"
        );
    }
    let source = input_source(args)?;
    let query = query_of(args, source)?;
    if args.workers == 0 {
        bail!("--workers must be at least 1");
    }
    let cluster = if args.processes > 1 {
        let Some(hostfile) = &args.hostfile else {
            bail!("--processes {} needs --hostfile", args.processes)
        };
        if let Some(from) = &args.from {
            // Every process would read the stream into the one shared log.
            bail!(
                "--from is for single-process runs: read {from} with `weir ingest --from {from} \
                 --data-dir DIR` beside the cluster, and run the cluster on DIR (its sources tail the log)"
            );
        }
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
            connect_timeout_ms: args.connect_timeout,
        })
    } else {
        None
    };
    let mut inputs = args.input.clone();
    let mut until_end = args.until_end || args.generate_events.is_some();
    let mut data_dir = args.data_dir.clone();
    match source {
        InputSource::Demo => {
            let (demo_data, demo_input) = prepare_demo(args, &query)?;
            data_dir = demo_data;
            inputs.push(demo_input);
            until_end = true;
        }
        InputSource::Log { finished, .. } => {
            until_end |= finished;
            if !until_end {
                refuse_tailing_after_a_final_checkpoint(&data_dir)?;
            }
            eprintln!(
                "no --input: running on the log in {} ({})",
                data_dir.join("log").display(),
                match (finished, until_end) {
                    (true, _) => "files from `weir ingest`: to their end",
                    (false, true) => "to its end",
                    (false, false) =>
                        "tailing it: windows close as all its partitions advance; --until-end stops at its end",
                }
            );
        }
        InputSource::Standby => eprintln!(
            "no --input: running on the log shipped to {} ({})",
            args.restore_from.as_deref().unwrap_or_default(),
            if until_end {
                "to its end"
            } else {
                "tailing it: only what was shipped; --until-end stops at its end"
            }
        ),
        InputSource::Files | InputSource::Generator | InputSource::Stream => {}
    }
    // A standby of a stream-fed run takes over before its source starts:
    // the shipped log and `POSITION` are where the source continues.
    let mut restore_from = args.restore_from.clone();
    if let (Some(url), InputSource::Stream) = (&restore_from, source) {
        weir::driver::take_over_standby(url, &data_dir)?;
        restore_from = None;
    }
    let stream = match (&args.from, source) {
        (Some(from), InputSource::Stream) => {
            eprintln!(
                "reading {from} into {} while running on it ({})",
                data_dir.join("log").display(),
                if until_end {
                    "until every message the stream holds now is in"
                } else {
                    "tailing it"
                }
            );
            let thread = super::run_stream::start(
                from,
                (args.from_format.into(), args.idle_timeout),
                &data_dir,
                until_end,
            )?;
            // The source decides when the log has ended.
            until_end = false;
            Some(thread)
        }
        _ => None,
    };
    let options = RunOptions {
        data_dir,
        out_dir: args.out.clone(),
        inputs,
        ingest_first: args.ingest_first,
        generated: args.generate_events.map(|events| GeneratedInput {
            events,
            partitions: args.generate_partitions,
        }),
        query,
        workers: args.workers,
        cluster,
        until_end,
        batch_records: args.batch_records,
        log_config: LogConfig::default(),
        checkpoint: (!args.no_checkpoint).then(|| CheckpointOptions {
            interval_ms: args.checkpoint_interval,
            adaptive: args.checkpoint_cadence == CheckpointCadence::Adaptive,
            sidecar: args.sidecar.clone(),
            max_tap_buffer_bytes: args.max_tap_buffer_mb.saturating_mul(1 << 20),
            log_retention: args.log_retention.into(),
            sidecar_reconnect_ms: args.sidecar_reconnect,
            cold_store: args.cold_store.clone(),
            restore_from,
            replica: args.replica.clone(),
            keep_local: args.keep_local,
        }),
        hooks: weir::run::RunHooks {
            stop: stream.as_ref().map(|s| s.run_stop.clone()),
            extra_metrics: stream.as_ref().map(|s| {
                let metrics = std::sync::Arc::clone(&s.metrics);
                let render: weir::run::ExtraMetrics = std::sync::Arc::new(move || metrics.render());
                render
            }),
            ..weir::run::RunHooks::default()
        },
        metrics_addr: args.metrics_addr,
        memory_budget_bytes: args.memory_budget,
    };
    let what = match query.nexmark {
        Some(q) => format!("nexmark {q} (window {})", query.spec),
        None => format!("window {}", query.spec),
    };
    eprintln!(
        "running {what} (granularity {}, lateness {}) on {} worker(s) x {} process(es)",
        format_duration_ms(query.granularity_ms),
        format_duration_ms(args.lateness),
        args.workers,
        args.processes
    );
    if args.generate_partitions == 0 {
        bail!("--generate-partitions must be at least 1");
    }
    let summary = run(&options);
    if let Some(stream) = stream {
        stream.finish()?;
    }
    let summary = summary?;
    print_summary(&summary, args.workers);
    if let Some(budget) = args.memory_budget {
        warn_if_over_budget(summary.peak_window_bytes, budget);
    }
    Ok(())
}

/// Says so when the windows' state outgrew `--memory-budget` by more than
/// a tenth (a pane is built in memory before it may go to disk, so the
/// budget is passed a little at times): what cannot be spilled, each live
/// key's columns and small staged runs, stayed in memory.
fn warn_if_over_budget(peak_window_bytes: u64, budget_bytes: u64) {
    if peak_window_bytes.saturating_mul(10) <= budget_bytes.saturating_mul(11) {
        return;
    }
    let mib = |b: u64| b as f64 / f64::from(1 << 20);
    tracing::warn!(
        peak_window_bytes,
        budget_bytes,
        "window state above the memory budget"
    );
    eprintln!(
        "warning: the windows' state peaked at {:.1} MiB, above --memory-budget {:.1} MiB: \
         what cannot go to disk (each live key's aggregate columns, ~100 bytes per key, and \
         staged runs under 64 KiB) stayed in memory; a budget above that peak keeps the state within it",
        mib(peak_window_bytes),
        mib(budget_bytes)
    );
}

fn print_summary(s: &RunSummary, workers: usize) {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let rate = s.events_read as f64 / secs;
    println!("events read       {}", s.events_read);
    println!("late events       {}", s.events_late);
    println!(
        "result rows       {} (late rows written: {})",
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
    if s.peak_window_partials > 0 {
        println!(
            "window state      {} partials, {:.1} MiB at the peak (sum of workers' peaks)",
            s.peak_window_partials,
            s.peak_window_bytes as f64 / f64::from(1 << 20)
        );
    }
    let (disk_peak_bytes, [spills, spilled_bytes, fetches, _, memory_reads, disk_reads]) =
        s.window_disk;
    if spills > 0 {
        println!(
            "window spill      {:.1} MiB on disk at the peak; {spills} files written ({:.1} MiB), {fetches} read back; {:.1} % of pane reads from memory",
            disk_peak_bytes as f64 / f64::from(1 << 20),
            spilled_bytes as f64 / f64::from(1 << 20),
            100.0 * memory_reads as f64 / (memory_reads + disk_reads).max(1) as f64,
        );
    }
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
                    "restore verify    {:.1} MB checksummed in {:.3} s",
                    c.restored_bytes as f64 / 1e6,
                    c.restore_verify.as_secs_f64()
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
