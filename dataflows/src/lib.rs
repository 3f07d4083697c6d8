//! weir's queries, as pure functions from input collections to output streams.
//!
//! Nothing in this crate does I/O. A query is split in two parts:
//! - a [`combiner::LocalCombiner`] that the source operator (in the `weir`
//!   crate) feeds with accepted events on each worker, before any exchange:
//!   it pre-aggregates per key and time bucket and releases a partial once
//!   the local watermark has passed its bucket;
//! - a dataflow over the collection of those partials that exchanges them by
//!   key and produces final result rows exactly once, when the frontier passes
//!   the end of the window.
//!
//! [`reference`] holds the obviously-correct, single-threaded implementation
//! of the same semantics that the tests compare against.

pub mod agg;
pub mod aggregates;
pub mod combiner;
pub mod duration;
pub mod emit;
pub mod gauge;
pub mod key;
pub mod nexmark;
pub mod pane_store;
pub mod reference;
pub mod row;
pub mod session;
pub mod sketch;
pub mod sketch_windows;
pub mod sliding;
pub mod tumbling;
pub mod window;

pub use agg::{Agg, Sum};
pub use key::Key;
pub use row::{LateRow, WindowRow};
pub use window::WindowSpec;

/// The largest event time (ms) weir accepts. Window ends and retraction times
/// are computed by adding window sizes to event times; this bound keeps that
/// arithmetic far away from `u64::MAX` (it is year ~36 million AD).
pub const MAX_EVENT_TS_MS: u64 = 1 << 60;
