//! Integration tests of the `weir` crate (one binary, one module per area).

mod cli;
mod cluster;
mod eviction;
mod golden;
mod ingest;
mod log;
mod oracle;
mod support;
