//! Disk usage figures a scrape reports: a directory's files, the input
//! log's topics.

use std::path::Path;

/// `(files, bytes)` of the regular files directly in `dir` whose names
/// `keep` accepts (none if it cannot be read).
pub fn dir_usage(dir: &Path, keep: impl Fn(&str) -> bool) -> (u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let mut usage = (0, 0);
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !keep(&name.to_string_lossy()) {
            continue;
        }
        if let Ok(meta) = entry.metadata() {
            if meta.is_file() {
                usage.0 += 1;
                usage.1 += meta.len();
            }
        }
    }
    usage
}

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

/// A checkpoint store's temp files and lock, left out of its usage.
pub fn is_temp_or_lock(name: &str) -> bool {
    name == crate::checkpoint::store::LOCK_FILE_NAME
        || Path::new(name)
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("tmp"))
}
