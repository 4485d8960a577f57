//! pigeon: an SMTP mail transfer agent.
//!
//! # Layout
//!
//! Shared leaves:
//! - [`config`]: typed configuration, parsed once and validated, one file
//!   per section. A leaf.
//! - [`message`]: RFC 5322 knowledge (header sections, fields, dates, the
//!   header edits decisions add). A leaf.
//! - [`proto`]: sans-IO SMTP in both directions: parsers, replies with
//!   typed status codes, the server session (every outside decision a
//!   suspension: [`proto::Stage`] → [`proto::Verdict`]) and the client
//!   session. Imports only `message`. No tokio, no files, no clock.
//! - [`net`]: tokio glue both directions share: the stream, the one client
//!   driver, the clock. [`dns`]: the resolver.
//!
//! Inbound:
//! - [`server`]: listeners, admission, the connection driver, the answers
//!   to the session's decisions, hand-off of content to the queue.
//! - [`checks`]: facts for decisions, gathered under deadlines (never a
//!   reply). [`policy`]: pure decisions, the only code that refuses.
//! - [`users`]: who may log in, password checks, which local addresses
//!   exist ([`users::directory`]).
//! - [`signing`]: DKIM keys, the streaming DKIM signer of mail this server
//!   originates, ARC sealing of mail it forwards.
//!
//! State:
//! - [`queue`]: messages and their per-recipient status, durable before
//!   250. [`state`]: small tables beside it (greylist, policy caches,
//!   counters).
//!
//! Outbound:
//! - [`delivery`]: the manager (due loop, limits, control socket), the
//!   pure per-attempt logic, routing, the TLS decision, the transports
//!   (remote SMTP, Maildir, LMTP), DSNs.
//!
//! Around them:
//! - [`trace`]: typed events emitted once where things happen; log lines
//!   and metrics subscribe. [`ops`]: metrics exposition, logging set-up,
//!   systemd and privileges. [`live`]: the reloadable snapshot.
//!   [`sendmail`]: the local submission client. [`cli`]: the command line.
//!
//! # Import rules
//!
//! Checked by `tests/layout.rs`:
//! - `config`, `message` import nothing of the crate; `proto` imports only
//!   `message`;
//! - `policy` never uses `dns`, `state`, `queue`, `server` or `delivery`;
//! - `checks` may use `dns`, `state`, `message`, `config` and `proto`
//!   (and the policy's types), never `queue`, `server` or `delivery`;
//! - `server` never reaches `delivery`, and `delivery` never reaches
//!   `server`;
//! - `queue` and `state` never reach `delivery`, `server` or `checks`;
//! - `trace` never reaches `ops`, `server` or `delivery` (they emit into it);
//! - `signing` uses only `config` and `message`;
//! - nothing imports `cli`.
//!
//! No `unwrap`/`expect` outside tests: a panic on the server path is a
//! denial of service.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod checks;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod dns;
pub mod live;
pub mod message;
pub mod net;
pub mod ops;
pub mod policy;
pub mod proto;
pub mod queue;
pub mod sendmail;
pub mod server;
pub mod signing;
pub mod state;
pub mod trace;
pub mod users;
