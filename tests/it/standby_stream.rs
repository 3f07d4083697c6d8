//! A standby of a stream-fed run (`weir run --from nats://…`): the primary
//! ships its log *and* its source position to the cold tier; killed with
//! `kill -9`, it is taken over by a standby that reads the shipped log from
//! its checkpoint and then the stream from the shipped `POSITION` on, while
//! the producer went on publishing. The primary's committed rows plus the
//! standby's equal a failure-free run over every message (the standby's
//! source matches the shipped records after the position byte for byte,
//! as after any restart): none lost, none twice. The standby's log and
//! dead-letter file hold every message once: the dead letters the primary
//! committed are shipped beside its log.

use std::time::Duration;

use weir::checkpoint::tier::epoch::epoch_prefix;
use weir::checkpoint::tier::{newest_cold_record, open_cold_store};
use weir::ingest::stream::position::SourcePosition;

use crate::cold_tier::{assert_took_over, committed_rows, spawn_group};
use crate::kill_clock::{kill_group, sleep_while_running, KillClock};
use crate::nats::{addr, publish, server_with_stream};
use crate::sources::{
    check_exactly_once, server_binary, wait_until, windows_of_the_same_messages_from_files,
    PROGRESS_DEADLINE,
};
use crate::support::{free_ports, log_run_args, output_within, sorted_rows, weir};

#[test]
fn a_standby_continues_a_stream_from_the_shipped_position() {
    let Some(binary) = server_binary("nats-server", "NATS") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let _server = server_with_stream(&binary, port, &tmp.path().join("store"));
    let (first, all) = (20_000, 30_000);
    publish(port, 0, first, 1_000);
    let stream = format!("nats://{}/EV", addr(port));
    let cold = format!("file://{}", tmp.path().join("cold").display());
    let blob = open_cold_store(&cold).unwrap();

    let primary_out = tmp.path().join("primary-out");
    let mut primary = log_run_args(
        &tmp.path().join("primary-data"),
        &primary_out,
        1,
        &[
            "--from",
            &stream,
            "--cold-store",
            &cold,
            "--checkpoint-interval",
            "20ms",
        ],
    );
    primary.retain(|a| a != "--until-end");
    let mut child = spawn_group(&primary, &[], &tmp.path().join("primary.log"));
    // Killed once the cold tier holds a checkpoint that covers messages,
    // and a shipped `POSITION` that commits dead letters (shipped before
    // it, so the standby can have them only from the store).
    let shipped_dead_letters = |epoch: u64| {
        blob.get(&format!("{}/log/events.0.POSITION", epoch_prefix(epoch)))
            .ok()
            .flatten()
            .and_then(|bytes| SourcePosition::decode(&bytes).ok())
            .is_some_and(|p| p.dead_letter_len_bytes > 0)
    };
    wait_until(
        Duration::from_millis(5),
        || {
            newest_cold_record(blob.as_ref()).is_ok_and(|r| {
                r.is_some_and(|(epoch, r)| {
                    r.partitions.iter().any(|p| p.resume_offset > 0) && shipped_dead_letters(epoch)
                })
            })
        },
        || "no checkpoint covering messages and dead letters reached the cold tier".into(),
    );
    let mut clock = KillClock::new(23, Duration::from_millis(400));
    assert!(
        sleep_while_running(&mut child.0, clock.next_delay()),
        "the primary ended"
    );
    kill_group(child.0.id());
    let _ = child.0.wait();
    let (epoch, record) = newest_cold_record(blob.as_ref()).unwrap().unwrap();
    // The primary's committed dead letters reached the store (the standby
    // reads the stream only from the shipped position on).
    let keys = blob.list(&format!("{}/log", epoch_prefix(epoch))).unwrap();
    assert!(
        keys.iter().any(|k| std::path::Path::new(k)
            .extension()
            .is_some_and(|e| e == "dead")),
        "no dead letters shipped: {keys:?}"
    );
    // The producer goes on while the primary is gone.
    publish(port, first, all, 1_000);

    let standby_out = tmp.path().join("standby-out");
    let standby = log_run_args(
        &tmp.path().join("standby-data"),
        &standby_out,
        1,
        &[
            "--from",
            &stream,
            "--restore-from",
            &cold,
            "--checkpoint-interval",
            "20ms",
        ],
    );
    let done = output_within(weir().args(&standby), PROGRESS_DEADLINE);
    assert_took_over(&done, &record);
    let mut windows = committed_rows(&primary_out, &record, "windows");
    windows.extend(sorted_rows(&standby_out, "windows"));
    windows.sort();
    assert_eq!(
        windows,
        windows_of_the_same_messages_from_files(tmp.path(), &[(0..all).collect()])
    );
    // The standby's log and dead letters hold every message once: the
    // rows the primary committed came with the shipped log.
    let standby_data = tmp.path().join("standby-data");
    check_exactly_once(
        &standby_data,
        0,
        &(0..all).collect::<Vec<_>>(),
        &standby_data.join("dead-letter/events-source.csv"),
        |_, i| i + 1,
    );
}
