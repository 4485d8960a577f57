//! RFC 5322 and MIME knowledge, pure: the one home for what pigeon knows
//! about header sections (scanning a message as it streams in, finding,
//! unfolding and folding fields), dates, and the header edits a decision
//! prepends to a message. A leaf: imports nothing from the crate.
//! Untrusted bytes (message content) reach everything here; every
//! function is bounded and never panics.

pub mod auth_results;
pub mod date;
pub mod edit;
pub mod header;

pub use date::rfc5322_date;
pub use edit::HeaderEdits;
pub use header::{header_section, HeaderScan, MAX_HEADER_SECTION};
