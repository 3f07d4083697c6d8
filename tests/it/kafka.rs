//! A real Kafka-protocol broker (`tansu`, a Rust crate, which
//! `scripts/ensure-tansu` builds once into a cache outside the clone) on
//! loopback: `weir ingest --from kafka://…` of a 3-partition topic killed
//! with `kill -9` again and again while a producer keeps producing, then a
//! broker restart during a tail. Each log partition must hold its topic
//! partition's messages exactly once, in order, the malformed ones in its
//! dead-letter file exactly once, and the window output must equal a run
//! on files of the same messages. Without the binary the tests are
//! skipped, unless `WEIR_REQUIRE_TANSU` is set (as `scripts/test-all` does).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use weir::event::{decode_record, LogRecord};
use weir::kafka::compression::Codec;
use weir::kafka::KafkaClient;
use weir::log::{partition_dir, PartitionReader};

use crate::sources::{
    check_exactly_once, is_malformed, kill_while_producing, message, position, server_binary,
    wait_until, windows_of_a_log_run, windows_of_the_same_messages_from_files, Killed,
    PROGRESS_DEADLINE,
};
use crate::support::{assert_success, free_ports, log_run_args, output_within, run_weir, weir};

const TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const PARTITIONS: u64 = 3;
const KILLS: u64 = 12;
const PART: u64 = 2_400;

/// Starts a broker on `port` storing under `store`, and waits until it
/// answers metadata requests.
fn start_broker(binary: &Path, port: u16, store: &Path) -> Killed {
    std::fs::create_dir_all(store).unwrap();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(binary)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        // SQLite, relative to the broker's directory (an absolute path in
        // the URL is read as relative by tansu 0.6).
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(store)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(store.with_extension("log")).unwrap())
        .spawn()
        .expect("starting tansu");
    let broker = Killed(child);
    wait_until(
        Duration::from_millis(50),
        || {
            KafkaClient::connect(&addr(port), TIMEOUT)
                .is_ok_and(|mut c| c.partitions("probe").is_err_and(|e| !e.is_transient()))
        },
        || {
            format!(
                "tansu did not come up; see {}",
                store.with_extension("log").display()
            )
        },
    );
    broker
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Produces messages `from..to`, message `i` to partition `i % 3`.
pub(crate) fn produce(port: u16, from: u64, to: u64) {
    let mut client = KafkaClient::connect(&addr(port), TIMEOUT).unwrap();
    for p in 0..PARTITIONS {
        let values: Vec<Vec<u8>> = (from..to)
            .filter(|i| i % PARTITIONS == p)
            .map(message)
            .collect();
        for chunk in values.chunks(200) {
            let chunk: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            client
                .produce("ev", i32::try_from(p).unwrap(), &chunk)
                .unwrap();
        }
    }
}

pub(crate) fn ingest(port: u16, data: &Path, extra: &[&str]) -> Command {
    let mut c = weir();
    c.args(["ingest", "--from", &format!("kafka://{}/ev", addr(port))])
        .arg("--data-dir")
        .arg(data)
        .args(extra);
    c
}

fn dead_letters(data: &Path, partition: u64) -> PathBuf {
    data.join(format!("dead-letter/events-source-{partition}.csv"))
}

/// Each partition holds its messages among `0..n` once, in order (offset =
/// index within the partition, sequence = offset + 1).
pub(crate) fn check_kafka(data: &Path, n: u64) -> Vec<Vec<u64>> {
    let mut partitions = Vec::new();
    for p in 0..PARTITIONS {
        let messages: Vec<u64> = (0..n).filter(|i| i % PARTITIONS == p).collect();
        check_exactly_once(
            data,
            p as u32,
            &messages,
            &dead_letters(data, p),
            |at, _| at as u64 + 1,
        );
        partitions.push(messages);
    }
    partitions
}

fn create_topic(port: u16) {
    KafkaClient::connect(&addr(port), TIMEOUT)
        .unwrap()
        .create_topic("ev", PARTITIONS as i32)
        .unwrap();
}

/// A started broker (under a new temporary directory) with the topic
/// created, or `None` when the tests are skipped (no `tansu`).
pub(crate) fn broker_with_topic() -> Option<(tempfile::TempDir, u16, Killed)> {
    let binary = server_binary("tansu", "TANSU")?;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let broker = start_broker(&binary, port, &tmp.path().join("store"));
    create_topic(port);
    Some((tmp, port, broker))
}

#[test]
fn each_record_once_across_kill_9_while_producing() {
    let Some((tmp, port, _broker)) = broker_with_topic() else {
        return;
    };
    let data = tmp.path().join("data");
    kill_while_producing(
        tmp.path(),
        &data,
        PARTITIONS as u32,
        KILLS,
        |extra| ingest(port, &data, extra),
        move |part| produce(port, part * PART, (part + 1) * PART),
    );
    let n = KILLS * PART;
    let out = output_within(
        ingest(port, &data, &["--until-caught-up"]).stdin(Stdio::null()),
        PROGRESS_DEADLINE,
    );
    assert_success(&out, "ingest --until-caught-up");
    let partitions = check_kafka(&data, n);
    let windows = windows_of_a_log_run(&data, &tmp.path().join("out-stream"), &[]);
    assert_eq!(
        windows,
        windows_of_the_same_messages_from_files(tmp.path(), &partitions)
    );
}

#[test]
fn a_broker_restart_during_a_tail_loses_nothing() {
    let Some(binary) = server_binary("tansu", "TANSU") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let port = free_ports(1)[0];
    let store = tmp.path().join("store");
    let mut broker = start_broker(&binary, port, &store);
    create_topic(port);
    produce(port, 0, 3_000);
    let data = tmp.path().join("data");
    let mut tail = Killed(
        ingest(port, &data, &["--reconnect-limit", "120s"])
            .stderr(std::fs::File::create(tmp.path().join("ingest.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let wait_for = |messages: u64| {
        let committed = || -> u64 {
            (0..PARTITIONS as u32)
                .map(|p| position(&data, p).map_or(0, |p| p.messages))
                .sum()
        };
        wait_until(
            Duration::from_millis(20),
            || committed() >= messages,
            || {
                format!(
                    "no progress to {messages}: {}",
                    std::fs::read_to_string(tmp.path().join("ingest.log")).unwrap_or_default()
                )
            },
        );
    };
    wait_for(3_000);
    drop(broker);
    broker = start_broker(&binary, port, &store);
    produce(port, 3_000, 6_000);
    wait_for(6_000);
    assert!(
        tail.0.try_wait().unwrap().is_none(),
        "the tailing ingest exited"
    );
    drop(tail);
    drop(broker);
    check_kafka(&data, 6_000);
    let log = std::fs::read_to_string(tmp.path().join("ingest.log")).unwrap();
    assert!(log.contains("reconnecting"), "{log}");
}

#[test]
fn unreachable_brokers_and_missing_topics_are_named() {
    let Some(binary) = server_binary("tansu", "TANSU") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let data = tmp.path().join("data");
    let out = output_within(&mut ingest(ports[0], &data, &[]), PROGRESS_DEADLINE);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("kafka://127.0.0.1:{}", ports[0]))
            && stderr.contains("cannot connect"),
        "{stderr}"
    );
    let _broker = start_broker(&binary, ports[1], &tmp.path().join("store"));
    let out = output_within(&mut ingest(ports[1], &data, &[]), PROGRESS_DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("topic \"ev\" does not exist"), "{stderr}");
    assert!(
        run_weir(&["ingest", "--from", "kafka://h:1/bad topic"])
            .status
            .code()
            == Some(2)
    );
}

/// A record batch larger than a fetch's first size (4 MiB) is read whole:
/// a broker that cuts a fetch at the size limit must not leave the source
/// fetching the same partial batch for ever.
#[test]
fn a_batch_larger_than_the_fetch_size_is_read() {
    let Some((tmp, port, _broker)) = broker_with_topic() else {
        return;
    };
    // ~5 MB of records in one batch, into partition 0.
    let n = 320_000;
    let values: Vec<Vec<u8>> = (0..n).map(message).collect();
    assert!(values.iter().map(Vec::len).sum::<usize>() > 4 << 20);
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    // Requests as long as the test's deadline: the broker's speed is not
    // what is tested.
    let mut producer = KafkaClient::connect(&addr(port), TIMEOUT).unwrap();
    producer.set_request_timeout(PROGRESS_DEADLINE).unwrap();
    producer.produce("ev", 0, &refs).unwrap();
    let data = tmp.path().join("data");
    let patience = format!("{}s", PROGRESS_DEADLINE.as_secs());
    let out = output_within(
        &mut ingest(
            port,
            &data,
            &[
                "--until-caught-up",
                "--request-timeout",
                &patience,
                "--reconnect-limit",
                &patience,
            ],
        ),
        PROGRESS_DEADLINE * 3,
    );
    assert_success(&out, "ingest of a batch larger than the fetch size");
    let all: Vec<u64> = (0..n).collect();
    check_exactly_once(&data, 0, &all, &dead_letters(&data, 0), |at, _| {
        at as u64 + 1
    });
}

/// The idle markers of `partition` of topic `events`: their watermarks.
fn idle_markers(data: &Path, partition: u32) -> Vec<u64> {
    let dir = partition_dir(&data.join("log"), "events", partition);
    let Ok(mut reader) = PartitionReader::open(&dir, 0) else {
        return Vec::new();
    };
    let mut markers = Vec::new();
    while let Some((_, payload)) = reader.next().unwrap() {
        if let LogRecord::Idle { watermark_ms } = decode_record(payload).unwrap() {
            markers.push(watermark_ms);
        }
    }
    markers
}

#[test]
fn quiet_partitions_get_idle_markers_at_the_time_of_the_others() {
    let Some((tmp, port, _broker)) = broker_with_topic() else {
        return;
    };
    // Only partition 0 gets messages.
    let n = 600;
    let values: Vec<Vec<u8>> = (0..n).map(message).collect();
    let mut client = KafkaClient::connect(&addr(port), TIMEOUT).unwrap();
    for chunk in values.chunks(200) {
        let chunk: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        client.produce("ev", 0, &chunk).unwrap();
    }
    let largest_ts = (0..n)
        .filter(|&i| !is_malformed(i))
        .map(|i| {
            let text = String::from_utf8(message(i)).unwrap();
            text.split(',').next().unwrap().parse::<u64>().unwrap()
        })
        .max()
        .unwrap();
    let data = tmp.path().join("data");
    let tail = Killed(
        ingest(port, &data, &["--idle-timeout", "50ms"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Partitions 1 and 2 follow partition 0's time once it is quiet too.
    wait_until(
        Duration::from_millis(20),
        || (1..PARTITIONS as u32).all(|p| idle_markers(&data, p).last() == Some(&largest_ts)),
        || {
            format!(
                "markers: {:?}",
                (1..3).map(|p| idle_markers(&data, p)).collect::<Vec<_>>()
            )
        },
    );
    drop(tail);
    for p in 1..PARTITIONS as u32 {
        let markers = idle_markers(&data, p);
        assert!(markers.windows(2).all(|w| w[0] < w[1]), "{markers:?}");
    }
    // Partition 0 holds its messages once, and no marker: it was never quiet
    // while behind the others.
    let messages: Vec<u64> = (0..n).collect();
    check_exactly_once(&data, 0, &messages, &dead_letters(&data, 0), |at, _| {
        at as u64 + 1
    });
    assert_eq!(idle_markers(&data, 0), Vec::<u64>::new());
}

#[test]
fn gzip_lz4_and_zstd_batches_are_ingested() {
    let Some((tmp, port, _broker)) = broker_with_topic() else {
        return;
    };
    // Messages 0..500 to partition 0 as gzip then LZ4, 500..1000 to
    // partition 1 as zstd then plain, 1000..1200 to partition 2 plain. The
    // broker stores them inflated and compresses them again with its own
    // (C) gzip, LZ4 and zstd encoders to serve a fetch: other encoders'
    // output than weir's. (tansu 0.6 cannot serve snappy batches, its
    // encoder has no snappy: snappy, raw and in the Java client's xerial
    // framing, is tested in `src/kafka/compression.rs`.)
    let mut client = KafkaClient::connect(&addr(port), TIMEOUT).unwrap();
    let batches = [
        (0, 0..250, Codec::Gzip),
        (0, 250..500, Codec::Lz4),
        (1, 500..750, Codec::Zstd),
        (1, 750..1_000, Codec::None),
        (2, 1_000..1_200, Codec::None),
    ];
    for (partition, range, codec) in batches.clone() {
        let values: Vec<Vec<u8>> = range.map(message).collect();
        let values: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        client
            .produce_compressed("ev", partition, &values, codec)
            .unwrap_or_else(|e| panic!("{codec:?}: {e}"));
    }
    let data = tmp.path().join("data");
    let out = output_within(
        ingest(port, &data, &["--until-caught-up"]).stdin(Stdio::null()),
        PROGRESS_DEADLINE,
    );
    assert_success(&out, "ingest of compressed batches");
    for p in 0..PARTITIONS {
        let messages: Vec<u64> = batches
            .iter()
            .filter(|(partition, ..)| u64::from(partition.unsigned_abs()) == p)
            .flat_map(|(_, range, _)| range.clone())
            .collect();
        check_exactly_once(
            &data,
            p as u32,
            &messages,
            &dead_letters(&data, p),
            |at, _| at as u64 + 1,
        );
    }
}

#[test]
fn weir_run_from_a_topic_equals_the_run_from_files() {
    let Some((tmp, port, _broker)) = broker_with_topic() else {
        return;
    };
    let n = 6_000;
    produce(port, 0, n);
    let data = tmp.path().join("data");
    let url = format!("kafka://{}/ev", addr(port));
    let windows = windows_of_a_log_run(&data, &tmp.path().join("out-stream"), &["--from", &url]);
    let partitions = check_kafka(&data, n);
    assert_eq!(
        windows,
        windows_of_the_same_messages_from_files(tmp.path(), &partitions)
    );
}

#[test]
fn a_tailing_run_from_a_topic_with_quiet_partitions_closes_windows_with_idle_markers() {
    let Some((tmp, port, _broker)) = broker_with_topic() else {
        return;
    };
    // Only partition 0 gets messages: without markers, partitions 1 and 2
    // would hold every window open for ever.
    let values: Vec<Vec<u8>> = (0..600).map(message).collect();
    let mut client = KafkaClient::connect(&addr(port), TIMEOUT).unwrap();
    let chunk: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    client.produce("ev", 0, &chunk).unwrap();
    let (data, out) = (tmp.path().join("data"), tmp.path().join("out"));
    let url = format!("kafka://{}/ev", addr(port));
    let args: Vec<String> = log_run_args(&data, &out, 1, &["--from", &url, "--no-checkpoint"])
        .into_iter()
        .filter(|a| a != "--until-end")
        .chain(["--idle-timeout".to_owned(), "50ms".to_owned()])
        .collect();
    let _run = Killed(
        weir()
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let rows = || {
        std::fs::read_dir(&out).map_or(0, |d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("windows-"))
                .map(|e| {
                    std::fs::read_to_string(e.path())
                        .unwrap_or_default()
                        .lines()
                        .count()
                })
                .sum::<usize>()
        })
    };
    // Windows close: rows beyond the headers appear.
    wait_until(
        Duration::from_millis(20),
        || rows() > 2,
        || format!("no window closed; markers: {:?}", idle_markers(&data, 1)),
    );
}
