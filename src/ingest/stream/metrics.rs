//! What a stream source shows on its metrics endpoint (`weir ingest --from
//! … --metrics-addr`): per log partition, the committed totals (messages,
//! records appended, records matched after a restart, dead letters) and
//! the committed source sequence; for the source, reconnects and pauses.
//! Updated at every commit, so the figures are those a restart would start
//! from.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::metrics::{label_value, Exposition};

/// A metric family of partition figures: name, kind, help, value.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PartitionFigures) -> u64,
);

/// A partition's committed figures.
#[derive(Clone, Copy, Debug, Default)]
struct PartitionFigures {
    messages: u64,
    appended: u64,
    matched: u64,
    dead_letters: u64,
    committed_seq: u64,
}

/// The source's figures (see the module doc).
#[derive(Debug)]
pub struct SourceMetrics {
    source: String,
    partitions: Mutex<BTreeMap<u32, PartitionFigures>>,
    reconnects: AtomicU64,
    pauses: AtomicU64,
}

impl SourceMetrics {
    /// No figures yet for `source` (its URL, a label of every sample).
    pub fn new(source: &str) -> Self {
        Self {
            source: source.to_owned(),
            partitions: Mutex::new(BTreeMap::new()),
            reconnects: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
        }
    }

    /// Records a partition's figures at a commit: the run's counts and the
    /// committed sequence.
    pub(super) fn committed(
        &self,
        partition: u32,
        (messages, appended, matched, dead_letters): (u64, u64, u64, u64),
        committed_seq: u64,
    ) {
        let mut partitions = self.partitions.lock().expect("metrics lock");
        partitions.insert(
            partition,
            PartitionFigures {
                messages,
                appended,
                matched,
                dead_letters,
                committed_seq,
            },
        );
    }

    /// Counts a reconnection.
    pub(super) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a pause (`--max-log-bytes`, or a full disk).
    pub(super) fn paused(&self) {
        self.pauses.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text.
    pub fn render(&self) -> String {
        let partitions = self.partitions.lock().expect("metrics lock").clone();
        let source = label_value(&self.source);
        let samples = |f: fn(&PartitionFigures) -> u64| -> Vec<(String, String)> {
            partitions
                .iter()
                .map(|(p, figures)| {
                    (
                        format!("source=\"{source}\",partition=\"{p}\""),
                        f(figures).to_string(),
                    )
                })
                .collect()
        };
        let mut out = Exposition::new();
        let families: [Family; 5] = [
            (
                "source_messages_total",
                "counter",
                "Messages read and committed by this process (appended, matched or dead-lettered).",
                |f| f.messages,
            ),
            (
                "source_appended_total",
                "counter",
                "Records appended to the log by this process.",
                |f| f.appended,
            ),
            (
                "source_matched_total",
                "counter",
                "Records found in the log after the committed offset at a restart and matched.",
                |f| f.matched,
            ),
            (
                "source_dead_letters_total",
                "counter",
                "Malformed messages written to the dead-letter file by this process.",
                |f| f.dead_letters,
            ),
            (
                "source_committed_sequence",
                "gauge",
                "The last source sequence committed (Kafka: offset + 1).",
                |f| f.committed_seq,
            ),
        ];
        for (name, kind, help, f) in families {
            out.labelled(name, kind, help, &samples(f));
        }
        out.labelled(
            "source_reconnects_total",
            "counter",
            "Times the connection to the source was made again.",
            &[(
                format!("source=\"{source}\""),
                self.reconnects.load(Ordering::Relaxed).to_string(),
            )],
        );
        out.labelled(
            "source_pauses_total",
            "counter",
            "Times reading paused: the log over --max-log-bytes, or its disk full.",
            &[(
                format!("source=\"{source}\""),
                self.pauses.load(Ordering::Relaxed).to_string(),
            )],
        );
        out.finish()
    }
}
