//! The points of an SMTP dialog where the world outside the session
//! decides, and the shape of a decision. The session stops at each
//! [`Stage`] with [`super::Action::Decide`]; the driver gathers what it
//! needs, asks the policy, and answers with
//! [`super::ServerSession::decided`].

use super::reply::Reply;
use crate::message::HeaderEdits;

/// Where a decision is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// A client has connected: before the greeting, so that a blocklist
    /// can refuse (RFC 5321 §3.1: 554 instead of 220) or hold it.
    Connect,
    /// EHLO or HELO with its name.
    Helo,
    /// MAIL FROM, once its syntax and parameters are valid.
    Mail,
    /// RCPT TO, once its syntax is valid.
    Rcpt,
    /// The content is complete (end of DATA, or BDAT LAST), before it is
    /// committed.
    Content,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Helo => "helo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Content => "content",
        }
    }
}

/// The answer to a [`Stage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go on. At Mail, Rcpt and Content the edits are prepended to the
    /// message when it is committed; elsewhere they are ignored.
    Accept(HeaderEdits),
    /// Refuse this command (or, at Connect, the whole session: the reply
    /// replaces the greeting and every later command but QUIT gets 503).
    Reject(Reply),
    /// Give this reply and close the connection.
    Drop(Reply),
}

impl Verdict {
    /// Accept with nothing to add.
    pub fn accept() -> Verdict {
        Verdict::Accept(HeaderEdits::default())
    }
}
