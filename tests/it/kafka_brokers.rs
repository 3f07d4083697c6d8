//! A topic whose partitions are led by different brokers. tansu, the real
//! Kafka-protocol broker the tests run, leads every partition itself, and
//! Apache Kafka cannot be installed from the registries this machine
//! reaches; so two brokers are presented by a proxy in front of one tansu:
//! two loopback ports, nodes 1 and 2, each forwarding requests to tansu
//! over its own connection. Its Metadata answers list both nodes and give
//! partition `p` to node `1 + (p + shift) % 2`; a Fetch or `ListOffsets`
//! that asks a node about a partition the other leads is answered
//! `NOT_LEADER_OR_FOLLOWER` (6) for its partitions, as a Kafka broker
//! does, and counted. Produce and every other request are forwarded as
//! they are. The records all come from tansu.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use weir::kafka::wire::{Reader, Writer};

use crate::kafka::{broker_with_topic, check_kafka, ingest, produce, PARTITIONS};
use crate::sources::{position, wait_until, Killed};
use crate::support::{assert_success, output_within};

const FETCH: i16 = 1;
const LIST_OFFSETS: i16 = 2;
const METADATA: i16 = 3;
const NOT_LEADER_OR_FOLLOWER: i16 = 6;

/// What the proxy saw, shared with its threads.
#[derive(Default)]
struct Seen {
    /// Leadership moves by one node when this changes.
    shift: AtomicU64,
    /// Requests about a partition asked of the node that does not lead it.
    misrouted: AtomicU64,
    /// Fetches each node answered itself.
    fetches: [AtomicU64; 2],
}

impl Seen {
    fn leader(&self, partition: i32) -> i32 {
        let shift = self.shift.load(Ordering::Relaxed);
        1 + i32::try_from((u64::try_from(partition).unwrap() + shift) % 2).unwrap()
    }
}

/// Two nodes in front of the broker at `upstream`; returns their ports.
fn two_brokers(upstream: u16, seen: &Arc<Seen>) -> [u16; 2] {
    let listeners = [0, 1].map(|_| TcpListener::bind("127.0.0.1:0").unwrap());
    let ports = [0, 1].map(|i| listeners[i].local_addr().unwrap().port());
    for (i, listener) in listeners.into_iter().enumerate() {
        let seen = Arc::clone(seen);
        let node = i32::try_from(i).unwrap() + 1;
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let seen = Arc::clone(&seen);
                std::thread::spawn(move || {
                    let Ok(upstream) = TcpStream::connect(("127.0.0.1", upstream)) else {
                        return;
                    };
                    let _ = serve(node, ports, (client, upstream), &seen);
                });
            }
        });
    }
    ports
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let mut frame = vec![0; usize::try_from(i32::from_be_bytes(len)).unwrap()];
    stream.read_exact(&mut frame)?;
    Ok(frame)
}

fn write_frame(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    let len = i32::try_from(body.len()).unwrap().to_be_bytes();
    stream.write_all(&[&len[..], body].concat())
}

/// One client connection of node `node`, until either side closes.
fn serve(
    node: i32,
    ports: [u16; 2],
    (mut client, mut upstream): (TcpStream, TcpStream),
    seen: &Seen,
) -> std::io::Result<()> {
    loop {
        let request = read_frame(&mut client)?;
        let mut r = Reader::new(&request);
        let (api, version, correlation) = (r.i16().unwrap(), r.i16().unwrap(), r.i32().unwrap());
        r.nullable_string().unwrap();
        let asked = match (api, version) {
            (FETCH, 4) => Some(fetch_partitions(&mut r)),
            (LIST_OFFSETS, 1) => Some(list_offsets_partitions(&mut r)),
            _ => None,
        };
        if let Some(asked) = asked.filter(|a| a.iter().any(|&(_, p)| seen.leader(p) != node)) {
            seen.misrouted.fetch_add(1, Ordering::Relaxed);
            write_frame(&mut client, &not_leader(api, correlation, &asked))?;
            continue;
        }
        if api == FETCH {
            seen.fetches[usize::try_from(node - 1).unwrap()].fetch_add(1, Ordering::Relaxed);
        }
        write_frame(&mut upstream, &request)?;
        let response = read_frame(&mut upstream)?;
        let response = if (api, version) == (METADATA, 1) {
            two_node_metadata(&response, ports, seen)
        } else {
            response
        };
        write_frame(&mut client, &response)?;
    }
}

/// `(topic, partition)` asked by a Fetch v4 request, after its header.
fn fetch_partitions(r: &mut Reader<'_>) -> Vec<(String, i32)> {
    for _ in 0..4 {
        r.i32().unwrap(); // replica, max wait, min bytes, max bytes
    }
    r.i8().unwrap(); // isolation level
    asked(r, |r| {
        r.i64().unwrap(); // offset
        r.i32().unwrap(); // max bytes
    })
}

/// `(topic, partition)` asked by a `ListOffsets` v1 request, after its header.
fn list_offsets_partitions(r: &mut Reader<'_>) -> Vec<(String, i32)> {
    r.i32().unwrap(); // replica
    asked(r, |r| {
        r.i64().unwrap(); // timestamp
    })
}

/// The topics' partitions of a request, each followed by what `rest` reads.
fn asked(r: &mut Reader<'_>, rest: impl Fn(&mut Reader<'_>)) -> Vec<(String, i32)> {
    let mut asked = Vec::new();
    for _ in 0..r.array_len().unwrap() {
        let topic = r.string().unwrap();
        for _ in 0..r.array_len().unwrap() {
            asked.push((topic.clone(), r.i32().unwrap()));
            rest(r);
        }
    }
    asked
}

/// A Fetch v4 or `ListOffsets` v1 response: every partition asked, not led here.
fn not_leader(api: i16, correlation: i32, asked: &[(String, i32)]) -> Vec<u8> {
    let mut w = Writer::default();
    w.i32(correlation);
    if api == FETCH {
        w.i32(0); // throttle
    }
    w.array_len(asked.len());
    for (topic, partition) in asked {
        w.string(topic);
        w.array_len(1);
        w.i32(*partition);
        w.i16(NOT_LEADER_OR_FOLLOWER);
        if api == FETCH {
            w.i64(-1); // high watermark
            w.i64(-1); // last stable offset
            w.array_len(0); // aborted transactions
            w.bytes(&[]);
        } else {
            w.i64(-1); // timestamp
            w.i64(-1); // offset
        }
    }
    w.buf
}

/// tansu's Metadata v1 response, with nodes 1 and 2 as the brokers and
/// each partition led by the node [`Seen::leader`] names.
fn two_node_metadata(response: &[u8], ports: [u16; 2], seen: &Seen) -> Vec<u8> {
    let mut r = Reader::new(response);
    let mut w = Writer::default();
    w.i32(r.i32().unwrap()); // correlation
    for _ in 0..r.array_len().unwrap() {
        r.i32().unwrap();
        r.string().unwrap();
        r.i32().unwrap();
        r.nullable_string().unwrap();
    }
    w.array_len(2);
    for (node, port) in [(1, ports[0]), (2, ports[1])] {
        w.i32(node);
        w.string("127.0.0.1");
        w.i32(i32::from(port));
        w.null_string();
    }
    r.i32().unwrap();
    w.i32(1); // controller
    let topics = r.array_len().unwrap();
    w.array_len(topics);
    for _ in 0..topics {
        w.i16(r.i16().unwrap());
        w.string(&r.string().unwrap());
        w.i8(r.i8().unwrap());
        let partitions = r.array_len().unwrap();
        w.array_len(partitions);
        for _ in 0..partitions {
            w.i16(r.i16().unwrap());
            let partition = r.i32().unwrap();
            r.i32().unwrap();
            for _ in 0..2 {
                for _ in 0..r.array_len().unwrap() {
                    r.i32().unwrap();
                }
            }
            let leader = seen.leader(partition);
            w.i32(partition);
            w.i32(leader);
            for _ in 0..2 {
                w.array_len(1); // replicas, in-sync replicas
                w.i32(leader);
            }
        }
    }
    w.buf
}

fn committed(data: &Path) -> u64 {
    (0..u32::try_from(PARTITIONS).unwrap())
        .map(|p| position(data, p).map_or(0, |p| p.messages))
        .sum()
}

/// Each partition fetched from its leader, both nodes serving, none asked
/// of the wrong one; then the leaders move under a tailing ingest, which
/// reads the metadata again and loses nothing.
#[test]
fn partitions_led_by_two_brokers_are_fetched_from_their_leaders() {
    let Some((tmp, port, _broker)) = broker_with_topic() else {
        return;
    };
    let seen = Arc::new(Seen::default());
    let nodes = two_brokers(port, &seen);
    produce(port, 0, 3_000);
    let data = tmp.path().join("data");
    let caught_up = output_within(
        &mut ingest(nodes[0], &data, &["--until-caught-up"]),
        Duration::from_secs(120),
    );
    assert_success(&caught_up, "ingest from two brokers");
    check_kafka(&data, 3_000);
    assert_eq!(
        seen.misrouted.load(Ordering::Relaxed),
        0,
        "a partition asked of a node that does not lead it"
    );
    for (i, fetches) in seen.fetches.iter().enumerate() {
        assert!(
            fetches.load(Ordering::Relaxed) > 0,
            "node {} served no fetch",
            i + 1
        );
    }

    let log = tmp.path().join("tail.log");
    let tail = Killed(
        ingest(nodes[1], &data, &["--reconnect-limit", "60s"])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    produce(port, 3_000, 4_500);
    wait_until(
        Duration::from_millis(20),
        || committed(&data) >= 4_500,
        || format!("no progress to 4500: {}", log_text()),
    );
    seen.shift.store(1, Ordering::Relaxed);
    produce(port, 4_500, 6_000);
    wait_until(
        Duration::from_millis(20),
        || committed(&data) >= 6_000,
        || {
            format!(
                "no progress to 6000 after the leaders moved: {}",
                log_text()
            )
        },
    );
    drop(tail);
    check_kafka(&data, 6_000);
    assert!(
        seen.misrouted.load(Ordering::Relaxed) > 0,
        "the move was never seen"
    );
    assert!(log_text().contains("reconnecting"), "{}", log_text());
}
