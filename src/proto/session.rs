//! The server side of one SMTP connection as a sans-IO state machine.
//!
//! The driver feeds received bytes to [`ServerSession::feed`]; the session
//! appends replies (wire format) to its output buffer and decoded message
//! content to its body buffer, and returns an [`Action`] when the driver has
//! to do something: read more, make the message durable, discard it, close.
//! Every decision that needs the outside world is a suspension: the session
//! stops with [`Action::Decide`] (may this client, HELO, sender, recipient,
//! message be accepted: see [`Stage`]), [`Action::Authenticate`] or
//! [`Action::Commit`], and goes on when the driver answers
//! ([`ServerSession::decided`], [`ServerSession::auth_result`],
//! [`ServerSession::commit_result`]). Only the queue id and the time are
//! asked of a [`Host`] directly. Untrusted bytes reach everything here.

use std::net::IpAddr;
use std::sync::Arc;

use super::address::Domain;
use super::command::{parse_command, Command, MailFrom, ParseError, RcptTo};
use super::data::{BodyDecoder, Progress};
use super::envelope::{Envelope, Recipient};
use super::reply::{self, EnhancedCode, Reply};
use super::sasl::{self, Credentials, Mechanism};
use super::stage::{Stage, Verdict};
use crate::message::{HeaderEdits, HeaderScan};

/// Limits and identity of the server, fixed for the life of a connection.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub hostname: String,
    /// Longest command line, CRLF included (RFC 5321 minimum 512).
    pub max_command_line: usize,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Error replies tolerated before 421 and close.
    pub max_errors: u32,
    /// More Received: headers than this is a mail loop.
    pub max_received_headers: u32,
    /// Refuse messages with bare CR/LF instead of normalising them.
    pub reject_bare_newline: bool,
    /// Offer STARTTLS (a certificate is available) while TLS is not active.
    pub starttls: bool,
    /// Offer SMTP AUTH on this listener.
    pub auth: bool,
    /// Offer AUTH without TLS too.
    pub plaintext_auth: bool,
    /// Failed AUTH attempts tolerated on one connection before 421 and close.
    pub max_auth_failures: u32,
    /// NOOP, RSET, VRFY and HELP commands tolerated without an accepted
    /// message in between before 421 and close (0: no limit).
    pub max_junk_commands: u32,
}

/// What a pending decision is about: the driver's view of the stage the
/// session stopped at ([`ServerSession::decision`]).
#[derive(Debug, Clone, Copy)]
pub enum Decision<'a> {
    Connect,
    Helo {
        name: &'a str,
        esmtp: bool,
    },
    Mail {
        mail: &'a MailFrom,
    },
    Rcpt {
        mail: &'a MailFrom,
        rcpt: &'a RcptTo,
        /// The recipients accepted so far.
        accepted: &'a [Recipient],
    },
    Content {
        mail: &'a MailFrom,
        rcpts: &'a [Recipient],
        /// The header section as it will be stored (our own trace field
        /// first, then the client's fields), at most
        /// [`crate::message::MAX_HEADER_SECTION`] bytes, CRLF line ends,
        /// without the empty line that ends it.
        header: &'a [u8],
        /// False when the header section was longer than that bound and
        /// `header` holds only its start.
        header_complete: bool,
    },
}

impl Decision<'_> {
    pub fn stage(&self) -> Stage {
        match self {
            Decision::Connect => Stage::Connect,
            Decision::Helo { .. } => Stage::Helo,
            Decision::Mail { .. } => Stage::Mail,
            Decision::Rcpt { .. } => Stage::Rcpt,
            Decision::Content { .. } => Stage::Content,
        }
    }
}

/// Outcome of a credentials check, given back to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Verified: the login to record.
    Success(String),
    Failure,
    /// The client's address is blocked after too many failures.
    Blocked,
    /// No check could be run now (every password-check slot is taken):
    /// 454 4.7.0, not counted as a failure.
    Busy,
}

/// What the session takes from its environment without a suspension.
pub trait Host {
    /// A fresh queue id for the message about to be received.
    fn new_queue_id(&mut self) -> String;
    /// Current time, seconds since the Unix epoch (for the Received: header).
    fn now(&mut self) -> i64;
}

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Everything given was consumed or waits for more bytes: send the
    /// output, then read more.
    NeedInput,
    /// A message is complete: write out the body buffer, make the message
    /// durable, then call [`ServerSession::commit_result`].
    Commit,
    /// The message being received is abandoned: drop whatever was written
    /// of it and clear the body buffer, then feed the rest.
    Abort,
    /// Send the output and close the connection.
    Close,
    /// Send the output (the 220 to STARTTLS), DISCARD every byte not yet
    /// consumed (they were sent before TLS and must not be executed inside
    /// it), run the TLS handshake, then call [`ServerSession::tls_started`].
    StartTls,
    /// Check [`ServerSession::credentials`] (slowly, off the reactor), then
    /// call [`ServerSession::auth_result`].
    Authenticate,
    /// Decide what [`ServerSession::decision`] describes, then call
    /// [`ServerSession::decided`]. Nothing more is consumed until then.
    Decide(Stage),
}

#[derive(Debug)]
enum Phase {
    Command,
    Data,
    /// Reading a BDAT chunk; `refused` is the reply to give once it is
    /// read when the chunk is not part of an acceptable transaction.
    Bdat {
        remaining: u64,
        last: bool,
        refused: Option<Reply>,
    },
    WaitCommit,
    /// Inside an AUTH exchange, waiting for the client's next response line.
    Auth(AuthStep),
    /// Credentials complete; waiting for the driver's verdict.
    WaitAuth,
    /// Waiting for the driver's [`Verdict`] on `ServerSession::pending`.
    WaitDecide,
}

/// A decision the session waits for, with what it is about.
#[derive(Debug)]
enum Pending {
    Connect,
    Helo { name: String, esmtp: bool },
    Mail(MailFrom),
    Rcpt(RcptTo),
    Content,
}

impl Pending {
    fn stage(&self) -> Stage {
        match self {
            Pending::Connect => Stage::Connect,
            Pending::Helo { .. } => Stage::Helo,
            Pending::Mail(_) => Stage::Mail,
            Pending::Rcpt(_) => Stage::Rcpt,
            Pending::Content => Stage::Content,
        }
    }
}

#[derive(Debug)]
enum AuthStep {
    PlainResponse,
    LoginUser,
    LoginPass { login: String },
}

#[derive(Debug)]
struct Txn {
    mail: MailFrom,
    rcpts: Vec<Recipient>,
    /// Set once content reception has started (DATA or the first BDAT).
    queue_id: Option<String>,
    decoder: Option<BodyDecoder>,
    bdat: bool,
    /// Content bytes received from the client (after decoding).
    size: u64,
    too_big: bool,
    headers: HeaderScan,
    /// Header fields accepted decisions added, prepended at commit.
    edits: HeaderEdits,
}

/// One connection's protocol state. Each field is owned here alone.
pub struct ServerSession {
    cfg: Arc<SessionConfig>,
    client_ip: IpAddr,
    /// HELO/EHLO argument, once given.
    helo: Option<String>,
    esmtp: bool,
    txn: Option<Txn>,
    phase: Phase,
    /// Error replies sent so far.
    errors: u32,
    /// True while an overlong command line is being skipped.
    skipping_line: bool,
    closed: bool,
    /// Replies not yet sent, in wire format.
    out: Vec<u8>,
    /// Decoded message content not yet handed to the queue.
    body: Vec<u8>,
    pending_abort: bool,
    messages: u64,
    /// "TLSv1.3 with cipher ..." once TLS is active.
    tls: Option<String>,
    /// The authenticated login.
    auth_user: Option<String>,
    auth_failures: u32,
    /// Credentials waiting for verification (never logged).
    pending_auth: Option<Credentials>,
    starttls_pending: bool,
    /// NOOP/RSET/VRFY/HELP commands since the last accepted message.
    junk: u32,
    /// The local user (uid, name) of a local submission, for Received:.
    local_user: Option<(u32, String)>,
    /// The decision waited for (with [`Phase::WaitDecide`]).
    pending: Option<Pending>,
    /// The connection was refused at [`Stage::Connect`]: every command but
    /// QUIT gets 503 (RFC 5321 §3.1).
    refused: bool,
    /// Why the session itself refused the message it asks to abort (too
    /// big, a loop, bare newlines), for the driver's log line.
    refusal: Option<Reply>,
}

impl ServerSession {
    /// A session that starts by asking for the [`Stage::Connect`]
    /// decision; the greeting follows an accepting verdict.
    pub fn new(cfg: Arc<SessionConfig>, client_ip: IpAddr) -> ServerSession {
        ServerSession {
            cfg,
            client_ip,
            local_user: None,
            pending: Some(Pending::Connect),
            refused: false,
            refusal: None,
            helo: None,
            esmtp: false,
            txn: None,
            phase: Phase::WaitDecide,
            errors: 0,
            skipping_line: false,
            closed: false,
            out: Vec::with_capacity(256),
            body: Vec::new(),
            pending_abort: false,
            messages: 0,
            tls: None,
            auth_user: None,
            auth_failures: 0,
            pending_auth: None,
            starttls_pending: false,
            junk: 0,
        }
    }

    /// TLS is now active (implicit TLS before the greeting, or after a
    /// STARTTLS handshake). The session starts over: the client must send
    /// EHLO again (RFC 3207 §4.2).
    ///
    /// RFC 3207 §4.2: the server discards all knowledge obtained from the
    /// client before TLS. STARTTLS is refused while a transaction is open,
    /// so there is normally nothing to drop; the reset is complete anyway,
    /// and the driver must drop its own per-message state (queue writer,
    /// failure flag, authenticated user) at the same time.
    pub fn tls_started(&mut self, description: String) {
        // Implicit TLS comes before the greeting: the Connect decision is
        // still to be made. Nothing else can be pending at a TLS start.
        let before_greeting = matches!(self.pending, Some(Pending::Connect));
        self.txn = None;
        self.body.clear();
        self.pending_abort = false;
        self.pending_auth = None;
        self.skipping_line = false;
        self.starttls_pending = false;
        self.tls = Some(description);
        self.helo = None;
        self.esmtp = false;
        self.auth_user = None;
        self.junk = 0;
        if !before_greeting {
            self.pending = None;
            self.phase = Phase::Command;
        }
    }

    /// The name the client gave in HELO/EHLO.
    pub fn helo_name(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    pub fn tls(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    pub fn auth_user(&self) -> Option<&str> {
        self.auth_user.as_deref()
    }

    /// The credentials to check after [`Action::Authenticate`].
    pub fn credentials(&self) -> Option<&Credentials> {
        self.pending_auth.as_ref()
    }

    /// The driver's answer to [`Action::Authenticate`].
    pub fn auth_result(&mut self, outcome: AuthOutcome) {
        self.pending_auth = None;
        self.phase = Phase::Command;
        match outcome {
            AuthOutcome::Success(login) => {
                self.auth_user = Some(login);
                self.reply(reply::AUTH_OK);
            }
            AuthOutcome::Failure => {
                self.auth_failures += 1;
                self.reply(reply::AUTH_FAILED);
                if self.auth_failures >= self.cfg.max_auth_failures && !self.closed {
                    reply::AUTH_TOO_MANY_FAILURES.write_to(&mut self.out);
                    self.closed = true;
                }
            }
            AuthOutcome::Blocked => {
                reply::AUTH_IP_BLOCKED.write_to(&mut self.out);
                self.closed = true;
            }
            AuthOutcome::Busy => self.reply(reply::AUTH_BUSY),
        }
    }

    /// Queues the 220 greeting (RFC 2034: no enhanced code on it).
    fn greeting(&mut self) {
        let r = Reply::owned(220, "", format!("{} ESMTP pigeon", self.cfg.hostname));
        r.write_to(&mut self.out);
    }

    /// What the pending decision is about, while the session waits for
    /// one ([`Action::Decide`]).
    pub fn decision(&self) -> Option<Decision<'_>> {
        Some(match self.pending.as_ref()? {
            Pending::Connect => Decision::Connect,
            Pending::Helo { name, esmtp } => Decision::Helo {
                name,
                esmtp: *esmtp,
            },
            Pending::Mail(mail) => Decision::Mail { mail },
            Pending::Rcpt(rcpt) => {
                let t = self.txn.as_ref()?;
                Decision::Rcpt {
                    mail: &t.mail,
                    rcpt,
                    accepted: &t.rcpts,
                }
            }
            Pending::Content => {
                let t = self.txn.as_ref()?;
                Decision::Content {
                    mail: &t.mail,
                    rcpts: &t.rcpts,
                    header: t.headers.section(),
                    header_complete: t.headers.complete(),
                }
            }
        })
    }

    /// The driver's answer to [`Action::Decide`].
    pub fn decided(&mut self, verdict: Verdict) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        self.phase = Phase::Command;
        let content = matches!(pending, Pending::Content);
        match (pending, verdict) {
            (_, Verdict::Drop(r)) => {
                r.write_to(&mut self.out);
                self.closed = true;
                if content {
                    self.reset_txn();
                }
            }
            (Pending::Connect, Verdict::Accept(_)) => self.greeting(),
            (Pending::Connect, Verdict::Reject(r)) => {
                r.write_to(&mut self.out);
                self.refused = true;
            }
            (Pending::Helo { name, esmtp }, Verdict::Accept(_)) => self.hello(name, esmtp),
            (Pending::Mail(mail), Verdict::Accept(edits)) => {
                self.txn = Some(Txn {
                    mail,
                    rcpts: Vec::new(),
                    queue_id: None,
                    decoder: None,
                    bdat: false,
                    size: 0,
                    too_big: false,
                    headers: HeaderScan::default(),
                    edits,
                });
                self.reply(reply::SENDER_OK);
            }
            (Pending::Rcpt(rcpt), Verdict::Accept(edits)) => {
                if let Some(t) = self.txn.as_mut() {
                    t.rcpts.push(Recipient {
                        address: rcpt.rcpt.address(),
                        orcpt: rcpt.orcpt,
                        notify: rcpt.notify,
                    });
                    t.edits.extend(edits);
                }
                self.reply(reply::RCPT_OK);
            }
            (Pending::Content, Verdict::Accept(edits)) => {
                if let Some(t) = self.txn.as_mut() {
                    t.edits.extend(edits);
                }
                self.phase = Phase::WaitCommit;
            }
            (Pending::Content, Verdict::Reject(r)) => {
                self.reply(r);
                self.reset_txn();
                self.body.clear();
            }
            (Pending::Helo { .. } | Pending::Mail(_) | Pending::Rcpt(_), Verdict::Reject(r)) => {
                self.reply(r)
            }
        }
    }

    /// Asks for a decision: nothing more is consumed until it comes.
    fn ask(&mut self, p: Pending) {
        self.pending = Some(p);
        self.phase = Phase::WaitDecide;
    }

    /// Why the session refused the message it asked the driver to abort,
    /// if it refused it itself (see [`Action::Abort`]).
    pub fn take_refusal(&mut self) -> Option<Reply> {
        self.refusal.take()
    }

    /// The header fields decisions added to the message being received,
    /// to prepend when it is committed.
    pub fn header_edits(&self) -> Option<&HeaderEdits> {
        self.txn.as_ref().map(|t| &t.edits)
    }

    /// The Message-ID of the message being received, from its header
    /// section, if it has a well-formed one.
    pub fn message_id(&self) -> Option<String> {
        let t = self.txn.as_ref()?;
        crate::message::header::message_id(t.headers.section())
    }

    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    pub fn body(&mut self) -> &mut Vec<u8> {
        &mut self.body
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// True while message content is expected (data timeouts apply).
    pub fn in_content(&self) -> bool {
        matches!(self.phase, Phase::Data | Phase::Bdat { .. })
    }

    /// True while a message is being received (DATA/BDAT started, not finished).
    pub fn has_open_message(&self) -> bool {
        self.txn.as_ref().is_some_and(|t| t.queue_id.is_some())
    }

    pub fn messages_accepted(&self) -> u64 {
        self.messages
    }

    pub fn errors(&self) -> u32 {
        self.errors
    }

    /// The queue id of the message being received.
    pub fn queue_id(&self) -> Option<&str> {
        self.txn.as_ref().and_then(|t| t.queue_id.as_deref())
    }

    /// The envelope of the message being received.
    pub fn envelope(&self) -> Option<Envelope> {
        let t = self.txn.as_ref()?;
        Some(Envelope {
            sender: t
                .mail
                .sender
                .as_ref()
                .map(|m| m.address())
                .unwrap_or_default(),
            recipients: t.rcpts.clone(),
            ret: t.mail.ret,
            envid: t.mail.envid.clone(),
            body_type: t.mail.body,
            smtputf8: t.mail.smtputf8,
            client_ip: self.client_ip,
            helo: self.helo.clone().unwrap_or_default(),
            protocol: self.protocol().to_string(),
            auth_user: self.auth_user.clone(),
        })
    }

    /// RFC 3848 protocol name for the Received: header.
    fn protocol(&self) -> &'static str {
        match (self.esmtp, self.tls.is_some(), self.auth_user.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }

    /// The connection idled too long: 421 and close.
    pub fn timeout(&mut self) {
        reply::TIMEOUT.write_to(&mut self.out);
        self.closed = true;
    }

    /// The server is stopping: 421 and close.
    pub fn shutdown(&mut self) {
        reply::SHUTTING_DOWN.write_to(&mut self.out);
        self.closed = true;
    }

    /// The driver's answer to [`Action::Commit`]: the queue id on success, or
    /// the reply to give (451/452) when the message could not be made durable.
    pub fn commit_result(&mut self, result: Result<String, Reply>) {
        match result {
            Ok(id) => {
                self.messages += 1;
                self.junk = 0;
                let r = Reply::owned(250, "2.0.0", format!("Ok: queued as {id}"));
                self.reply(r);
            }
            Err(r) => self.reply(r),
        }
        self.txn = None;
        self.body.clear();
        self.phase = Phase::Command;
    }

    fn reply(&mut self, r: Reply) {
        r.write_to(&mut self.out);
        let counts = r.code >= 400
            && r.code != 421
            && !(r.code == 452 && r.enhanced == Some(EnhancedCode::new(4, 5, 3)));
        if counts {
            self.errors += 1;
            if self.errors > self.cfg.max_errors {
                reply::TOO_MANY_ERRORS.write_to(&mut self.out);
                self.closed = true;
            }
        }
    }

    /// Drops the transaction; if content had started, the driver must
    /// discard what it wrote.
    fn reset_txn(&mut self) {
        if let Some(t) = self.txn.take() {
            if t.queue_id.is_some() {
                self.pending_abort = true;
            }
        }
    }

    fn line_limit(&self, line: &[u8]) -> usize {
        let base = self.cfg.max_command_line;
        let verb = line.get(..4).map(|v| v.to_ascii_uppercase());
        match verb.as_deref() {
            // SIZE (RFC 1870) +26, DSN (RFC 3461) +100, SMTPUTF8 +10, AUTH= (RFC 4954) +500.
            Some(b"MAIL") => base + 636,
            // DSN NOTIFY/ORCPT (RFC 3461) +500.
            Some(b"RCPT") => base + 500,
            // SASL initial responses (RFC 4954 §4: 12288 octets).
            Some(b"AUTH") => base.max(12288),
            _ => base,
        }
    }

    fn hard_line_cap(&self) -> usize {
        if self.cfg.auth {
            self.cfg.max_command_line.max(12288) + 1024
        } else {
            self.cfg.max_command_line + 1024
        }
    }

    /// Processes as much of `input` as possible. Returns how many bytes were
    /// consumed and what the driver must do next. Bytes not consumed must be
    /// given again, with more appended, on the next call.
    pub fn feed(&mut self, input: &[u8], host: &mut dyn Host) -> (usize, Action) {
        let mut pos = 0;
        loop {
            if self.pending_abort {
                self.pending_abort = false;
                return (pos, Action::Abort);
            }
            if self.closed {
                return (pos, Action::Close);
            }
            if self.starttls_pending {
                self.starttls_pending = false;
                return (pos, Action::StartTls);
            }
            match self.phase {
                Phase::WaitCommit => return (pos, Action::Commit),
                Phase::WaitAuth => return (pos, Action::Authenticate),
                Phase::WaitDecide => match self.pending.as_ref() {
                    Some(p) => return (pos, Action::Decide(p.stage())),
                    None => self.phase = Phase::Command,
                },
                Phase::Command | Phase::Auth(_) => {
                    let rest = &input[pos..];
                    let lf = memchr::memchr(b'\n', rest);
                    if self.skipping_line {
                        match lf {
                            None => return (input.len(), Action::NeedInput),
                            Some(i) => {
                                pos += i + 1;
                                self.skipping_line = false;
                                self.reply(reply::LINE_TOO_LONG);
                                continue;
                            }
                        }
                    }
                    let Some(i) = lf else {
                        if rest.len() > self.hard_line_cap() {
                            self.skipping_line = true;
                            return (input.len(), Action::NeedInput);
                        }
                        return (pos, Action::NeedInput);
                    };
                    let mut line = &rest[..i];
                    if line.last() == Some(&b'\r') {
                        line = &line[..line.len() - 1];
                    }
                    pos += i + 1;
                    if let Phase::Auth(_) = self.phase {
                        self.auth_response(line);
                        continue;
                    }
                    if line.len() + 2 > self.line_limit(line) {
                        self.reply(reply::LINE_TOO_LONG);
                        continue;
                    }
                    self.command(line, host);
                }
                Phase::Data => {
                    let (progress, appended) = self.decode(&input[pos..]);
                    self.scan_headers(appended);
                    match progress {
                        Progress::More => return (input.len(), Action::NeedInput),
                        Progress::End(n) => {
                            pos += n;
                            if let Some(a) = self.finish_message() {
                                return (pos, a);
                            }
                        }
                    }
                }
                Phase::Bdat {
                    remaining,
                    last,
                    ref mut refused,
                } => {
                    let refused = refused.take();
                    let avail = (input.len() - pos) as u64;
                    let take = remaining.min(avail) as usize;
                    if refused.is_none() {
                        let (_, appended) = self.decode(&input[pos..pos + take]);
                        self.scan_headers(appended);
                    }
                    pos += take;
                    let remaining = remaining - take as u64;
                    if remaining > 0 {
                        self.phase = Phase::Bdat {
                            remaining,
                            last,
                            refused,
                        };
                        return (pos, Action::NeedInput);
                    }
                    self.phase = Phase::Command;
                    if let Some(r) = refused {
                        // The chunk was read only to stay in sync; the
                        // transaction, if any, stands as it was.
                        self.reply(r);
                        continue;
                    }
                    if last {
                        if let Some(t) = self.txn.as_mut() {
                            let out = if t.too_big {
                                None
                            } else {
                                Some(&mut self.body)
                            };
                            if let Some(d) = t.decoder.as_mut() {
                                d.finish_chunks(out);
                            }
                        }
                        if let Some(a) = self.finish_message() {
                            return (pos, a);
                        }
                    } else {
                        let size = self.txn.as_ref().map(|t| t.size).unwrap_or(0);
                        self.reply(Reply::owned(
                            250,
                            "2.0.0",
                            format!("Ok: {size} octets received"),
                        ));
                    }
                }
            }
        }
    }

    /// Runs the content decoder over `input`; returns its progress and the
    /// range of `self.body` it appended.
    fn decode(&mut self, input: &[u8]) -> (Progress, std::ops::Range<usize>) {
        let before = self.body.len();
        let Some(t) = self.txn.as_mut() else {
            // BDAT without a transaction: content is read and dropped.
            return (Progress::More, before..before);
        };
        let Some(d) = t.decoder.as_mut() else {
            return (Progress::More, before..before);
        };
        let out = if t.too_big {
            None
        } else {
            Some(&mut self.body)
        };
        let progress = d.feed(input, out);
        let after = self.body.len();
        t.size += (after - before) as u64;
        if t.size > self.cfg.max_message_size && !t.too_big {
            t.too_big = true;
        }
        (progress, before..after)
    }

    fn scan_headers(&mut self, range: std::ops::Range<usize>) {
        if let Some(t) = self.txn.as_mut() {
            if !range.is_empty() {
                t.headers.scan(&self.body[range]);
            }
        }
    }

    /// The content is complete: check it and ask for a commit, or refuse it.
    fn finish_message(&mut self) -> Option<Action> {
        let Some(t) = self.txn.as_ref() else {
            self.phase = Phase::Command;
            return None;
        };
        let bare = t.decoder.as_ref().is_some_and(|d| d.saw_bare_newline());
        let refusal = if t.too_big {
            Some(reply::MSG_TOO_BIG)
        } else if t.headers.received() > self.cfg.max_received_headers {
            Some(reply::LOOP_DETECTED)
        } else if bare && self.cfg.reject_bare_newline {
            Some(reply::BARE_NEWLINE)
        } else {
            None
        };
        match refusal {
            Some(r) => {
                self.refusal = Some(r.clone());
                self.reply(r);
                self.reset_txn();
                self.phase = Phase::Command;
                self.pending_abort = false;
                self.body.clear();
                Some(Action::Abort)
            }
            None => {
                self.ask(Pending::Content);
                Some(Action::Decide(Stage::Content))
            }
        }
    }

    /// The connection comes from a program on this machine (`pigeon
    /// sendmail`) run by this user: the Received: header says so instead
    /// of naming a client host.
    pub fn set_local_user(&mut self, uid: u32, name: &str) {
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        self.local_user = Some((uid, name));
    }

    /// Starts content reception: queue id and our Received: header.
    fn begin_content(&mut self, host: &mut dyn Host, bdat: bool) {
        let id = host.new_queue_id();
        let now = host.now();
        let proto = self.protocol();
        let Some(t) = self.txn.as_mut() else { return };
        let ip = match self.client_ip {
            IpAddr::V4(v4) => format!("[{v4}]"),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => format!("[{v4}]"),
                None => format!("[IPv6:{v6}]"),
            },
        };
        // RFC 6532 §3.7: a non-ASCII name goes into Received: only in an
        // SMTPUTF8 message; otherwise each non-ASCII character is shown as `?`.
        let helo = match self.helo.as_deref() {
            None => "unknown".to_string(),
            Some(h) if h.is_ascii() || t.mail.smtputf8 => h.to_string(),
            Some(h) => h
                .chars()
                .map(|c| if c.is_ascii() { c } else { '?' })
                .collect(),
        };
        let for_clause = match t.rcpts.as_slice() {
            [one] => format!("\r\n\tfor <{}>", one.address),
            _ => String::new(),
        };
        let tls = match &self.tls {
            Some(d) => format!("\r\n\t(using {d})"),
            None => String::new(),
        };
        let received = match &self.local_user {
            Some((uid, name)) => format!(
                "Received: by {} (pigeon, from userid {uid} ({name}))\r\n\tid {id}{for_clause};\r\n\t{}\r\n",
                self.cfg.hostname,
                crate::message::rfc5322_date(now)
            ),
            None => format!(
                "Received: from {helo} ({ip}){tls}\r\n\tby {} (pigeon) with {proto} id {id}{for_clause};\r\n\t{}\r\n",
                self.cfg.hostname,
                crate::message::rfc5322_date(now)
            ),
        };
        self.body.extend_from_slice(received.as_bytes());
        t.headers.scan_own(received.as_bytes());
        t.queue_id = Some(id);
        t.bdat = bdat;
        t.decoder = Some(if bdat {
            BodyDecoder::chunks()
        } else {
            BodyDecoder::data()
        });
    }

    fn command(&mut self, line: &[u8], host: &mut dyn Host) {
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(ParseError::Unknown) => return self.reply(reply::UNKNOWN_COMMAND),
            Err(ParseError::Syntax(why)) => {
                return self.reply(Reply::owned(501, "5.5.4", format!("Syntax error: {why}")))
            }
            Err(ParseError::UnknownParam) => return self.reply(reply::PARAM_UNKNOWN),
        };
        let in_bdat = self.txn.as_ref().is_some_and(|t| t.bdat);
        if self.refused {
            // RFC 5321 §3.1: after a 554 greeting, only QUIT.
            return if matches!(cmd, Command::Quit) {
                self.reply(reply::BYE);
                self.closed = true;
            } else {
                self.reply(reply::REFUSED_AT_CONNECT);
            };
        }
        match cmd {
            Command::Ehlo(name) => self.ask(Pending::Helo { name, esmtp: true }),
            Command::Helo(name) => self.ask(Pending::Helo { name, esmtp: false }),
            Command::Mail(mail) => self.mail(mail, in_bdat),
            Command::Rcpt(rcpt) => self.rcpt(rcpt, in_bdat),
            Command::Data => {
                if in_bdat {
                    return self.reply(reply::BAD_SEQUENCE_BDAT);
                }
                match self.txn.as_ref() {
                    None => self.reply(reply::BAD_SEQUENCE_NEED_MAIL),
                    Some(t) if t.rcpts.is_empty() => self.reply(reply::NO_VALID_RCPTS),
                    Some(_) => {
                        self.begin_content(host, false);
                        self.phase = Phase::Data;
                        self.reply(reply::START_DATA);
                    }
                }
            }
            Command::Bdat { size, last } => self.bdat(size, last, host),
            Command::Rset => {
                self.reset_txn();
                self.junk_reply(reply::OK);
            }
            Command::Noop => self.junk_reply(reply::OK),
            Command::Vrfy => self.junk_reply(reply::VRFY_CANNOT),
            Command::Help => self.junk_reply(reply::HELP),
            Command::Quit => {
                self.reset_txn();
                self.reply(reply::BYE);
                self.closed = true;
            }
            Command::StartTls => {
                if !self.cfg.starttls {
                    self.reply(reply::NOT_IMPLEMENTED);
                } else if self.tls.is_some() {
                    self.reply(reply::TLS_ALREADY_ACTIVE);
                } else if self.txn.is_some() {
                    // RFC 3207 §4.2 lets the server discard an open
                    // transaction; refusing is simpler to get right: no
                    // envelope or content of before TLS can reach inside it.
                    self.reply(reply::STARTTLS_IN_TRANSACTION);
                } else {
                    self.reply(reply::STARTTLS_READY);
                    self.starttls_pending = true;
                }
            }
            Command::Auth(args) => self.auth(&args),
            Command::Expn => self.reply(reply::NOT_IMPLEMENTED),
        }
    }

    /// An accepted EHLO/HELO: the transaction is reset (RFC 5321 §4.1.4)
    /// and the reply lists what is offered.
    fn hello(&mut self, name: String, esmtp: bool) {
        self.reset_txn();
        self.helo = Some(name);
        self.esmtp = esmtp;
        if !esmtp {
            return self.reply(Reply::owned(250, "", self.cfg.hostname.clone()));
        }
        let mut text = format!(
            "{}\nPIPELINING\nSIZE {}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING",
            self.cfg.hostname, self.cfg.max_message_size
        );
        if self.cfg.starttls && self.tls.is_none() {
            text.push_str("\nSTARTTLS");
        }
        if self.auth_offered() {
            text.push_str("\nAUTH ");
            text.push_str(sasl::MECHANISMS);
        }
        text.push_str("\nDSN");
        self.reply(Reply::owned(250, "", text));
    }

    /// Replies to a command that makes no progress (as Postfix's
    /// smtpd_junk_command_limit): past the limit, 421 and close, so a
    /// client cannot hold a connection slot with NOOPs alone.
    fn junk_reply(&mut self, r: Reply) {
        self.junk = self.junk.saturating_add(1);
        if self.cfg.max_junk_commands > 0 && self.junk > self.cfg.max_junk_commands {
            reply::TOO_MANY_JUNK_COMMANDS.write_to(&mut self.out);
            self.closed = true;
            return;
        }
        self.reply(r);
    }

    fn auth_offered(&self) -> bool {
        self.cfg.auth && (self.tls.is_some() || self.cfg.plaintext_auth)
    }

    fn auth(&mut self, args: &str) {
        if !self.cfg.auth {
            return self.reply(reply::AUTH_NOT_ENABLED);
        }
        if self.helo.is_none() {
            return self.reply(reply::BAD_SEQUENCE_HELO);
        }
        if !self.auth_offered() {
            return self.reply(reply::AUTH_NEEDS_TLS);
        }
        if self.auth_user.is_some() {
            return self.reply(reply::AUTH_ALREADY);
        }
        if self.txn.is_some() {
            return self.reply(reply::AUTH_IN_TRANSACTION);
        }
        let mut words = args.split(' ').filter(|w| !w.is_empty());
        let (Some(mech), initial, None) = (words.next(), words.next(), words.next()) else {
            return self.reply(Reply::new(
                501,
                "5.5.4",
                "Syntax error: AUTH mechanism [initial-response]",
            ));
        };
        let Some(mech) = Mechanism::parse(mech) else {
            return self.reply(reply::AUTH_UNKNOWN_MECHANISM);
        };
        match (mech, initial) {
            (Mechanism::Plain, None) => {
                self.phase = Phase::Auth(AuthStep::PlainResponse);
                self.reply(Reply::new(334, "", ""));
            }
            (Mechanism::Login, None) => {
                self.phase = Phase::Auth(AuthStep::LoginUser);
                self.reply(Reply::new(334, "", "VXNlcm5hbWU6"));
            }
            (Mechanism::Plain, Some(ir)) => {
                self.phase = Phase::Auth(AuthStep::PlainResponse);
                self.auth_response(ir.as_bytes());
            }
            (Mechanism::Login, Some(ir)) => {
                self.phase = Phase::Auth(AuthStep::LoginUser);
                self.auth_response(ir.as_bytes());
            }
        }
    }

    /// One client response inside an AUTH exchange.
    fn auth_response(&mut self, line: &[u8]) {
        let Phase::Auth(step) = std::mem::replace(&mut self.phase, Phase::Command) else {
            return;
        };
        if line == b"*" {
            return self.reply(reply::AUTH_CANCELLED);
        }
        let Some(data) = sasl::decode(line) else {
            return self.reply(reply::AUTH_BAD_BASE64);
        };
        match step {
            AuthStep::PlainResponse => match sasl::parse_plain(&data) {
                Ok(c) => {
                    self.pending_auth = Some(c);
                    self.phase = Phase::WaitAuth;
                }
                Err(why) => self.reply(Reply::owned(501, "5.5.2", format!("Error: {why}"))),
            },
            AuthStep::LoginUser => match String::from_utf8(data) {
                Ok(login) if !login.is_empty() => {
                    self.phase = Phase::Auth(AuthStep::LoginPass { login });
                    self.reply(Reply::new(334, "", "UGFzc3dvcmQ6"));
                }
                _ => self.reply(Reply::new(501, "5.5.2", "Error: bad user name")),
            },
            AuthStep::LoginPass { login } => match String::from_utf8(data) {
                Ok(password) => {
                    self.pending_auth = Some(Credentials {
                        authzid: String::new(),
                        login,
                        password,
                    });
                    self.phase = Phase::WaitAuth;
                }
                Err(_) => self.reply(Reply::new(501, "5.5.2", "Error: password is not UTF-8")),
            },
        }
    }

    fn mail(&mut self, mail: MailFrom, in_bdat: bool) {
        if self.helo.is_none() {
            return self.reply(reply::BAD_SEQUENCE_HELO);
        }
        if in_bdat {
            return self.reply(reply::BAD_SEQUENCE_BDAT);
        }
        if self.txn.is_some() {
            return self.reply(reply::BAD_SEQUENCE_NESTED_MAIL);
        }
        let has_params = mail.size.is_some()
            || mail.smtputf8
            || mail.ret.is_some()
            || mail.envid.is_some()
            || mail.auth.is_some()
            || mail.body != Default::default();
        if has_params && !self.esmtp {
            return self.reply(reply::PARAM_UNKNOWN);
        }
        if mail.body == super::envelope::BodyType::BinaryMime {
            // Not advertised: BINARYMIME needs BDAT-only handling we do not offer.
            return self.reply(Reply::new(
                555,
                "5.5.4",
                "Error: BODY=BINARYMIME is not supported",
            ));
        }
        if mail.sender.as_ref().is_some_and(|s| s.utf8) && !mail.smtputf8 {
            return self.reply(reply::NEED_SMTPUTF8);
        }
        if mail.size.is_some_and(|s| s > self.cfg.max_message_size) {
            return self.reply(reply::MSG_TOO_BIG);
        }
        self.ask(Pending::Mail(mail));
    }

    fn rcpt(&mut self, mut rcpt: RcptTo, in_bdat: bool) {
        if in_bdat {
            return self.reply(reply::BAD_SEQUENCE_BDAT);
        }
        let Some(t) = self.txn.as_ref() else {
            return self.reply(reply::BAD_SEQUENCE_NEED_MAIL);
        };
        if t.rcpts.len() >= self.cfg.max_recipients {
            return self.reply(reply::TOO_MANY_RCPTS);
        }
        if rcpt.rcpt.utf8 && !t.mail.smtputf8 {
            return self.reply(reply::NEED_SMTPUTF8);
        }
        // RFC 5321 §4.1.3 and §4.5.1: postmaster at an address literal
        // is this server's postmaster, for any client, like <Postmaster>.
        let literal_postmaster = matches!(rcpt.rcpt.domain, Domain::Literal(_))
            && rcpt
                .rcpt
                .local_unquoted()
                .eq_ignore_ascii_case("postmaster");
        if rcpt.bare_postmaster || literal_postmaster {
            rcpt.rcpt.domain = Domain::Name(self.cfg.hostname.to_ascii_lowercase());
        }
        self.ask(Pending::Rcpt(rcpt));
    }

    fn bdat(&mut self, size: u64, last: bool, host: &mut dyn Host) {
        // The chunk is always read, even when refused, to stay in sync.
        let refused = match self.txn.as_ref() {
            None if self.helo.is_none() => Some(reply::BAD_SEQUENCE_HELO),
            None => Some(reply::BAD_SEQUENCE_NEED_MAIL),
            Some(t) if t.rcpts.is_empty() => Some(reply::NO_VALID_RCPTS),
            Some(t) if t.queue_id.is_some() && !t.bdat => Some(reply::BAD_SEQUENCE_BDAT),
            Some(_) => None,
        };
        if refused.is_none() {
            if self.txn.as_ref().is_some_and(|t| t.queue_id.is_none()) {
                self.begin_content(host, true);
            }
            if let Some(t) = self.txn.as_mut() {
                if t.size.saturating_add(size) > self.cfg.max_message_size {
                    t.too_big = true;
                }
            }
        }
        self.phase = Phase::Bdat {
            remaining: size,
            last,
            refused,
        };
    }
}
