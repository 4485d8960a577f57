//! Answers the session's decisions ([`crate::proto::Action::Decide`]):
//! gathers the facts of the stage (each lookup under a deadline), asks the
//! policy for the verdict, and emits every refusal as a trace event. The
//! verdict itself comes only from [`crate::policy::Policy::decide`].

use super::{ConnHost, Shared};
use crate::checks::authentication::{self, AuthFacts};
use crate::checks::Facts;
use crate::proto::{Decision, ServerSession, Stage, Verdict};
use crate::trace::{self, Event};

/// The verdict on what `s` waits for (accept when it waits for nothing).
/// `received`: the message as received, at the end of DATA, when a copy
/// was kept for the checks.
pub(super) async fn decide(
    shared: &Shared,
    host: &mut ConnHost<'_>,
    s: &ServerSession,
    received: Option<&[u8]>,
) -> Verdict {
    let Some(d) = s.decision() else {
        return Verdict::accept();
    };
    let mut facts = gather(shared, d.stage()).await;
    if host.checks_inbound() {
        let cfg = host.snap.cfg.clone();
        let i = &cfg.inbound;
        match &d {
            Decision::Mail { mail } if i.spf => {
                let sender = mail
                    .sender
                    .as_ref()
                    .map(|a| a.address())
                    .unwrap_or_default();
                let helo = s.helo_name().unwrap_or("");
                let spf = authentication::check_spf(
                    &shared.dns,
                    i,
                    host.client.ip,
                    helo,
                    &sender,
                    &cfg.server.hostname,
                )
                .await;
                host.spf = Some(spf.clone());
                facts.spf = Some(spf);
            }
            Decision::Mail { .. } => host.spf = None,
            Decision::Content { .. } => {
                let wants = i.dkim || i.dmarc || i.arc;
                let message = if wants { received } else { Some(&[][..]) };
                facts.auth = Some(
                    authentication::check_message(
                        &shared.dns,
                        i,
                        cfg.authserv_id(),
                        message,
                        host.spf.clone(),
                    )
                    .await,
                );
            }
            _ => {}
        }
    }
    let verdict = host.snap.policy.decide(&d, &facts, &host.client);
    if let Some(a) = &facts.auth {
        emit_authenticated(host, a, &verdict);
    }
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
        spf: None,
        auth: None,
    }
}

/// The outcome of the checks of a message, with what the policy did.
fn emit_authenticated(host: &ConnHost<'_>, a: &AuthFacts, verdict: &Verdict) {
    let action = match verdict {
        Verdict::Accept(e) if e.contains(crate::message::auth_results::QUARANTINE_FIELD) => {
            "quarantine"
        }
        Verdict::Accept(_) => "accept",
        Verdict::Reject(r) | Verdict::Drop(r) if r.code >= 500 => "reject",
        Verdict::Reject(_) | Verdict::Drop(_) => "defer",
    };
    let spf = a
        .spf
        .as_ref()
        .map(|s| crate::checks::spf::name(s.mail_from.result))
        .unwrap_or("none");
    let dkim = if a.dkim.is_empty() {
        "none".to_string()
    } else {
        a.dkim
            .iter()
            .map(|d| format!("{}:{}", d.result, d.domain))
            .collect::<Vec<_>>()
            .join(",")
    };
    let (dmarc, from_domain) = a
        .dmarc
        .as_ref()
        .map(|d| (d.result, d.from_domain.clone()))
        .unwrap_or(("none", String::new()));
    trace::emit(Event::Authenticated {
        queue_id: host.last_id,
        client: host.client.ip,
        spf: spf.to_string(),
        dkim,
        dmarc: dmarc.to_string(),
        from_domain,
        action,
    });
}
