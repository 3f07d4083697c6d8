//! The cold tier and the replica under a two-process cluster sharing one
//! data dir: its processes killed with `kill -9` at random moments, each
//! kill followed by the loss of the local checkpoints, and the rerun
//! brings the newest checkpoint back from the cold tier (one process
//! fetches, the other finds it in place) and still gives the failure-free
//! rows; the replica holds the newest checkpoint at the end. A standby
//! cluster takes over from the store of a killed primary cluster: process 0
//! takes over, process 1 waits for it, and the primary's committed rows
//! plus the standby's equal a failure-free run's.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use weir::checkpoint::store::read_commits;
use weir::checkpoint::tier::epoch::usable_records;
use weir::checkpoint::tier::{newest_cold_record, open_cold_store};

use crate::cold_tier::{
    assert_failover_rows, assert_took_over, failover_setup, holds_a_checkpoint, run_args,
    standby_args, tailing, wait_while_running,
};
use crate::kill_clock::{kill_group, sleep_while_running, KillClock};
use crate::support::{free_ports, sorted_rows, weir};

/// Kill rounds, each followed by the loss of the local checkpoints.
const KILLS: u64 = 3;

/// The two processes of a cluster run of `args`, in one process group
/// (process 0's, with its sidecar), their stderr in `logs`.
fn spawn_cluster(args: &[String], hostfile: &Path, logs: &[PathBuf; 2]) -> Vec<Child> {
    let mut group = 0;
    (0..2)
        .map(|process| {
            let child = weir()
                .args(args)
                .args(["--workers", "1", "--processes", "2", "--process"])
                .arg(process.to_string())
                .arg("--hostfile")
                .arg(hostfile)
                .process_group(group)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&logs[process]).unwrap())
                .spawn()
                .unwrap();
            if group == 0 {
                group = child.id() as i32;
            }
            child
        })
        .collect()
}

fn hostfile(dir: &Path, name: &str) -> PathBuf {
    let hosts: Vec<String> = free_ports(2)
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, hosts.join("\n")).unwrap();
    path
}

fn read_logs(logs: &[PathBuf; 2]) -> String {
    logs.iter()
        .map(|l| std::fs::read_to_string(l).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n--- process 1 ---\n")
}

#[test]
fn a_cluster_restores_lost_checkpoints_from_the_cold_tier() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, reference, took, cold_url) = failover_setup(tmp.path());
    let expected = sorted_rows(&reference, "windows");

    let replica_url = format!("file://{}", tmp.path().join("replica").display());
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    let checkpoints = data.join("checkpoints");
    let mut args = run_args(&input, &data, &out, Some(&cold_url));
    args.extend(["--replica".into(), replica_url.clone()]);
    let tailing = tailing(&args);
    let cold = open_cold_store(&cold_url).unwrap();
    let logs = [tmp.path().join("p0.log"), tmp.path().join("p1.log")];
    let mut clock = KillClock::new(17, took);
    for round in 0..KILLS {
        let hosts = hostfile(tmp.path(), &format!("hosts-{round}"));
        let mut children = spawn_cluster(&tailing, &hosts, &logs);
        // Under way: the first round once the cold tier holds a
        // checkpoint, the others once one process brought it back.
        let under_way = || {
            if round == 0 {
                holds_a_checkpoint(cold.as_ref())
            } else {
                read_logs(&logs).contains("brought back from the cold tier")
            }
        };
        wait_while_running(&mut children, under_way, || {
            format!("round {round}: {}", read_logs(&logs))
        });
        assert!(
            sleep_while_running(&mut children[0], clock.next_delay()),
            "round {round}: process 0 ended: {}",
            read_logs(&logs)
        );
        kill_group(children[0].id());
        for mut child in children {
            let status = child.wait().unwrap();
            assert_eq!(
                status.signal(),
                Some(9),
                "round {round}: {}",
                read_logs(&logs)
            );
        }
        std::fs::remove_dir_all(&checkpoints).unwrap();
    }

    let hosts = hostfile(tmp.path(), "hosts-final");
    let children = spawn_cluster(&args, &hosts, &logs);
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "the run after the kills: {}",
            read_logs(&logs)
        );
    }
    let stderr = read_logs(&logs);
    assert_eq!(
        stderr
            .matches("WARNING: no local checkpoints: checkpoint")
            .count(),
        1,
        "one process fetches, the other finds the files in place: {stderr}"
    );
    assert_eq!(
        sorted_rows(&out, "windows"),
        expected,
        "after losing checkpoints"
    );

    // Both stores hold the newest local checkpoint (the sidecar waits for
    // its copies before it exits).
    let newest = read_commits(&checkpoints).unwrap().pop().unwrap();
    for url in [&cold_url, &replica_url] {
        let usable = usable_records(open_cold_store(url).unwrap().as_ref()).unwrap();
        assert_eq!(
            usable.first().map(|u| u.1),
            Some(newest.checkpoint_id),
            "{url}"
        );
    }
}

#[test]
fn a_standby_cluster_takes_over_from_the_cold_tier_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (input, reference, took, url) = failover_setup(tmp.path());
    let cold = open_cold_store(&url).unwrap();

    // The primary cluster, killed at a random moment once the cold tier
    // holds a checkpoint.
    let primary_out = tmp.path().join("primary-out");
    let primary = tailing(&run_args(
        &input,
        &tmp.path().join("primary-data"),
        &primary_out,
        Some(&url),
    ));
    let logs = [tmp.path().join("p0.log"), tmp.path().join("p1.log")];
    let mut children = spawn_cluster(&primary, &hostfile(tmp.path(), "hosts-primary"), &logs);
    wait_while_running(
        &mut children,
        || holds_a_checkpoint(cold.as_ref()),
        || read_logs(&logs),
    );
    let mut clock = KillClock::new(23, took);
    assert!(
        sleep_while_running(&mut children[0], clock.next_delay()),
        "the primary ended: {}",
        read_logs(&logs)
    );
    kill_group(children[0].id());
    for mut child in children {
        child.wait().unwrap();
    }
    let (_, record) = newest_cold_record(cold.as_ref()).unwrap().unwrap();

    // The standby cluster: another data dir, no input but the shipped log.
    let standby_out = tmp.path().join("standby-out");
    let standby = standby_args(&tmp.path().join("standby-data"), &standby_out, &url);
    let standby_logs = [tmp.path().join("s0.log"), tmp.path().join("s1.log")];
    let children = spawn_cluster(
        &standby,
        &hostfile(tmp.path(), "hosts-standby"),
        &standby_logs,
    );
    let outputs: Vec<std::process::Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let stderr = |i: usize| std::fs::read(&standby_logs[i]).unwrap();
    assert_took_over(
        &std::process::Output {
            stderr: stderr(0),
            ..outputs[0].clone()
        },
        &record,
    );
    assert!(outputs[1].status.success(), "{}", read_logs(&standby_logs));
    let waited = format!(
        "standby: process 0 took over checkpoint {} ",
        record.checkpoint_id
    );
    assert!(
        String::from_utf8_lossy(&stderr(1)).contains(&waited),
        "{}",
        read_logs(&standby_logs)
    );
    assert_failover_rows((&primary_out, &record), &standby_out, &reference);
}
