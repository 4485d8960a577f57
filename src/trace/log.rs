//! The log lines of mail events (one per event, in the span of the
//! connection or delivery that emitted it), with client-supplied values
//! escaped.

use tracing::{info, warn};

use super::bus::Subscriber;
use super::event::{Event, Removal};
use crate::proto::Stage;

pub(super) struct LogLines;

impl Subscriber for LogLines {
    fn on(&self, e: &Event) {
        match e {
            Event::Connected { .. } => info!("connect"),
            Event::Authenticated {
                queue_id,
                spf,
                dkim,
                dmarc,
                from_domain,
                action,
                ..
            } => info!(
                queue_id = %queue_id.map(|i| i.to_string()).unwrap_or_default(),
                spf = %spf,
                dkim = %dkim,
                dmarc = %dmarc,
                header_from = %clean(from_domain),
                action = %action,
                "mail authentication"
            ),
            Event::Refused {
                stage,
                reply,
                what,
                queue_id,
                ..
            } => {
                let what = what.as_deref().map(clean).unwrap_or_default();
                match stage {
                    Stage::Connect => info!(reply = %reply, "connection refused"),
                    Stage::Helo => info!(helo = %what, reply = %reply, "HELO refused"),
                    Stage::Mail => info!(from = %what, reply = %reply, "sender refused"),
                    Stage::Rcpt => info!(to = %what, reply = %reply, "recipient refused"),
                    Stage::Content => {
                        let id = queue_id.map(|i| i.to_string()).unwrap_or_default();
                        if reply.code == 451
                            && reply
                                .enhanced
                                .is_some_and(|e| (e.subject, e.detail) == (3, 0))
                        {
                            warn!(queue_id = %id, reply = %reply, error = %what, "message not accepted")
                        } else {
                            info!(queue_id = %id, reply = %reply, "message refused")
                        }
                    }
                }
            }
            Event::Accepted {
                queue_id,
                sender,
                recipients,
                message_id,
                ..
            } => info!(
                queue_id = %queue_id,
                from = %clean(sender),
                nrcpt = recipients.len(),
                message_id = %message_id.as_deref().map(clean).unwrap_or_default(),
                "message accepted"
            ),
            Event::Delivered {
                recipient,
                remote,
                reply,
                ..
            } => info!(to = %recipient, relay = %remote, reply = %reply, "delivered"),
            Event::Deferred {
                recipient,
                status,
                reason,
                retry_at,
                ..
            } => info!(to = %recipient, status = %status, reason = %reason, retry_at, "deferred"),
            Event::Failed {
                recipient,
                status,
                reason,
                expired,
                ..
            } => {
                if *expired {
                    warn!(to = %recipient, "expired");
                }
                warn!(to = %recipient, status = %status, reason = %reason, "failed")
            }
            Event::DsnQueued {
                queue_id,
                dsn_id,
                to,
                ..
            } => info!(queue_id = %queue_id, dsn = %dsn_id, to = %clean(to), "DSN queued"),
            Event::Removed { queue_id, why } => match why {
                Removal::Done => info!("removed: every recipient done"),
                Removal::Deleted => warn!(queue_id = %queue_id, "deleted by the administrator"),
                Removal::Bounced => {
                    warn!(queue_id = %queue_id, "returned to sender by the administrator")
                }
            },
        }
    }
}

/// A client-supplied value made safe for a log line: control characters
/// (CR and LF above all, which would start a forged line) and backslashes
/// are escaped, the rest is kept; longer values are cut at 256 characters.
pub fn clean(value: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 256;
    if value.len() <= MAX && !value.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len().min(MAX) + 8);
    for (i, c) in value.chars().enumerate() {
        if i == MAX {
            out.push_str("...");
            break;
        }
        if c.is_control() || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn clean_escapes_line_breaks_and_controls() {
        assert_eq!(super::clean("alice"), "alice");
        assert_eq!(
            super::clean("x\n<3>conn{peer=198.51.100.9}: authentication failed"),
            "x\\n<3>conn{peer=198.51.100.9}: authentication failed"
        );
        assert_eq!(super::clean("a\r\u{1b}[31m\\"), "a\\r\\u{1b}[31m\\\\");
        assert_eq!(super::clean(&"é".repeat(300)).chars().count(), 259);
    }
}
