//! `weir explain`: which input events made an output row, which checkpoint
//! committed it and which late events of its key and window were refused
//! (the lineage itself is `weir::explain`); prints a summary, or with
//! `--events` / `--late` those events as CSV in the dead-letter format.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use weir::explain::{explain, Committed, Explanation, InputEvent, RowSelector};
use weir::sink::LATE_ROWS_HEADER;

/// Late events the summary lists at most (all of them with `--late`).
const MAX_LATE_LISTED: usize = 10;

/// Arguments of `weir explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The run's data directory (its QUERY file, commit stream and log).
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// The run's output directory.
    #[arg(long, default_value = "./out")]
    out: PathBuf,
    /// The row as printed in the output's windows-<worker>.csv (quote it
    /// for the shell), or use --window and --key.
    #[arg(required_unless_present = "window", conflicts_with_all = ["window", "key"])]
    row: Option<String>,
    /// The start (ms) of the row's window, with --key.
    #[arg(long, value_name = "START", requires = "key")]
    window: Option<u64>,
    /// The row's key, with --window.
    #[arg(long, requires = "window")]
    key: Option<String>,
    /// Print the events that made the row, as CSV (`partition,offset,ts,key,value`).
    #[arg(long, conflicts_with = "late")]
    events: bool,
    /// Print the late events of the row's key and window that were refused, as CSV.
    #[arg(long)]
    late: bool,
}

/// Runs `weir explain`.
pub fn explain_command(args: &ExplainArgs) -> Result<()> {
    let selector = match (&args.row, args.window, &args.key) {
        (Some(row), ..) => RowSelector::Line(row.clone()),
        (None, Some(window_start), Some(key)) => RowSelector::WindowKey {
            window_start,
            key: key.clone(),
        },
        _ => anyhow::bail!("give the row, or --window and --key"),
    };
    let explanation = explain(&args.data_dir, &args.out, &selector)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.events || args.late {
        writeln!(out, "{LATE_ROWS_HEADER}")?;
        if args.events {
            for event in &explanation.events.accepted {
                write_event(&mut out, event)?;
            }
        } else {
            for late in &explanation.events.late {
                write_event(&mut out, &late.event)?;
            }
        }
    } else {
        write_summary(&mut out, args, &explanation)?;
    }
    out.flush()?;
    Ok(())
}

fn write_event(out: &mut impl Write, e: &InputEvent) -> std::io::Result<()> {
    write!(out, "{},{},{},", e.partition, e.offset, e.ts)?;
    weir::csv_input::write_csv_field(out, &e.key)?;
    writeln!(out, ",{}", e.value)
}

fn write_summary(out: &mut impl Write, args: &ExplainArgs, x: &Explanation) -> Result<()> {
    let (start, end) = x.row.window;
    let q = &x.query;
    writeln!(out, "row      {}", x.row.line)?;
    writeln!(
        out,
        "         {}, line {} (byte {})",
        args.out.join(&x.row.file_name).display(),
        x.row.line_number,
        x.row.byte_offset
    )?;
    writeln!(
        out,
        "query    window {}, lateness {} ms (from {})",
        q.spec,
        q.lateness_ms,
        args.data_dir.join("QUERY").display()
    )?;
    match x.committed {
        Committed::By {
            checkpoint_id,
            cut_time,
            or_earlier,
        } => writeln!(
            out,
            "commit   checkpoint {checkpoint_id} ({}){}",
            if cut_time == weir::checkpoint::cut::FINAL_CUT {
                "the final one, at the end of the input".to_owned()
            } else {
                format!("cut {cut_time} ms")
            },
            if or_earlier {
                " or an earlier one (the commit stream keeps no older records)"
            } else {
                ""
            }
        )?,
        Committed::NotYet { newest } => writeln!(
            out,
            "commit   none yet: written after the newest checkpoint{}; a restart writes it again, identically",
            newest.map_or_else(String::new, |(id, cut)| format!(" ({id}, cut {cut})"))
        )?,
    }
    let accepted = &x.events.accepted;
    writeln!(
        out,
        "input    {} event(s) of key {:?} with times in [{start}, {end}), topic events:",
        accepted.len(),
        x.row.key
    )?;
    for &(partition, from, end_offset) in &x.events.read {
        let mine: Vec<u64> = accepted
            .iter()
            .filter(|e| e.partition == partition)
            .map(|e| e.offset)
            .collect();
        if let (Some(first), Some(last)) = (mine.first(), mine.last()) {
            writeln!(
                out,
                "         partition {partition}: {} event(s) at offsets {first}..={last} (read {from}..{end_offset})",
                mine.len()
            )?;
        }
    }
    let late = &x.events.late;
    writeln!(
        out,
        "late     {} event(s) of the key in the window refused as late{}",
        late.len(),
        if late.is_empty() { "" } else { ":" }
    )?;
    for l in late.iter().take(MAX_LATE_LISTED) {
        writeln!(
            out,
            "         partition {} offset {}: ts {} < {} - {} (its partition's largest time before it, minus the lateness)",
            l.event.partition, l.event.offset, l.event.ts, l.max_ts_before, q.lateness_ms
        )?;
    }
    if late.len() > MAX_LATE_LISTED {
        writeln!(
            out,
            "         ... {} more (--late lists them all)",
            late.len() - MAX_LATE_LISTED
        )?;
    }
    if !x.checked_columns.is_empty() {
        writeln!(
            out,
            "check    {} of these events equal the row's",
            x.checked_columns.join(", ")
        )?;
    }
    writeln!(
        out,
        "         --events lists the events, --late the late ones (CSV)"
    )?;
    Ok(())
}
