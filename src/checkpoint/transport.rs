//! Framed messages between engine processes and the checkpoint sidecar.
//!
//! ```text
//! frame (12-byte header + payload), all integers little-endian:
//!   magic u16 = 0x5257 ("WR") | version u8 = 1 | kind u8 | len u32 | crc32c(payload) u32 | payload
//! ```
//!
//! `kind` names the message ([`ToSidecar`] 0x01 hello, 0x02 worker cut, 0x03
//! goodbye, 0x04 cut updates; [`FromSidecar`] 0x81 welcome, 0x82 committed,
//! 0x83 refused). A worker's share larger than half a frame goes as cut
//! updates frames followed by its worker cut ([`split_share`]). The
//! payload starts with the kind again (so that the checksum covers it: a
//! flipped kind byte cannot turn one valid message into another) followed
//! by the fields, hand-encoded (layout in `codec`: plain little-endian, with
//! every length checked before allocating). A reader checks, in this order:
//! magic, version, `len <= max` (before allocating anything), the payload
//! checksum, and only then decodes. Garbage is an error, never a panic, and a
//! reader never allocates more than the limit it was given (the sidecar reads
//! a hello with a much smaller limit than [`MAX_PAYLOAD_BYTES`], so an
//! unauthenticated peer cannot make it allocate 64 MiB).
//!
//! The same functions serve the blocking client ([`read_frame`],
//! [`write_frame`]), the tokio sidecar ([`read_frame_async`],
//! [`write_frame_async`]) and in-memory buffers ([`decode_frame`],
//! [`FrameBuffer`]).

use std::io::{self, Read, Write};

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::checkpoint::format::{OutputLength, PartitionResume, PersistedUpdate};

mod codec;
mod split;
pub mod token;
mod wire;
use codec::{Dec, Enc};
pub use split::{encoded_bytes, encoded_update_bytes, split_share};

/// First two bytes of every frame (`b"WR"`, read as a little-endian u16).
pub const FRAME_MAGIC: u16 = u16::from_le_bytes(*b"WR");
/// Frame format version written and accepted by this code.
pub const FRAME_VERSION: u8 = 1;
/// Length of a frame header.
pub const FRAME_HEADER_LEN_BYTES: usize = 12;
/// The largest payload any frame may carry (64 MiB).
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;

/// Why a frame could not be read or decoded.
#[derive(Debug, Error)]
pub enum FrameError {
    /// The header announces a payload larger than the reader's limit.
    #[error("frame payload of {len_bytes} bytes exceeds the limit of {max_bytes} bytes")]
    TooLarge {
        /// Announced payload length.
        len_bytes: u64,
        /// The limit in force.
        max_bytes: usize,
    },
    /// The frame does not start with [`FRAME_MAGIC`].
    #[error("bad frame magic {found:#06x} (expected {FRAME_MAGIC:#06x}): not a weir peer?")]
    BadMagic {
        /// The two bytes found, as a little-endian u16.
        found: u16,
    },
    /// The frame has a version this code does not speak.
    #[error("unsupported frame version {found} (this build speaks {FRAME_VERSION})")]
    BadVersion {
        /// The version found.
        found: u8,
    },
    /// The payload does not match its checksum.
    #[error("frame payload checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    BadChecksum {
        /// Checksum in the header.
        stored: u32,
        /// Checksum of the bytes received.
        computed: u32,
    },
    /// The input ended inside a frame.
    #[error("frame truncated: needed {needed_bytes} bytes, got {got_bytes}")]
    Truncated {
        /// Bytes the frame needs (header, or header and payload).
        needed_bytes: usize,
        /// Bytes available.
        got_bytes: usize,
    },
    /// Reading or writing the stream failed.
    #[error("frame i/o: {0}")]
    Io(#[from] io::Error),
    /// The payload passed its checksum but is not a valid message.
    #[error("undecodable frame payload (kind {kind:#04x}): {reason}")]
    Decode {
        /// The frame kind.
        kind: u8,
        /// What was wrong.
        reason: String,
    },
}

/// The first message of a connection: who the engine process is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Contents of the token file (TCP); empty over a Unix socket.
    pub token: Vec<u8>,
    /// Index of the engine process in the run.
    pub process: u32,
    /// Number of timely workers of the whole run, all processes together.
    pub workers_total: u32,
    /// Fingerprint of the query and its parameters; all processes must agree.
    pub query_fingerprint: u64,
    /// Incarnation of the run; a newer epoch supersedes an older one.
    pub epoch: u64,
    /// The checkpoint the engine restored (`None`: it started from
    /// nothing). When it is older than the newest commit (the newest was
    /// damaged), the next checkpoint builds on it.
    pub restored_from: Option<u64>,
}

/// One worker's share of cut `cut_time`: its consolidated updates for times in
/// `[prev_cut_time, cut_time)`, the resume points of its partitions, and its
/// output files' lengths at the cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerCut {
    /// Global index of the worker (`0..workers_total`).
    pub worker: u32,
    /// Checkpoint id: the last committed id plus one, plus one per cut.
    pub checkpoint_id: u64,
    /// The previous cut's time (ms); updates start here.
    pub prev_cut_time: u64,
    /// This cut's time (ms); updates end before it.
    pub cut_time: u64,
    /// How long updates stay relevant (ms): older ones may be compacted away.
    pub retention_ms: u64,
    /// The worker's consolidated updates for `[prev_cut_time, cut_time)`.
    pub updates: Vec<PersistedUpdate>,
    /// Where each of the worker's partitions resumes for this cut.
    pub partitions: Vec<PartitionResume>,
    /// The worker's output files' lengths at the cut.
    pub outputs: Vec<OutputLength>,
}

/// More updates of one worker's share of a checkpoint, sent before the
/// share's [`WorkerCut`] when the share is too large for one frame (see
/// [`split_share`]); the sidecar holds them until the `WorkerCut` arrives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CutUpdates {
    /// Global index of the worker.
    pub worker: u32,
    /// The checkpoint the updates belong to.
    pub checkpoint_id: u64,
    /// Some of the worker's updates for the checkpoint.
    pub updates: Vec<PersistedUpdate>,
}

/// A message from an engine process to the sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToSidecar {
    /// First message of a connection.
    Hello(Hello),
    /// One worker's share of a checkpoint (its last frame, if split).
    WorkerCut(WorkerCut),
    /// Leading updates of a worker's share too large for one frame.
    CutUpdates(CutUpdates),
    /// The process is done; it will send nothing more.
    Goodbye,
}

/// A message from the sidecar to an engine process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromSidecar {
    /// The hello was accepted.
    Welcome {
        /// `(checkpoint id, cut time)` of the newest committed checkpoint.
        last_committed: Option<(u64, u64)>,
    },
    /// A checkpoint is durable.
    Committed {
        /// Its id.
        checkpoint_id: u64,
        /// Its cut time (ms).
        cut_time: u64,
        /// From the arrival of its last worker cut to its durable commit record.
        commit_latency_us: u64,
    },
    /// The sidecar refuses this peer (bad token, disagreeing run, protocol
    /// violation, superseded epoch); it closes the connection after this.
    Refused {
        /// Why.
        reason: String,
    },
}

/// A message that can travel in a frame ([`ToSidecar`] or [`FromSidecar`]).
pub trait Message: wire::Wire {
    /// The frame kind of this message.
    fn frame_kind(&self) -> u8 {
        self.kind()
    }
}

impl Message for ToSidecar {}
impl Message for FromSidecar {}

/// Encodes `message` as one frame; [`FrameError::TooLarge`] if its payload
/// exceeds [`MAX_PAYLOAD_BYTES`].
pub fn encode_frame<M: Message>(message: &M) -> Result<Vec<u8>, FrameError> {
    let mut frame = Vec::with_capacity(64);
    encode_frame_into(message, &mut frame)?;
    Ok(frame)
}

/// As [`encode_frame`], into `frame` (cleared first), whose allocation a
/// sender reuses from frame to frame: a share's frames of tens of megabytes
/// grown by doubling into fresh memory had the kernel zeroing pages for a
/// third of the sending thread's time.
pub fn encode_frame_into<M: Message>(message: &M, frame: &mut Vec<u8>) -> Result<(), FrameError> {
    frame.clear();
    let mut enc = Enc(std::mem::take(frame));
    enc.0.resize(FRAME_HEADER_LEN_BYTES, 0);
    enc.u8(message.kind());
    message.encode_payload(&mut enc);
    *frame = enc.0;
    let len = frame.len() - FRAME_HEADER_LEN_BYTES;
    if len > MAX_PAYLOAD_BYTES {
        return Err(FrameError::TooLarge {
            len_bytes: len as u64,
            max_bytes: MAX_PAYLOAD_BYTES,
        });
    }
    let crc = crc32c::crc32c(&frame[FRAME_HEADER_LEN_BYTES..]);
    frame[0..2].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    frame[2] = FRAME_VERSION;
    frame[3] = message.kind();
    frame[4..8].copy_from_slice(&(len as u32).to_le_bytes());
    frame[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    kind: u8,
    len_bytes: usize,
    crc32c: u32,
}

/// Checks magic, version and length limit of a header.
fn parse_header(h: &[u8; FRAME_HEADER_LEN_BYTES], max_bytes: usize) -> Result<Header, FrameError> {
    let magic = u16::from_le_bytes([h[0], h[1]]);
    if magic != FRAME_MAGIC {
        return Err(FrameError::BadMagic { found: magic });
    }
    if h[2] != FRAME_VERSION {
        return Err(FrameError::BadVersion { found: h[2] });
    }
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let max_bytes = max_bytes.min(MAX_PAYLOAD_BYTES);
    if u64::from(len) > max_bytes as u64 {
        return Err(FrameError::TooLarge {
            len_bytes: u64::from(len),
            max_bytes,
        });
    }
    Ok(Header {
        kind: h[3],
        len_bytes: len as usize,
        crc32c: u32::from_le_bytes([h[8], h[9], h[10], h[11]]),
    })
}

/// Verifies the payload checksum, then decodes, then checks the kind.
fn check_and_decode<M: Message>(header: Header, payload: &[u8]) -> Result<M, FrameError> {
    let computed = crc32c::crc32c(payload);
    if computed != header.crc32c {
        return Err(FrameError::BadChecksum {
            stored: header.crc32c,
            computed,
        });
    }
    let mut dec = Dec::new(payload);
    dec.u8("kind")
        .and_then(|kind| {
            if kind == header.kind {
                Ok(())
            } else {
                Err(format!(
                    "payload kind {kind:#04x} differs from the header's"
                ))
            }
        })
        .and_then(|()| M::decode_payload(header.kind, &mut dec))
        .and_then(|message| dec.finish().map(|()| message))
        .map_err(|reason| FrameError::Decode {
            kind: header.kind,
            reason,
        })
}

/// Decodes the first frame of `bytes`, returning the message and the number
/// of bytes it took. Fails with [`FrameError::Truncated`] if `bytes` ends
/// inside the frame.
pub fn decode_frame<M: Message>(bytes: &[u8], max_bytes: usize) -> Result<(M, usize), FrameError> {
    let Some(head) = bytes.first_chunk::<FRAME_HEADER_LEN_BYTES>() else {
        return Err(FrameError::Truncated {
            needed_bytes: FRAME_HEADER_LEN_BYTES,
            got_bytes: bytes.len(),
        });
    };
    let header = parse_header(head, max_bytes)?;
    let total = FRAME_HEADER_LEN_BYTES + header.len_bytes;
    let Some(payload) = bytes.get(FRAME_HEADER_LEN_BYTES..total) else {
        return Err(FrameError::Truncated {
            needed_bytes: total,
            got_bytes: bytes.len(),
        });
    };
    Ok((check_and_decode(header, payload)?, total))
}

/// Fills `buf` from `reader`; `Ok(n < buf.len())` only at end of input.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Reads one frame from a blocking stream. `Ok(None)` is a clean end of the
/// stream at a frame boundary; an end inside a frame is
/// [`FrameError::Truncated`].
pub fn read_frame<M: Message>(
    reader: &mut impl Read,
    max_bytes: usize,
) -> Result<Option<M>, FrameError> {
    let mut head = [0u8; FRAME_HEADER_LEN_BYTES];
    match read_full(reader, &mut head)? {
        0 => return Ok(None),
        FRAME_HEADER_LEN_BYTES => {}
        got_bytes => {
            return Err(FrameError::Truncated {
                needed_bytes: FRAME_HEADER_LEN_BYTES,
                got_bytes,
            })
        }
    }
    let header = parse_header(&head, max_bytes)?;
    let mut payload = vec![0u8; header.len_bytes];
    let got = read_full(reader, &mut payload)?;
    if got < header.len_bytes {
        return Err(FrameError::Truncated {
            needed_bytes: FRAME_HEADER_LEN_BYTES + header.len_bytes,
            got_bytes: FRAME_HEADER_LEN_BYTES + got,
        });
    }
    check_and_decode(header, &payload).map(Some)
}

/// Writes one frame to a blocking stream (not flushed).
pub fn write_frame<M: Message>(writer: &mut impl Write, message: &M) -> Result<(), FrameError> {
    writer.write_all(&encode_frame(message)?)?;
    Ok(())
}

/// Reads one frame from an async stream; as [`read_frame`].
pub async fn read_frame_async<M: Message>(
    reader: &mut (impl AsyncRead + Unpin),
    max_bytes: usize,
) -> Result<Option<M>, FrameError> {
    read_frame_async_into(reader, max_bytes, &mut Vec::new()).await
}

/// As [`read_frame_async`], reading the payload into `payload`, whose
/// allocation a connection reuses from frame to frame: shares of many
/// megabytes would otherwise each fault in (and have the kernel zero) fresh
/// pages.
pub async fn read_frame_async_into<M: Message>(
    reader: &mut (impl AsyncRead + Unpin),
    max_bytes: usize,
    payload: &mut Vec<u8>,
) -> Result<Option<M>, FrameError> {
    let mut head = [0u8; FRAME_HEADER_LEN_BYTES];
    let mut filled = 0;
    while filled < head.len() {
        match reader.read(&mut head[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => {
                return Err(FrameError::Truncated {
                    needed_bytes: FRAME_HEADER_LEN_BYTES,
                    got_bytes: filled,
                })
            }
            n => filled += n,
        }
    }
    let header = parse_header(&head, max_bytes)?;
    payload.clear();
    payload.resize(header.len_bytes, 0);
    let mut got = 0;
    while got < payload.len() {
        match reader.read(&mut payload[got..]).await? {
            0 => {
                return Err(FrameError::Truncated {
                    needed_bytes: FRAME_HEADER_LEN_BYTES + header.len_bytes,
                    got_bytes: FRAME_HEADER_LEN_BYTES + got,
                })
            }
            n => got += n,
        }
    }
    check_and_decode(header, payload).map(Some)
}

/// Writes one frame to an async stream and flushes it.
pub async fn write_frame_async<M: Message>(
    writer: &mut (impl AsyncWrite + Unpin),
    message: &M,
) -> Result<(), FrameError> {
    writer.write_all(&encode_frame(message)?).await?;
    writer.flush().await?;
    Ok(())
}

/// Incremental decoder for a non-blocking reader: push the bytes as they
/// arrive, pop whole frames. Holds at most one frame plus one read's worth.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    max_bytes: usize,
}

impl FrameBuffer {
    /// A buffer accepting payloads of at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_bytes: max_bytes.min(MAX_PAYLOAD_BYTES),
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet form a whole frame (or have not been popped).
    pub fn pending_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed. A bad
    /// header is reported as soon as the header is complete.
    pub fn pop<M: Message>(&mut self) -> Result<Option<M>, FrameError> {
        match decode_frame(&self.buf, self.max_bytes) {
            Ok((message, used)) => {
                self.buf.drain(..used);
                Ok(Some(message))
            }
            Err(FrameError::Truncated { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
