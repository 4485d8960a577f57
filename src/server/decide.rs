//! Answers the session's decisions ([`crate::proto::Action::Decide`]):
//! gathers the facts of the stage (each lookup under a deadline), asks the
//! policy for the verdict, and emits every refusal as a trace event. The
//! verdict itself comes only from [`crate::policy::Policy::decide`].

use super::{ConnHost, Shared};
use crate::checks::Facts;
use crate::proto::{Decision, ServerSession, Stage, Verdict};
use crate::trace::{self, Event};

/// The verdict on what `s` waits for (accept when it waits for nothing).
pub(super) async fn decide(shared: &Shared, host: &ConnHost<'_>, s: &ServerSession) -> Verdict {
    let Some(d) = s.decision() else {
        return Verdict::accept();
    };
    let facts = gather(shared, d.stage()).await;
    let verdict = host.snap.policy.decide(&d, &facts, &host.client);
    if let Verdict::Reject(r) | Verdict::Drop(r) = &verdict {
        let what = match d {
            Decision::Connect | Decision::Content { .. } => None,
            Decision::Helo { name, .. } => Some(name.to_string()),
            Decision::Mail { mail } => Some(
                mail.sender
                    .as_ref()
                    .map(|a| a.address())
                    .unwrap_or_default(),
            ),
            Decision::Rcpt { rcpt, .. } => Some(rcpt.rcpt.address()),
        };
        trace::emit(Event::Refused {
            client: host.client.ip,
            listener: host.listener,
            stage: d.stage(),
            reply: r.clone(),
            what,
            queue_id: matches!(d, Decision::Content { .. })
                .then_some(host.last_id)
                .flatten(),
        });
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
