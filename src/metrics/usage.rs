//! Disk usage a scrape reports: a directory's files.

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
