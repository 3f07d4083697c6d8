//! A small, blocking NATS client: enough of the core protocol and of the
//! JetStream API ([`jetstream`]) to read a stream in order from a given
//! sequence, and to create streams and publish (tools and tests).
//!
//! Blocking on purpose (decision 37): the stream source is one thread that
//! appends to the log; it needs no runtime, and every wait has a timeout.
//! A leaf: nothing of the engine is imported.

pub mod jetstream;
pub mod protocol;

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use protocol::{FrameBuffer, Message, ProtocolError, ServerOp};

/// The largest message accepted before the server says its own limit.
const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// The largest `max_payload` a server may announce and be believed.
const MAX_PAYLOAD_LIMIT_BYTES: usize = 64 << 20;
/// Bytes buffered for the server before they are written.
const WRITE_BUFFER_BYTES: usize = 64 << 10;

/// A NATS failure, naming the server.
#[derive(Debug, thiserror::Error)]
#[error("nats://{server}: {kind}")]
pub struct NatsError {
    /// `host:port` as given.
    pub server: String,
    /// What went wrong.
    pub kind: NatsErrorKind,
}

/// What went wrong talking to a NATS server.
#[derive(Debug, thiserror::Error)]
pub enum NatsErrorKind {
    /// The server could not be reached.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// The connection failed after it was made.
    #[error("connection lost: {0}")]
    Io(io::Error),
    /// The server sent something that is not the protocol.
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The server sent `-ERR`.
    #[error("server error: {0}")]
    Server(String),
    /// No answer in time.
    #[error("no answer to {what} within {timeout_ms} ms")]
    Timeout {
        /// What was waited for.
        what: String,
        /// How long.
        timeout_ms: u64,
    },
    /// Nobody listens on a JetStream API subject.
    #[error("JetStream is not enabled on this server (no responder for {0})")]
    NoJetStream(String),
    /// The stream does not exist.
    #[error("stream {0:?} does not exist")]
    StreamNotFound(String),
    /// A JetStream API error.
    #[error("JetStream {subject}: {description} (error code {code})")]
    Api {
        /// The API subject.
        subject: String,
        /// The server's description.
        description: String,
        /// Its error code.
        code: u64,
    },
    /// The pull consumer went away (the server restarted or removed it).
    #[error("the consumer is gone ({0})")]
    ConsumerGone(String),
}

impl NatsError {
    /// Whether reconnecting may help (the server is down or restarting),
    /// as opposed to a usage error (no such stream) that would stay.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            NatsErrorKind::Connect(_)
                | NatsErrorKind::Io(_)
                | NatsErrorKind::Timeout { .. }
                | NatsErrorKind::ConsumerGone(_)
                | NatsErrorKind::NoJetStream(_)
        )
    }
}

/// One connection to a NATS server.
pub struct Connection {
    server: String,
    socket: TcpStream,
    frames: FrameBuffer,
    out: Vec<u8>,
    /// Operations read while waiting for another one.
    parked: VecDeque<Message>,
    read_buf: Box<[u8]>,
    info_seen: bool,
}

impl Connection {
    /// Connects to `server` (`host:port`), sends `CONNECT` and waits for the
    /// server to answer a `PING`, all within `timeout`.
    pub fn connect(server: &str, timeout: Duration) -> Result<Self, NatsError> {
        let error = |kind| NatsError {
            server: server.to_owned(),
            kind,
        };
        let addrs: Vec<SocketAddr> = server
            .to_socket_addrs()
            .map_err(|e| error(NatsErrorKind::Connect(e)))?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        let mut socket = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(s) => {
                    socket = Some(s);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let socket = socket.ok_or_else(|| error(NatsErrorKind::Connect(last)))?;
        socket
            .set_nodelay(true)
            .map_err(|e| error(NatsErrorKind::Connect(e)))?;
        let mut conn = Self {
            server: server.to_owned(),
            socket,
            frames: FrameBuffer::new(DEFAULT_MAX_PAYLOAD_BYTES),
            out: Vec::with_capacity(WRITE_BUFFER_BYTES),
            parked: VecDeque::new(),
            read_buf: vec![0; 64 << 10].into_boxed_slice(),
            info_seen: false,
        };
        let deadline = Instant::now() + timeout;
        match conn.read_op(deadline)? {
            Some(ServerOp::Info(info)) => conn.apply_info(&info),
            Some(other) => {
                return Err(conn.error(NatsErrorKind::Server(format!(
                    "expected INFO first, got {other:?}"
                ))))
            }
            None => {
                return Err(conn.error(NatsErrorKind::Timeout {
                    what: "the server's INFO".into(),
                    timeout_ms: duration_ms(timeout),
                }))
            }
        }
        conn.out.extend_from_slice(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"rust-weir\",\
\"version\":\"1\",\"protocol\":1,\"headers\":true,\"no_responders\":true}\r\n",
        );
        conn.ping(timeout)?;
        Ok(conn)
    }

    /// The server, `host:port`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// An error of this connection.
    pub fn error(&self, kind: NatsErrorKind) -> NatsError {
        NatsError {
            server: self.server.clone(),
            kind,
        }
    }

    fn apply_info(&mut self, info: &str) {
        let max = serde_json::from_str::<serde_json::Value>(info)
            .ok()
            .and_then(|v| v.get("max_payload").and_then(serde_json::Value::as_u64))
            .and_then(|m| usize::try_from(m).ok())
            .unwrap_or(DEFAULT_MAX_PAYLOAD_BYTES);
        self.frames
            .set_max_payload_bytes(max.min(MAX_PAYLOAD_LIMIT_BYTES));
    }

    /// Subscribes `sid` to `subject`.
    pub fn subscribe(&mut self, subject: &str, sid: u64) {
        self.out
            .extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
    }

    /// Removes subscription `sid`.
    pub fn unsubscribe(&mut self, sid: u64) {
        self.out
            .extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
    }

    /// Queues a message (written at the next read, flush or when the
    /// buffer is full).
    pub fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) -> Result<(), NatsError> {
        let line = match reply {
            Some(r) => format!("PUB {subject} {r} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        };
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(payload);
        self.out.extend_from_slice(b"\r\n");
        if self.out.len() >= WRITE_BUFFER_BYTES {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes what is queued and waits until the server has processed it
    /// (a `PING` answered by `PONG`).
    pub fn ping(&mut self, timeout: Duration) -> Result<(), NatsError> {
        self.out.extend_from_slice(b"PING\r\n");
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_op(deadline)? {
                Some(ServerOp::Pong) => return Ok(()),
                Some(ServerOp::Msg(m)) => self.parked.push_back(m),
                Some(_) => {}
                None => {
                    return Err(self.error(NatsErrorKind::Timeout {
                        what: "PING".into(),
                        timeout_ms: duration_ms(timeout),
                    }))
                }
            }
        }
    }

    /// The next message (earlier parked ones first), or `None` if none came
    /// before `deadline`. Answers the server's `PING`s on the way.
    pub fn next_message(&mut self, deadline: Instant) -> Result<Option<Message>, NatsError> {
        if let Some(m) = self.parked.pop_front() {
            return Ok(Some(m));
        }
        loop {
            match self.read_op(deadline)? {
                Some(ServerOp::Msg(m)) => return Ok(Some(m)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// Parks a message for a later [`Self::next_message`].
    pub fn park(&mut self, message: Message) {
        self.parked.push_back(message);
    }

    fn write_out(&mut self) -> Result<(), NatsError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = self.socket.write_all(&self.out);
        self.out.clear();
        result.map_err(|e| self.error(NatsErrorKind::Io(e)))
    }

    /// Reads the next operation other than `PING` (answered), `+OK` and
    /// `INFO` (applied), or `None` at `deadline`. `-ERR` is an error.
    fn read_op(&mut self, deadline: Instant) -> Result<Option<ServerOp>, NatsError> {
        loop {
            self.write_out()?;
            match self
                .frames
                .next_op()
                .map_err(|e| self.error(NatsErrorKind::Protocol(e)))?
            {
                Some(ServerOp::Ping) => {
                    self.out.extend_from_slice(b"PONG\r\n");
                    continue;
                }
                Some(ServerOp::Ok) => continue,
                Some(ServerOp::Info(info)) => {
                    // Only the first INFO is returned (to `connect`); later
                    // ones (cluster changes) only update the limits.
                    if self.info_seen {
                        self.apply_info(&info);
                        continue;
                    }
                    self.info_seen = true;
                    return Ok(Some(ServerOp::Info(info)));
                }
                Some(ServerOp::Err(text)) => {
                    return Err(self.error(NatsErrorKind::Server(text)));
                }
                Some(op) => return Ok(Some(op)),
                None => {}
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.socket
                .set_read_timeout(Some(wait))
                .map_err(|e| self.error(NatsErrorKind::Io(e)))?;
            match self.socket.read(&mut self.read_buf) {
                Ok(0) => {
                    return Err(self.error(NatsErrorKind::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    ))))
                }
                Ok(n) => {
                    let bytes = &self.read_buf[..n];
                    self.frames.extend(bytes);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(self.error(NatsErrorKind::Io(e))),
            }
        }
    }
}

/// Milliseconds of `d`, saturating.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
