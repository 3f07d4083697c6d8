//! Integration tests of the `weir` crate (one binary, one module per area).

mod checkpoint_store;
mod cli;
mod cluster;
mod distinct;
mod emit_changes;
mod eviction;
mod golden;
mod golden_restore;
mod idle;
mod ingest;
mod kafka;
mod kill_clock;
mod layers;
mod log;
mod nats;
mod nexmark;
mod oracle;
mod prometheus;
mod recovery;
mod retention;
mod sidecar;
mod sidecar_stall;
mod sources;
mod spill;
mod support;
mod topk;
