//! The one place that decides whether a delivery outcome is final.
//! Every outcome of an attempt, for one recipient, is turned into
//! Delivered, Transient (retry later) or Permanent (return to sender), with
//! an RFC 3463 status code and a text for the DSN. Retry and bounce code
//! only ever match on [`Verdict`]; nothing else parses reply strings.

use crate::dns::DnsError;
use crate::proto::reply::EnhancedCode;

/// What happened when trying to deliver to one recipient.
#[derive(Debug, Clone)]
pub enum Event {
    /// The remote server accepted the message for this recipient.
    /// `dsn`: it offered DSN, so NOTIFY was passed on and success reports
    /// are its job (RFC 3461 §5.2.1), not ours.
    Accepted {
        code: u16,
        text: String,
        remote: String,
        dsn: bool,
        /// The server was the final one (LMTP): the message reached the
        /// mailbox, it was not relayed.
        final_delivery: bool,
    },
    /// Written into the recipient's mailbox by us (Maildir).
    Stored {
        mailbox: String,
    },
    /// An alias: the message was queued again for its `count` targets, as
    /// `queue_id`. With one target (forwarding) NOTIFY was passed on.
    Expanded {
        count: usize,
        queue_id: String,
    },
    /// Local delivery failed before any server was involved.
    Local {
        failure: LocalFailure,
        detail: String,
    },
    /// The remote server answered with a non-2xx reply (at MAIL, RCPT or
    /// after the data, or at the greeting).
    Reply {
        code: u16,
        enhanced: Option<EnhancedCode>,
        text: String,
        remote: String,
    },
    Dns(DnsError),
    /// The domain publishes a null MX (RFC 7505).
    NullMx,
    /// The MX (or relay host) is this server: a mail loop.
    Loop(String),
    /// No connection could be made to any host.
    Connect(String),
    /// The TLS handshake failed, or TLS was required and not offered.
    Tls(String),
    /// The connection broke or timed out mid-session.
    Dropped(String),
    /// The message is larger than the remote server's SIZE.
    TooBig(String),
    /// The message needs SMTPUTF8 and the remote server lacks it.
    NeedsSmtputf8(String),
    /// The message has 8-bit content and the remote server lacks 8BITMIME.
    Needs8bit(String),
    /// Queued longer than the lifetime (the last transient reason kept).
    Expired(String),
    /// The remote server violated the protocol.
    Protocol(String),
}

/// Ways local delivery fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalFailure {
    /// No such user or alias (any more).
    UnknownUser,
    /// Alias expansion failed: loop, depth or count limit.
    Alias,
    /// The mailbox does not exist and may not be created.
    NoMailbox,
    /// The mailbox is over quota.
    MailboxFull,
    /// The mail file system is full.
    DiskFull,
    /// Any other local error (permissions, I/O), often a configuration
    /// mistake the administrator can fix.
    Io,
}

/// How a successful delivery ended, for DSNs (RFC 3464 `Action:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Success {
    /// Handed to a next hop.
    Relayed,
    /// In the recipient's mailbox.
    Delivered,
    /// Expanded by an alias into other recipients.
    Expanded,
}

/// The decision for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered {
        remote: String,
        reply: String,
        notify_passed_on: bool,
        how: Success,
    },
    Transient {
        status: EnhancedCode,
        diagnostic: String,
        remote: Option<String>,
    },
    Permanent {
        status: EnhancedCode,
        diagnostic: String,
        remote: Option<String>,
    },
}

/// The status code of a reply: its enhanced code if it has one of the
/// right class, else the generic one for the class (RFC 3463 §3.1).
fn reply_status(code: u16, enhanced: Option<EnhancedCode>) -> EnhancedCode {
    let class = (code / 100) as u8;
    match enhanced {
        Some(e) if e.class == class => e,
        _ => EnhancedCode::generic(match class {
            2 => 2,
            4 => 4,
            _ => 5,
        }),
    }
}

const fn ec(class: u8, subject: u16, detail: u16) -> EnhancedCode {
    EnhancedCode::new(class, subject, detail)
}

pub fn classify(e: &Event) -> Verdict {
    let t = |status: EnhancedCode, diagnostic: String, remote: Option<String>| Verdict::Transient {
        status,
        diagnostic,
        remote,
    };
    let p = |status: EnhancedCode, diagnostic: String, remote: Option<String>| Verdict::Permanent {
        status,
        diagnostic,
        remote,
    };
    match e {
        Event::Accepted {
            code,
            text,
            remote,
            dsn,
            final_delivery,
        } => Verdict::Delivered {
            remote: remote.clone(),
            reply: format!("{code} {text}"),
            notify_passed_on: *dsn,
            how: if *final_delivery {
                Success::Delivered
            } else {
                Success::Relayed
            },
        },
        Event::Stored { mailbox } => Verdict::Delivered {
            remote: "local".into(),
            reply: format!("250 2.0.0 delivered to {mailbox}"),
            notify_passed_on: false,
            how: Success::Delivered,
        },
        Event::Expanded { count, queue_id } => Verdict::Delivered {
            remote: "local".into(),
            reply: format!("250 2.0.0 expanded to {count} recipients, queued as {queue_id}"),
            // One target: forwarding, NOTIFY went on with the message.
            notify_passed_on: *count == 1,
            how: Success::Expanded,
        },
        Event::Local { failure, detail } => {
            let d = detail.clone();
            match failure {
                LocalFailure::UnknownUser => {
                    p(ec(5, 1, 1), format!("no such user here: {d}"), None)
                }
                LocalFailure::Alias => p(ec(5, 4, 6), format!("alias expansion failed: {d}"), None),
                LocalFailure::NoMailbox => p(ec(5, 1, 1), d, None),
                LocalFailure::MailboxFull => t(ec(4, 2, 2), d, None),
                LocalFailure::DiskFull => t(ec(4, 3, 1), d, None),
                LocalFailure::Io => t(ec(4, 3, 0), d, None),
            }
        }
        Event::Reply {
            code,
            enhanced,
            text,
            remote,
        } => {
            let status = reply_status(*code, *enhanced);
            let diag = match enhanced {
                Some(en) => format!("{code} {en} {text}"),
                None => format!("{code} {text}"),
            };
            if (400..500).contains(code) {
                t(status, diag, Some(remote.clone()))
            } else if *code >= 500 {
                p(status, diag, Some(remote.clone()))
            } else {
                // A 1xx/2xx/3xx where a failure was expected: the server
                // is confused; try again later.
                t(
                    ec(4, 5, 0),
                    format!("unexpected reply: {diag}"),
                    Some(remote.clone()),
                )
            }
        }
        Event::Dns(DnsError::NotFound(why)) => {
            p(ec(5, 1, 2), format!("domain not found: {why}"), None)
        }
        Event::Dns(DnsError::Temporary(why)) => {
            t(ec(4, 4, 3), format!("DNS lookup failed: {why}"), None)
        }
        Event::NullMx => p(
            ec(5, 1, 10),
            "the recipient domain does not accept mail (null MX, RFC 7505)".into(),
            None,
        ),
        Event::Loop(host) => p(
            ec(5, 4, 6),
            format!("mail for this domain loops back to myself ({host})"),
            None,
        ),
        Event::Connect(why) => t(ec(4, 4, 1), format!("cannot connect: {why}"), None),
        Event::Tls(why) => t(ec(4, 7, 5), format!("TLS failure: {why}"), None),
        Event::Dropped(why) => t(ec(4, 4, 2), format!("connection lost: {why}"), None),
        Event::TooBig(remote) => p(
            ec(5, 3, 4),
            "message too big for the remote server".into(),
            Some(remote.clone()),
        ),
        Event::NeedsSmtputf8(remote) => p(
            ec(5, 6, 7),
            "the message needs SMTPUTF8, which the remote server does not support".into(),
            Some(remote.clone()),
        ),
        Event::Needs8bit(remote) => p(
            ec(5, 6, 3),
            "the message has 8-bit content, which the remote server does not support".into(),
            Some(remote.clone()),
        ),
        Event::Expired(last) => p(
            ec(4, 4, 7),
            format!("message expired in the queue; last error: {last}"),
            None,
        ),
        Event::Protocol(why) => t(ec(4, 5, 0), format!("protocol error: {why}"), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enh: Option<&str>) -> Verdict {
        classify(&Event::Reply {
            code,
            enhanced: enh.and_then(EnhancedCode::parse),
            text: "x".into(),
            remote: "mx".into(),
        })
    }

    #[test]
    fn replies() {
        assert!(
            matches!(reply(450, Some("4.2.0")), Verdict::Transient { status, .. } if status.to_string() == "4.2.0")
        );
        assert!(
            matches!(reply(550, Some("5.1.1")), Verdict::Permanent { status, .. } if status.to_string() == "5.1.1")
        );
        // An enhanced code of the wrong class is not trusted.
        assert!(
            matches!(reply(550, Some("4.1.1")), Verdict::Permanent { status, .. } if status.to_string() == "5.0.0")
        );
        assert!(
            matches!(reply(421, None), Verdict::Transient { status, .. } if status.to_string() == "4.0.0")
        );
        assert!(matches!(reply(250, None), Verdict::Transient { .. }));
    }

    #[test]
    fn other_outcomes() {
        assert!(matches!(
            classify(&Event::Dns(DnsError::NotFound("x".into()))),
            Verdict::Permanent { .. }
        ));
        assert!(matches!(
            classify(&Event::Dns(DnsError::Temporary("x".into()))),
            Verdict::Transient { .. }
        ));
        assert!(
            matches!(classify(&Event::NullMx), Verdict::Permanent { status, .. } if status.to_string() == "5.1.10")
        );
        assert!(
            matches!(classify(&Event::Loop("me".into())), Verdict::Permanent { status, .. } if status.to_string() == "5.4.6")
        );
        assert!(matches!(
            classify(&Event::Connect("refused".into())),
            Verdict::Transient { .. }
        ));
        assert!(matches!(
            classify(&Event::Dropped("eof".into())),
            Verdict::Transient { .. }
        ));
        assert!(
            matches!(classify(&Event::TooBig("mx".into())), Verdict::Permanent { status, .. } if status.to_string() == "5.3.4")
        );
        assert!(
            matches!(classify(&Event::NeedsSmtputf8("mx".into())), Verdict::Permanent { status, .. } if status.to_string() == "5.6.7")
        );
        assert!(
            matches!(classify(&Event::Expired("x".into())), Verdict::Permanent { status, .. } if status.to_string() == "4.4.7")
        );
    }

    #[test]
    fn local_outcomes() {
        let local = |failure| {
            classify(&Event::Local {
                failure,
                detail: "x".into(),
            })
        };
        assert!(
            matches!(local(LocalFailure::UnknownUser), Verdict::Permanent { status, .. } if status.to_string() == "5.1.1")
        );
        assert!(
            matches!(local(LocalFailure::NoMailbox), Verdict::Permanent { status, .. } if status.to_string() == "5.1.1")
        );
        assert!(
            matches!(local(LocalFailure::Alias), Verdict::Permanent { status, .. } if status.to_string() == "5.4.6")
        );
        assert!(
            matches!(local(LocalFailure::DiskFull), Verdict::Transient { status, .. } if status.to_string() == "4.3.1")
        );
        assert!(
            matches!(local(LocalFailure::MailboxFull), Verdict::Transient { status, .. } if status.to_string() == "4.2.2")
        );
        assert!(
            matches!(local(LocalFailure::Io), Verdict::Transient { status, .. } if status.to_string() == "4.3.0")
        );
        assert!(matches!(
            classify(&Event::Stored {
                mailbox: "a".into()
            }),
            Verdict::Delivered {
                how: Success::Delivered,
                notify_passed_on: false,
                ..
            }
        ));
        assert!(matches!(
            classify(&Event::Expanded {
                count: 1,
                queue_id: "q".into()
            }),
            Verdict::Delivered {
                how: Success::Expanded,
                notify_passed_on: true,
                ..
            }
        ));
        // LMTP: 4xx after the content retries, 5xx returns the message.
        assert!(matches!(
            classify(&Event::Reply {
                code: 452,
                enhanced: EnhancedCode::parse("4.2.2"),
                text: "over quota".into(),
                remote: "lmtp".into()
            }),
            Verdict::Transient { .. }
        ));
        assert!(matches!(
            classify(&Event::Accepted {
                code: 250,
                text: "ok".into(),
                remote: "lmtp".into(),
                dsn: false,
                final_delivery: true
            }),
            Verdict::Delivered {
                how: Success::Delivered,
                ..
            }
        ));
    }
}
