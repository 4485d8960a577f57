//! The events.

use std::net::IpAddr;

use crate::proto::reply::{EnhancedCode, Reply};
use crate::proto::Stage;
use crate::queue::QueueId;

/// Which kind of listener a client came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Listener {
    Smtp,
    Submission,
    Submissions,
    /// The sendmail socket.
    Local,
}

impl Listener {
    pub fn index(self) -> usize {
        match self {
            Listener::Smtp => 0,
            Listener::Submission => 1,
            Listener::Submissions => 2,
            Listener::Local => 3,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Listener::Smtp => "smtp",
            Listener::Submission => "submission",
            Listener::Submissions => "submissions",
            Listener::Local => "local",
        }
    }
}

/// Why a message left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Every recipient delivered or failed, every DSN queued.
    Done,
    /// Deleted by the administrator, without a DSN.
    Deleted,
    /// Returned to its sender by the administrator.
    Bounced,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A client connected and was given a session.
    Connected { client: IpAddr, listener: Listener },
    /// A client, command or message was refused (or a message could not
    /// be accepted): at which stage, with which reply. `what` is the
    /// sender or recipient refused, or the HELO name.
    Refused {
        client: IpAddr,
        listener: Listener,
        stage: Stage,
        reply: Reply,
        what: Option<String>,
        queue_id: Option<QueueId>,
    },
    /// A message was made durable and acknowledged.
    Accepted {
        queue_id: QueueId,
        message_id: Option<String>,
        sender: String,
        recipients: Vec<String>,
        client: IpAddr,
        helo: String,
        listener: Listener,
        tls: Option<String>,
        auth_user: Option<String>,
        size: u64,
    },
    /// A recipient was delivered (or relayed, or expanded by an alias).
    Delivered {
        queue_id: QueueId,
        recipient: String,
        /// The server that took it, or "local".
        remote: String,
        reply: String,
        local: bool,
        /// From arrival in the queue to delivery.
        latency_secs: f64,
    },
    /// A recipient failed temporarily and will be tried again.
    Deferred {
        queue_id: QueueId,
        recipient: String,
        status: EnhancedCode,
        reason: String,
        retry_at: i64,
        local: bool,
    },
    /// A recipient failed for good.
    Failed {
        queue_id: QueueId,
        recipient: String,
        status: EnhancedCode,
        reason: String,
        /// Because it stayed queued too long.
        expired: bool,
        local: bool,
    },
    /// A DSN about a message was queued.
    DsnQueued {
        queue_id: QueueId,
        dsn_id: QueueId,
        to: String,
        delay: bool,
    },
    /// A message left the queue.
    Removed { queue_id: QueueId, why: Removal },
    /// Incoming mail was checked (SPF, DKIM, ARC, DMARC) at the end of
    /// DATA; `action` is what the policy did: accept, quarantine, reject
    /// or defer.
    Authenticated {
        queue_id: Option<QueueId>,
        client: IpAddr,
        spf: String,
        dkim: String,
        dmarc: String,
        from_domain: String,
        action: &'static str,
    },
}
