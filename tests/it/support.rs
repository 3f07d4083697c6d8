//! Helpers shared by the integration tests: the `weir` binary, free ports,
//! and reading output files as sorted multisets of lines.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// The `weir` binary built for these tests.
pub fn weir() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weir"))
}

/// Runs `weir` with `args`, returning its output (never panics on failure).
pub fn run_weir(args: &[&str]) -> Output {
    weir().args(args).output().expect("starting weir")
}

/// Runs `command` to its end, at most `deadline`: a run that does not end
/// by then is killed and fails the test with what it wrote to stderr (a
/// hung run fails here, with its log, instead of hanging the test).
pub fn output_within(command: &mut Command, deadline: std::time::Duration) -> Output {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = command
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("starting the command");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the command") {
            break status;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
            panic!("the command did not end within {deadline:?}; its stderr:\n{stderr}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// Generates the kill tests' input in `dir`: `events` Zipf events over 4
/// partitions and 3,000 keys, 20,000 per second of event time, 0.2 % late.
pub fn gen_input(dir: &Path, events: u64) {
    let out = run_weir(&[
        "gen",
        "zipf",
        "--events",
        &events.to_string(),
        "--partitions",
        "4",
        "--keys",
        "3000",
        "--rate",
        "20000",
        "--late-fraction",
        "0.002",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_success(&out, "weir gen");
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

/// `weir run` of the tests' sliding 20 s / 5 s query (lateness 2 s) over
/// the log of `data` to its end, into `out`, with `extra` arguments.
pub fn log_run_args(data: &Path, out: &Path, workers: u64, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "run",
        "--window",
        "sliding:20s/5s",
        "--lateness",
        "2s",
        "--until-end",
    ]
    .map(str::to_owned)
    .to_vec();
    a.extend(["--data-dir".to_owned(), data.display().to_string()]);
    a.extend(["--out".to_owned(), out.display().to_string()]);
    a.extend(["--workers".to_owned(), workers.to_string()]);
    a.extend(extra.iter().map(|s| (*s).to_owned()));
    a
}

/// `GET path` over HTTP/1.0: `(status, body)`, or `None` if the server does
/// not answer (yet).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// Every file under `dir`, by relative path, with its content.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.insert(p.strip_prefix(root).unwrap().to_owned(), bytes);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Copies every file under `from` to the same relative path under `to`.
pub fn copy_tree(from: &Path, to: &Path) {
    for (rel, bytes) in snapshot(from) {
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(dest, bytes).unwrap();
    }
}

/// Checkpoints at every slide a run passes: `--checkpoint-interval 1ms`
/// in `args` (which must have the flag). With at most 4 checkpoints in
/// flight the sources wait for the sidecar, so how many checkpoints a run
/// leaves mid-way follows its input's event times, not this machine's speed.
pub fn checkpoint_every_slide(args: &mut [String]) {
    let at = args
        .iter()
        .position(|a| a == "--checkpoint-interval")
        .expect("--checkpoint-interval in the arguments")
        + 1;
    "1ms".clone_into(&mut args[at]);
}
