//! Helpers shared by the integration tests: the `weir` binary, free ports,
//! and reading output files as sorted multisets of lines.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `weir` binary built for these tests.
pub fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// Runs `weir` with `args`, returning its output (never panics on failure).
pub fn run_weir(args: &[&str]) -> Output {
    weir().args(args).output().expect("starting weir")
}

/// Fails the test with the command's stderr unless it succeeded.
pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `n` distinct loopback ports that were free a moment ago.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// The data lines (header dropped) of every file in `dir` whose name starts
/// with `prefix`, sorted: a multiset to compare runs by.
pub fn sorted_rows(dir: &Path, prefix: &str) -> Vec<String> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path: PathBuf = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(prefix) && path.extension().is_some_and(|e| e == "csv") {
            let text = std::fs::read_to_string(&path).unwrap();
            rows.extend(text.lines().skip(1).map(str::to_owned));
        }
    }
    rows.sort();
    rows
}
