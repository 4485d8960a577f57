//! Facts for inbound decisions: what is known or looked up about a client
//! and its mail at each stage, gathered by the server before the policy
//! decides ([`crate::policy::Policy::decide`]). Facts are plain values and
//! never a reply: only the policy refuses. Lookups that wait (DNS, state
//! tables) run here, each under a deadline, and a timed-out lookup is a
//! fact too ("temperror"), never a refusal by itself.
//!
//! May use `dns`, `state`, `message` and `config`; never `queue`,
//! `server` or `delivery`. Untrusted data (client names, addresses,
//! headers) reaches it.

pub mod auth_limiter;
pub mod authentication;
pub mod spf;

pub use auth_limiter::{Admission, FailureLimiter};

/// What the policy knows at a stage besides the dialog itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The spool has room for new mail (above its free-space reserve).
    pub spool_has_space: bool,
    /// SPF of the HELO and MAIL FROM identities (at MAIL, for clients
    /// whose mail is checked).
    pub spf: Option<authentication::SpfFacts>,
    /// SPF, DKIM, ARC and DMARC of the message (at the end of DATA, for
    /// clients whose mail is checked).
    pub auth: Option<authentication::AuthFacts>,
}

impl Default for Facts {
    fn default() -> Facts {
        Facts {
            spool_has_space: true,
            spf: None,
            auth: None,
        }
    }
}
