//! The local transport: mail for the local domains. Each recipient is
//! resolved in the recipient directory (aliases already followed through
//! the message's `Delivered-To:` fields mean their own mailbox); one mailbox
//! is written directly (Maildir) or handed to the LMTP server (RFC 2033,
//! one LMTP transaction for all the job's LMTP recipients, with a reply per
//! recipient); several targets, or any target in another domain, make an
//! alias expansion: the message is queued again, with a `Delivered-To:` for
//! the alias, for exactly those targets, and each then has its own status.
//!
//! Reports events; [`classify`](super::classify) decides what they mean.
//! Touches the mailboxes, the LMTP socket and (for expansions) the queue.
//! Untrusted bytes: the LMTP server's replies, which reach only the sans-IO
//! client.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::timeout;
use tracing::{info, warn};

use super::classify::{Event, LocalFailure};
use super::maildir::{self, MaildirError};
use super::remote::{rcpt_events, reply_event};
use super::{BoxFuture, Job};
use crate::live::Live;
use crate::message::auth_results::QUARANTINE_FIELD;
use crate::message::HeaderEdits;
use crate::proto::client::{
    ClientConfig, ClientSession, OutMessage, Refusal, SessionOutcome, StartTls, TransactionResult,
};
use crate::proto::envelope::{Envelope, Notify, Recipient};
use crate::queue::Queue;
use crate::users::directory::{Destination, MailboxTarget, Unresolved};

/// Seconds to wait for a connection to the LMTP server.
const LMTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct LocalTransport {
    live: Live,
    queue: Queue,
}

impl LocalTransport {
    pub fn new(live: Live, queue: Queue) -> LocalTransport {
        LocalTransport { live, queue }
    }

    async fn run(&self, job: &Job) -> Vec<Event> {
        let snap = self.live.get();
        let cfg = &snap.cfg;
        let msg = &job.msg;
        let history = crate::users::directory::message_history(&msg.body);
        let mut events: Vec<Option<Event>> = vec![None; job.rcpts.len()];
        // LMTP recipients: (index in the job, address to give the server).
        let mut lmtp: Vec<(usize, Recipient)> = Vec::new();
        // The first recipient of the job delivered to each mailbox address;
        // later ones reaching the same mailbox share its outcome.
        let mut first: std::collections::HashMap<String, usize> = Default::default();
        let mut copies: Vec<(usize, usize)> = Vec::new();
        for (k, &i) in job.rcpts.iter().enumerate() {
            let rcpt = &msg.envelope.recipients[i];
            let dests = match snap.directory.resolve_after(&rcpt.address, &history) {
                Ok(d) => d,
                Err(e) => {
                    let failure = match e {
                        Unresolved::Unknown => LocalFailure::UnknownUser,
                        _ => LocalFailure::Alias,
                    };
                    events[k] = Some(Event::Local {
                        failure,
                        detail: format!("{}: {e}", rcpt.address),
                    });
                    continue;
                }
            };
            let single = match dests.as_slice() {
                [Destination::Mailbox {
                    mailbox,
                    detail,
                    address,
                }] => Some((mailbox.clone(), detail.clone(), address.clone())),
                _ => None,
            };
            let Some((mailbox, detail, address)) = single else {
                events[k] = Some(self.expand(job, rcpt, &dests).await);
                continue;
            };
            match first.entry(address.to_lowercase()) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    copies.push((k, *e.get()));
                    continue;
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(k);
                }
            }
            match &mailbox.target {
                MailboxTarget::Lmtp => lmtp.push((
                    k,
                    Recipient {
                        address,
                        orcpt: rcpt.orcpt.clone(),
                        notify: rcpt.notify,
                    },
                )),
                MailboxTarget::Maildir(path) => {
                    let path = path.clone();
                    let create = cfg.local.create_maildir;
                    // DMARC quarantine (the field only this server adds;
                    // arriving copies are removed) goes to the Junk folder
                    // when the Maildir has one.
                    // (An alias expansion carries the field in the
                    // message itself.)
                    let quarantined = HeaderEdits::from_stored(&msg.edits)
                        .is_some_and(|e| e.contains(QUARANTINE_FIELD))
                        || crate::message::header::has_field(
                            &crate::message::header_section(&msg.body).0,
                            QUARANTINE_FIELD,
                        );
                    let junk = cfg.inbound.junk_folder.trim_start_matches('.').to_string();
                    let folder = if quarantined && !junk.is_empty() {
                        Some(junk)
                    } else {
                        detail.filter(|_| cfg.local.subaddress_folders)
                    };
                    let hostname = cfg.server.hostname.clone();
                    let msg = msg.clone();
                    let shown = path.display().to_string();
                    let r = tokio::task::spawn_blocking(move || {
                        maildir::deliver(&maildir::Delivery {
                            maildir: &path,
                            folder: folder.as_deref(),
                            create,
                            hostname: &hostname,
                            sender: &msg.envelope.sender,
                            recipient: &address,
                            message: &msg.content(),
                        })
                    })
                    .await;
                    events[k] = Some(match r {
                        Ok(Ok(file)) => {
                            info!(to = %rcpt.address, mailbox = %mailbox.login, file = %file.display(), "stored in Maildir");
                            Event::Stored {
                                mailbox: format!("{} ({shown})", mailbox.login),
                            }
                        }
                        Ok(Err(e)) => maildir_event(&e),
                        Err(e) => Event::Local {
                            failure: LocalFailure::Io,
                            detail: format!("delivery task failed: {e}"),
                        },
                    });
                }
            }
        }
        if !lmtp.is_empty() {
            let rcpts: Vec<Recipient> = lmtp.iter().map(|(_, r)| r.clone()).collect();
            let out = lmtp_deliver(&cfg.local.lmtp, &cfg.server.hostname, job, rcpts).await;
            for ((k, _), e) in lmtp.iter().zip(out) {
                events[*k] = Some(e);
            }
        }
        for (k, from) in copies {
            events[k] = events[from].clone();
        }
        events
            .into_iter()
            .map(|e| {
                e.unwrap_or_else(|| Event::Local {
                    failure: LocalFailure::Io,
                    detail: "no outcome".into(),
                })
            })
            .collect()
    }

    /// Queues the message again for the destinations of an alias. The new
    /// message is durable before this reports the recipient as expanded.
    async fn expand(&self, job: &Job, rcpt: &Recipient, dests: &[Destination]) -> Event {
        let msg = &job.msg;
        let env = &msg.envelope;
        // One target is forwarding: NOTIFY goes on as it is. Several are a
        // list: success is reported here (RFC 3461 §6.2.7.3), not by each.
        let notify = if dests.len() == 1 || rcpt.notify.has(Notify::NEVER) {
            rcpt.notify
        } else {
            let n = rcpt.notify.0 & !Notify::SUCCESS;
            Notify(if rcpt.notify.0 != 0 && n == 0 {
                Notify::NEVER
            } else {
                n
            })
        };
        let orcpt = rcpt.orcpt.clone().or_else(|| {
            let kind = if rcpt.address.is_ascii() {
                "rfc822"
            } else {
                "utf-8"
            };
            Some(format!("{kind};{}", rcpt.address))
        });
        let recipients: Vec<Recipient> = dests
            .iter()
            .map(|d| Recipient {
                address: d.address().to_string(),
                orcpt: orcpt.clone(),
                notify,
            })
            .collect();
        let smtputf8 = env.smtputf8
            || !env.sender.is_ascii()
            || recipients.iter().any(|r| !r.address.is_ascii());
        // Forwarded to another domain: the sender is rewritten (SRS), so
        // the destination's SPF check sees this server's domain and a
        // bounce comes back here; a local sender is this server's already.
        let snap = self.live.get();
        let forwards = dests.iter().any(|d| matches!(d, Destination::Remote(_)));
        let sender_is_local = env
            .sender
            .rsplit_once('@')
            .is_some_and(|(_, d)| snap.directory.is_local_domain(&d.to_ascii_lowercase()));
        let sender = match snap.directory.srs() {
            Some(srs) if forwards && !sender_is_local => srs
                .forward(&env.sender, crate::users::srs::today())
                .unwrap_or_else(|| env.sender.clone()),
            _ => env.sender.clone(),
        };
        let envelope = Envelope {
            sender,
            recipients,
            ret: env.ret,
            envid: env.envid.clone(),
            body_type: env.body_type,
            smtputf8,
            client_ip: env.client_ip,
            helo: env.helo.clone(),
            protocol: env.protocol.clone(),
            auth_user: env.auth_user.clone(),
        };
        let content = msg.content();
        let mut body = Vec::with_capacity(content.len() + rcpt.address.len() + 16);
        body.extend_from_slice(b"Delivered-To: ");
        body.extend_from_slice(rcpt.address.as_bytes());
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(&content);
        let id = self.queue.new_id();
        let mut w = self.queue.writer(id, unix_now(), envelope);
        let r = match w.write(&body).await {
            Ok(()) => self.queue.commit(w).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(new_id) => {
                let targets: Vec<&str> = dests.iter().map(|d| d.address()).collect();
                info!(to = %rcpt.address, queue_id_new = %new_id, targets = %targets.join(", "), "alias expanded");
                Event::Expanded {
                    count: dests.len(),
                    queue_id: new_id.to_string(),
                }
            }
            Err(e) => {
                warn!(to = %rcpt.address, error = %e, "cannot queue the alias expansion");
                Event::Local {
                    failure: match e {
                        crate::queue::QueueError::NoSpace => LocalFailure::DiskFull,
                        _ => LocalFailure::Io,
                    },
                    detail: format!("cannot queue the alias expansion: {e}"),
                }
            }
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn maildir_event(e: &MaildirError) -> Event {
    let failure = match e {
        MaildirError::Missing(_) => LocalFailure::NoMailbox,
        MaildirError::Quota(_) => LocalFailure::MailboxFull,
        MaildirError::NoSpace(_) => LocalFailure::DiskFull,
        MaildirError::Io(_) => LocalFailure::Io,
    };
    Event::Local {
        failure,
        detail: e.to_string(),
    }
}

/// Delivers to the LMTP server at `target` (a Unix socket path or
/// host:port): one event per recipient, in order.
async fn lmtp_deliver(target: &str, helo: &str, job: &Job, rcpts: Vec<Recipient>) -> Vec<Event> {
    let n = rcpts.len();
    let shown = format!("lmtp:{target}");
    let env = &job.msg.envelope;
    let content = job.msg.content();
    let out = OutMessage {
        sender: env.sender.clone(),
        recipients: rcpts,
        size: content.len() as u64,
        body_type: env.body_type,
        smtputf8: env.smtputf8,
        ret: env.ret,
        envid: env.envid.clone(),
    };
    let connect_failed = |e: String| vec![Event::Connect(format!("{shown}: {e}")); n];
    let result = if target.starts_with('/') {
        match timeout(
            LMTP_CONNECT_TIMEOUT,
            tokio::net::UnixStream::connect(target),
        )
        .await
        {
            Ok(Ok(s)) => lmtp_session(s, helo, &out, &content).await,
            Ok(Err(e)) => return connect_failed(e.to_string()),
            Err(_) => return connect_failed("connection timed out".into()),
        }
    } else {
        let addr = target.trim_start_matches('[').replacen("]:", ":", 1);
        match timeout(LMTP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => lmtp_session(s, helo, &out, &content).await,
            Ok(Err(e)) => return connect_failed(e.to_string()),
            Err(_) => return connect_failed("connection timed out".into()),
        }
    };
    match result {
        Err(r) => {
            let e = Event::Reply {
                code: if r.permanent { 554 } else { 451 },
                enhanced: Some(r.enhanced),
                text: r.text,
                remote: shown.clone(),
            };
            vec![e; n]
        }
        Ok((Some(r), outcome)) => {
            info!(server = %shown, outcome = ?outcome, "LMTP session ended");
            rcpt_events(&r, &shown, false, true)
        }
        Ok((None, outcome)) => {
            warn!(server = %shown, outcome = ?outcome, "LMTP session failed");
            let e = match outcome {
                SessionOutcome::Refused { reply, .. } => reply_event(&reply, &shown),
                SessionOutcome::ConnectionLost { stage } => {
                    Event::Dropped(format!("{shown} during {stage:?}"))
                }
                SessionOutcome::ProtocolError { detail, .. } => {
                    Event::Protocol(format!("{shown}: {detail}"))
                }
                other => Event::Protocol(format!("{shown}: {other:?}")),
            };
            vec![e; n]
        }
    }
}

/// One LMTP session with one transaction.
async fn lmtp_session<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    helo: &str,
    out: &OutMessage,
    body: &[u8],
) -> Result<(Option<TransactionResult>, SessionOutcome), Refusal> {
    let mut ccfg = ClientConfig::new(helo);
    ccfg.lmtp = true;
    ccfg.use_starttls = StartTls::Never;
    let mut client = ClientSession::new(ccfg);
    let r = crate::net::client_driver::send_one(&mut client, &mut stream, out, &[body]).await;
    match r.refused {
        Some(refusal) => Err(refusal),
        None => Ok((r.result, r.outcome)),
    }
}

impl super::Transport for LocalTransport {
    fn deliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Vec<Event>> {
        Box::pin(self.run(job))
    }

    fn destination(&self, _domain: &str) -> String {
        "local".to_string()
    }

    fn destination_limit(&self) -> Option<usize> {
        Some(self.live.cfg().local.max_deliveries)
    }
}
