//! The engine side of the sidecar connection, without tokio.
//!
//! [`SidecarClient::connect`] says hello and then hands the socket to ONE
//! background thread. Workers get a [`CutSender`] whose
//! [`try_send`](CutSender::try_send) never blocks: it puts the cut into a
//! bounded queue ([`QUEUE_CAPACITY`]) and reports [`Full`] when the thread (or
//! the sidecar behind it) cannot keep up. The thread encodes and writes the
//! frames (so workers never pay for encoding) and reads the `Committed` acks
//! in between, publishing [`SidecarClient::last_committed`]. A lost
//! connection or a refusal is recorded and returned by
//! [`SidecarClient::error`]; the engine then stops with that message.
//!
//! The client does not reconnect: a sidecar that is killed (or a lost
//! connection) ends the run with [`ClientError::Lost`], whose message tells
//! the user to rerun the same command (restore makes that exactly once). A
//! sidecar that is stopped keeps its socket: the client keeps waiting, the
//! workers' [`AckClock`](super::stall::AckClock) shows how long, and the
//! driver reports the stall (see [`super::stall`]).

use std::io::{self, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::stall::StallStats;
use super::transport::token::read_token_file;
use super::transport::{
    read_frame, write_frame, FrameError, FromSidecar, Hello, ToSidecar, WorkerCut,
};
use crate::metrics::{Histogram, LATENCY_BUCKETS_SECONDS};

mod conn;
mod thread;

pub use conn::SidecarAddress;
use conn::Stream;
use thread::client_thread;

/// Capacity of the queue between the workers and the client thread.
pub const QUEUE_CAPACITY: usize = 64;
/// How long the client waits for the sidecar's answer to its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Limit of a frame from the sidecar (its messages are small).
const MAX_REPLY_BYTES: usize = 1 << 20;

/// Why the client failed.
#[derive(Clone, Debug, Error)]
pub enum ClientError {
    /// The address string is invalid.
    #[error("bad sidecar address {spec:?}: {reason}")]
    BadAddress {
        /// The string given.
        spec: String,
        /// Why.
        reason: String,
    },
    /// Connecting failed.
    #[error("cannot connect to the checkpoint sidecar at {addr}: {reason}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The token file could not be read.
    #[error("cannot read the sidecar token: {0}")]
    Token(String),
    /// The sidecar refused this process.
    #[error("the checkpoint sidecar refused this process: {0}")]
    Refused(String),
    /// The connection broke or carried garbage.
    #[error(
        "lost the connection to the checkpoint sidecar: {0} (the engine does not reconnect; \
         rerun the same command: it restores the newest committed checkpoint, so the output \
         stays exactly once)"
    )]
    Lost(String),
    /// An output file could not be made durable for a checkpoint.
    #[error("output: {0}")]
    Output(String),
    /// The sidecar said something out of protocol.
    #[error("the checkpoint sidecar broke the protocol: {0}")]
    Protocol(String),
}

/// A queued cut was not accepted: the queue is full (or the client thread is
/// gone, see [`SidecarClient::error`]). The cut and its files are handed back.
#[derive(Debug)]
pub struct Full(pub Box<WorkerCut>, pub Vec<DurableFile>);

/// An output file a share's lengths refer to: the client thread makes it
/// durable (`sync_data`) before it sends the share, so a worker never waits
/// for the disk and a checkpoint never claims bytes that are not durable.
#[derive(Clone, Debug)]
pub struct DurableFile {
    /// For errors.
    pub path: std::path::PathBuf,
    /// A handle on the file.
    pub file: Arc<std::fs::File>,
}

/// How full the queue to the client thread is (a backpressure metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fill {
    /// Cuts queued and not yet taken by the client thread.
    pub queued: usize,
    /// The queue's capacity.
    pub capacity: usize,
}

/// Live figures of the connection, for the metrics endpoint.
#[derive(Debug)]
pub struct ClientStats {
    /// Per checkpoint: from this process writing its first share of it to
    /// the sidecar until the sidecar's `Committed` ack arrives.
    pub commit_latency: Histogram,
    /// `Committed` acks received.
    pub acks: AtomicU64,
    /// Bytes of worker cuts (encoded frames) written to the sidecar.
    pub shipped_bytes: AtomicU64,
    /// Bytes this process shipped for the newest acknowledged checkpoint.
    pub last_checkpoint_bytes: AtomicU64,
    /// The sidecar's own commit latency of the newest ack, µs.
    pub last_sidecar_commit_us: AtomicU64,
    /// How long the sidecar has been silent while owed an ack, and whether
    /// that makes it stalled.
    pub stall: StallStats,
}

impl Default for ClientStats {
    fn default() -> Self {
        Self {
            commit_latency: Histogram::new(LATENCY_BUCKETS_SECONDS),
            acks: AtomicU64::new(0),
            shipped_bytes: AtomicU64::new(0),
            last_checkpoint_bytes: AtomicU64::new(0),
            last_sidecar_commit_us: AtomicU64::new(0),
            stall: StallStats::new(Instant::now()),
        }
    }
}

/// State shared by the client thread and its handles.
#[derive(Debug, Default)]
struct Shared {
    queued: AtomicUsize,
    closing: AtomicBool,
    status: Mutex<Status>,
    stats: Arc<ClientStats>,
}

#[derive(Debug, Default)]
struct Status {
    last_committed: Option<(u64, u64)>,
    last_commit_latency_us: Option<u64>,
    error: Option<ClientError>,
}

impl Shared {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A cloneable, non-blocking handle for workers to queue their cuts.
#[derive(Clone, Debug)]
pub struct CutSender {
    tx: SyncSender<(WorkerCut, Instant, Vec<DurableFile>)>,
    shared: Arc<Shared>,
}

impl CutSender {
    /// Queues `cut` without blocking.
    pub fn try_send(&self, cut: WorkerCut) -> Result<(), Full> {
        self.try_send_after_syncing(cut, Vec::new())
    }

    /// Queues `cut` without blocking; the client thread makes `files`
    /// durable before it sends the cut.
    pub fn try_send_after_syncing(
        &self,
        cut: WorkerCut,
        files: Vec<DurableFile>,
    ) -> Result<(), Full> {
        // Count first so that the thread's decrement never underflows.
        self.shared.queued.fetch_add(1, Ordering::Relaxed);
        let (id, now) = (cut.checkpoint_id, Instant::now());
        match self.tx.try_send((cut, now, files)) {
            Ok(()) => {
                self.shared.stats.stall.clock.owe(id, now);
                Ok(())
            }
            Err(
                TrySendError::Full((cut, _, files)) | TrySendError::Disconnected((cut, _, files)),
            ) => {
                self.shared.queued.fetch_sub(1, Ordering::Relaxed);
                Err(Full(Box::new(cut), files))
            }
        }
    }

    /// How full the queue is.
    pub fn fill(&self) -> Fill {
        Fill {
            queued: self
                .shared
                .queued
                .load(Ordering::Relaxed)
                .min(QUEUE_CAPACITY),
            capacity: QUEUE_CAPACITY,
        }
    }
}

/// The engine process's connection to the sidecar.
#[derive(Debug)]
pub struct SidecarClient {
    sender: CutSender,
    shared: Arc<Shared>,
    welcome_last_committed: Option<(u64, u64)>,
    thread: Option<JoinHandle<()>>,
}

impl SidecarClient {
    /// Connects, says `hello` (its token is filled in from the token file for
    /// TCP) and waits for the welcome; then starts the client thread.
    pub fn connect(addr: &SidecarAddress, hello: Hello) -> Result<Self, ClientError> {
        Self::connect_reconnecting(addr, hello, None)
    }

    /// As [`connect`](Self::connect); with `reconnect_for`, the client
    /// thread survives a lost connection: it reconnects (for at most that
    /// long) and resends the shares of every checkpoint not acknowledged
    /// yet, so a sidecar restarted by hand continues the run (see
    /// [`thread`]). Without it a lost connection is the run's error.
    pub fn connect_reconnecting(
        addr: &SidecarAddress,
        hello: Hello,
        reconnect_for: Option<Duration>,
    ) -> Result<Self, ClientError> {
        let (stream, welcome_last_committed) = open(addr, hello.clone())?;
        let shared = Arc::new(Shared::default());
        shared.status().last_committed = welcome_last_committed;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
        let thread_shared = Arc::clone(&shared);
        let reconnect = reconnect_for.map(|timeout| Reconnect {
            addr: addr.clone(),
            hello,
            timeout,
        });
        let thread = std::thread::Builder::new()
            .name("weir-sidecar-client".to_owned())
            .spawn(move || client_thread(stream, &rx, &thread_shared, reconnect.as_ref()))
            .map_err(|e| ClientError::Connect {
                addr: addr.to_string(),
                reason: format!("cannot start the client thread: {e}"),
            })?;
        Ok(Self {
            sender: CutSender {
                tx,
                shared: Arc::clone(&shared),
            },
            shared,
            welcome_last_committed,
            thread: Some(thread),
        })
    }
}

/// Where and how the client thread reconnects after a lost connection.
#[derive(Clone, Debug)]
struct Reconnect {
    addr: SidecarAddress,
    hello: Hello,
    timeout: Duration,
}

/// Connects to the sidecar at `addr`, says `hello` (its token filled in
/// from the token file for TCP) and waits for the welcome: the stream and
/// the newest committed checkpoint the welcome reports.
fn open(
    addr: &SidecarAddress,
    mut hello: Hello,
) -> Result<(Stream, Option<(u64, u64)>), ClientError> {
    let connect_err = |e: io::Error| ClientError::Connect {
        addr: addr.to_string(),
        reason: e.to_string(),
    };
    let mut stream = match addr {
        SidecarAddress::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(connect_err)?),
        SidecarAddress::Tcp {
            addr: sock,
            token_file,
        } => {
            if !sock.ip().is_loopback() {
                return Err(ClientError::BadAddress {
                    spec: addr.to_string(),
                    reason: "only loopback addresses are allowed".to_owned(),
                });
            }
            hello.token = read_token_file(token_file)
                .map_err(|e| ClientError::Token(format!("{}: {e}", token_file.display())))?;
            let tcp = TcpStream::connect_timeout(sock, HELLO_TIMEOUT).map_err(connect_err)?;
            tcp.set_nodelay(true).map_err(connect_err)?;
            Stream::Tcp(tcp)
        }
    };
    // A connection reset or closed before the welcome is a failure to
    // connect, retried by `connect_while`: a sidecar killed a moment
    // ago can still accept on its socket, then reset the connection.
    // Anything else (a timeout, garbage) is not retried: a second hello
    // could be admitted behind a first one the sidecar still holds.
    let lost = |e: FrameError| {
        let broken = matches!(
            &e,
            FrameError::Io(io) if matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            )
        ) || matches!(e, FrameError::Truncated { .. });
        if broken {
            ClientError::Connect {
                addr: addr.to_string(),
                reason: format!("the connection broke during the hello: {e}"),
            }
        } else {
            ClientError::Lost(e.to_string())
        }
    };
    write_frame(&mut stream, &ToSidecar::Hello(hello)).map_err(lost)?;
    stream.flush().map_err(|e| lost(e.into()))?;
    stream
        .set_read_timeout(Some(HELLO_TIMEOUT))
        .map_err(connect_err)?;
    let welcome_last_committed = match read_frame::<FromSidecar>(&mut stream, MAX_REPLY_BYTES) {
        Ok(Some(FromSidecar::Welcome { last_committed })) => last_committed,
        Ok(Some(FromSidecar::Refused { reason })) => return Err(ClientError::Refused(reason)),
        Ok(Some(other)) => {
            return Err(ClientError::Protocol(format!(
                "expected a welcome, got {other:?}"
            )))
        }
        Ok(None) => {
            return Err(ClientError::Connect {
                addr: addr.to_string(),
                reason: "the sidecar closed the connection during the hello".to_owned(),
            })
        }
        Err(e) => return Err(lost(e)),
    };
    stream.set_read_timeout(None).map_err(connect_err)?;
    Ok((stream, welcome_last_committed))
}

impl SidecarClient {
    /// [`connect`](Self::connect), retrying while the sidecar is not
    /// listening yet (it is started alongside the engine), for at most
    /// `timeout`. A refusal is not retried.
    pub fn connect_retrying(
        addr: &SidecarAddress,
        hello: &Hello,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::connect_while(addr, hello, (timeout, None), || None)
    }

    /// As [`connect_retrying`](Self::connect_retrying), but gives up as soon
    /// as `gone` returns why the sidecar will never listen (e.g. the process
    /// started for it has exited), instead of waiting out `timeout`; the
    /// client reconnects after a loss for `reconnect_for` if given (see
    /// [`connect_reconnecting`](Self::connect_reconnecting)).
    pub fn connect_while(
        addr: &SidecarAddress,
        hello: &Hello,
        (timeout, reconnect_for): (Duration, Option<Duration>),
        mut gone: impl FnMut() -> Option<String>,
    ) -> Result<Self, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match Self::connect_reconnecting(addr, hello.clone(), reconnect_for) {
                Err(e @ (ClientError::Connect { .. } | ClientError::Token(_)))
                    if Instant::now() < deadline =>
                {
                    if let Some(reason) = gone() {
                        return Err(ClientError::Connect {
                            addr: addr.to_string(),
                            reason,
                        });
                    }
                    tracing::debug!(error = %e, "sidecar not ready yet, retrying");
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// A handle for a worker to queue its cuts.
    pub fn sender(&self) -> CutSender {
        self.sender.clone()
    }

    /// The newest checkpoint the sidecar reported as committed:
    /// `(checkpoint id, cut time)`.
    pub fn last_committed(&self) -> Option<(u64, u64)> {
        self.shared.status().last_committed
    }

    /// The newest checkpoint committed when this process connected.
    pub fn last_committed_at_hello(&self) -> Option<(u64, u64)> {
        self.welcome_last_committed
    }

    /// Commit latency reported with the newest `Committed` ack.
    pub fn last_commit_latency_us(&self) -> Option<u64> {
        self.shared.status().last_commit_latency_us
    }

    /// Live figures of the connection (commit latency, bytes shipped).
    pub fn stats(&self) -> Arc<ClientStats> {
        Arc::clone(&self.shared.stats)
    }

    /// Whether the sidecar is silent while owed an ack, and since when.
    pub fn stall(&self) -> &StallStats {
        &self.shared.stats.stall
    }

    /// Why the connection is no longer usable, if it is not.
    pub fn error(&self) -> Option<ClientError> {
        self.shared.status().error.clone()
    }

    /// Sends the queued cuts and a goodbye, then waits for the client thread.
    /// Returns the recorded error, if any.
    pub fn close(mut self) -> Result<(), ClientError> {
        self.shared.closing.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.error().map_or(Ok(()), Err)
    }
}

impl Drop for SidecarClient {
    fn drop(&mut self) {
        // Without `close`: tell the thread to say goodbye, but do not wait.
        self.shared.closing.store(true, Ordering::Release);
    }
}
