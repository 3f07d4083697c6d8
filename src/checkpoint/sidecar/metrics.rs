//! The sidecar's own figures and its Prometheus text (`weir sidecar
//! --metrics-addr`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(test)]
use std::sync::Arc;

use crate::checkpoint::store::is_temp_or_lock;
use crate::checkpoint::tier::source::{LocalSource, MAX_HELD_BYTES};
use crate::metrics::{dir_usage, Exposition, Histogram, LATENCY_BUCKETS_SECONDS};

/// Live figures of a sidecar, updated by its coordinator and commits.
#[derive(Debug)]
pub struct SidecarMetrics {
    /// The checkpoint directory (listed at each scrape).
    pub store_dir: PathBuf,
    /// Checkpoints committed by this sidecar.
    pub commits: AtomicU64,
    /// From the last cut of a checkpoint arriving until its commit is durable.
    pub commit_seconds: Histogram,
    /// Appending a commit record to the commit stream and fsyncing it.
    pub commit_fsync_seconds: Histogram,
    /// Compactions into a base file.
    pub compactions: AtomicU64,
    /// Files deleted by garbage collection (as of the last commit).
    pub gc_files: AtomicU64,
    /// Bytes of the delta files of the newest commit.
    pub last_delta_bytes: AtomicU64,
    /// Bytes of delta and base files written.
    pub written_bytes: AtomicU64,
    /// Bytes of the files the newest commit references: the committed state.
    pub committed_bytes: AtomicU64,
    /// Newest committed checkpoint id (0: none).
    pub last_checkpoint_id: AtomicU64,
    /// Its cut time (`u64::MAX`: final or none).
    pub last_cut_ms: AtomicU64,
    /// Engine processes connected.
    pub connections: AtomicU64,
    /// Checkpoints with some cuts collected, not committed yet.
    pub pending_checkpoints: AtomicU64,
    /// The cold tier's copier, when there is one.
    pub cold: std::sync::OnceLock<std::sync::Arc<crate::checkpoint::tier::ColdFigures>>,
    /// The replica's copier, when there is one.
    pub replica: std::sync::OnceLock<std::sync::Arc<crate::checkpoint::tier::ColdFigures>>,
    /// What the copiers read once and share, when there are copiers.
    pub copy_source: std::sync::OnceLock<std::sync::Arc<LocalSource>>,
}

impl SidecarMetrics {
    /// Figures for the store in `store_dir`.
    pub fn new(store_dir: PathBuf) -> Self {
        Self {
            store_dir,
            commits: AtomicU64::new(0),
            commit_seconds: Histogram::new(LATENCY_BUCKETS_SECONDS),
            commit_fsync_seconds: Histogram::new(LATENCY_BUCKETS_SECONDS),
            compactions: AtomicU64::new(0),
            gc_files: AtomicU64::new(0),
            last_delta_bytes: AtomicU64::new(0),
            written_bytes: AtomicU64::new(0),
            committed_bytes: AtomicU64::new(0),
            last_checkpoint_id: AtomicU64::new(0),
            last_cut_ms: AtomicU64::new(u64::MAX),
            connections: AtomicU64::new(0),
            pending_checkpoints: AtomicU64::new(0),
            cold: std::sync::OnceLock::new(),
            replica: std::sync::OnceLock::new(),
            copy_source: std::sync::OnceLock::new(),
        }
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut x = Exposition::new();
        x.counter(
            "sidecar_commits_total",
            "Checkpoints this sidecar committed.",
            load(&self.commits),
        );
        x.histogram(
            "sidecar_commit_seconds",
            "From the last worker cut of a checkpoint arriving until its commit record is durable (delta files, compaction, commit).",
            &self.commit_seconds,
        );
        x.histogram(
            "sidecar_commit_fsync_seconds",
            "Appending a commit record to commits.log and fsyncing it.",
            &self.commit_fsync_seconds,
        );
        x.counter(
            "sidecar_compactions_total",
            "Compactions of the newest checkpoint's files into a base file.",
            load(&self.compactions),
        );
        x.counter(
            "sidecar_gc_files_total",
            "Checkpoint files deleted by garbage collection.",
            load(&self.gc_files),
        );
        x.gauge(
            "sidecar_delta_bytes",
            "Bytes of the delta files the newest commit added.",
            load(&self.last_delta_bytes),
        );
        x.counter(
            "sidecar_written_bytes_total",
            "Bytes of delta and base files written.",
            load(&self.written_bytes),
        );
        x.gauge(
            "sidecar_committed_bytes",
            "Bytes of the files the newest commit references: the committed state.",
            load(&self.committed_bytes),
        );
        let (files, bytes) = dir_usage(&self.store_dir, |n| !is_temp_or_lock(n));
        x.gauge(
            "sidecar_store_bytes",
            "Bytes of the checkpoint directory on disk (commit stream and retained files).",
            bytes,
        );
        x.gauge(
            "sidecar_store_files",
            "Files in the checkpoint directory.",
            files,
        );
        x.gauge(
            "sidecar_last_checkpoint_id",
            "Id of the newest checkpoint this sidecar committed (0: none).",
            load(&self.last_checkpoint_id),
        );
        let cut = load(&self.last_cut_ms);
        if cut != u64::MAX {
            x.gauge(
                "sidecar_committed_cut_timestamp_seconds",
                "Cut time of the newest checkpoint this sidecar committed.",
                cut as f64 / 1e3,
            );
        }
        x.gauge(
            "sidecar_connections",
            "Engine processes connected.",
            load(&self.connections),
        );
        x.gauge(
            "sidecar_pending_checkpoints",
            "Checkpoints whose cuts are arriving, not committed yet.",
            load(&self.pending_checkpoints),
        );
        for (role, copier, what) in [
            ("cold", self.cold.get(), "the cold tier (--cold-store)"),
            ("replica", self.replica.get(), "the replica (--replica)"),
        ] {
            if let Some(figures) = copier {
                render_copier(&mut x, role, what, figures);
            }
        }
        if let Some(source) = self.copy_source.get() {
            x.gauge(
                "sidecar_copy_source_held_bytes",
                &format!(
                    "Bytes of checkpoint files and log chunks read once for both copiers and held until each has copied them (at most {} MiB; a store that is down lets them pile up to that).",
                    MAX_HELD_BYTES >> 20
                ),
                source.held_bytes() as u64,
            );
        }
        x.finish()
    }
}

/// The figures of one copier, its metric names prefixed `sidecar_<role>_`.
fn render_copier(
    x: &mut Exposition,
    role: &str,
    what: &str,
    figures: &crate::checkpoint::tier::ColdFigures,
) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let copied = load(&figures.checkpoint_id);
    x.gauge(
        &format!("sidecar_{role}_checkpoint_id"),
        &format!("The newest checkpoint in {what}; 0: none yet."),
        copied,
    );
    x.gauge(
        &format!("sidecar_{role}_lag_checkpoints"),
        &format!("Checkpoints committed locally and not (yet) in {what}."),
        load(&figures.offered_id).saturating_sub(copied),
    );
    x.counter(
        &format!("sidecar_{role}_copy_failures_total"),
        &format!("Copies to {what} that failed (each retried with backoff)."),
        load(&figures.failures),
    );
    x.counter(
        &format!("sidecar_{role}_log_records_total"),
        &format!("Input log records shipped to {what} (for a standby's replay)."),
        load(&figures.log_records),
    );
    x.counter(
        &format!("sidecar_{role}_log_bytes_total"),
        &format!("Bytes of input log chunks shipped to {what}."),
        load(&figures.log_bytes),
    );
    x.gauge(
        &format!("sidecar_{role}_epoch"),
        &format!("The epoch this sidecar claimed in {what} (its writes go under it)."),
        load(&figures.epoch),
    );
    x.gauge(
        &format!("sidecar_{role}_fenced_by_epoch"),
        &format!(
            "A newer epoch that fenced this sidecar off {what} (a standby took over); 0: none."
        ),
        load(&figures.fenced_by),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::tier::source::SourceKey;

    #[test]
    fn bytes_held_for_the_copiers_are_a_gauge() {
        let metrics = SidecarMetrics::new(PathBuf::from("/nonexistent/weir-checkpoints"));
        assert!(!metrics.render().contains("copy_source"));
        let source = LocalSource::new(2);
        let _ = metrics.copy_source.set(Arc::clone(&source));
        source.offer(SourceKey::File("delta-1".into(), 7), vec![0; 1_000]);
        let text = metrics.render();
        assert!(
            text.lines()
                .any(|l| l == "weir_sidecar_copy_source_held_bytes 1000"),
            "{text}"
        );
    }
}
