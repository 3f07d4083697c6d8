//! `weir upgrade-check`: a canary before a new binary takes over a job.
//!
//! Copies the data directory and the output directory twice, lets the old
//! binary and this one each restore the newest committed checkpoint of its
//! copy and run the same query to the end of the log, and compares what the
//! two wrote, row by row (sorted: the rows are a function of the log, their
//! order across worker files is not). Prints the first rows that differ,
//! with their windows and keys, and fails on a difference; a binary that
//! cannot restore the checkpoint (a format it does not read) fails the
//! check with that binary's own error.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;

/// Arguments of `weir upgrade-check`.
#[derive(Args, Debug)]
pub struct UpgradeCheckArgs {
    /// The binary that runs the job today.
    #[arg(long)]
    old: PathBuf,
    /// The job's data directory (left untouched: both runs use copies).
    #[arg(long)]
    data_dir: PathBuf,
    /// The job's output directory (copied too: a restore truncates it).
    #[arg(long)]
    out: PathBuf,
    /// Where the copies go (default: a new directory under the system's
    /// temporary directory, removed afterwards).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The job's query options, as given to `weir run` (after `--`), e.g.
    /// `-- --query window --window sliding:1h/5m`.
    #[arg(last = true, required = true)]
    run_args: Vec<String>,
}

/// Rows a difference report prints at most from each side.
const MAX_ROWS_SHOWN: usize = 5;

/// See the module doc.
pub fn upgrade_check_command(args: &UpgradeCheckArgs) -> Result<()> {
    for refused in ["--data-dir", "--out", "--input", "--from"] {
        if args.run_args.iter().any(|a| a == refused) {
            bail!(
                "{refused} after `--`: upgrade-check sets it; give only the query's options there"
            );
        }
    }
    let new = std::env::current_exe().context("finding this binary")?;
    // A work directory of our own is removed afterwards; a given one kept.
    let scratch = args.work_dir.is_none().then(|| {
        RemovedOnDrop(
            std::env::temp_dir().join(format!("weir-upgrade-check-{}", std::process::id())),
        )
    });
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| scratch.as_ref().expect("no --work-dir").0.clone());
    let mut rows = Vec::new();
    for (label, binary) in [("old", args.old.as_path()), ("new", new.as_path())] {
        let copy = work.join(label);
        if copy.exists() {
            std::fs::remove_dir_all(&copy)
                .with_context(|| format!("clearing {}", copy.display()))?;
        }
        copy_dir(&args.data_dir, &copy.join("data"))?;
        copy_dir(&args.out, &copy.join("out"))?;
        let output = Command::new(binary)
            .arg("run")
            .args(&args.run_args)
            .arg("--data-dir")
            .arg(copy.join("data"))
            .arg("--out")
            .arg(copy.join("out"))
            .arg("--until-end")
            .output()
            .with_context(|| format!("starting the {label} binary {}", binary.display()))?;
        if !output.status.success() {
            bail!(
                "the {label} binary ({}) could not restore and run this data directory: {}",
                binary.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let summary = String::from_utf8_lossy(&output.stdout);
        let restored = summary
            .lines()
            .find(|l| l.starts_with("restored from"))
            .map_or_else(
                || "restored nothing".to_owned(),
                |l| l.split_whitespace().collect::<Vec<_>>().join(" "),
            );
        eprintln!("{label}: {} ({restored})", binary.display());
        rows.push(output_rows(&copy.join("out"))?);
    }
    let (old, new) = (&rows[0], &rows[1]);
    let only_old: Vec<&String> = missing_from(old, new);
    let only_new: Vec<&String> = missing_from(new, old);
    if only_old.is_empty() && only_new.is_empty() {
        println!("no difference: {} rows each", old.len());
        return Ok(());
    }
    println!(
        "{} rows only in the old binary's output, {} only in the new one's; the first (window_start,window_end,key,...):",
        only_old.len(),
        only_new.len()
    );
    for row in only_old.iter().take(MAX_ROWS_SHOWN) {
        println!("  old: {row}");
    }
    for row in only_new.iter().take(MAX_ROWS_SHOWN) {
        println!("  new: {row}");
    }
    bail!("the new binary's output differs from the old one's")
}

/// A directory removed with everything in it when this is dropped.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every row of the output files in `dir` (headers left out), with the
/// file kind in front (`windows,` or `late,`), sorted.
fn output_rows(dir: &Path) -> Result<Vec<String>> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let Some(kind) = ["windows", "late"]
            .into_iter()
            .find(|k| name.starts_with(&format!("{k}-")) && name.ends_with(".csv"))
        else {
            continue;
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        rows.extend(text.lines().skip(1).map(|l| format!("{kind},{l}")));
    }
    rows.sort_unstable();
    Ok(rows)
}

/// The rows of `a` (sorted) not in `b` (sorted), as a multiset difference.
fn missing_from<'a>(a: &'a [String], b: &[String]) -> Vec<&'a String> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() {
        match b.get(j).map(|row| a[i].cmp(row)) {
            Some(std::cmp::Ordering::Equal) => {
                i += 1;
                j += 1;
            }
            Some(std::cmp::Ordering::Greater) => j += 1,
            _ => {
                out.push(&a[i]);
                i += 1;
            }
        }
    }
    out
}

/// Copies the files under `from` to `to` (which must not exist), keeping
/// the tree; lock and socket files of a stopped run are left out.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let (source, dest) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_dir(&source, &dest)?;
        } else if kind.is_file() {
            std::fs::copy(&source, &dest)
                .with_context(|| format!("copying {} to {}", source.display(), dest.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_missing_from_the_other_side_are_found_as_a_multiset() {
        let rows = |r: &[&str]| r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let a = rows(&["a", "b", "b", "d"]);
        let b = rows(&["b", "c", "d"]);
        assert_eq!(missing_from(&a, &b), vec!["a", "b"]);
        assert_eq!(missing_from(&b, &a), vec!["c"]);
        assert!(missing_from(&a, &a).is_empty());
    }
}
