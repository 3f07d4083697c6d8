//! The payload of each message kind: its frame kind byte and its fields,
//! through the hand-written codec (`codec`), for [`ToSidecar`] and
//! [`FromSidecar`].

use super::codec::{Dec, Enc};
use super::{CutUpdates, FromSidecar, Hello, ToSidecar, WorkerCut};

/// The payload codec of a message (sealed: this module is private to the
/// transport, so only its messages implement it).
pub trait Wire: Sized {
    /// The frame kind.
    fn kind(&self) -> u8;
    /// Appends the payload.
    fn encode_payload(&self, enc: &mut Enc);
    /// Decodes a payload of frame kind `kind`.
    fn decode_payload(kind: u8, dec: &mut Dec<'_>) -> Result<Self, String>;
}

const KIND_HELLO: u8 = 0x01;
const KIND_WORKER_CUT: u8 = 0x02;
const KIND_GOODBYE: u8 = 0x03;
const KIND_CUT_UPDATES: u8 = 0x04;
const KIND_WELCOME: u8 = 0x81;
const KIND_COMMITTED: u8 = 0x82;
const KIND_REFUSED: u8 = 0x83;

impl Wire for ToSidecar {
    fn kind(&self) -> u8 {
        match self {
            ToSidecar::Hello(_) => KIND_HELLO,
            ToSidecar::WorkerCut(_) => KIND_WORKER_CUT,
            ToSidecar::Goodbye => KIND_GOODBYE,
            ToSidecar::CutUpdates(_) => KIND_CUT_UPDATES,
        }
    }

    fn encode_payload(&self, enc: &mut Enc) {
        match self {
            ToSidecar::Hello(h) => {
                enc.bytes(&h.token);
                enc.u32(h.process);
                enc.u32(h.workers_total);
                enc.u64(h.query_fingerprint);
                enc.u64(h.epoch);
                enc.opt_u64(h.restored_from);
            }
            ToSidecar::WorkerCut(c) => {
                enc.u32(c.worker);
                enc.u64(c.checkpoint_id);
                enc.u64(c.prev_cut_time);
                enc.u64(c.cut_time);
                enc.u64(c.retention_ms);
                enc.updates(&c.updates);
                enc.partitions(&c.partitions);
                enc.outputs(&c.outputs);
            }
            ToSidecar::CutUpdates(c) => {
                enc.u32(c.worker);
                enc.u64(c.checkpoint_id);
                enc.updates(&c.updates);
            }
            ToSidecar::Goodbye => {}
        }
    }

    fn decode_payload(kind: u8, d: &mut Dec<'_>) -> Result<Self, String> {
        Ok(match kind {
            KIND_HELLO => ToSidecar::Hello(Hello {
                token: d.bytes("token")?,
                process: d.u32("process")?,
                workers_total: d.u32("workers total")?,
                query_fingerprint: d.u64("query fingerprint")?,
                epoch: d.u64("epoch")?,
                restored_from: d.opt_u64("restored from")?,
            }),
            KIND_WORKER_CUT => ToSidecar::WorkerCut(WorkerCut {
                worker: d.u32("worker")?,
                checkpoint_id: d.u64("checkpoint id")?,
                prev_cut_time: d.u64("previous cut time")?,
                cut_time: d.u64("cut time")?,
                retention_ms: d.u64("retention")?,
                updates: d.updates()?,
                partitions: d.partitions()?,
                outputs: d.outputs()?,
            }),
            KIND_CUT_UPDATES => ToSidecar::CutUpdates(CutUpdates {
                worker: d.u32("worker")?,
                checkpoint_id: d.u64("checkpoint id")?,
                updates: d.updates()?,
            }),
            KIND_GOODBYE => ToSidecar::Goodbye,
            other => return Err(format!("unknown message kind {other:#04x} for the sidecar")),
        })
    }
}

impl Wire for FromSidecar {
    fn kind(&self) -> u8 {
        match self {
            FromSidecar::Welcome { .. } => KIND_WELCOME,
            FromSidecar::Committed { .. } => KIND_COMMITTED,
            FromSidecar::Refused { .. } => KIND_REFUSED,
        }
    }

    fn encode_payload(&self, enc: &mut Enc) {
        match self {
            FromSidecar::Welcome { last_committed } => match last_committed {
                None => enc.u8(0),
                Some((id, cut_time)) => {
                    enc.u8(1);
                    enc.u64(*id);
                    enc.u64(*cut_time);
                }
            },
            FromSidecar::Committed {
                checkpoint_id,
                cut_time,
                commit_latency_us,
            } => {
                enc.u64(*checkpoint_id);
                enc.u64(*cut_time);
                enc.u64(*commit_latency_us);
            }
            FromSidecar::Refused { reason } => enc.str(reason),
        }
    }

    fn decode_payload(kind: u8, d: &mut Dec<'_>) -> Result<Self, String> {
        Ok(match kind {
            KIND_WELCOME => FromSidecar::Welcome {
                last_committed: match d.u8("last committed")? {
                    0 => None,
                    1 => Some((d.u64("last committed id")?, d.u64("last committed cut")?)),
                    tag => return Err(format!("last committed: bad option tag {tag}")),
                },
            },
            KIND_COMMITTED => FromSidecar::Committed {
                checkpoint_id: d.u64("checkpoint id")?,
                cut_time: d.u64("cut time")?,
                commit_latency_us: d.u64("commit latency")?,
            },
            KIND_REFUSED => FromSidecar::Refused {
                reason: d.string("reason")?,
            },
            other => {
                return Err(format!(
                    "unknown message kind {other:#04x} from the sidecar"
                ))
            }
        })
    }
}
