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

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::sidecar::{read_token_file, TOKEN_FILE_NAME};
use super::transport::{
    encode_frame, read_frame, split_share, write_frame, FrameBuffer, FrameError, FromSidecar,
    Hello, ToSidecar, WorkerCut, MAX_PAYLOAD_BYTES,
};
use crate::metrics::{Histogram, LATENCY_BUCKETS_SECONDS};

/// Capacity of the queue between the workers and the client thread.
pub const QUEUE_CAPACITY: usize = 64;
/// How long the client waits for the sidecar's answer to its hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the client thread looks for acks while no cut is queued.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// Limit of a frame from the sidecar (its messages are small).
const MAX_REPLY_BYTES: usize = 1 << 20;

/// Where the sidecar listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SidecarAddress {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A loopback TCP address, with the file holding the shared token.
    Tcp {
        /// The address.
        addr: SocketAddr,
        /// The token file (`<data_dir>/sidecar.token`).
        token_file: PathBuf,
    },
}

impl SidecarAddress {
    /// Parses `unix:/path/to/sidecar.sock` or `tcp:127.0.0.1:7000`; for TCP,
    /// the token is read from `<data_dir>/sidecar.token`.
    pub fn parse(spec: &str, data_dir: &Path) -> Result<Self, ClientError> {
        let bad = |reason: &str| ClientError::BadAddress {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = spec.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad("empty socket path"));
            }
            Ok(Self::Unix(PathBuf::from(path)))
        } else if let Some(addr) = spec.strip_prefix("tcp:") {
            let addr: SocketAddr = addr
                .parse()
                .map_err(|_| bad("expected tcp:IP:PORT, e.g. tcp:127.0.0.1:7000"))?;
            if !addr.ip().is_loopback() {
                return Err(bad("only loopback addresses are allowed"));
            }
            Ok(Self::Tcp {
                addr,
                token_file: data_dir.join(TOKEN_FILE_NAME),
            })
        } else {
            Err(bad("expected unix:PATH or tcp:IP:PORT"))
        }
    }
}

impl fmt::Display for SidecarAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix:{}", path.display()),
            Self::Tcp { addr, .. } => write!(f, "tcp:{addr}"),
        }
    }
}

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
    #[error("lost the connection to the checkpoint sidecar: {0}")]
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
}

impl Default for ClientStats {
    fn default() -> Self {
        Self {
            commit_latency: Histogram::new(LATENCY_BUCKETS_SECONDS),
            acks: AtomicU64::new(0),
            shipped_bytes: AtomicU64::new(0),
            last_checkpoint_bytes: AtomicU64::new(0),
            last_sidecar_commit_us: AtomicU64::new(0),
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

/// Checkpoints shipped and not acknowledged yet: when this process first
/// wrote a share of each, and how many bytes it wrote for it.
type Inflight = BTreeMap<u64, (Instant, u64)>;

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
        match self.tx.try_send((cut, Instant::now(), files)) {
            Ok(()) => Ok(()),
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

/// A connected socket of either kind.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_nonblocking(on),
            Self::Tcp(s) => s.set_nonblocking(on),
        }
    }
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.set_read_timeout(timeout),
            Self::Tcp(s) => s.set_read_timeout(timeout),
        }
    }
    fn shutdown(&self) {
        let _ = match self {
            Self::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Self::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Unix(s) => s.flush(),
            Self::Tcp(s) => s.flush(),
        }
    }
}

impl SidecarClient {
    /// Connects, says `hello` (its token is filled in from the token file for
    /// TCP) and waits for the welcome; then starts the client thread.
    pub fn connect(addr: &SidecarAddress, mut hello: Hello) -> Result<Self, ClientError> {
        let connect_err = |e: io::Error| ClientError::Connect {
            addr: addr.to_string(),
            reason: e.to_string(),
        };
        let mut stream = match addr {
            SidecarAddress::Unix(path) => {
                Stream::Unix(UnixStream::connect(path).map_err(connect_err)?)
            }
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
        let lost = |e: FrameError| ClientError::Lost(e.to_string());
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
                return Err(ClientError::Lost(
                    "the sidecar closed the connection during the hello".to_owned(),
                ))
            }
            Err(e) => return Err(lost(e)),
        };
        stream.set_read_timeout(None).map_err(connect_err)?;

        let shared = Arc::new(Shared::default());
        shared.status().last_committed = welcome_last_committed;
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("weir-sidecar-client".to_owned())
            .spawn(move || client_thread(stream, &rx, &thread_shared))
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

    /// [`connect`](Self::connect), retrying while the sidecar is not
    /// listening yet (it is started alongside the engine), for at most
    /// `timeout`. A refusal is not retried.
    pub fn connect_retrying(
        addr: &SidecarAddress,
        hello: &Hello,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::connect_while(addr, hello, timeout, || None)
    }

    /// As [`connect_retrying`](Self::connect_retrying), but gives up as soon
    /// as `gone` returns why the sidecar will never listen (e.g. the process
    /// started for it has exited), instead of waiting out `timeout`.
    pub fn connect_while(
        addr: &SidecarAddress,
        hello: &Hello,
        timeout: Duration,
        mut gone: impl FnMut() -> Option<String>,
    ) -> Result<Self, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            match Self::connect(addr, hello.clone()) {
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

/// The client thread: writes queued cuts, reads acks, until closing (then it
/// drains the queue and says goodbye) or an error.
fn client_thread(
    mut stream: Stream,
    rx: &Receiver<(WorkerCut, Instant, Vec<DurableFile>)>,
    shared: &Shared,
) {
    let mut acks = FrameBuffer::new(MAX_REPLY_BYTES);
    let mut inflight = Inflight::new();
    let result = loop {
        let closing = shared.closing.load(Ordering::Acquire);
        let next = if closing {
            rx.try_recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(POLL_INTERVAL)
        };
        match next {
            Ok((cut, queued_at, files)) => {
                shared.queued.fetch_sub(1, Ordering::Relaxed);
                // The share's output lengths must be durable before the
                // sidecar can commit them.
                if let Some((f, e)) = files
                    .iter()
                    .find_map(|f| f.file.sync_data().err().map(|e| (f, e)))
                {
                    break Err(ClientError::Output(format!(
                        "making {} durable for checkpoint {}: {e}",
                        f.path.display(),
                        cut.checkpoint_id
                    )));
                }
                let id = cut.checkpoint_id;
                let span = tracing::debug_span!(
                    "ship",
                    checkpoint_id = id,
                    cut_time = cut.cut_time,
                    worker = cut.worker,
                    updates = cut.updates.len(),
                    queued_ms = crate::metrics::millis(queued_at.elapsed()),
                    bytes = tracing::field::Empty,
                    elapsed_ms = tracing::field::Empty,
                );
                let _entered = span.enter();
                let started = Instant::now();
                match send_share(&mut stream, cut) {
                    Ok(bytes) => {
                        span.record("bytes", bytes);
                        span.record("elapsed_ms", crate::metrics::millis(started.elapsed()));
                        shared
                            .stats
                            .shipped_bytes
                            .fetch_add(bytes, Ordering::Relaxed);
                        inflight.entry(id).or_insert((started, 0)).1 += bytes;
                    }
                    Err(e) => {
                        // The sidecar may have closed the connection after
                        // telling why: prefer its reason to the broken pipe.
                        break read_acks(&mut stream, &mut acks, shared, &mut inflight).and(Err(e));
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if closing => {
                break send(&mut stream, &ToSidecar::Goodbye).map(|_bytes| ());
            }
            // All senders dropped but not closing: keep reading acks.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(POLL_INTERVAL),
        }
        if let Err(e) = read_acks(&mut stream, &mut acks, shared, &mut inflight) {
            break Err(e);
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "checkpoint sidecar connection failed");
        shared.status().error.get_or_insert(e);
    }
    stream.shutdown();
}

/// Updates per frame of a worker's share: a larger share is split into
/// [`ToSidecar::CutUpdates`] frames (half the frame limit, so the share's
/// partitions and outputs always fit in its last frame).
const SHARE_FRAME_BUDGET_BYTES: usize = MAX_PAYLOAD_BYTES / 2;

/// Writes a worker's share: its leading updates as cut updates frames if it
/// is too large for one frame, then its worker cut; returns the bytes sent.
fn send_share(stream: &mut Stream, mut cut: WorkerCut) -> Result<u64, ClientError> {
    let mut bytes = 0;
    for part in split_share(&mut cut, SHARE_FRAME_BUDGET_BYTES) {
        bytes += send(stream, &ToSidecar::CutUpdates(part))?;
    }
    Ok(bytes + send(stream, &ToSidecar::WorkerCut(cut))?)
}

/// Writes `message`; returns the frame's size in bytes.
fn send(stream: &mut Stream, message: &ToSidecar) -> Result<u64, ClientError> {
    let frame = encode_frame(message).map_err(|e| ClientError::Protocol(e.to_string()))?;
    stream
        .write_all(&frame)
        .and_then(|()| stream.flush())
        .map_err(|e| ClientError::Lost(format!("writing to the sidecar: {e}")))?;
    Ok(frame.len() as u64)
}

/// Reads whatever acks have arrived, without blocking.
fn read_acks(
    stream: &mut Stream,
    acks: &mut FrameBuffer,
    shared: &Shared,
    inflight: &mut Inflight,
) -> Result<(), ClientError> {
    let lost = |e: io::Error| ClientError::Lost(format!("reading from the sidecar: {e}"));
    stream.set_nonblocking(true).map_err(lost)?;
    let mut chunk = [0u8; 4096];
    let read_result = loop {
        match stream.read(&mut chunk) {
            Ok(0) => {
                break Err(ClientError::Lost(
                    "the sidecar closed the connection".to_owned(),
                ))
            }
            Ok(n) => acks.push(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break Err(lost(e)),
        }
        if acks.pending_bytes() > MAX_PAYLOAD_BYTES {
            break Err(ClientError::Protocol("oversized reply".to_owned()));
        }
    };
    stream.set_nonblocking(false).map_err(lost)?;
    // Acks that arrived before a close are still applied.
    loop {
        match acks.pop::<FromSidecar>() {
            Ok(Some(FromSidecar::Committed {
                checkpoint_id,
                cut_time,
                commit_latency_us,
            })) => {
                let mut status = shared.status();
                if status
                    .last_committed
                    .is_none_or(|(id, _)| id < checkpoint_id)
                {
                    status.last_committed = Some((checkpoint_id, cut_time));
                }
                status.last_commit_latency_us = Some(commit_latency_us);
                drop(status);
                record_ack(shared, inflight, checkpoint_id, cut_time, commit_latency_us);
            }
            Ok(Some(FromSidecar::Refused { reason })) => return Err(ClientError::Refused(reason)),
            Ok(Some(other)) => return Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            Ok(None) => break,
            Err(e) => return Err(ClientError::Lost(e.to_string())),
        }
    }
    read_result
}

/// Updates the statistics for the ack of `checkpoint_id`.
fn record_ack(
    shared: &Shared,
    inflight: &mut Inflight,
    checkpoint_id: u64,
    cut_time: u64,
    sidecar_commit_us: u64,
) {
    let stats = &shared.stats;
    stats.acks.fetch_add(1, Ordering::Relaxed);
    stats
        .last_sidecar_commit_us
        .store(sidecar_commit_us, Ordering::Relaxed);
    let acked: Vec<u64> = inflight
        .range(..=checkpoint_id)
        .map(|(&id, _)| id)
        .collect();
    for id in acked {
        let (first_sent, bytes) = inflight.remove(&id).expect("listed");
        if id == checkpoint_id {
            let latency = first_sent.elapsed();
            stats.commit_latency.observe(latency);
            stats.last_checkpoint_bytes.store(bytes, Ordering::Relaxed);
            tracing::debug!(
                checkpoint_id,
                cut_time,
                bytes,
                commit_latency_ms = crate::metrics::millis(latency),
                sidecar_commit_us,
                "checkpoint acknowledged"
            );
        }
    }
}
