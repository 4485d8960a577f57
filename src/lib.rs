//! pigeon: an SMTP mail transfer agent.
//!
//! # Layout
//! - [`config`]: typed configuration, parsed once and validated. A leaf.
//! - [`proto`]: sans-IO SMTP: command and address parsers, replies, the server
//!   session state machine and the DATA/BDAT readers. No tokio, no files, no clock. A leaf.
//! - [`policy`]: every accept/refuse decision, as pure functions returning a reply.
//! - [`auth`]: users and password checks; [`directory`]: which local
//!   addresses exist and where their mail goes (users' mailboxes, aliases).
//! - [`live`]: the reloadable snapshot of configuration, users, directory
//!   and policy that the server and delivery share.
//! - [`queue`]: all on-disk state: durable enqueue, recovery, per-recipient status.
//! - [`server`]: the tokio shell: listeners, connection driver, limits, deadlines.
//! - [`delivery`]: the scheduler over the queue and its transports (remote
//!   SMTP via [`dns`]; local: Maildir, LMTP, alias expansion); DSNs;
//!   retries. [`control`] carries admin requests to it.
//!
//! - [`system`]: the process and the OS: systemd notify, inherited sockets,
//!   dropping root. [`metrics`]: counters and the Prometheus endpoint.
//!   [`sendmail`]: the sendmail command for local programs.
//!
//! Dependencies run one way: `server` → `policy`/`proto`/`queue` → `config`.

pub mod auth;
pub mod checks;
pub mod cli;
pub mod config;
pub mod control;
pub mod delivery;
pub mod directory;
pub mod dns;
pub mod live;
pub mod message;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod proto;
pub mod queue;
pub mod sendmail;
pub mod server;
pub mod state;
pub mod system;
pub mod telemetry;
pub mod trace;
