//! A small, blocking Kafka-protocol client: metadata, list offsets, fetch
//! and produce of uncompressed v2 record batches ([`batch`]), and topic
//! creation (tools and tests), over one connection to one broker
//! ([`KafkaClient`]); a topic's partitions over the brokers that lead them
//! ([`cluster::TopicClient`]). The message versions are the oldest that
//! Kafka 4 still serves (Metadata v1, `ListOffsets` v1, Fetch v4, Produce
//! v3, `CreateTopics` v2: none of them "flexible"), so no tagged fields.
//! A leaf: nothing of the engine is imported.

pub mod batch;
pub mod cluster;
pub mod compression;
pub mod wire;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use wire::{Reader, WireError, Writer};

/// The largest response accepted.
const MAX_RESPONSE_BYTES: usize = 64 << 20;
/// Bytes a fetch asks for, in all and per partition.
const FETCH_MAX_BYTES: i32 = 16 << 20;
/// Bytes a fetch asks for per partition at first.
pub const FETCH_PARTITION_MAX_BYTES: i32 = 4 << 20;
/// The most a fetch asks for per partition: a record batch larger than
/// this is refused (a response is at most [`MAX_RESPONSE_BYTES`]).
pub const FETCH_PARTITION_LIMIT_BYTES: i32 = 32 << 20;

const PRODUCE: i16 = 0;
const FETCH: i16 = 1;
const LIST_OFFSETS: i16 = 2;
const METADATA: i16 = 3;
const CREATE_TOPICS: i16 = 19;

/// A Kafka failure, naming the broker.
#[derive(Debug, thiserror::Error)]
#[error("kafka://{server}: {kind}")]
pub struct KafkaError {
    /// `host:port` as given.
    pub server: String,
    /// What went wrong.
    pub kind: KafkaErrorKind,
}

/// What went wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum KafkaErrorKind {
    /// The broker could not be reached.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// The connection failed (or timed out) after it was made.
    #[error("connection lost: {0}")]
    Io(io::Error),
    /// A response that does not decode.
    #[error("malformed response to {api}: {error}")]
    Wire {
        /// The request.
        api: &'static str,
        /// Where and what.
        error: WireError,
    },
    /// The topic does not exist.
    #[error("topic {0:?} does not exist")]
    TopicNotFound(String),
    /// The broker answered with an error code.
    #[error("{api} of {what}: broker error code {code}")]
    Broker {
        /// The request.
        api: &'static str,
        /// The topic or partition.
        what: String,
        /// Kafka's error code.
        code: i16,
    },
    /// A record batch larger than a fetch may ask for.
    #[error("partition {partition} of {topic} at offset {offset}: a record batch of {batch_bytes} bytes, more than the {FETCH_PARTITION_LIMIT_BYTES} bytes a fetch may ask for")]
    BatchTooLarge {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Where the batch starts.
        offset: i64,
        /// Its size.
        batch_bytes: usize,
    },
    /// A partition whose leader is not among the brokers the metadata lists.
    #[error("partition {partition} of {topic} is led by node {leader}, which the metadata does not list")]
    UnknownLeader {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// Its leader's node id (-1: none elected).
        leader: i32,
    },
}

impl KafkaError {
    /// Whether reconnecting may help.
    pub fn is_transient(&self) -> bool {
        match &self.kind {
            // A leader not yet elected or not yet listed: metadata again.
            KafkaErrorKind::Connect(_)
            | KafkaErrorKind::Io(_)
            | KafkaErrorKind::UnknownLeader { .. } => true,
            // LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT,
            // NETWORK_EXCEPTION, COORDINATOR_LOAD_IN_PROGRESS-like retriables.
            KafkaErrorKind::Broker { code, .. } => matches!(code, 5 | 6 | 7 | 13 | 14 | 15),
            _ => false,
        }
    }
}

/// What a fetch returned for one partition.
#[derive(Debug)]
pub struct PartitionFetch {
    /// The partition.
    pub partition: i32,
    /// Kafka's error code (0: none).
    pub error_code: i16,
    /// The offset after the last one written.
    pub high_watermark: i64,
    /// Record batches (the last may be partial).
    pub records: Vec<u8>,
}

/// A broker as the metadata lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    /// Its node id.
    pub node_id: i32,
    /// `host:port` it advertises.
    pub address: String,
}

/// A topic's metadata: the brokers, and each partition with its leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicMetadata {
    /// The brokers listed.
    pub brokers: Vec<Broker>,
    /// `(partition, leader node id)`, by partition.
    pub leaders: Vec<(i32, i32)>,
}

/// One connection to a broker.
pub struct KafkaClient {
    server: String,
    socket: TcpStream,
    correlation: i32,
}

impl KafkaClient {
    /// Connects to `server` (`host:port`); `timeout` bounds the connection
    /// and each request, until [`KafkaClient::set_request_timeout`].
    pub fn connect(server: &str, timeout: Duration) -> Result<Self, KafkaError> {
        let error = |e| KafkaError {
            server: server.to_owned(),
            kind: KafkaErrorKind::Connect(e),
        };
        let addrs: Vec<SocketAddr> = server.to_socket_addrs().map_err(error)?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(socket) => {
                    socket.set_nodelay(true).map_err(error)?;
                    socket.set_read_timeout(Some(timeout)).map_err(error)?;
                    socket.set_write_timeout(Some(timeout)).map_err(error)?;
                    return Ok(Self {
                        server: server.to_owned(),
                        socket,
                        correlation: 0,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(error(last))
    }

    /// Sets how long each request may take from now on (the connection's
    /// read and write timeouts).
    pub fn set_request_timeout(&mut self, timeout: Duration) -> Result<(), KafkaError> {
        let result = self
            .socket
            .set_read_timeout(Some(timeout))
            .and_then(|()| self.socket.set_write_timeout(Some(timeout)));
        result.map_err(|e| self.error(KafkaErrorKind::Io(e)))
    }

    /// An error of this connection.
    pub fn error(&self, kind: KafkaErrorKind) -> KafkaError {
        KafkaError {
            server: self.server.clone(),
            kind,
        }
    }

    fn wire(&self, api: &'static str) -> impl Fn(WireError) -> KafkaError + '_ {
        move |error| self.error(KafkaErrorKind::Wire { api, error })
    }

    /// Sends a request and returns the response body (after the
    /// correlation id, checked).
    fn call(&mut self, api_key: i16, version: i16, body: &[u8]) -> Result<Vec<u8>, KafkaError> {
        self.correlation = self.correlation.wrapping_add(1);
        let mut head = Writer::default();
        head.i16(api_key);
        head.i16(version);
        head.i32(self.correlation);
        head.string("weir");
        let size = i32::try_from(head.buf.len() + body.len()).expect("requests are small");
        let io = |e| KafkaError {
            server: self.server.clone(),
            kind: KafkaErrorKind::Io(e),
        };
        let mut frame = Vec::with_capacity(4 + size as usize);
        frame.extend_from_slice(&size.to_be_bytes());
        frame.extend_from_slice(&head.buf);
        frame.extend_from_slice(body);
        self.socket.write_all(&frame).map_err(io)?;
        let mut len = [0u8; 4];
        self.socket.read_exact(&mut len).map_err(io)?;
        let len = i32::from_be_bytes(len);
        let Ok(len) = usize::try_from(len) else {
            return Err(io(io::Error::other(format!("a response of length {len}"))));
        };
        if !(4..=MAX_RESPONSE_BYTES).contains(&len) {
            return Err(io(io::Error::other(format!(
                "a response of {len} bytes (at most {MAX_RESPONSE_BYTES})"
            ))));
        }
        let mut response = vec![0; len];
        self.socket.read_exact(&mut response).map_err(io)?;
        let correlation = i32::from_be_bytes(response[..4].try_into().expect("4 bytes"));
        if correlation != self.correlation {
            return Err(io(io::Error::other(format!(
                "a response to request {correlation}, expected {}",
                self.correlation
            ))));
        }
        response.drain(..4);
        Ok(response)
    }

    /// The partitions of `topic`, in order.
    pub fn partitions(&mut self, topic: &str) -> Result<Vec<i32>, KafkaError> {
        Ok(self
            .metadata(topic)?
            .leaders
            .iter()
            .map(|&(p, _)| p)
            .collect())
    }

    /// The brokers, and the partitions of `topic` with their leaders.
    pub fn metadata(&mut self, topic: &str) -> Result<TopicMetadata, KafkaError> {
        let mut body = Writer::default();
        body.array_len(1);
        body.string(topic);
        let response = self.call(METADATA, 1, &body.buf)?;
        let wire = self.wire("Metadata");
        let mut r = Reader::new(&response);
        let mut brokers = Vec::new();
        for _ in 0..r.array_len().map_err(&wire)? {
            let node_id = r.i32().map_err(&wire)?;
            let host = r.string().map_err(&wire)?;
            let port = r.i32().map_err(&wire)?;
            r.nullable_string().map_err(&wire)?;
            // An IPv6 host is bracketed, as `ToSocketAddrs` reads it.
            let address = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            brokers.push(Broker { node_id, address });
        }
        let _controller = r.i32().map_err(&wire)?;
        let mut leaders = Vec::new();
        for _ in 0..r.array_len().map_err(&wire)? {
            let code = r.i16().map_err(&wire)?;
            let name = r.string().map_err(&wire)?;
            let _internal = r.i8().map_err(&wire)?;
            // Some brokers answer with every topic: only `topic` counts.
            let ours = name == topic;
            if ours && code == 3 {
                return Err(self.error(KafkaErrorKind::TopicNotFound(topic.to_owned())));
            }
            if ours && code != 0 {
                return Err(self.error(KafkaErrorKind::Broker {
                    api: "Metadata",
                    what: name,
                    code,
                }));
            }
            for _ in 0..r.array_len().map_err(&wire)? {
                let _code = r.i16().map_err(&wire)?;
                let partition = r.i32().map_err(&wire)?;
                let leader = r.i32().map_err(&wire)?;
                for _ in 0..2 {
                    for _ in 0..r.array_len().map_err(&wire)? {
                        r.i32().map_err(&wire)?;
                    }
                }
                if ours {
                    leaders.push((partition, leader));
                }
            }
        }
        if leaders.is_empty() {
            return Err(self.error(KafkaErrorKind::TopicNotFound(topic.to_owned())));
        }
        leaders.sort_unstable();
        Ok(TopicMetadata { brokers, leaders })
    }

    /// The offset of each of `partitions` at `timestamp` (-1: the end,
    /// -2: the first still stored).
    pub fn offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<Vec<i64>, KafkaError> {
        let mut body = Writer::default();
        body.i32(-1);
        body.array_len(1);
        body.string(topic);
        body.array_len(partitions.len());
        for &p in partitions {
            body.i32(p);
            body.i64(timestamp);
        }
        let response = self.call(LIST_OFFSETS, 1, &body.buf)?;
        let wire = self.wire("ListOffsets");
        let mut r = Reader::new(&response);
        let mut offsets = vec![None; partitions.len()];
        for _ in 0..r.array_len().map_err(&wire)? {
            let _name = r.string().map_err(&wire)?;
            for _ in 0..r.array_len().map_err(&wire)? {
                let partition = r.i32().map_err(&wire)?;
                let code = r.i16().map_err(&wire)?;
                let _ts = r.i64().map_err(&wire)?;
                let offset = r.i64().map_err(&wire)?;
                if code != 0 {
                    return Err(self.error(KafkaErrorKind::Broker {
                        api: "ListOffsets",
                        what: format!("{topic} partition {partition}"),
                        code,
                    }));
                }
                if let Some(i) = partitions.iter().position(|&p| p == partition) {
                    offsets[i] = Some(offset);
                }
            }
        }
        offsets
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| self.error(KafkaErrorKind::TopicNotFound(topic.to_owned())))
    }

    /// Fetches from each `(partition, offset, max bytes)`, waiting up to
    /// `max_wait_ms` for data.
    pub fn fetch(
        &mut self,
        topic: &str,
        at: &[(i32, i64, i32)],
        max_wait_ms: i32,
    ) -> Result<Vec<PartitionFetch>, KafkaError> {
        let mut body = Writer::default();
        body.i32(-1);
        body.i32(max_wait_ms);
        body.i32(1);
        body.i32(FETCH_MAX_BYTES);
        body.i8(0);
        body.array_len(1);
        body.string(topic);
        body.array_len(at.len());
        for &(partition, offset, max_bytes) in at {
            body.i32(partition);
            body.i64(offset);
            body.i32(max_bytes);
        }
        let response = self.call(FETCH, 4, &body.buf)?;
        let wire = self.wire("Fetch");
        let mut r = Reader::new(&response);
        let _throttle = r.i32().map_err(&wire)?;
        let mut out = Vec::new();
        for _ in 0..r.array_len().map_err(&wire)? {
            let _name = r.string().map_err(&wire)?;
            for _ in 0..r.array_len().map_err(&wire)? {
                let partition = r.i32().map_err(&wire)?;
                let error_code = r.i16().map_err(&wire)?;
                let high_watermark = r.i64().map_err(&wire)?;
                let _last_stable = r.i64().map_err(&wire)?;
                for _ in 0..r.array_len().map_err(&wire)? {
                    r.i64().map_err(&wire)?;
                    r.i64().map_err(&wire)?;
                }
                let records = r.nullable_bytes().map_err(&wire)?.unwrap_or_default();
                out.push(PartitionFetch {
                    partition,
                    error_code,
                    high_watermark,
                    records: records.to_vec(),
                });
            }
        }
        Ok(out)
    }

    /// Appends `values` to `partition` of `topic` (acks from all replicas);
    /// returns the first one's offset.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        values: &[&[u8]],
    ) -> Result<i64, KafkaError> {
        self.produce_compressed(topic, partition, values, compression::Codec::None)
    }

    /// As [`Self::produce`], in one batch compressed with `codec`.
    pub fn produce_compressed(
        &mut self,
        topic: &str,
        partition: i32,
        values: &[&[u8]],
        codec: compression::Codec,
    ) -> Result<i64, KafkaError> {
        let mut body = Writer::default();
        body.null_string();
        body.i16(-1);
        body.i32(30_000);
        body.array_len(1);
        body.string(topic);
        body.array_len(1);
        body.i32(partition);
        body.bytes(&batch::encode_batch(values, 0, codec));
        let response = self.call(PRODUCE, 3, &body.buf)?;
        let wire = self.wire("Produce");
        let mut r = Reader::new(&response);
        r.array_len().map_err(&wire)?;
        let _name = r.string().map_err(&wire)?;
        r.array_len().map_err(&wire)?;
        let _partition = r.i32().map_err(&wire)?;
        let code = r.i16().map_err(&wire)?;
        let base_offset = r.i64().map_err(&wire)?;
        if code != 0 {
            return Err(self.error(KafkaErrorKind::Broker {
                api: "Produce",
                what: format!("{topic} partition {partition}"),
                code,
            }));
        }
        Ok(base_offset)
    }

    /// Creates `topic` with `partitions` partitions, one replica.
    pub fn create_topic(&mut self, topic: &str, partitions: i32) -> Result<(), KafkaError> {
        let mut body = Writer::default();
        body.array_len(1);
        body.string(topic);
        body.i32(partitions);
        body.i16(1);
        body.array_len(0);
        body.array_len(0);
        body.i32(30_000);
        body.i8(0);
        let response = self.call(CREATE_TOPICS, 2, &body.buf)?;
        let wire = self.wire("CreateTopics");
        let mut r = Reader::new(&response);
        let _throttle = r.i32().map_err(&wire)?;
        r.array_len().map_err(&wire)?;
        let name = r.string().map_err(&wire)?;
        let code = r.i16().map_err(&wire)?;
        if code != 0 {
            return Err(self.error(KafkaErrorKind::Broker {
                api: "CreateTopics",
                what: name,
                code,
            }));
        }
        Ok(())
    }
}
