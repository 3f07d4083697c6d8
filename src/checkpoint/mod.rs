//! Checkpoints: the on-disk store of consistent, incremental snapshots, and
//! the engine's and sidecar's sides of taking them.
//!
//! [`format`] is the data model and byte layout (delta and base files, the
//! commit stream); [`store`] writes them durably (the sidecar, one writer at
//! a time) and reads them back at restore (the engine).

pub mod cadence;
pub mod client;
pub mod cut;
pub mod format;
pub mod pressure;
pub mod resume;
pub mod sidecar;
pub mod stall;
pub mod store;
pub mod tier;
pub mod transport;
