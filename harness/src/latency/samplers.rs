//! What a latency run samples from the engine while it runs: gauges from
//! its metrics endpoint, and the newest checkpoint from its commit stream.

use std::time::Duration;

/// A free loopback address for the engine's metrics endpoint (None if the
/// system has none to give).
pub(crate) fn free_loopback_port() -> Option<std::net::SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()
}

/// Resident set size of process `pid` (`"self"`: this one), bytes; 0 if
/// it is gone.
pub(crate) fn rss_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1_024)
}

/// The value of the unlabelled sample `name` in a metrics text.
pub(crate) fn metric_value(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The body of `GET /metrics` at `addr` (None on any failure).
pub(crate) fn scrape_metrics(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::{Read, Write};
    let timeout = Duration::from_millis(500);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The sum over workers of the per-worker gauge `name` (`name{worker=..}`).
pub(super) fn sum_per_worker(metrics: &str, name: &str) -> Option<i64> {
    let prefix = format!("{name}{{");
    let values: Vec<i64> = metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// The sum of the series of `name` whose labels contain `label` (e.g.
/// `tier="disk"`), or `None` if there is none.
pub(super) fn sum_with_label(metrics: &str, name: &str, label: &str) -> Option<i64> {
    let prefix = format!("{name}{{");
    let values: Vec<i64> = metrics
        .lines()
        .filter(|l| {
            l.starts_with(&prefix) && l.split('}').next().is_some_and(|x| x.contains(label))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Follows the commit stream: the newest checkpoint and the bytes added since.
#[derive(Debug, Default)]
pub(super) struct CheckpointSampler {
    /// Records already seen.
    seen: usize,
    /// File names of the newest record seen.
    newest_files: std::collections::BTreeSet<String>,
}

impl CheckpointSampler {
    /// `checkpoint_id,checkpoint_bytes,checkpoint_delta_bytes,checkpoint_files`
    /// of the newest commit (bytes of all its files; bytes of the files that
    /// the commits since the last sample added), or empty fields when none.
    pub(super) fn sample(&mut self, dir: &std::path::Path) -> String {
        let records = weir::checkpoint::store::read_commits(dir).unwrap_or_default();
        self.sample_records(&records)
    }

    fn sample_records(&mut self, records: &[weir::checkpoint::format::CommitRecord]) -> String {
        let Some(newest) = records.last() else {
            return ",,,".to_owned();
        };
        let mut delta = 0u64;
        for record in records.iter().skip(self.seen) {
            delta += record
                .files
                .iter()
                .filter(|f| !self.newest_files.contains(&f.name))
                .map(|f| f.size_bytes)
                .sum::<u64>();
            self.newest_files = record.files.iter().map(|f| f.name.clone()).collect();
        }
        self.seen = self.seen.max(records.len());
        let total: u64 = newest.files.iter().map(|f| f.size_bytes).sum();
        format!(
            "{},{total},{delta},{}",
            newest.checkpoint_id,
            newest.files.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir::checkpoint::format::{CommitRecord, FileMeta};

    #[test]
    fn per_worker_gauges_sum_the_workers() {
        let text = "# TYPE weir_state_records gauge\n\
                    weir_state_records{worker=\"0\"} 10\n\
                    weir_state_records{worker=\"1\"} 32\n\
                    weir_combiner_partials{worker=\"0\"} 7\n\
                    weir_sidecar_queue_fill 0\n";
        assert_eq!(sum_per_worker(text, "weir_state_records"), Some(42));
        assert_eq!(sum_per_worker(text, "weir_combiner_partials"), Some(7));
        let tiers = "weir_state_bytes{worker=\"0\",structure=\"windows\",tier=\"memory\"} 5\n\
                     weir_state_bytes{worker=\"1\",structure=\"windows\",tier=\"memory\"} 6\n\
                     weir_state_bytes{worker=\"0\",structure=\"windows\",tier=\"disk\"} 100\n";
        assert_eq!(
            sum_with_label(tiers, "weir_state_bytes", "tier=\"memory\""),
            Some(11)
        );
        assert_eq!(
            sum_with_label(tiers, "weir_state_bytes", "tier=\"disk\""),
            Some(100)
        );
        assert_eq!(
            sum_with_label(tiers, "weir_state_bytes", "tier=\"cold\""),
            None
        );
        assert_eq!(
            sum_per_worker("weir_events_in_total 5\n", "weir_state_records"),
            None
        );
    }

    fn record(id: u64, files: &[(&str, u64)]) -> CommitRecord {
        CommitRecord {
            checkpoint_id: id,
            cut_time: id * 1_000,
            query_fingerprint: 0,
            workers_total: 1,
            files: files
                .iter()
                .map(|&(name, size_bytes)| FileMeta {
                    name: name.to_owned(),
                    size_bytes,
                    crc32c: 0,
                    min_time: 0,
                    max_time: 0,
                })
                .collect(),
            partitions: Vec::new(),
            outputs: Vec::new(),
            timing: None,
        }
    }

    #[test]
    fn checkpoint_samples_count_only_new_files_as_delta() {
        let mut sampler = CheckpointSampler::default();
        assert_eq!(sampler.sample_records(&[]), ",,,");
        let mut records = vec![
            record(1, &[("a", 100)]),
            record(2, &[("a", 100), ("b", 10)]),
        ];
        assert_eq!(sampler.sample_records(&records), "2,110,110,2");
        // Nothing new: no delta.
        assert_eq!(sampler.sample_records(&records), "2,110,0,2");
        // A compaction replaces both files by one.
        records.push(record(3, &[("c", 50)]));
        assert_eq!(sampler.sample_records(&records), "3,50,50,1");
    }
}
