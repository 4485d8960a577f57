//! Answers the session's decisions ([`crate::proto::Action::Decide`]):
//! gathers the facts of the stage (each lookup under a deadline), asks the
//! policy for the verdict, and records refusals (log line, counters). The
//! verdict itself comes only from [`crate::policy::Policy::decide`].

use tracing::info;

use super::{count_class, ConnHost, Shared};
use crate::checks::Facts;
use crate::proto::{Decision, ServerSession, Stage, Verdict};
use crate::telemetry::clean;

/// The verdict on what `s` waits for (accept when it waits for nothing).
pub(super) async fn decide(shared: &Shared, host: &ConnHost<'_>, s: &ServerSession) -> Verdict {
    let Some(d) = s.decision() else {
        return Verdict::accept();
    };
    let facts = gather(shared, d.stage()).await;
    let verdict = host.snap.policy.decide(&d, &facts, &host.client);
    if let Verdict::Reject(r) | Verdict::Drop(r) = &verdict {
        let m = crate::metrics::get();
        match d {
            Decision::Connect => info!(reply = %r, "connection refused"),
            Decision::Helo { name, .. } => info!(helo = %clean(name), reply = %r, "HELO refused"),
            Decision::Mail { mail } => {
                count_class(&m.mail_refused, r.code);
                let from = mail
                    .sender
                    .as_ref()
                    .map(|a| a.address())
                    .unwrap_or_default();
                info!(from = %clean(&from), reply = %r, "sender refused");
            }
            Decision::Rcpt { rcpt, .. } => {
                count_class(&m.rcpt_refused, r.code);
                info!(to = %clean(&rcpt.rcpt.address()), reply = %r, "recipient refused");
            }
            Decision::Content { .. } => {
                count_class(&m.messages_refused, r.code);
                let id = host.last_id.map(|i| i.to_string()).unwrap_or_default();
                info!(queue_id = %id, reply = %r, "message refused");
            }
        }
    }
    verdict
}

/// The facts the policy needs at `stage`.
async fn gather(shared: &Shared, stage: Stage) -> Facts {
    Facts {
        // Only a new transaction needs room; the check reads a cached
        // statvfs at most once a second.
        spool_has_space: stage != Stage::Mail || shared.queue.space_ok(),
    }
}
