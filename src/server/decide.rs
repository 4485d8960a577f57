//! Answers the session's decisions ([`crate::proto::Action::Decide`]):
//! gathers the facts of the stage (each lookup under a deadline), asks the
//! policy for the verdict, and emits every refusal as a trace event. The
//! verdict itself comes only from [`crate::policy::Policy::decide`].

use super::{ConnHost, Shared};
use crate::checks::authentication::{self, AuthFacts};
use crate::checks::Facts;
use crate::proto::{Decision, ServerSession, Stage, Verdict};
use crate::trace::{self, Event};
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults};
use tracing::warn;

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
            Decision::Content { rcpts, header, .. } => {
                let wants = i.dkim || i.dmarc || i.arc;
                let message = if wants { received } else { Some(&[][..]) };
                // Mail an alias forwards to another domain is ARC-sealed
                // with a key of the server's own domain, when there is one.
                let snap = host.snap.clone();
                let sealer = snap
                    .dkim
                    .sealer_for(&cfg.server.hostname)
                    .filter(|_| forwards(&snap, rcpts));
                let seal = |m: &AuthenticatedMessage<'_>,
                            r: &AuthenticationResults<'_>,
                            c: &ArcOutput<'_>| match sealer {
                    Some(s) => s.seal(m, r, c),
                    None => Ok(Vec::new()),
                };
                let helo = s.helo_name().unwrap_or("").to_string();
                let sealing = sealer.map(|_| authentication::Sealing {
                    seal: &seal,
                    ip: host.client.ip,
                    helo: &helo,
                });
                let a = authentication::check_message(
                    &shared.dns,
                    i,
                    cfg.authserv_id(),
                    message,
                    header,
                    host.spf.clone(),
                    sealing,
                )
                .await;
                if let Some(e) = &a.arc_seal_error {
                    warn!(error = %e, "ARC sealing failed; the message is forwarded unsealed");
                }
                facts.auth = Some(a);
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

/// Whether a recipient is an alias that forwards to another domain.
fn forwards(snap: &crate::live::Snapshot, rcpts: &[crate::proto::envelope::Recipient]) -> bool {
    rcpts.iter().any(|r| {
        snap.directory.resolve(&r.address).is_ok_and(|d| {
            d.iter()
                .any(|x| matches!(x, crate::users::directory::Destination::Remote(_)))
        })
    })
}
