//! Two processes of two workers each, over loopback TCP, produce exactly the
//! rows of a single-process run.

use std::path::Path;

use crate::support::{assert_success, free_ports, run_weir, sorted_rows, weir};

fn gen_input(dir: &Path) {
    let out = run_weir(&[
        "gen",
        "zipf",
        "--events",
        "60000",
        "--partitions",
        "5",
        "--keys",
        "500",
        "--rate",
        "5000",
        "--late-fraction",
        "0.01",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert_success(&out, "weir gen");
}

#[test]
fn two_processes_match_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_input(&input);
    let common = [
        "--input",
        input.to_str().unwrap(),
        "--window",
        "sliding:20s/5s",
        "--lateness",
        "2s",
        "--until-end",
    ];

    let single_out = tmp.path().join("single-out");
    let single_data = tmp.path().join("single-data");
    let mut args = vec![
        "run",
        "--workers",
        "1",
        "--data-dir",
        single_data.to_str().unwrap(),
        "--out",
        single_out.to_str().unwrap(),
    ];
    args.extend(common);
    assert_success(&run_weir(&args), "single-process run");

    let ports = free_ports(2);
    let hostfile = tmp.path().join("hosts");
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    std::fs::write(&hostfile, hosts.join("\n")).unwrap();
    let cluster_out = tmp.path().join("cluster-out");
    let cluster_data = tmp.path().join("cluster-data");
    let children: Vec<_> = (0..2)
        .map(|process| {
            weir()
                .args([
                    "run",
                    "--workers",
                    "2",
                    "--processes",
                    "2",
                    "--process",
                    &process.to_string(),
                ])
                .args(["--hostfile", hostfile.to_str().unwrap()])
                .args([
                    "--data-dir",
                    cluster_data.to_str().unwrap(),
                    "--out",
                    cluster_out.to_str().unwrap(),
                ])
                .args(common)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert_success(&output, "cluster process");
    }

    let single = sorted_rows(&single_out, "windows");
    assert!(
        single.len() > 1_000,
        "too few rows to compare: {}",
        single.len()
    );
    assert_eq!(sorted_rows(&cluster_out, "windows"), single);
    let late = sorted_rows(&single_out, "late");
    assert!(!late.is_empty(), "the input should contain late events");
    assert_eq!(sorted_rows(&cluster_out, "late"), late);
}

/// A process whose peers never connect (one never started) exits, after
/// its `--connect-timeout`, with an error naming the hostfile's addresses,
/// instead of waiting without a bound.
#[test]
fn a_process_whose_peers_never_connect_gives_up() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("input");
    gen_input(&input);
    let ports = free_ports(2);
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let hostfile = tmp.path().join("hosts");
    std::fs::write(&hostfile, hosts.join("\n")).unwrap();
    let mut child = weir()
        .args([
            "run",
            "--workers",
            "1",
            "--processes",
            "2",
            "--process",
            "0",
        ])
        .args(["--connect-timeout", "2s", "--until-end", "--input"])
        .arg(&input)
        .arg("--hostfile")
        .arg(&hostfile)
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .arg("--out")
        .arg(tmp.path().join("out"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A fail-safe far above the timeout, not a speed assumption.
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(120),
            "still waiting for its peer"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("the cluster did not connect within 2 s"),
        "{stderr}"
    );
    assert!(stderr.contains(&hosts[1]), "{stderr}");
}
