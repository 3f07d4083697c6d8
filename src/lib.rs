//! weir: windowed stream computations on differential dataflow.
//!
//! The runtime around the queries of `weir-dataflows`: the input log, the
//! source and sink operators, the run driver and the command line.
#![forbid(unsafe_code)]

pub mod job;
pub mod kafka;
pub mod memory;
pub mod metrics;

pub mod checkpoint;
pub mod csv_input;
pub mod driver;
pub mod event;
pub mod explain;
pub mod gen;
pub mod ingest;
pub mod inspect;
pub mod log;
pub mod log_feed;
pub mod nats;
pub mod nexmark;
pub mod panic_message;
pub mod release;
pub mod run;
pub mod sink;
pub mod size;
pub mod source;
pub mod storage;
