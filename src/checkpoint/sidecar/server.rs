//! The sidecar's I/O: the listener, one task per connection, and the
//! coordinator task that owns the state and the store.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::commit::commit_checkpoint;
use super::coordinator::{ConnId, Coordinator};
use super::listen::Listener;
use super::metrics::SidecarMetrics;
use super::{
    constant_time_eq, Listen, SidecarConfig, SidecarError, CHECKPOINTS_DIR_NAME, HELLO_TIMEOUT,
    MAX_CONNECTIONS, MAX_HELLO_BYTES,
};
use crate::checkpoint::store::CheckpointStore;
use crate::checkpoint::tier::ColdCopier;
use crate::checkpoint::transport::{
    read_frame_async, read_frame_async_into, write_frame_async, CutUpdates, FromSidecar, Hello,
    ToSidecar, WorkerCut, MAX_PAYLOAD_BYTES,
};

/// Capacity of the channel from the connections to the coordinator (each
/// event may hold a worker cut of up to 64 MiB).
const EVENT_QUEUE: usize = 8;
/// Capacity of each connection's reply channel.
const REPLY_QUEUE: usize = 64;
/// How long connections get to send their last words when the sidecar stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a stopping sidecar waits for the newest checkpoint to reach
/// the cold tier.
const COLD_FINISH_TIMEOUT: Duration = Duration::from_secs(30);

/// What a connection tells the coordinator.
#[derive(Debug)]
enum Event {
    Hello {
        conn: ConnId,
        hello: Hello,
        reply: mpsc::Sender<FromSidecar>,
        admitted: oneshot::Sender<bool>,
    },
    Cut {
        conn: ConnId,
        cut: Box<WorkerCut>,
    },
    CutUpdates {
        conn: ConnId,
        updates: CutUpdates,
    },
    Goodbye {
        conn: ConnId,
    },
    Closed {
        conn: ConnId,
        /// A protocol violation or broken frame to refuse the peer with.
        refuse: Option<String>,
    },
}

/// Runs the sidecar (see the module doc of `sidecar`).
pub(super) fn run(
    config: &SidecarConfig,
    metrics: Arc<SidecarMetrics>,
) -> Result<(), SidecarError> {
    if let Listen::Tcp(addr) = config.listen {
        if !addr.ip().is_loopback() {
            return Err(SidecarError::NotLoopback(addr));
        }
    }
    std::fs::create_dir_all(&config.data_dir).map_err(SidecarError::io(&config.data_dir))?;
    // The store lock fences off a second sidecar before anything else.
    let store_dir = config.data_dir.join(CHECKPOINTS_DIR_NAME);
    let mut store =
        CheckpointStore::open_waiting(&store_dir, Duration::from_millis(config.lock_wait_ms))?;
    store.keep_local(config.keep_local);
    let copiers = super::copiers::start_copiers(config, &mut store, &metrics)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(SidecarError::io(&config.data_dir))?;
    runtime
        .block_on(async {
            let (listener, _socket_guard) = Listener::bind(config).await?;
            tracing::info!(
                data_dir = %config.data_dir.display(),
                listen = ?config.listen,
                last_committed = ?store.commits().last().map(|r| (r.checkpoint_id, r.cut_time)),
                "checkpoint sidecar listening"
            );
            serve(
                listener,
                store,
                (config.exit_when_idle, config.compaction_budget_bytes),
                metrics,
                copiers.clone(),
            )
            .await
        })
        .map(|()| {
            // A stopping sidecar's newest checkpoint reaches the cold tier
            // and the replica first (bounded): the last one matters most
            // after a loss.
            for copier in copiers {
                copier.finish(COLD_FINISH_TIMEOUT);
            }
        })
}

/// How often the coordinator looks whether the cold tier's copier was
/// fenced off (it also looks before each commit).
const FENCE_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// Accepts connections and runs the coordinator until it stops.
async fn serve(
    listener: Listener,
    store: CheckpointStore,
    (exit_when_idle, compaction_budget_bytes): (bool, u64),
    metrics: Arc<SidecarMetrics>,
    copiers: Vec<Arc<ColdCopier>>,
) -> Result<(), SidecarError> {
    let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
    let coordinator = CoordinatorTask {
        coord: Coordinator::new(store.commits().to_vec()),
        store: Some(store),
        replies: HashMap::new(),
        ever_connected: false,
        exit_when_idle,
        compaction_budget_bytes,
        metrics,
        copiers,
    };
    let coordinator = coordinator.run(events_rx);
    tokio::pin!(coordinator);
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    let mut next_conn: ConnId = 0;
    let result = loop {
        tokio::select! {
            result = &mut coordinator => break result,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = accept(&listener) => {
                let Some(stream) = accepted else {
                    // e.g. out of file descriptors: do not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
                    tracing::warn!(max = MAX_CONNECTIONS, "too many sidecar connections: dropping one");
                    continue;
                };
                next_conn += 1;
                let events = events_tx.clone();
                match stream {
                    Accepted::Unix(s) => {
                        conns.spawn(connection(s, next_conn, None, events, permit));
                    }
                    Accepted::Tcp(s, token) => {
                        conns.spawn(connection(s, next_conn, Some(token), events, permit));
                    }
                }
            }
        }
    };
    drop(events_tx);
    // Let the connections write their last messages (e.g. a refusal).
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    conns.abort_all();
    result
}

enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream, Arc<Vec<u8>>),
}

/// The next acceptable connection; `None` after an accept error or a peer
/// that is refused on sight.
async fn accept(listener: &Listener) -> Option<Accepted> {
    match listener {
        Listener::Unix { listener, uid } => {
            let (stream, _) = listener
                .accept()
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "accept failed"))
                .ok()?;
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == *uid => Some(Accepted::Unix(stream)),
                other => {
                    tracing::warn!(peer = ?other, "refusing a sidecar connection from another user");
                    None
                }
            }
        }
        Listener::Tcp { listener, token } => {
            let (stream, peer) = listener
                .accept()
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "accept failed"))
                .ok()?;
            if !peer.ip().is_loopback() {
                tracing::warn!(%peer, "refusing a non-loopback sidecar connection");
                return None;
            }
            let _ = stream.set_nodelay(true);
            Some(Accepted::Tcp(stream, Arc::clone(token)))
        }
    }
}

/// One connection: hello (with timeout, size limit and token check), then a
/// reader task feeding the coordinator and this task writing its replies.
async fn connection<S>(
    stream: S,
    conn: ConnId,
    token: Option<Arc<Vec<u8>>>,
    events: mpsc::Sender<Event>,
    _permit: OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let hello = tokio::time::timeout(
        HELLO_TIMEOUT,
        read_frame_async::<ToSidecar>(&mut rd, MAX_HELLO_BYTES),
    )
    .await;
    let hello = match hello {
        Ok(Ok(Some(ToSidecar::Hello(hello)))) => hello,
        Ok(Ok(None)) => return,
        refused => {
            let reason = match refused {
                Err(_) => format!("no hello within {} s", HELLO_TIMEOUT.as_secs()),
                Ok(Err(e)) => format!("bad hello frame: {e}"),
                Ok(Ok(_)) => "the first message must be a hello".to_owned(),
            };
            tracing::warn!(conn, %reason, "refusing a sidecar connection");
            refuse(&mut wr, reason).await;
            return;
        }
    };
    if let Some(token) = &token {
        if !constant_time_eq(&hello.token, token) {
            tracing::warn!(
                conn,
                process = hello.process,
                "refusing a sidecar connection: wrong token"
            );
            refuse(&mut wr, "wrong token".to_owned()).await;
            return;
        }
    }
    let (reply_tx, mut reply_rx) = mpsc::channel(REPLY_QUEUE);
    let (admitted_tx, admitted_rx) = oneshot::channel();
    let hello_event = Event::Hello {
        conn,
        hello,
        reply: reply_tx,
        admitted: admitted_tx,
    };
    if events.send(hello_event).await.is_err() {
        return;
    }
    let reader = if admitted_rx.await.unwrap_or(false) {
        Some(tokio::spawn(read_loop(rd, conn, events)))
    } else {
        None
    };
    while let Some(message) = reply_rx.recv().await {
        let last = matches!(message, FromSidecar::Refused { .. });
        if let Err(e) = write_frame_async(&mut wr, &message).await {
            tracing::debug!(conn, error = %e, "writing to a sidecar connection failed");
            break;
        }
        if last {
            break;
        }
    }
    if let Some(reader) = reader {
        reader.abort();
    }
    let _ = wr.shutdown().await;
}

async fn refuse<W: AsyncWrite + Unpin>(wr: &mut W, reason: String) {
    let _ = tokio::time::timeout(
        HELLO_TIMEOUT,
        write_frame_async(wr, &FromSidecar::Refused { reason }),
    )
    .await;
    let _ = wr.shutdown().await;
}

/// Reads an admitted connection's messages into the coordinator.
async fn read_loop<R: AsyncRead + Unpin>(mut rd: R, conn: ConnId, events: mpsc::Sender<Event>) {
    let mut payload = Vec::new();
    loop {
        let read = read_frame_async_into::<ToSidecar>(&mut rd, MAX_PAYLOAD_BYTES, &mut payload);
        let (event, last) = match read.await {
            Ok(Some(ToSidecar::WorkerCut(cut))) => (
                Event::Cut {
                    conn,
                    cut: Box::new(cut),
                },
                false,
            ),
            Ok(Some(ToSidecar::CutUpdates(updates))) => {
                (Event::CutUpdates { conn, updates }, false)
            }
            Ok(Some(ToSidecar::Goodbye)) => (Event::Goodbye { conn }, true),
            Ok(Some(ToSidecar::Hello(_))) => (
                Event::Closed {
                    conn,
                    refuse: Some("a second hello on one connection".to_owned()),
                },
                true,
            ),
            Ok(None) => (Event::Closed { conn, refuse: None }, true),
            Err(e) => (
                Event::Closed {
                    conn,
                    refuse: Some(format!("bad frame: {e}")),
                },
                true,
            ),
        };
        if events.send(event).await.is_err() || last {
            return;
        }
    }
}

/// The task that owns the state and the store.
struct CoordinatorTask {
    coord: Coordinator,
    /// `None` only while a commit runs on a blocking thread.
    store: Option<CheckpointStore>,
    replies: HashMap<ConnId, mpsc::Sender<FromSidecar>>,
    ever_connected: bool,
    exit_when_idle: bool,
    compaction_budget_bytes: u64,
    metrics: Arc<SidecarMetrics>,
    /// Copy committed checkpoints to the cold tier and the replica.
    copiers: Vec<Arc<ColdCopier>>,
}

impl CoordinatorTask {
    async fn run(mut self, mut events: mpsc::Receiver<Event>) -> Result<(), SidecarError> {
        let mut fence_check = tokio::time::interval(FENCE_CHECK_INTERVAL);
        loop {
            let event = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => event,
                    None => break,
                },
                _ = fence_check.tick(), if !self.copiers.is_empty() => {
                    self.stop_if_fenced_off()?;
                    continue;
                }
            };
            match event {
                Event::Hello {
                    conn,
                    hello,
                    reply,
                    admitted,
                } => self.hello(conn, &hello, reply, admitted),
                Event::Cut { conn, cut } => {
                    let (id, worker) = (cut.checkpoint_id, cut.worker);
                    match self.coord.cut(conn, *cut) {
                        Ok(_) => self.commit_ready().await?,
                        Err(reason) => {
                            let reason = format!("checkpoint {id} worker {worker}: {reason}");
                            self.refuse(conn, reason);
                        }
                    }
                }
                Event::CutUpdates { conn, updates } => {
                    let (id, worker) = (updates.checkpoint_id, updates.worker);
                    if let Err(reason) = self.coord.cut_updates(conn, updates) {
                        let reason = format!("checkpoint {id} worker {worker}: {reason}");
                        self.refuse(conn, reason);
                    }
                }
                Event::Goodbye { conn } => {
                    tracing::info!(conn, "engine process said goodbye");
                    self.forget(conn);
                }
                Event::Closed { conn, refuse } => {
                    if let Some(reason) = refuse {
                        self.refuse(conn, reason);
                    } else {
                        if self.replies.contains_key(&conn) {
                            tracing::warn!(conn, "engine process disconnected without a goodbye");
                        }
                        self.forget(conn);
                    }
                }
            }
            self.metrics
                .connections
                .store(self.coord.live_connections() as u64, Ordering::Relaxed);
            self.metrics
                .pending_checkpoints
                .store(self.coord.pending_checkpoints() as u64, Ordering::Relaxed);
            if self.exit_when_idle && self.ever_connected && self.coord.live_connections() == 0 {
                tracing::info!("every engine process is gone: the sidecar exits");
                return Ok(());
            }
        }
        Ok(())
    }

    fn hello(
        &mut self,
        conn: ConnId,
        hello: &Hello,
        reply: mpsc::Sender<FromSidecar>,
        admitted: oneshot::Sender<bool>,
    ) {
        match self.coord.hello(conn, hello) {
            Ok(outcome) => {
                for old in outcome.evict {
                    self.refuse(
                        old,
                        format!("superseded by a newer engine (epoch {})", hello.epoch),
                    );
                }
                tracing::info!(
                    conn,
                    process = hello.process,
                    workers_total = hello.workers_total,
                    epoch = hello.epoch,
                    "engine process connected"
                );
                let _ = reply.try_send(FromSidecar::Welcome {
                    last_committed: outcome.last_committed,
                });
                self.replies.insert(conn, reply);
                self.ever_connected = true;
                let _ = admitted.send(true);
            }
            Err(reason) => {
                tracing::warn!(conn, process = hello.process, %reason, "refusing an engine process");
                let _ = reply.try_send(FromSidecar::Refused { reason });
                let _ = admitted.send(false);
            }
        }
    }

    /// Tells `conn` why and closes it.
    fn refuse(&mut self, conn: ConnId, reason: String) {
        if let Some(reply) = self.replies.remove(&conn) {
            tracing::warn!(conn, %reason, "refusing an engine process");
            let _ = reply.try_send(FromSidecar::Refused { reason });
        }
        self.coord.disconnected(conn);
    }

    fn forget(&mut self, conn: ConnId) {
        self.replies.remove(&conn);
        self.coord.disconnected(conn);
    }

    /// Once a newer writer fenced this one off the cold tier (a standby
    /// took the job over), refuses every engine and stops: nothing more may
    /// be committed, or emitted.
    fn stop_if_fenced_off(&mut self) -> Result<(), SidecarError> {
        let Some((cold, newest_epoch)) = self
            .copiers
            .iter()
            .find_map(|c| Some((c, c.figures.fenced_by()?)))
        else {
            return Ok(());
        };
        let fenced = SidecarError::ColdEpoch {
            url: cold.url().to_owned(),
            reason: format!(
                "fenced off: epoch {newest_epoch} was claimed after this sidecar's epoch {} \
                 (a standby took the job over); nothing more is committed",
                cold.figures.epoch.load(Ordering::Relaxed)
            ),
        };
        tracing::error!(error = %fenced, "stopping");
        let conns: Vec<ConnId> = self.replies.keys().copied().collect();
        for conn in conns {
            self.refuse(conn, fenced.to_string());
        }
        Err(fenced)
    }

    /// Commits every complete checkpoint that is next in line.
    async fn commit_ready(&mut self) -> Result<(), SidecarError> {
        while let Some(pending) = self.coord.take_ready() {
            let id = pending.checkpoint_id;
            self.stop_if_fenced_off()?;
            let completed_at = pending.completed_at.unwrap_or_else(Instant::now);
            let identity = self
                .coord
                .run_identity()
                .expect("cuts arrive only within a run");
            let previous = self.coord.last().cloned();
            let mut store = self.store.take().expect("one commit at a time");
            let metrics = Arc::clone(&self.metrics);
            let budget_bytes = self.compaction_budget_bytes;
            let (store, result) = tokio::task::spawn_blocking(move || {
                let result = commit_checkpoint(
                    &mut store,
                    previous.as_ref(),
                    pending,
                    identity,
                    &metrics,
                    budget_bytes,
                );
                (store, result)
            })
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
            self.store = Some(store);
            match result {
                Ok(record) => {
                    let latency = completed_at.elapsed();
                    self.metrics.commit_seconds.observe(latency);
                    let message = FromSidecar::Committed {
                        checkpoint_id: id,
                        cut_time: record.cut_time,
                        commit_latency_us: latency.as_micros() as u64,
                    };
                    for copier in &self.copiers {
                        copier.offer(&record);
                    }
                    self.coord.committed(record);
                    for conn in self.coord.current_connections() {
                        if let Some(reply) = self.replies.get(&conn) {
                            if reply.try_send(message.clone()).is_err() {
                                tracing::warn!(
                                    conn,
                                    checkpoint_id = id,
                                    "engine process is not reading acks"
                                );
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(checkpoint_id = id, error = %e, "checkpoint commit failed");
                    let conns: Vec<ConnId> = self.replies.keys().copied().collect();
                    for conn in conns {
                        self.refuse(
                            conn,
                            format!("the sidecar failed to commit checkpoint {id}: {e}"),
                        );
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }
}
