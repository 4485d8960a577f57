//! What happens to mail, as typed events emitted once, where it happens:
//! a client connected or was refused, a message was accepted, each
//! recipient delivered, deferred or failed, a DSN queued, a message
//! removed. Log lines and metrics counters are subscribers of this
//! stream (see [`bus`]); the searchable message trace and reports
//! subscribe to it too. Client-supplied text in events is escaped by the
//! subscribers that write it out.
//!
//! May use `proto` (stages, status codes) and `queue` (ids); nothing
//! emits from below it. [`clean`] makes client-supplied text safe for a
//! log line, for every module that logs such text.

pub mod bus;
pub mod event;
mod log;

pub use log::clean;

pub use bus::{emit, subscribe, Subscriber};
pub use event::{Event, Listener, Removal};
