//! Sans-IO SMTP protocol core. No tokio, no files, no sockets, no clock:
//! bytes in, replies and actions out. Imports only [`crate::message`].
//! Untrusted bytes reach every function here.

pub mod address;
pub mod client;
#[cfg(test)]
mod client_tests;
pub mod command;
pub mod data;
pub mod envelope;
pub mod reply;
pub mod sasl;
pub mod session;
#[cfg(test)]
mod session_tests;
pub mod stage;

pub use envelope::{BodyType, Envelope, Notify, Recipient, Ret};
pub use reply::Reply;
pub use session::{Action, AuthOutcome, Decision, Host, ServerSession, SessionConfig};
pub use stage::{Stage, Verdict};
