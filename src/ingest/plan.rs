//! An ingest call in two steps: planned under the topic's manifest (which
//! files are skipped, which become which new partitions, numbered in the
//! order given), then run: the new partitions written in parallel
//! ([`super::parallel`]) and committed in order.

use std::path::{Path, PathBuf};

use super::manifest::{file_identity, Manifest, ManifestEntry, MAX_PATH_LEN_BYTES};
use super::parallel::{self, PartitionJob};
use super::tee::IngestTees;
use super::{
    io_err, open_manifest, recover, resolve_recorded_path, FileReport, IngestError,
    IngestErrorKind, IngestReport, MANIFEST_FILE_NAME,
};
use crate::csv_input::RowSchema;
use crate::log::{validate_topic, LogConfig};
use crate::storage::durable::{rename_durably, write_file_atomically};

/// An ingest planned by [`super::plan_ingest`] and not yet run; see the
/// module doc.
pub struct PlannedIngest {
    topic_dir: PathBuf,
    manifest: Manifest,
    plan: Vec<Planned>,
    /// The first file refused while planning: the files before it are
    /// ingested, then this is the error.
    refused: Option<IngestErrorKind>,
    config: LogConfig,
}

impl PlannedIngest {
    /// Plans ingesting `files` (rows of `schema`) into `topic` under
    /// `log_dir`: checks the topic and the manifest (recovering what a
    /// crash left), and decides each file's partition.
    pub(super) fn prepare(
        log_dir: &Path,
        topic: &str,
        schema: RowSchema,
        files: &[PathBuf],
        config: &LogConfig,
    ) -> Result<Self, IngestError> {
        let prepared = (|| {
            validate_topic(topic)?;
            config.validate()?;
            let topic_dir = log_dir.join(topic);
            let mut manifest = open_manifest(&topic_dir)?;
            recover(&topic_dir, &mut manifest)?;
            let (plan, refused) = plan_files(&manifest, schema, files);
            Ok(PlannedIngest {
                topic_dir,
                manifest,
                plan,
                refused,
                config: *config,
            })
        })();
        prepared.map_err(|kind| IngestError {
            completed: IngestReport::default(),
            kind,
        })
    }

    /// The partitions the new files become, in the order given.
    pub fn new_partitions(&self) -> Vec<u32> {
        new_jobs(&self.plan).map(|job| job.partition).collect()
    }

    /// Whether planning refused a file: running ingests the files before
    /// it, then fails with its error.
    pub fn refuses_a_file(&self) -> bool {
        self.refused.is_some()
    }

    /// Writes the new partitions, up to `threads` files at once, and
    /// commits them in the order given; each new partition's records also
    /// go to its tee in `tees`, if any, as they are appended (see
    /// [`super::tee`]).
    pub fn run(
        self,
        threads: usize,
        tees: Option<&dyn IngestTees>,
    ) -> Result<IngestReport, IngestError> {
        let mut report = IngestReport::default();
        match self.commit((threads.max(1), tees), &mut report) {
            Ok(()) => Ok(report),
            Err(kind) => Err(IngestError {
                completed: report,
                kind,
            }),
        }
    }

    fn commit(
        self,
        (threads, tees): (usize, Option<&dyn IngestTees>),
        report: &mut IngestReport,
    ) -> Result<(), IngestErrorKind> {
        let PlannedIngest {
            topic_dir,
            mut manifest,
            plan,
            refused,
            config,
        } = self;
        let config = &config;
        let jobs: Vec<&PartitionJob> = new_jobs(&plan).collect();
        let writing = parallel::Writing::new(&topic_dir, &jobs, config, tees);
        let threads = threads.clamp(1, jobs.len().max(1));
        // Committed in the order given, each as soon as it and every file
        // before it are written: a file's partition becomes visible only
        // after every earlier file's, so a failure leaves exactly the
        // files before it ingested.
        let committed = std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| writing.work());
            }
            let committed = commit_in_order(&topic_dir, &mut manifest, &plan, &writing, report);
            if let Err((_, job, _)) = &committed {
                writing.stop_after(*job);
            }
            committed
        });
        if let Err((failed, _, e)) = committed {
            parallel::discard(
                &topic_dir,
                new_jobs(&plan[failed..]).map(|job| job.partition),
            );
            return Err(e);
        }
        match refused {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Walks the plan in order: reports skipped files, and commits each new
/// partition once written (rename, manifest). On failure, the index in
/// the plan and among the jobs from which nothing is committed, and the
/// error.
fn commit_in_order(
    topic_dir: &Path,
    manifest: &mut Manifest,
    plan: &[Planned],
    writing: &parallel::Writing<'_>,
    report: &mut IngestReport,
) -> Result<(), (usize, usize, IngestErrorKind)> {
    let mut entries: Vec<Option<ManifestEntry>> = Vec::with_capacity(plan.len());
    let mut job = 0;
    for (i, planned) in plan.iter().enumerate() {
        let (path, entry, skipped) = match planned {
            Planned::Skip(path, entry) => (path, entry.clone(), true),
            Planned::Again(path, first) => {
                let entry = entries[*first].clone().expect("an earlier file");
                (path, entry, true)
            }
            Planned::Write(w) => {
                let committed = writing.wait(job).and_then(|entry| {
                    rename_durably(
                        &parallel::tmp_dir(topic_dir, w.partition),
                        &topic_dir.join(w.partition.to_string()),
                    )?;
                    manifest.entries.push(entry.clone());
                    write_file_atomically(&topic_dir.join(MANIFEST_FILE_NAME), &manifest.encode())?;
                    Ok(entry)
                });
                let entry = committed.map_err(|e| (i, job, e))?;
                tracing::info!(file = %w.path.display(), partition = w.partition, records = entry.records, "ingested");
                job += 1;
                (&w.path, entry, false)
            }
        };
        report.files.push(FileReport {
            path: path.clone(),
            partition: entry.partition,
            records: entry.records,
            skipped,
        });
        entries.push(Some(entry));
    }
    Ok(())
}

/// The new partitions of `plan`, in order.
fn new_jobs(plan: &[Planned]) -> impl Iterator<Item = &PartitionJob> {
    plan.iter().filter_map(|p| match p {
        Planned::Write(job) => Some(job),
        _ => None,
    })
}

/// What becomes of one input file.
pub(super) enum Planned {
    /// Ingested before, unchanged: its manifest entry.
    Skip(PathBuf, ManifestEntry),
    /// The same file as the earlier one at this index of the plan.
    Again(PathBuf, usize),
    /// A new partition to write.
    Write(PartitionJob),
}

/// Decides, in order, what becomes of each file: skipped, or a new
/// partition (numbered in order); stops at the first file refused, whose
/// error comes back with the plan of the files before it.
fn plan_files(
    manifest: &Manifest,
    schema: RowSchema,
    files: &[PathBuf],
) -> (Vec<Planned>, Option<IngestErrorKind>) {
    // Where each entry's file is now, in the manifest's order.
    let ingested: Vec<PathBuf> = manifest
        .entries
        .iter()
        .map(|e| resolve_recorded_path(&e.source_path))
        .collect();
    let mut planned_paths: Vec<PathBuf> = Vec::new();
    let mut plan = Vec::new();
    let mut next_partition = manifest.next_partition();
    for path in files {
        match plan_file(
            manifest,
            &ingested,
            (&planned_paths, &mut next_partition),
            schema,
            path,
        ) {
            Ok((planned, canonical)) => {
                plan.push(planned);
                planned_paths.push(canonical);
            }
            Err(e) => return (plan, Some(e)),
        }
    }
    (plan, None)
}

fn plan_file(
    manifest: &Manifest,
    ingested: &[PathBuf],
    (planned, next_partition): (&[PathBuf], &mut Option<u32>),
    schema: RowSchema,
    path: &Path,
) -> Result<(Planned, PathBuf), IngestErrorKind> {
    let canonical = std::fs::canonicalize(path).map_err(io_err(path))?;
    if let Some(first) = planned.iter().position(|p| *p == canonical) {
        return Ok((Planned::Again(path.to_owned(), first), canonical));
    }
    if let Some(i) = ingested.iter().position(|p| *p == canonical) {
        let identity = file_identity(path).map_err(io_err(path))?;
        let done = &manifest.entries[i];
        if done.identity != identity {
            return Err(IngestErrorKind::ChangedSinceIngest {
                path: path.to_owned(),
                partition: done.partition,
                ingested: done.identity,
                now: identity,
            });
        }
        tracing::info!(
            file = %path.display(), partition = done.partition, ingested_from = %done.source_path,
            "already ingested: skipping"
        );
        return Ok((Planned::Skip(path.to_owned(), done.clone()), canonical));
    }
    let partition = next_partition.ok_or(IngestErrorKind::TooManyPartitions)?;
    let recorded = match canonical.to_str() {
        Some(p) if p.len() <= MAX_PATH_LEN_BYTES => p.to_owned(),
        _ => {
            return Err(IngestErrorKind::UnrecordablePath {
                path: path.to_owned(),
                canonical,
            })
        }
    };
    *next_partition = partition.checked_add(1);
    let job = PartitionJob {
        path: path.to_owned(),
        recorded,
        schema,
        partition,
    };
    Ok((Planned::Write(job), canonical))
}
