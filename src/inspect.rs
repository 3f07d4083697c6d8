//! `weir inspect`: what a data directory holds — input log partitions,
//! committed checkpoints (id, cut, files, size, resume offsets, output
//! lengths), the cold tier and replica (`tiers`), window state spill files
//! — read without taking any lock or changing anything.

use std::fmt::Write as _;
use std::path::Path;

use crate::checkpoint::cut::FINAL_CUT;
use crate::checkpoint::store::{read_commit_stream, read_commits, StoreError};
use crate::ingest::manifest::Manifest;
use crate::ingest::MANIFEST_FILE_NAME;
use crate::log::format::{list_segments, segment_path};
use crate::log::{list_partitions, partition_dir, LogError};
use crate::nexmark::{source_partition, NexmarkTable};
use crate::run::{EVENTS_TOPIC, STATE_DIR_NAME};

mod tiers;

/// Why inspection failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// Reading the log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Reading the checkpoints failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file could not be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

fn cut_text(cut: u64) -> String {
    if cut == FINAL_CUT {
        "final".to_owned()
    } else {
        format!("{cut}")
    }
}

/// A human-readable report of `data_dir`.
pub fn inspect(data_dir: &Path) -> Result<String, InspectError> {
    let mut out = String::new();
    let log_dir = data_dir.join(crate::log::LOG_DIR_NAME);
    // Records per source partition (as checkpoints number them), for the
    // backlog behind the newest checkpoint.
    let mut records_by_source: std::collections::HashMap<u32, u64> =
        std::collections::HashMap::default();
    let mut topics: Vec<(String, Option<NexmarkTable>)> = vec![(EVENTS_TOPIC.to_owned(), None)];
    topics.extend(
        NexmarkTable::ALL
            .iter()
            .map(|t| (t.name().to_owned(), Some(*t))),
    );
    for (topic, table) in &topics {
        let topic_dir = log_dir.join(topic);
        if topic != EVENTS_TOPIC && !topic_dir.is_dir() {
            continue;
        }
        let manifest_path = topic_dir.join(MANIFEST_FILE_NAME);
        let manifest =
            match std::fs::read(&manifest_path) {
                Ok(bytes) => Some(Manifest::decode(&bytes).map_err(|(offset, reason)| {
                    InspectError::File {
                        path: manifest_path.display().to_string(),
                        reason: format!("corrupt at byte {offset}: {reason}"),
                    }
                })?),
                Err(_) => None,
            };
        let partitions = list_partitions(&log_dir, topic)?;
        writeln!(
            out,
            "input log {} (topic {topic}): {} partition(s)",
            log_dir.display(),
            partitions.len()
        )
        .ok();
        writeln!(
            out,
            "  partition  segments  first offset  bytes        records  source"
        )
        .ok();
        for p in &partitions {
            let dir = partition_dir(&log_dir, topic, *p);
            let segments = list_segments(&dir)?;
            let bytes: u64 = segments
                .iter()
                .filter_map(|base| std::fs::metadata(segment_path(&dir, *base)).ok())
                .map(|m| m.len())
                .sum();
            let entry = manifest.as_ref().and_then(|m| m.partition(*p));
            if let Some(e) = entry {
                let source = table.map_or(*p, |t| source_partition(t, *p));
                records_by_source.insert(source, e.records);
            }
            let records = entry.map_or_else(|| "?".to_owned(), |e| e.records.to_string());
            let source = entry.map_or_else(String::new, |e| e.source_path.clone());
            // Above 0 once log retention deleted the segments before it.
            let first_offset = segments.first().copied().unwrap_or(0);
            writeln!(
                out,
                "  {p:<9}  {:<8}  {first_offset:<12}  {bytes:<11}  {records:<7}  {source}",
                segments.len()
            )
            .ok();
        }
    }

    let checkpoint_dir = data_dir.join("checkpoints");
    let stream = read_commit_stream(&checkpoint_dir)?;
    let format = stream.as_ref().map_or_else(String::new, |scan| {
        let writer = scan.writer.map_or_else(
            || "no release recorded".to_owned(),
            |w| format!("header written by {w}"),
        );
        format!(" (commit stream version {}, {writer})", scan.version)
    });
    let commits = stream.map_or_else(Vec::new, |scan| scan.records);
    writeln!(
        out,
        "\ncheckpoints {}: {} committed{format}",
        checkpoint_dir.display(),
        commits.len()
    )
    .ok();
    if !commits.is_empty() {
        writeln!(
            out,
            "  id      cut            workers  files  state bytes  commit ms  committed (unix ms)  on disk"
        )
        .ok();
    }
    for c in &commits {
        let size: u64 = c.files.iter().map(|f| f.size_bytes).sum();
        let present = c
            .files
            .iter()
            .all(|f| checkpoint_dir.join(&f.name).is_file());
        let (latency, committed_at) = c.timing.map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |t| {
                (
                    format!("{:.1}", t.commit_latency_us as f64 / 1e3),
                    t.committed_at_unix_ms.to_string(),
                )
            },
        );
        writeln!(
            out,
            "  {:<6}  {:<13}  {:<7}  {:<5}  {size:<11}  {latency:<9}  {committed_at:<19}  {}",
            c.checkpoint_id,
            cut_text(c.cut_time),
            c.workers_total,
            c.files.len(),
            if present {
                "yes"
            } else {
                "no (garbage-collected)"
            }
        )
        .ok();
    }
    if let Some(newest) = commits.last() {
        writeln!(
            out,
            "\nnewest checkpoint {} (cut {}):",
            newest.checkpoint_id,
            cut_text(newest.cut_time)
        )
        .ok();
        if let Some(t) = newest.timing {
            let now_ms = crate::metrics::now_ms();
            let interval = commits
                .iter()
                .rev()
                .nth(1)
                .and_then(|p| p.timing)
                .map_or_else(String::new, |p| {
                    format!(
                        ", {:.3} s after the one before",
                        t.committed_at_unix_ms
                            .saturating_sub(p.committed_at_unix_ms) as f64
                            / 1e3
                    )
                });
            writeln!(
                out,
                "  committed at unix ms {} ({:.1} s ago{interval}), commit latency {:.1} ms",
                t.committed_at_unix_ms,
                now_ms.saturating_sub(t.committed_at_unix_ms) as f64 / 1e3,
                t.commit_latency_us as f64 / 1e3
            )
            .ok();
        }
        for f in &newest.files {
            writeln!(
                out,
                "  file {}  {} bytes  crc32c {:08x}  times {}..={}",
                f.name, f.size_bytes, f.crc32c, f.min_time, f.max_time
            )
            .ok();
        }
        for p in &newest.partitions {
            let max = p
                .max_ts_before
                .map_or_else(|| "-".to_owned(), |m| m.to_string());
            // The input not yet covered by the checkpoint, in records.
            let behind = records_by_source
                .get(&p.partition)
                .map_or_else(String::new, |r| {
                    format!(", {} records after it", r.saturating_sub(p.resume_offset))
                });
            writeln!(
                out,
                "  partition {} resumes at offset {} (max ts before: {max}{behind})",
                p.partition, p.resume_offset
            )
            .ok();
        }
        for o in &newest.outputs {
            writeln!(
                out,
                "  output {} committed length {} bytes",
                o.file_name, o.length_bytes
            )
            .ok();
        }
    }
    let store_dir = data_dir.join("checkpoints");
    let local_newest = read_commits(&store_dir)
        .ok()
        .and_then(|c| c.last().cloned());
    tiers::write_tiers(&mut out, &store_dir, local_newest.as_ref());
    write_state_files(&mut out, data_dir);
    Ok(out)
}

/// The window state spill files under `<data-dir>/state/` (a run with
/// `--memory-budget`): per worker directory, files and bytes. Scratch: a
/// running job's cold panes, or what a stopped one left (the next run
/// deletes it).
fn write_state_files(out: &mut String, data_dir: &Path) {
    let state_dir = data_dir.join(STATE_DIR_NAME);
    let Ok(entries) = std::fs::read_dir(&state_dir) else {
        return;
    };
    let mut workers: Vec<(String, u64, u64)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| {
            let (mut files, mut bytes) = (0u64, 0u64);
            for f in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                if let Ok(meta) = f.metadata() {
                    files += 1;
                    bytes += meta.len();
                }
            }
            (e.file_name().to_string_lossy().into_owned(), files, bytes)
        })
        .collect();
    workers.sort();
    writeln!(
        out,
        "\nwindow state spill files {} (--memory-budget; scratch, deleted when a run starts):",
        state_dir.display()
    )
    .ok();
    for (worker, files, bytes) in &workers {
        writeln!(out, "  {worker}: {files} file(s), {bytes} bytes").ok();
    }
}
