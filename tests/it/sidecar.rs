//! The checkpoint sidecar, in process: commits exactly when every worker's
//! cut has arrived, in id order, with the union of the workers' partitions
//! and outputs; compaction; fencing (store lock, epochs), token and loopback
//! checks, socket mode. The frames are tested in [`transport`].

mod compaction;
mod transport;

use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weir::checkpoint::client::{ClientError, SidecarAddress, SidecarClient};
use weir::checkpoint::format::{OutputLength, PartitionResume, PersistedUpdate};
use weir::checkpoint::sidecar::{
    run_sidecar, socket_path, token_path, Listen, SidecarConfig, SidecarError,
    CHECKPOINTS_DIR_NAME, HELLO_TIMEOUT,
};
use weir::checkpoint::store::{load_checkpoint, read_commits, StoreError};
use weir::checkpoint::transport::{
    encode_frame, read_frame, FromSidecar, Hello, ToSidecar, WorkerCut, MAX_PAYLOAD_BYTES,
};

use crate::support::free_ports;

const WAIT: Duration = Duration::from_secs(20);

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn start_sidecar(data_dir: &Path, listen: Listen) -> JoinHandle<Result<(), SidecarError>> {
    let config = SidecarConfig {
        data_dir: data_dir.to_owned(),
        listen,
        exit_when_idle: true,
        lock_wait_ms: 0,
        compaction_budget_bytes: weir::checkpoint::store::DEFAULT_COMPACTION_BUDGET_BYTES,
        cold_store: None,
        replica: None,
        keep_local: weir::checkpoint::store::RETAINED_CHECKPOINTS,
    };
    std::thread::spawn(move || run_sidecar(config))
}

fn hello(process: u32, workers_total: u32, epoch: u64) -> Hello {
    Hello {
        token: Vec::new(),
        process,
        workers_total,
        query_fingerprint: 0xfeed,
        epoch,
        restored_from: None,
    }
}

fn connect(addr: &SidecarAddress, hello: &Hello) -> SidecarClient {
    SidecarClient::connect_retrying(addr, hello, WAIT).expect("connecting to the sidecar")
}

fn unix(data_dir: &Path) -> SidecarAddress {
    SidecarAddress::Unix(socket_path(data_dir))
}

fn store_dir(data_dir: &Path) -> PathBuf {
    data_dir.join(CHECKPOINTS_DIR_NAME)
}

/// Worker `worker`'s cut of checkpoint `id` over `[prev, cut)`: one update
/// per worker and checkpoint, partition `worker` (and `worker + 4`), output
/// `out-<worker>.csv`.
fn cut(worker: u32, id: u64, prev: u64, cut_time: u64) -> WorkerCut {
    WorkerCut {
        worker,
        checkpoint_id: id,
        prev_cut_time: prev,
        cut_time,
        retention_ms: 1_000_000,
        updates: vec![PersistedUpdate {
            key_group: worker as u16,
            data: format!("w{worker}-c{id}").into_bytes(),
            time: prev,
            diff: 1,
        }],
        partitions: vec![
            PartitionResume {
                partition: worker,
                resume_offset: id * 10,
                max_ts_before: Some(cut_time),
            },
            PartitionResume {
                partition: worker + 4,
                resume_offset: id * 20,
                max_ts_before: None,
            },
        ],
        outputs: vec![OutputLength {
            file_name: format!("out-{worker}.csv"),
            length_bytes: id * 100,
        }],
    }
}

fn send(client: &SidecarClient, cut: WorkerCut) {
    client.sender().try_send(cut).expect("queue has room");
}

#[test]
fn sidecar_commits_when_all_four_workers_cut_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start_sidecar(dir.path(), Listen::Unix);
    let addr = unix(dir.path());
    // Two processes with two workers each: process 0 has workers 0, 1.
    let p0 = connect(&addr, &hello(0, 4, 1));
    let p1 = connect(&addr, &hello(1, 4, 1));
    assert_eq!(p0.last_committed_at_hello(), None);

    let mode = std::fs::metadata(socket_path(dir.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    // Three of the four cuts of checkpoint 1: nothing is committed.
    send(&p0, cut(0, 1, 0, 100));
    send(&p0, cut(1, 1, 0, 100));
    send(&p1, cut(2, 1, 0, 100));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p0.last_committed(), None);
    assert_eq!(read_commits(&store_dir(dir.path())).unwrap(), vec![]);

    send(&p1, cut(3, 1, 0, 100));
    wait_until("commit 1 acked to both", || {
        p0.last_committed() == Some((1, 100)) && p1.last_committed() == Some((1, 100))
    });
    let commits = read_commits(&store_dir(dir.path())).unwrap();
    assert_eq!(commits.len(), 1);
    let c1 = &commits[0];
    assert_eq!(
        (
            c1.checkpoint_id,
            c1.cut_time,
            c1.workers_total,
            c1.query_fingerprint
        ),
        (1, 100, 4, 0xfeed)
    );
    let parts: Vec<u32> = c1.partitions.iter().map(|p| p.partition).collect();
    assert_eq!(
        parts,
        (0..8).collect::<Vec<_>>(),
        "union of the workers' partitions"
    );
    assert_eq!(
        c1.partitions[5],
        PartitionResume {
            partition: 5,
            resume_offset: 20,
            max_ts_before: None
        }
    );
    let outs: Vec<(&str, u64)> = c1
        .outputs
        .iter()
        .map(|o| (o.file_name.as_str(), o.length_bytes))
        .collect();
    assert_eq!(
        outs,
        vec![
            ("out-0.csv", 100),
            ("out-1.csv", 100),
            ("out-2.csv", 100),
            ("out-3.csv", 100)
        ]
    );
    assert_eq!(c1.files.len(), 4, "one delta file per worker");

    // Checkpoint 3 complete before 2: 3 waits for 2; then both, in order.
    for w in 0..4 {
        let client = if w < 2 { &p0 } else { &p1 };
        send(client, cut(w, 3, 200, 300));
    }
    for w in [0, 1, 2] {
        let client = if w < 2 { &p0 } else { &p1 };
        send(client, cut(w, 2, 100, 200));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        p0.last_committed(),
        Some((1, 100)),
        "3 must not commit before 2"
    );
    assert_eq!(read_commits(&store_dir(dir.path())).unwrap().len(), 1);
    send(&p1, cut(3, 2, 100, 200));
    wait_until("commit 3 acked", || {
        p0.last_committed() == Some((3, 300)) && p1.last_committed() == Some((3, 300))
    });
    let commits = read_commits(&store_dir(dir.path())).unwrap();
    let ids: Vec<(u64, u64)> = commits
        .iter()
        .map(|c| (c.checkpoint_id, c.cut_time))
        .collect();
    assert_eq!(ids, vec![(1, 100), (2, 200), (3, 300)]);
    let last = commits.last().unwrap();
    assert_eq!(last.outputs[2].length_bytes, 300);
    assert_eq!(
        last.files.len(),
        12,
        "previous files plus this checkpoint's deltas"
    );

    // The state of checkpoint 3 is every update of 1, 2 and 3.
    let state = load_checkpoint(&store_dir(dir.path()), last, |_| true, 0).unwrap();
    let mut got: Vec<String> = state
        .iter()
        .map(|u| String::from_utf8(u.data.clone()).unwrap())
        .collect();
    got.sort();
    let mut want: Vec<String> = (1..=3)
        .flat_map(|c| (0..4).map(move |w| format!("w{w}-c{c}")))
        .collect();
    want.sort();
    assert_eq!(got, want);

    // A replayed cut of a committed checkpoint is ignored, not an error.
    send(&p0, cut(0, 2, 100, 200));
    std::thread::sleep(Duration::from_millis(100));
    assert!(p0.error().is_none(), "{:?}", p0.error());
    assert!(p0.sender().fill().queued <= p0.sender().fill().capacity);

    p0.close().unwrap();
    p1.close().unwrap();
    sidecar
        .join()
        .unwrap()
        .expect("the sidecar exits cleanly once idle");
    assert!(!socket_path(dir.path()).exists(), "socket removed at exit");
    assert_eq!(read_commits(&store_dir(dir.path())).unwrap().len(), 3);
}

#[test]
fn sidecar_restarted_welcomes_with_last_commit_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start_sidecar(dir.path(), Listen::Unix);
    let client = connect(&unix(dir.path()), &hello(0, 1, 1));
    send(&client, cut(0, 1, 0, 50));
    wait_until("commit 1", || client.last_committed() == Some((1, 50)));
    client.close().unwrap();
    sidecar.join().unwrap().unwrap();

    let sidecar = start_sidecar(dir.path(), Listen::Unix);
    let client = connect(&unix(dir.path()), &hello(0, 1, 2));
    assert_eq!(client.last_committed_at_hello(), Some((1, 50)));
    // A gap between the last commit and the next checkpoint is refused.
    send(&client, cut(0, 2, 60, 70));
    wait_until("refusal", || client.error().is_some());
    let err = client.error().unwrap();
    assert!(
        matches!(&err, ClientError::Refused(r) if r.contains("ended at 50")),
        "{err}"
    );
    drop(client);
    sidecar.join().unwrap().unwrap();
}

#[test]
fn sidecar_fences_epochs_and_disagreeing_processes() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start_sidecar(dir.path(), Listen::Unix);
    let addr = unix(dir.path());
    let old = connect(&addr, &hello(0, 2, 5));
    // Same epoch, different worker count or fingerprint: refused.
    let err = SidecarClient::connect(&addr, hello(1, 3, 5)).unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused(r) if r.contains("disagrees")),
        "{err}"
    );
    let err = SidecarClient::connect(
        &addr,
        Hello {
            query_fingerprint: 1,
            ..hello(1, 2, 5)
        },
    )
    .unwrap_err();
    assert!(matches!(err, ClientError::Refused(_)), "{err}");
    // The same process twice: refused.
    let err = SidecarClient::connect(&addr, hello(0, 2, 5)).unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused(r) if r.contains("already connected")),
        "{err}"
    );
    // An older epoch: refused.
    let err = SidecarClient::connect(&addr, hello(1, 2, 4)).unwrap_err();
    assert!(
        matches!(&err, ClientError::Refused(r) if r.contains("older")),
        "{err}"
    );
    // A cut beyond the pending bound: refused (the other process stays).
    let other = connect(&addr, &hello(1, 2, 5));
    send(&old, cut(0, 17, 0, 10));
    wait_until("refusal", || old.error().is_some());
    let err = old.error().unwrap();
    assert!(
        matches!(&err, ClientError::Refused(r) if r.contains("ahead")),
        "{err}"
    );

    let old = other;
    send(&old, cut(1, 1, 0, 10));
    // A newer epoch supersedes the old connection and its incomplete cuts.
    let new = connect(&addr, &hello(0, 1, 6));
    wait_until("eviction", || old.error().is_some());
    let err = old.error().unwrap();
    assert!(
        matches!(&err, ClientError::Refused(r) if r.contains("superseded")),
        "{err}"
    );
    send(&new, cut(0, 1, 0, 10));
    wait_until("commit by the new epoch", || {
        new.last_committed() == Some((1, 10))
    });
    let commits = read_commits(&store_dir(dir.path())).unwrap();
    assert_eq!(commits[0].workers_total, 1);
    assert_eq!(commits[0].files.len(), 1, "the old epoch's cut was dropped");
    new.close().unwrap();
    drop(old);
    sidecar.join().unwrap().unwrap();
}

#[test]
fn sidecar_over_tcp_refuses_a_wrong_token() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let sidecar = start_sidecar(dir.path(), Listen::Tcp(addr));
    let right = SidecarAddress::parse(&format!("tcp:{addr}"), dir.path()).unwrap();
    assert_eq!(
        right,
        SidecarAddress::Tcp {
            addr,
            token_file: token_path(dir.path())
        }
    );
    wait_until("token file", || token_path(dir.path()).exists());
    let mode = std::fs::metadata(token_path(dir.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let wrong_file = dir.path().join("wrong.token");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&wrong_file)
            .unwrap();
        f.write_all(b"0123456789abcdef0123456789abcdef").unwrap();
    }
    let wrong = SidecarAddress::Tcp {
        addr,
        token_file: wrong_file,
    };
    let Err(err) = SidecarClient::connect_retrying(&wrong, &hello(0, 1, 1), WAIT) else {
        panic!("a wrong token was accepted")
    };
    assert!(
        matches!(&err, ClientError::Refused(r) if r.contains("token")),
        "{err}"
    );

    let client = connect(&right, &hello(0, 1, 1));
    send(&client, cut(0, 1, 0, 10));
    wait_until("commit over tcp", || {
        client.last_committed() == Some((1, 10))
    });
    client.close().unwrap();
    sidecar.join().unwrap().unwrap();
}

#[test]
fn sidecar_refuses_non_loopback_addresses() {
    let dir = tempfile::tempdir().unwrap();
    for listen in ["0.0.0.0:7000", "192.0.2.1:7000", "[::]:7000"] {
        let config = SidecarConfig {
            data_dir: dir.path().to_owned(),
            listen: Listen::Tcp(listen.parse().unwrap()),
            exit_when_idle: true,
            lock_wait_ms: 0,
            compaction_budget_bytes: weir::checkpoint::store::DEFAULT_COMPACTION_BUDGET_BYTES,
            cold_store: None,
            replica: None,
            keep_local: weir::checkpoint::store::RETAINED_CHECKPOINTS,
        };
        let err = run_sidecar(config).unwrap_err();
        assert!(
            matches!(err, SidecarError::NotLoopback(_)),
            "{listen}: {err}"
        );
        assert!(SidecarAddress::parse(&format!("tcp:{listen}"), dir.path()).is_err());
    }
    assert!(SidecarAddress::parse("tcp:[::1]:7000", dir.path()).is_ok());
    assert!(SidecarAddress::parse("udp:127.0.0.1:1", dir.path()).is_err());
    assert!(SidecarAddress::parse("unix:", dir.path()).is_err());
}

#[test]
fn a_connection_reset_during_the_hello_is_retried() {
    // A sidecar killed a moment ago can still accept on its socket and then
    // reset the connection; the engine's connect must try again and reach
    // the new sidecar, not fail.
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_owned();
    let sidecar = std::thread::spawn(move || {
        let dying = std::os::unix::net::UnixListener::bind(socket_path(&data_dir)).unwrap();
        let (conn, _) = dying.accept().unwrap();
        drop(conn);
        drop(dying);
        start_sidecar(&data_dir, Listen::Unix).join().unwrap()
    });
    let client = connect(&unix(dir.path()), &hello(0, 1, 1));
    send(&client, cut(0, 1, 0, 10));
    wait_until("commit", || client.last_committed() == Some((1, 10)));
    client.close().unwrap();
    sidecar.join().unwrap().unwrap();
}

#[test]
fn sidecar_second_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = start_sidecar(dir.path(), Listen::Unix);
    let client = connect(&unix(dir.path()), &hello(0, 1, 1));
    let config = SidecarConfig {
        data_dir: dir.path().to_owned(),
        listen: Listen::Unix,
        exit_when_idle: true,
        // Waits for the lock, then refuses: the first one keeps it.
        lock_wait_ms: 200,
        compaction_budget_bytes: weir::checkpoint::store::DEFAULT_COMPACTION_BUDGET_BYTES,
        cold_store: None,
        replica: None,
        keep_local: weir::checkpoint::store::RETAINED_CHECKPOINTS,
    };
    let err = run_sidecar(config).unwrap_err();
    assert!(
        matches!(err, SidecarError::Store(StoreError::Locked { .. })),
        "{err}"
    );
    // The first one still works.
    send(&client, cut(0, 1, 0, 10));
    wait_until("commit", || client.last_committed() == Some((1, 10)));
    client.close().unwrap();
    first.join().unwrap().unwrap();
}

#[test]
fn sidecar_replaces_a_stale_socket_but_not_other_files() {
    let dir = tempfile::tempdir().unwrap();
    // A socket file nobody answers on (its listener is gone).
    drop(std::os::unix::net::UnixListener::bind(socket_path(dir.path())).unwrap());
    let sidecar = start_sidecar(dir.path(), Listen::Unix);
    let client = connect(&unix(dir.path()), &hello(0, 1, 1));
    client.close().unwrap();
    sidecar.join().unwrap().unwrap();

    std::fs::write(socket_path(dir.path()), b"not a socket").unwrap();
    let config = SidecarConfig {
        data_dir: dir.path().to_owned(),
        listen: Listen::Unix,
        exit_when_idle: true,
        lock_wait_ms: 0,
        compaction_budget_bytes: weir::checkpoint::store::DEFAULT_COMPACTION_BUDGET_BYTES,
        cold_store: None,
        replica: None,
        keep_local: weir::checkpoint::store::RETAINED_CHECKPOINTS,
    };
    assert!(matches!(run_sidecar(config), Err(SidecarError::Io { .. })));
    assert_eq!(
        std::fs::read(socket_path(dir.path())).unwrap(),
        b"not a socket"
    );
}

#[test]
fn sidecar_refuses_garbage_and_a_silent_peer() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start_sidecar(dir.path(), Listen::Unix);
    let client = connect(&unix(dir.path()), &hello(0, 1, 1));
    // Garbage instead of a hello: refused with a reason, connection closed.
    let mut raw = std::os::unix::net::UnixStream::connect(socket_path(dir.path())).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let reply = read_frame::<FromSidecar>(&mut raw, 1 << 20).unwrap();
    assert!(
        matches!(&reply, Some(FromSidecar::Refused { reason }) if reason.contains("magic")),
        "{reply:?}"
    );
    // A header announcing a huge hello: refused before reading it.
    let mut raw = std::os::unix::net::UnixStream::connect(socket_path(dir.path())).unwrap();
    let mut frame = encode_frame(&ToSidecar::Goodbye).unwrap();
    frame[3] = 0x01;
    frame[4..8].copy_from_slice(&(1u32 << 30).to_le_bytes());
    raw.write_all(&frame).unwrap();
    let reply = read_frame::<FromSidecar>(&mut raw, 1 << 20).unwrap();
    assert!(
        matches!(&reply, Some(FromSidecar::Refused { reason }) if reason.contains("exceeds")),
        "{reply:?}"
    );
    // A peer that says nothing is refused after the hello timeout.
    let mut raw = std::os::unix::net::UnixStream::connect(socket_path(dir.path())).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    let started = Instant::now();
    let reply = read_frame::<FromSidecar>(&mut raw, 1 << 20).unwrap();
    assert!(
        matches!(&reply, Some(FromSidecar::Refused { reason }) if reason.contains("no hello")),
        "{reply:?}"
    );
    assert!(started.elapsed() + Duration::from_millis(100) >= HELLO_TIMEOUT);
    // The real client is unaffected.
    send(&client, cut(0, 1, 0, 10));
    wait_until("commit", || client.last_committed() == Some((1, 10)));
    client.close().unwrap();
    sidecar.join().unwrap().unwrap();
}

#[test]
fn sidecar_commits_a_share_larger_than_one_frame() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = start_sidecar(dir.path(), Listen::Unix);
    let client = connect(&unix(dir.path()), &hello(0, 1, 1));
    // About 80 MB of updates: more than one frame may carry, so the client
    // sends them as several frames and the sidecar joins them.
    let mut big = cut(0, 1, 0, 50);
    big.updates = (0..20_000u32)
        .map(|i| PersistedUpdate {
            key_group: (i % 256) as u16,
            data: format!("{i:08}").repeat(500).into_bytes(),
            time: u64::from(i % 50),
            diff: 1,
        })
        .collect();
    let total: usize = big.updates.iter().map(|u| u.data.len()).sum();
    assert!(total > MAX_PAYLOAD_BYTES, "{total} bytes fit in one frame");
    let mut expected = big.updates.clone();
    send(&client, big);
    wait_until("commit 1", || client.last_committed() == Some((1, 50)));
    assert!(client.error().is_none(), "{:?}", client.error());
    let commits = read_commits(&store_dir(dir.path())).unwrap();
    let state = load_checkpoint(&store_dir(dir.path()), &commits[0], |_| true, 0).unwrap();
    weir::checkpoint::format::consolidate(&mut expected);
    assert_eq!(state, expected);
    client.close().unwrap();
    sidecar.join().unwrap().unwrap();
}
