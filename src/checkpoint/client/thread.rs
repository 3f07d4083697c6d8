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

use super::{ClientError, DurableFile, Shared, Stream, MAX_REPLY_BYTES};
use crate::checkpoint::transport::{
    encode_frame, split_share, FrameBuffer, FromSidecar, ToSidecar, WorkerCut, MAX_PAYLOAD_BYTES,
};

/// How often the client thread looks for acks while no cut is queued.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// The socket's send timeout: how long a write may block before the thread
/// reads acks and tries again.
pub const WRITE_POLL: Duration = Duration::from_millis(50);

/// Checkpoints shipped and not acknowledged yet: when this process first
/// wrote a share of each, and how many bytes it wrote for it.
type Inflight = BTreeMap<u64, (Instant, u64)>;

/// The thread's end of the connection.
struct Conn<'a> {
    stream: Stream,
    acks: FrameBuffer,
    inflight: Inflight,
    shared: &'a Shared,
}

/// The client thread: writes queued cuts, reads acks, until closing (then it
/// drains the queue and says goodbye) or an error.
pub(super) fn client_thread(
    stream: Stream,
    rx: &Receiver<(WorkerCut, Instant, Vec<DurableFile>)>,
    shared: &Shared,
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
        shared,
    };
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
                        break conn.read_acks().and(Err(e));
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) if closing => {
                break conn.send(&ToSidecar::Goodbye).map(|_bytes| ());
            }
            // All senders dropped but not closing: keep reading acks.
            Err(RecvTimeoutError::Disconnected) => std::thread::sleep(POLL_INTERVAL),
        }
        if let Err(e) = conn.read_acks() {
            break Err(e);
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "checkpoint sidecar connection failed");
        shared.status().error.get_or_insert(e);
    }
    conn.stream.shutdown();
}

/// Updates per frame of a worker's share: a larger share is split into
/// [`ToSidecar::CutUpdates`] frames (half the frame limit, so the share's
/// partitions and outputs always fit in its last frame).
const SHARE_FRAME_BUDGET_BYTES: usize = MAX_PAYLOAD_BYTES / 2;

impl Conn<'_> {
    /// Writes a worker's share: its leading updates as cut updates frames if it
    /// is too large for one frame, then its worker cut; returns the bytes sent.
    fn send_share(&mut self, mut cut: WorkerCut) -> Result<u64, ClientError> {
        let mut bytes = 0;
        for part in split_share(&mut cut, SHARE_FRAME_BUDGET_BYTES) {
            bytes += self.send(&ToSidecar::CutUpdates(part))?;
        }
        Ok(bytes + self.send(&ToSidecar::WorkerCut(cut))?)
    }

    /// Writes `message`; returns the frame's size in bytes. While the socket
    /// takes nothing (the send timeout expires), reads the acks that arrived.
    fn send(&mut self, message: &ToSidecar) -> Result<u64, ClientError> {
        let frame = encode_frame(message).map_err(|e| ClientError::Protocol(e.to_string()))?;
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
        self.stream.flush().map_err(lost)?;
        Ok(frame.len() as u64)
    }

    /// Reads whatever acks have arrived, without blocking.
    fn read_acks(&mut self) -> Result<(), ClientError> {
        let (stream, acks, shared, inflight) = (
            &mut self.stream,
            &mut self.acks,
            self.shared,
            &mut self.inflight,
        );
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
