//! The message being received, on its way into the queue: every chunk
//! the session hands over goes, in order, to a copy kept for the
//! authentication checks (as received, bounded), through the remover of
//! forged `Authentication-Results:` fields, to the DKIM signatures being
//! computed (mail this server originates), and to the queue writer. At
//! the end the signature fields are stored with the message as header
//! edits, so the body is read once and retries never sign again.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tracing::warn;

use super::{unix_now, ConnHost};
use crate::message::auth_results::AuthResultsFilter;
use crate::message::{HeaderEdits, MAX_HEADER_SECTION};
use crate::proto::reply;
use crate::proto::{ServerSession, Stage};
use crate::queue::{MessageWriter, Queue, QueueError, QueueId};
use crate::signing::{dkim::finish_all, SignStream, Signers};
use crate::trace::{self, Event};

/// Memory shared by the copies of messages being verified
/// (`inbound.verify_memory`).
pub(super) struct VerifyBudget {
    used: AtomicUsize,
    max: AtomicUsize,
}

impl VerifyBudget {
    pub(super) fn new(max: u64) -> Arc<VerifyBudget> {
        Arc::new(VerifyBudget {
            used: AtomicUsize::new(0),
            max: AtomicUsize::new(usize::try_from(max).unwrap_or(usize::MAX)),
        })
    }

    pub(super) fn resize(&self, max: u64) {
        self.max.store(
            usize::try_from(max).unwrap_or(usize::MAX),
            Ordering::Relaxed,
        );
    }

    fn take(&self, n: usize) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|t| *t <= max)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// The copy of a message kept for verification; its memory goes back to
/// the budget when dropped.
struct VerifyCopy {
    bytes: Vec<u8>,
    budget: Arc<VerifyBudget>,
    limit: usize,
}

impl VerifyCopy {
    /// Adds a chunk; false when the copy must be given up (too large, or
    /// the budget is spent).
    fn add(&mut self, chunk: &[u8]) -> bool {
        if self.bytes.len() + chunk.len() > self.limit || !self.budget.take(chunk.len()) {
            return false;
        }
        self.bytes.extend_from_slice(chunk);
        true
    }
}

impl Drop for VerifyCopy {
    fn drop(&mut self) {
        self.budget.give(self.bytes.len());
    }
}

/// DKIM signing of the message, if it is signed.
enum Signing<'k> {
    Off,
    /// Holding the start of the message until its header section is
    /// complete (the `From:` domain chooses the keys).
    Waiting(Vec<u8>),
    Active(Vec<SignStream<'k>>),
}

/// What a transaction does with its bytes, decided when its first chunk
/// arrives.
#[derive(Default, Clone, Copy)]
pub(super) struct Treatment {
    /// Sign with the keys for the `From:` domain.
    pub sign: bool,
    /// Keep a copy for DKIM/ARC/DMARC verification.
    pub verify: bool,
}

pub(super) struct Incoming<'k> {
    signers: &'k Signers,
    budget: Arc<VerifyBudget>,
    writer: Option<MessageWriter>,
    failed: Option<QueueError>,
    /// Queue ids accepted on this connection (for its log line), at most
    /// the last 100.
    pub accepted: Vec<QueueId>,
    started: bool,
    filter: Option<AuthResultsFilter>,
    signing: Signing<'k>,
    verify: Option<VerifyCopy>,
    /// The copy was given up: the message is not verified.
    verify_dropped: bool,
    scratch: Vec<u8>,
}

impl<'k> Incoming<'k> {
    pub(super) fn new(signers: &'k Signers, budget: Arc<VerifyBudget>) -> Incoming<'k> {
        Incoming {
            signers,
            budget,
            writer: None,
            failed: None,
            accepted: Vec::new(),
            started: false,
            filter: None,
            signing: Signing::Off,
            verify: None,
            verify_dropped: false,
            scratch: Vec::new(),
        }
    }

    /// Forgets the transaction (aborted, or reset by STARTTLS).
    pub(super) fn reset(&mut self) {
        self.writer = None;
        self.failed = None;
        self.started = false;
        self.filter = None;
        self.signing = Signing::Off;
        self.verify = None;
        self.verify_dropped = false;
        self.scratch = Vec::new();
    }

    /// The message as received, for the checks at the end of DATA; `None`
    /// when no copy was kept or it was given up.
    pub(super) fn received(&self) -> Option<&[u8]> {
        if self.verify_dropped {
            return None;
        }
        self.verify.as_ref().map(|v| v.bytes.as_slice())
    }

    fn begin(&mut self, host: &ConnHost<'_>, how: Treatment) {
        self.started = true;
        let cfg = &host.snap.cfg;
        self.filter = Some(AuthResultsFilter::new(cfg.authserv_id()));
        self.signing = if how.sign && !self.signers.is_empty() {
            Signing::Waiting(Vec::new())
        } else {
            Signing::Off
        };
        self.verify = how.verify.then(|| VerifyCopy {
            bytes: Vec::new(),
            budget: self.budget.clone(),
            limit: usize::try_from(cfg.inbound.max_verify_size).unwrap_or(usize::MAX),
        });
    }

    /// Hands the session's buffered body bytes on.
    pub(super) async fn push(
        &mut self,
        s: &mut ServerSession,
        host: &ConnHost<'_>,
        queue: &Queue,
        how: Treatment,
    ) {
        if s.body().is_empty() {
            return;
        }
        if self.failed.is_some() {
            s.body().clear();
            return;
        }
        if self.writer.is_none() {
            let (Some(id), Some(env)) = (host.last_id, s.envelope()) else {
                s.body().clear();
                return;
            };
            self.writer = Some(queue.writer(id, unix_now(), env));
        }
        if !self.started {
            self.begin(host, how);
        }
        let chunk = std::mem::take(s.body());
        if let Some(v) = self.verify.as_mut() {
            if !self.verify_dropped && !v.add(&chunk) {
                self.verify_dropped = true;
                self.verify = None;
            }
        }
        let mut chunk = chunk;
        match self.filter.as_mut() {
            Some(f) if !f.passthrough() => {
                let mut out = std::mem::take(&mut self.scratch);
                out.clear();
                f.push(&chunk, &mut out);
                self.write(&out).await;
                self.scratch = out;
            }
            _ => self.write(&chunk).await,
        }
        chunk.clear();
        *s.body() = chunk;
    }

    /// Sends filtered bytes to the signatures and the writer.
    async fn write(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.sign(bytes);
        if let Some(w) = self.writer.as_mut() {
            if let Err(e) = w.write(bytes).await {
                self.failed = Some(e);
                self.writer = None;
            }
        }
    }

    fn sign(&mut self, bytes: &[u8]) {
        match &mut self.signing {
            Signing::Off => {}
            Signing::Active(streams) => {
                for st in streams.iter_mut() {
                    st.write(bytes);
                }
            }
            Signing::Waiting(held) => {
                let from = held.len().saturating_sub(3);
                held.extend_from_slice(bytes);
                if memchr::memmem::find(&held[from..], b"\r\n\r\n").is_some() {
                    self.activate();
                } else if held.len() > MAX_HEADER_SECTION {
                    // No end of the header section in sight: not signed
                    // (the signer would hold the whole message, and a
                    // signature over an empty body would not verify).
                    warn!("header section too large to DKIM-sign; the message is sent unsigned");
                    self.signing = Signing::Off;
                }
            }
        }
    }

    /// The header section is known: the signatures start over what was
    /// held.
    fn activate(&mut self) {
        if !matches!(self.signing, Signing::Waiting(_)) {
            return;
        }
        if let Signing::Waiting(held) = std::mem::replace(&mut self.signing, Signing::Off) {
            let (section, _) = crate::message::header_section(&held);
            let mut streams = self.signers.start(&section);
            for st in streams.iter_mut() {
                st.write(&held);
            }
            if !streams.is_empty() {
                self.signing = Signing::Active(streams);
            }
        }
    }

    /// The signature fields, once the whole message went through.
    fn signatures(&mut self) -> HeaderEdits {
        self.activate();
        let Signing::Active(streams) = std::mem::replace(&mut self.signing, Signing::Off) else {
            return HeaderEdits::new();
        };
        let (edits, errors) = finish_all(streams);
        for e in errors {
            // Never lose the message for a signature: it goes out unsigned.
            warn!(error = %e, "DKIM signing failed; the message is sent without this signature");
        }
        edits
    }

    pub(super) async fn commit(
        &mut self,
        s: &mut ServerSession,
        host: &ConnHost<'_>,
        queue: &Queue,
        how: Treatment,
    ) {
        self.push(s, host, queue, how).await;
        if let Some(mut f) = self.filter.take() {
            let mut out = Vec::new();
            f.finish(&mut out);
            self.write(&out).await;
        }
        let signatures = self.signatures();
        let message_id = s.message_id();
        let mut size = 0;
        if let Some(w) = self.writer.as_mut() {
            let mut edits = signatures;
            if let Some(e) = s.header_edits() {
                edits.extend(e.clone());
            }
            w.set_extras(edits.as_bytes(), message_id.clone());
            size = w.body_len();
        }
        let result = match (self.failed.take(), self.writer.take()) {
            (Some(e), _) => Err(e),
            (None, Some(w)) => queue.commit(w).await,
            (None, None) => Err(QueueError::Io(io::Error::other("no message content"))),
        };
        self.reset();
        match result {
            Ok(qid) => {
                if let Some(env) = s.envelope() {
                    trace::emit(Event::Accepted {
                        queue_id: qid,
                        message_id,
                        sender: env.sender,
                        recipients: env.recipients.into_iter().map(|r| r.address).collect(),
                        client: host.client.ip,
                        helo: env.helo,
                        listener: host.listener,
                        tls: s.tls().map(str::to_string),
                        auth_user: env.auth_user,
                        size,
                    });
                }
                if self.accepted.len() < 100 {
                    self.accepted.push(qid);
                }
                s.commit_result(Ok(qid.to_string()));
            }
            Err(e) => {
                // Any failure to make the message durable is temporary for
                // the client: 451 4.3.0, whether the disk is full or broken.
                let r = reply::LOCAL_ERROR;
                trace::emit(Event::Refused {
                    client: host.client.ip,
                    listener: host.listener,
                    stage: Stage::Content,
                    reply: r.clone(),
                    what: Some(e.to_string()),
                    queue_id: host.last_id,
                });
                s.commit_result(Err(r));
            }
        }
    }
}
