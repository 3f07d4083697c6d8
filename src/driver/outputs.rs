//! Output files at the start of a run (the end of the restore phase):
//! truncated to the lengths the restored checkpoint committed (or removed
//! when it committed none).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::Place;
use crate::checkpoint::format::{CommitRecord, OutputLength};
use crate::run::{RunError, RunOptions};
use crate::sink::{is_output_file_name, output_file_names};

/// Creates the output directory and truncates this process's files in it
/// to what `restored` committed.
pub(super) fn prepare(
    options: &RunOptions,
    restored: Option<&CommitRecord>,
    place: Place,
) -> Result<(), RunError> {
    std::fs::create_dir_all(&options.out_dir).map_err(|e| RunError::Output {
        path: options.out_dir.clone(),
        source: e,
    })?;
    prepare_outputs(
        &options.out_dir,
        restored,
        place.first_worker..place.first_worker + options.workers,
        place.process == 0,
        place.workers_total,
    )
}

/// Truncates the output files of `workers` (this process's) to their
/// committed lengths (or empties them: no checkpoint). Process 0 also
/// handles files of worker indexes beyond this run's (an earlier run had
/// more workers): committed ones are truncated, others removed.
fn prepare_outputs(
    out_dir: &Path,
    restored: Option<&CommitRecord>,
    workers: std::ops::Range<usize>,
    leader: bool,
    workers_total: usize,
) -> Result<(), RunError> {
    let committed: HashMap<&str, u64> = restored
        .map(|r| {
            r.outputs
                .iter()
                .map(|o: &OutputLength| (o.file_name.as_str(), o.length_bytes))
                .collect()
        })
        .unwrap_or_default();
    let io_err = |path: PathBuf| move |e| RunError::Output { path, source: e };
    let mut names: Vec<String> = Vec::new();
    for w in workers {
        let (a, b) = output_file_names(w);
        names.push(a);
        names.push(b);
    }
    if leader {
        for entry in std::fs::read_dir(out_dir).map_err(io_err(out_dir.to_owned()))? {
            let name = entry
                .map_err(io_err(out_dir.to_owned()))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            let index = name
                .trim_end_matches(".csv")
                .rsplit('-')
                .next()
                .and_then(|i| i.parse::<usize>().ok());
            if is_output_file_name(&name) && index.is_some_and(|i| i >= workers_total) {
                names.push(name);
            }
        }
    }
    for name in names {
        let path = out_dir.join(&name);
        match committed.get(name.as_str()) {
            Some(&length) => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| {
                        RunError::Restore(format!(
                            "output file {} of the checkpoint is missing: {e}",
                            path.display()
                        ))
                    })?;
                let actual = file.metadata().map_err(io_err(path.clone()))?.len();
                if actual < length {
                    return Err(RunError::Restore(format!(
                        "output file {} has {actual} bytes, fewer than the {length} committed",
                        path.display()
                    )));
                }
                file.set_len(length).map_err(io_err(path.clone()))?;
            }
            None => {
                if path.exists() {
                    std::fs::remove_file(&path).map_err(io_err(path.clone()))?;
                }
            }
        }
    }
    Ok(())
}
