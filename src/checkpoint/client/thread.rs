//! The client thread: writes the queued shares to the sidecar and reads its
//! acknowledgements, until the engine closes the connection or it breaks.
//!
//! A write never blocks the thread for long: the socket has a send timeout
//! ([`WRITE_POLL`]), and while a frame cannot be written (the sidecar is
//! slow or stopped) the thread keeps reading acks and notices a close, so
//! acks are never left unread behind a full socket.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use super::{ClientError, DurableFile, Reconnect, Shared, Stream, MAX_REPLY_BYTES};
use crate::checkpoint::transport::{
    encode_frame, encode_frame_into, split_share, FrameBuffer, FromSidecar, Hello, ToSidecar,
    WorkerCut, MAX_PAYLOAD_BYTES,
};

/// How often the client thread looks for acks while no cut is queued.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// The socket's send timeout: how long a write may block before the thread
/// reads acks and tries again.
pub const WRITE_POLL: Duration = Duration::from_millis(50);

/// Checkpoints shipped and not acknowledged yet: when this process first
/// wrote a share of each, and how many bytes it wrote for it.
type Inflight = BTreeMap<u64, (Instant, u64)>;

/// How often a lost connection is tried again.
const RECONNECT_INTERVAL: Duration = Duration::from_millis(200);

/// The encoded frames of every share shipped and not acknowledged, by
/// checkpoint id (kept only when the thread reconnects).
type Resend = BTreeMap<u64, Vec<Vec<u8>>>;

/// The thread's end of the connection.
struct Conn<'a> {
    stream: Stream,
    acks: FrameBuffer,
    inflight: Inflight,
    resend: Option<Resend>,
    /// The first checkpoint this process shipped, and the newest of its own
    /// the sidecar acknowledged: a reconnecting hello names it as the base
    /// (an older commit in the store may be one a restore fell back from).
    first_shipped: Option<u64>,
    newest_own_ack: Option<u64>,
    shared: &'a Shared,
    /// The frame being written, its allocation kept from frame to frame
    /// (at most a share frame's budget, half of `MAX_PAYLOAD_BYTES`, and
    /// one message beyond it).
    frame: Vec<u8>,
}

/// The cuts the workers queue: share, when queued, files to make durable.
type Queue = Receiver<(WorkerCut, Instant, Vec<DurableFile>)>;

/// The client thread: writes queued cuts, reads acks, until closing (then it
/// drains the queue and says goodbye) or an error. With `reconnect`, a lost
/// connection is opened again and the shares not acknowledged are resent
/// (the sidecar ignores those of checkpoints it committed already).
pub(super) fn client_thread(
    stream: Stream,
    rx: &Queue,
    shared: &Shared,
    reconnect: Option<&Reconnect>,
) {
    if let Err(e) = stream.set_write_timeout(Some(WRITE_POLL)) {
        let e = ClientError::Lost(format!("setting the send timeout: {e}"));
        shared.status().error.get_or_insert(e);
        return;
    }
    let mut conn = Conn {
        stream,
        acks: FrameBuffer::new(MAX_REPLY_BYTES),
        inflight: Inflight::new(),
        resend: reconnect.as_ref().map(|_| Resend::new()),
        first_shipped: None,
        newest_own_ack: None,
        shared,
        frame: Vec::new(),
    };
    let result = loop {
        match pump(&mut conn, rx, shared) {
            Ok(()) => break Ok(()),
            Err(e @ ClientError::Lost(_)) if reconnect.is_some() => {
                let how = reconnect.expect("checked");
                if let Err(e) = conn.reconnect(how, &e) {
                    break Err(e);
                }
            }
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "checkpoint sidecar connection failed");
        shared.status().error.get_or_insert(e);
    }
    conn.stream.shutdown();
}

/// Writes queued cuts and reads acks until the goodbye (`Ok`) or an error.
fn pump(conn: &mut Conn<'_>, rx: &Queue, shared: &Shared) -> Result<(), ClientError> {
    loop {
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
                    return Err(ClientError::Output(format!(
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
                match conn.send_share(cut) {
                    Ok(bytes) => {
                        span.record("bytes", bytes);
                        span.record("elapsed_ms", crate::metrics::millis(started.elapsed()));
                        shared
                            .stats
                            .shipped_bytes
                            .fetch_add(bytes, Ordering::Relaxed);
                        conn.inflight.entry(id).or_insert((started, 0)).1 += bytes;
                    }
                    Err(e) => {
                        // The sidecar may have closed the connection after
                        // telling why: prefer its reason to the broken pipe.
                        return conn.read_acks().and(Err(e));
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if closing => {
                return conn.send(&ToSidecar::Goodbye).map(|_bytes| ());
            }
            // All senders dropped but not closing: keep reading acks.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(POLL_INTERVAL),
        }
        conn.read_acks()?;
    }
}

/// Updates per frame of a worker's share: a larger share is split into
/// [`ToSidecar::CutUpdates`] frames (half the frame limit, so the share's
/// partitions and outputs always fit in its last frame).
const SHARE_FRAME_BUDGET_BYTES: usize = MAX_PAYLOAD_BYTES / 2;

impl Conn<'_> {
    /// Writes a worker's share: its leading updates as cut updates frames if it
    /// is too large for one frame, then its worker cut; returns the bytes sent.
    /// When the thread reconnects, every frame of the share is encoded and
    /// kept before the first is written, so that a share cut off by a lost
    /// connection is resent whole.
    fn send_share(&mut self, mut cut: WorkerCut) -> Result<u64, ClientError> {
        let id = cut.checkpoint_id;
        self.first_shipped.get_or_insert(id);
        let mut bytes = 0;
        if self.resend.is_none() {
            for part in split_share(&mut cut, SHARE_FRAME_BUDGET_BYTES) {
                bytes += self.send(&ToSidecar::CutUpdates(part))?;
            }
            return Ok(bytes + self.send(&ToSidecar::WorkerCut(cut))?);
        }
        let mut frames = Vec::new();
        for part in split_share(&mut cut, SHARE_FRAME_BUDGET_BYTES) {
            frames.push(encode(&ToSidecar::CutUpdates(part))?);
        }
        frames.push(encode(&ToSidecar::WorkerCut(cut))?);
        let kept = self
            .resend
            .as_mut()
            .expect("checked above")
            .entry(id)
            .or_default();
        kept.extend(frames.iter().cloned());
        for frame in &frames {
            self.write_frame(frame)?;
            bytes += frame.len() as u64;
        }
        Ok(bytes)
    }

    /// Writes `message`; returns the frame's size in bytes.
    fn send(&mut self, message: &ToSidecar) -> Result<u64, ClientError> {
        let mut frame = std::mem::take(&mut self.frame);
        encode_frame_into(message, &mut frame).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let written = self.write_frame(&frame);
        let len = frame.len() as u64;
        self.frame = frame;
        written.map(|()| len)
    }

    /// Writes one encoded frame. While the socket takes nothing (the send
    /// timeout expires), reads the acks that arrived.
    fn write_frame(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        let lost = |e: io::Error| ClientError::Lost(format!("writing to the sidecar: {e}"));
        let mut written = 0;
        let mut blocked_since: Option<Instant> = None;
        while written < frame.len() {
            match self.stream.write(&frame[written..]) {
                Ok(0) => return Err(lost(io::ErrorKind::WriteZero.into())),
                Ok(n) => written += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    let since = *blocked_since.get_or_insert_with(Instant::now);
                    tracing::trace!(
                        blocked_ms = crate::metrics::millis(since.elapsed()),
                        "the sidecar takes no more bytes"
                    );
                    self.read_acks()?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(lost(e)),
            }
        }
        if let Some(since) = blocked_since {
            tracing::debug!(
                blocked_ms = crate::metrics::millis(since.elapsed()),
                "a write to the sidecar waited"
            );
        }
        self.stream.flush().map_err(lost)
    }

    /// Opens the connection again (for at most `how.timeout`, every
    /// [`RECONNECT_INTERVAL`]) after `cause` broke it, applies the commit the
    /// welcome reports, and resends the shares of every checkpoint after it.
    fn reconnect(&mut self, how: &Reconnect, cause: &ClientError) -> Result<(), ClientError> {
        let resend = self.resend.as_ref().expect("kept when reconnecting");
        tracing::warn!(
            error = %cause,
            timeout_s = how.timeout.as_secs(),
            unacknowledged_checkpoints = resend.len(),
            "lost the checkpoint sidecar: reconnecting (restart it on the same data dir); \
             the sources stop reading while checkpoints wait"
        );
        let deadline = Instant::now() + how.timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(ClientError::Lost(format!(
                    "{cause}; and no sidecar answered at {} within {} s",
                    how.addr,
                    how.timeout.as_secs()
                )));
            }
            std::thread::sleep(RECONNECT_INTERVAL);
            // Build on this run's newest commit, or on what it restored.
            let hello = Hello {
                restored_from: self.newest_own_ack.or(how.hello.restored_from),
                ..how.hello.clone()
            };
            let (stream, last_committed) = match super::open(&how.addr, hello) {
                Ok(opened) => opened,
                Err(e @ ClientError::Refused(_)) => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, "the sidecar is not back yet");
                    continue;
                }
            };
            if let Err(e) = stream.set_write_timeout(Some(WRITE_POLL)) {
                tracing::debug!(error = %e, "setting the send timeout");
                continue;
            }
            self.stream = stream;
            self.acks = FrameBuffer::new(MAX_REPLY_BYTES);
            if let Some((id, cut_time)) = last_committed {
                self.acknowledged(id, cut_time, 0);
            }
            // Taken out while written (writing reads acks, which prune the
            // kept shares), put back after, then pruned to the acks seen.
            let kept = self.resend.take().expect("kept when reconnecting");
            let written = kept
                .values()
                .flatten()
                .try_for_each(|f| self.write_frame(f));
            let resent_frames: usize = kept.values().map(Vec::len).sum();
            let mut kept = kept;
            if let Some(acked) = self.newest_own_ack {
                kept.retain(|&id, _| id > acked);
            }
            self.resend = Some(kept);
            match written {
                Ok(()) => {
                    tracing::info!(
                        addr = %how.addr,
                        resent_frames,
                        "reconnected to the checkpoint sidecar"
                    );
                    return Ok(());
                }
                Err(e) => tracing::debug!(error = %e, "resending to the sidecar failed"),
            }
        }
    }

    /// The sidecar committed `checkpoint_id`: updates the status and the
    /// statistics, and forgets the shares kept for resending up to it.
    fn acknowledged(&mut self, checkpoint_id: u64, cut_time: u64, commit_latency_us: u64) {
        if self
            .first_shipped
            .is_some_and(|first| checkpoint_id >= first)
        {
            self.newest_own_ack = self.newest_own_ack.max(Some(checkpoint_id));
        }
        let mut status = self.shared.status();
        if status
            .last_committed
            .is_none_or(|(id, _)| id < checkpoint_id)
        {
            status.last_committed = Some((checkpoint_id, cut_time));
        }
        status.last_commit_latency_us = Some(commit_latency_us);
        drop(status);
        record_ack(
            self.shared,
            &mut self.inflight,
            checkpoint_id,
            cut_time,
            commit_latency_us,
        );
        if let Some(resend) = &mut self.resend {
            resend.retain(|&id, _| id > checkpoint_id);
        }
    }

    /// Reads whatever acks have arrived, without blocking.
    fn read_acks(&mut self) -> Result<(), ClientError> {
        let (stream, acks) = (&mut self.stream, &mut self.acks);
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
            match self.acks.pop::<FromSidecar>() {
                Ok(Some(FromSidecar::Committed {
                    checkpoint_id,
                    cut_time,
                    commit_latency_us,
                })) => self.acknowledged(checkpoint_id, cut_time, commit_latency_us),
                Ok(Some(FromSidecar::Refused { reason })) => {
                    return Err(ClientError::Refused(reason))
                }
                Ok(Some(other)) => {
                    return Err(ClientError::Protocol(format!("unexpected {other:?}")))
                }
                Ok(None) => break,
                Err(e) => return Err(ClientError::Lost(e.to_string())),
            }
        }
        read_result
    }
}

/// Encodes `message` as one frame.
fn encode(message: &ToSidecar) -> Result<Vec<u8>, ClientError> {
    encode_frame(message).map_err(|e| ClientError::Protocol(e.to_string()))
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
    stats.stall.clock.acked(checkpoint_id, Instant::now());
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
