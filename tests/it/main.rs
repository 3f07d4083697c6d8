//! Integration tests of the `weir` crate (one binary, one module per area).

mod oracle;
