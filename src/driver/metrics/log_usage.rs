//! The input log's disk usage per topic, for the engine's scrape.

use std::path::Path;

use crate::metrics::dir_usage;

/// Per topic of the log in `log_dir`: `(partitions, segments, bytes)`.
pub(super) fn log_usage(log_dir: &Path) -> Vec<(String, (u64, u64, u64))> {
    let Ok(entries) = std::fs::read_dir(log_dir) else {
        return Vec::new();
    };
    let mut topics: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|t| crate::log::validate_topic(t).is_ok())
        .collect();
    topics.sort();
    topics
        .into_iter()
        .map(|topic| {
            let mut usage = (0, 0, 0);
            for p in crate::log::list_partitions(log_dir, &topic).unwrap_or_default() {
                let (n, b) = dir_usage(&crate::log::partition_dir(log_dir, &topic, p), |n| {
                    Path::new(n)
                        .extension()
                        .is_some_and(|x| x.eq_ignore_ascii_case("seg"))
                });
                usage.0 += 1;
                usage.1 += n;
                usage.2 += b;
            }
            (topic, usage)
        })
        .collect()
}
