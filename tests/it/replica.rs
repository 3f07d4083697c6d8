//! A replica in a second store (`--replica s3://…`, moto's S3 server on
//! loopback) beside a `file://` cold tier: a primary killed with `kill -9`
//! is taken over by a standby that has nothing but the replica — its
//! checkpoint and the log shipped with it — and the primary's committed
//! rows plus the standby's equal a failure-free run's; and a replica
//! server that stops answering mid-run (SIGSTOP) holds nothing up: local
//! commits go on, and the copy catches up once it answers again (within
//! the requests' 30 s timeout; beyond it the copier's retries do).

use std::time::Duration;

use weir::checkpoint::cut::FINAL_CUT;
use weir::checkpoint::store::read_commits;
use weir::checkpoint::tier::{newest_cold_record, Blob};

use crate::cold_tier::{
    assert_failover_rows, assert_took_over, holds_a_checkpoint, run_args, s3_blob, s3_server,
    spawn_group, tailing, weir_env,
};
use crate::kill_clock::{kill_group, sleep_while_running, timed, KillClock};
use crate::sources::{wait_until, Killed};
use crate::support::{assert_success, gen_input};

#[test]
fn a_standby_takes_over_from_an_s3_replica_with_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_server, env)) = s3_server(tmp.path()) else {
        return;
    };
    let replica_url = "s3://weir-cold/region-2";
    let replica = s3_blob(replica_url, &env);
    let input = tmp.path().join("input");
    gen_input(&input, 1_000_000);
    let reference = tmp.path().join("ref-out");
    let (done, took) = timed(|| {
        weir_env(
            &run_args(&input, &tmp.path().join("ref-data"), &reference, None),
            &[],
        )
    });
    assert_success(&done, "failure-free run");

    // The primary: a local cold tier and the replica; killed at a random
    // moment once the replica holds a checkpoint.
    let cold_url = format!("file://{}", tmp.path().join("cold").display());
    let primary_data = tmp.path().join("primary-data");
    let primary_out = tmp.path().join("primary-out");
    let mut primary = tailing(&run_args(
        &input,
        &primary_data,
        &primary_out,
        Some(&cold_url),
    ));
    primary.extend(["--replica".into(), replica_url.into()]);
    let mut child = spawn_group(&primary, &env, &tmp.path().join("primary.log"));
    wait_until(
        Duration::from_millis(5),
        || holds_a_checkpoint(replica.as_ref()),
        || "no checkpoint reached the replica".into(),
    );
    let mut clock = KillClock::new(17, took);
    assert!(
        sleep_while_running(&mut child.0, clock.next_delay()),
        "the primary ended"
    );
    kill_group(child.0.id());
    let _ = child.0.wait();

    // `weir inspect` on the dead primary's data dir names both stores.
    let inspected = weir_env(
        &[
            "inspect".into(),
            "--data-dir".into(),
            primary_data.display().to_string(),
        ],
        &env,
    );
    assert_success(&inspected, "inspect");
    let report = String::from_utf8_lossy(&inspected.stdout);
    assert!(
        report.contains(&format!("replica {replica_url}")),
        "{report}"
    );
    assert!(
        report.contains(&format!("cold tier {cold_url}")),
        "{report}"
    );
    assert!(report.contains("newest usable checkpoint"), "{report}");

    // The standby: another data dir, no input, only the replica.
    let (_, record) = newest_cold_record(replica.as_ref()).unwrap().unwrap();
    let standby_out = tmp.path().join("standby-out");
    let standby: Vec<String> = [
        "run",
        "--data-dir",
        &tmp.path().join("standby-data").display().to_string(),
        "--out",
        &standby_out.display().to_string(),
        "--window",
        "sliding:20s/5s",
        "--lateness",
        "2s",
        "--until-end",
        "--checkpoint-interval",
        "20ms",
        "--restore-from",
        replica_url,
    ]
    .map(str::to_owned)
    .to_vec();
    let done = weir_env(&standby, &env);
    assert_took_over(&done, &record);
    assert_failover_rows((&primary_out, &record), &standby_out, &reference);
}

/// Once a run's sidecar claimed its epoch in `replica` (before the run can
/// commit anything), stops `server` (SIGSTOP): its connections hang, as in
/// a partition. Returns how to signal it again.
fn stop_once_claimed<'a>(replica: &dyn Blob, server: &'a Killed) -> impl Fn(&str) + 'a {
    wait_until(
        Duration::from_millis(1),
        || replica.list("epochs").is_ok_and(|e| !e.is_empty()),
        || "the sidecar claimed no epoch in the replica".into(),
    );
    let signal = move |name: &str| {
        let status = std::process::Command::new("kill")
            .args([name, &server.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    signal
}

#[test]
fn a_replica_that_stops_answering_catches_up_and_holds_nothing_up() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((server, env)) = s3_server(tmp.path()) else {
        return;
    };
    let replica_url = "s3://weir-cold/outage";
    let replica = s3_blob(replica_url, &env);
    let input = tmp.path().join("input");
    gen_input(&input, 1_000_000);
    let data = tmp.path().join("data");
    let mut args = run_args(&input, &data, &tmp.path().join("out"), None);
    args.pop();
    args.extend(["--replica".into(), replica_url.into()]);
    let mut child = spawn_group(&args, &env, &tmp.path().join("run.log"));
    let signal = stop_once_claimed(replica.as_ref(), &server);
    // Local commits go on (the run's last one is final).
    wait_until(
        Duration::from_millis(2),
        || {
            read_commits(&data.join("checkpoints")).is_ok_and(|c| {
                c.last()
                    .is_some_and(|r| r.checkpoint_id >= 2 || r.cut_time == FINAL_CUT)
            })
        },
        || "no local commit while the replica did not answer".into(),
    );
    signal("-CONT");
    let mut status = None;
    wait_until(
        Duration::from_millis(5),
        || {
            status = child.0.try_wait().unwrap();
            status.is_some()
        },
        || "the run did not finish".into(),
    );
    let log = std::fs::read_to_string(tmp.path().join("run.log")).unwrap();
    assert!(status.unwrap().success(), "{log}");
    // Caught up: the run's newest checkpoint is the replica's.
    let local = read_commits(&data.join("checkpoints")).unwrap();
    let (_, newest) = newest_cold_record(replica.as_ref()).unwrap().unwrap();
    assert_eq!(Some(&newest), local.last(), "{log}");
}

/// The replica's server stopped for 30 s (issue 16's fault case) under a
/// tailing run: the run goes on and commits locally, and once the server
/// answers again the copier (its hung requests timed out, its own retries
/// going) brings the replica up to the newest local checkpoint while the
/// run still runs. (A run that ends during such an outage leaves its
/// final copy to the next run: the sidecar waits 30 s for it at exit.)
#[test]
fn a_replica_down_for_30_s_catches_up_while_the_run_goes_on() {
    const OUTAGE: Duration = Duration::from_secs(30);
    let tmp = tempfile::tempdir().unwrap();
    let Some((server, env)) = s3_server(tmp.path()) else {
        return;
    };
    let replica_url = "s3://weir-cold/long-outage";
    let replica = s3_blob(replica_url, &env);
    let input = tmp.path().join("input");
    gen_input(&input, 1_000_000);
    let data = tmp.path().join("data");
    let mut args = tailing(&run_args(&input, &data, &tmp.path().join("out"), None));
    args.pop();
    args.extend(["--replica".into(), replica_url.into()]);
    // Checkpoints as the run reads the input: none is cut while the run's
    // own ingest goes on (decision 72).
    args.push("--ingest-first".into());
    let log = tmp.path().join("run.log");
    let mut child = spawn_group(&args, &env, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let signal = stop_once_claimed(replica.as_ref(), &server);
    let stopped = std::time::Instant::now();
    wait_until(
        Duration::from_millis(2),
        || read_commits(&data.join("checkpoints")).is_ok_and(|c| c.len() >= 2),
        || "no local commit while the replica did not answer".into(),
    );
    while stopped.elapsed() < OUTAGE {
        assert!(
            child.0.try_wait().unwrap().is_none(),
            "the run ended during the outage: {}",
            read_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let newest_local = read_commits(&data.join("checkpoints"))
        .unwrap()
        .last()
        .unwrap()
        .checkpoint_id;
    signal("-CONT");
    wait_until(
        Duration::from_millis(5),
        || {
            newest_cold_record(replica.as_ref())
                .ok()
                .flatten()
                .is_some_and(|(_, r)| r.checkpoint_id >= newest_local)
        },
        || {
            format!(
                "the replica did not catch up to checkpoint {newest_local}: {}",
                read_log()
            )
        },
    );
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the run ended: {}",
        read_log()
    );
    kill_group(child.0.id());
}
