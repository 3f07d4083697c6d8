//! A real Prometheus server (Debian's `prometheus`, which `scripts/test-all`
//! installs) scrapes a tailing `weir run` and its `weir sidecar` on
//! loopback every second; values are read back through Prometheus's HTTP
//! API. Without the binary the test is skipped, unless
//! `WEIR_REQUIRE_PROMETHEUS` is set (as `scripts/test-all` does): then it fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{assert_success, free_ports, http_get, run_weir, weir};

/// Kills and reaps a child process when dropped (also when a test fails).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PROMETHEUS_BIN") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("prometheus"))
        .find(|p| p.is_file())
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The values of an instant query's result vector.
fn query(prometheus: SocketAddr, expr: &str) -> Vec<f64> {
    let Some((200, body)) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", percent_encode(expr)),
    ) else {
        return Vec::new();
    };
    let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    json["data"]["result"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .filter_map(|r| r["value"][1].as_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `check` every 250 ms until it holds or `timeout` passes.
fn wait_for(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    false
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn a_real_prometheus_scrapes_the_engine_and_the_sidecar() {
    let Some(prometheus_bin) = prometheus_binary() else {
        assert!(
            std::env::var_os("WEIR_REQUIRE_PROMETHEUS").is_none(),
            "WEIR_REQUIRE_PROMETHEUS is set but there is no prometheus binary \
             (scripts/test-all installs Debian's `prometheus` package)"
        );
        eprintln!("SKIPPED: no prometheus binary on PATH (scripts/test-all installs it)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (input, data, out) = (
        dir.path().join("in"),
        dir.path().join("data"),
        dir.path().join("out"),
    );
    std::fs::create_dir_all(&data).unwrap();
    let generated = run_weir(&[
        "gen",
        "zipf",
        "--events",
        "200000",
        "--partitions",
        "2",
        "--keys",
        "1000",
        "--rate",
        "10000",
        "--out",
        input.to_str().unwrap(),
    ]);
    assert_success(&generated, "weir gen");
    let ports = free_ports(3);
    let engine_addr: SocketAddr = format!("127.0.0.1:{}", ports[0]).parse().unwrap();
    let sidecar_addr: SocketAddr = format!("127.0.0.1:{}", ports[1]).parse().unwrap();
    let prometheus_addr: SocketAddr = format!("127.0.0.1:{}", ports[2]).parse().unwrap();
    let stderr_file = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();

    let _sidecar = Killed(
        weir()
            .args(["sidecar", "--data-dir", data.to_str().unwrap()])
            .args(["--metrics-addr", &sidecar_addr.to_string()])
            .stdout(Stdio::null())
            .stderr(stderr_file("sidecar.log"))
            .spawn()
            .expect("starting weir sidecar"),
    );
    let socket = data.join("sidecar.sock");
    assert!(
        wait_for(Duration::from_secs(30), || socket.exists()),
        "the sidecar did not listen: {}",
        log_of(&dir.path().join("sidecar.log"))
    );
    // A tailing run (no --until-end): it reads the input, then waits for more.
    let _engine = Killed(
        weir()
            .args(["run", "--input", input.to_str().unwrap()])
            .args(["--data-dir", data.to_str().unwrap()])
            .args(["--out", out.to_str().unwrap()])
            .args(["--window", "tumbling:1s", "--workers", "2"])
            .args(["--checkpoint-interval", "200ms"])
            .args(["--sidecar", &format!("unix:{}", socket.display())])
            .args(["--metrics-addr", &engine_addr.to_string()])
            .stdout(Stdio::null())
            .stderr(stderr_file("engine.log"))
            .spawn()
            .expect("starting weir run"),
    );
    assert!(
        wait_for(Duration::from_secs(60), || {
            http_get(engine_addr, "/metrics").is_some_and(|(status, body)| {
                status == 200 && body.contains("weir_events_in_total")
            })
        }),
        "the engine's metrics endpoint did not answer: {}",
        log_of(&dir.path().join("engine.log"))
    );

    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n\
             \x20 - job_name: weir\n    static_configs:\n      - targets: ['{engine_addr}']\n\
             \x20 - job_name: weir-sidecar\n    static_configs:\n      - targets: ['{sidecar_addr}']\n"
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new(&prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prometheus_addr}"))
            .stdout(Stdio::null())
            .stderr(stderr_file("prometheus.log"))
            .spawn()
            .expect("starting prometheus"),
    );
    let prometheus_log = dir.path().join("prometheus.log");
    assert!(
        wait_for(Duration::from_secs(60), || {
            http_get(prometheus_addr, "/-/ready").is_some_and(|(status, _)| status == 200)
        }),
        "prometheus did not become ready: {}",
        log_of(&prometheus_log)
    );

    let mut events = Vec::new();
    assert!(
        wait_for(Duration::from_secs(60), || {
            events = query(prometheus_addr, "weir_events_in_total");
            events.first().is_some_and(|&v| v > 0.0)
        }),
        "weir_events_in_total through Prometheus: {events:?}\nprometheus: {}\nengine: {}",
        log_of(&prometheus_log),
        log_of(&dir.path().join("engine.log"))
    );
    assert_eq!(events.len(), 1, "one engine target: {events:?}");
    // One combiner gauge per worker (tumbling windows arrange nothing: this
    // is where their state shows).
    assert_eq!(
        query(prometheus_addr, "count(weir_combiner_partials)"),
        vec![2.0]
    );
    let mut commits = Vec::new();
    assert!(
        wait_for(Duration::from_secs(60), || {
            commits = query(prometheus_addr, "weir_sidecar_commits_total");
            commits.first().is_some_and(|&v| v > 0.0)
        }),
        "weir_sidecar_commits_total through Prometheus: {commits:?}\nsidecar: {}",
        log_of(&dir.path().join("sidecar.log"))
    );
    // Both targets are healthy, and the histogram is queryable as one.
    assert_eq!(query(prometheus_addr, "sum(up)"), vec![2.0]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            query(prometheus_addr, "weir_commit_latency_seconds_count")
                .first()
                .is_some_and(|&v| v > 0.0)
        }),
        "no commit latency observations reached Prometheus"
    );
}
