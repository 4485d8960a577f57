//! The client side of SMTP (RFC 5321) and LMTP (RFC 2033) as a sans-IO state
//! machine: what the delivery transports speak to remote MXes, smarthosts
//! and local LMTP servers.
//!
//! The driver feeds the bytes it reads from the server to
//! [`ClientSession::feed`] and asks [`ClientSession::poll`] what to do next:
//! write bytes, read more, run a TLS handshake, supply message content, or
//! start a transaction. The machine does no I/O and reads no clock; it only
//! says which RFC 5321 §4.5.3.2 timeout applies to the current wait
//! ([`ClientSession::timeout_class`]).
//!
//! Owns: the protocol state of one outgoing connection, the reply parser and
//! the content encoder ([`DotStuffer`]). Touches nothing else.
//!
//! Untrusted bytes: every server reply reaches `feed` and the reply parser.
//! Nothing a server sends can make this code panic, grow memory without a
//! bound (reply lines and whole replies are capped), or get text into our
//! commands. Bytes that follow a 220 reply to STARTTLS in the same read are
//! treated as an injection attempt and end the session.
//!
//! Secrets: `ClientEvent::Send` carries the AUTH exchange, so a driver must
//! not log sent bytes while [`ClientSession::sending_secret`] is true.

use std::collections::VecDeque;
use std::fmt;

use super::envelope::{BodyType, Notify, Recipient, Ret};
use super::reply::EnhancedCode;
use super::sasl::{self, Credentials};

/// Cap on one reply (all its lines together).
const MAX_REPLY_BYTES: usize = 64 * 1024;
/// RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets; we never accept
/// less than that whatever the configuration says.
const MIN_REPLY_LINE: usize = 512;
/// Pipelined BDAT: stop sending chunks while this many replies are unread,
/// so the server's replies can never fill the socket buffers both ways.
const MAX_IN_FLIGHT: usize = 8;
/// RFC 3461 §4.4 and §4.2: longest ENVID and ORCPT values.
const MAX_ENVID: usize = 100;
const MAX_ORCPT: usize = 500;

/// The RFC 5321 §4.5.3.2 timeout that applies to the current wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// Waiting for the 220 greeting.
    Greeting,
    /// EHLO/HELO/LHLO, STARTTLS, AUTH, RSET, QUIT; also idle.
    Command,
    Mail,
    Rcpt,
    /// Waiting for the 354 to DATA.
    DataInit,
    /// Sending content (or waiting for the reply to a non-last BDAT chunk).
    DataBlock,
    /// Waiting for the reply to the final dot or to `BDAT n LAST`.
    DataTermination,
}

impl Timeout {
    pub fn secs(self) -> u64 {
        match self {
            Timeout::Greeting | Timeout::Command | Timeout::Mail | Timeout::Rcpt => 300,
            Timeout::DataInit => 120,
            Timeout::DataBlock => 180,
            Timeout::DataTermination => 600,
        }
    }
}

/// When to use STARTTLS (RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    Never,
    /// When the server offers it; go on in clear text if it does not, or if
    /// it refuses the command.
    Opportunistic,
    /// Close the session unless TLS gets established.
    Required,
}

/// Settings for one connection.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our name in EHLO/HELO/LHLO. Characters other than printable ASCII
    /// are dropped (config validation should already refuse them).
    pub helo_name: String,
    /// Speak LMTP: LHLO (no HELO fallback), one reply per accepted recipient
    /// after the content, DATA only (no BDAT).
    pub lmtp: bool,
    pub use_starttls: StartTls,
    /// The connection is TLS from the start (port 465): no STARTTLS, AUTH
    /// allowed.
    pub implicit_tls: bool,
    /// Log in with these: PLAIN if offered, else LOGIN. If the server offers
    /// neither, or TLS is not active (see `allow_plaintext_auth`), the
    /// session ends with [`SessionOutcome::AuthUnavailable`] rather than send
    /// mail unauthenticated or the password in clear.
    pub auth: Option<Credentials>,
    /// Send credentials without TLS (a relay on the loopback, tests).
    pub allow_plaintext_auth: bool,
    /// Longest reply line accepted, CRLF excluded (at least 512).
    pub max_line: usize,
}

impl ClientConfig {
    /// Defaults: SMTP, opportunistic STARTTLS, no AUTH, 4096-byte lines.
    pub fn new(helo_name: impl Into<String>) -> ClientConfig {
        ClientConfig {
            helo_name: helo_name.into(),
            lmtp: false,
            use_starttls: StartTls::Opportunistic,
            implicit_tls: false,
            auth: None,
            allow_plaintext_auth: false,
            max_line: 4096,
        }
    }
}

/// What the server offered in its EHLO/LHLO reply. All false after HELO.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    /// SIZE (RFC 1870): the limit, 0 when the server gave none.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub binary_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub chunking: bool,
    pub starttls: bool,
    /// AUTH offered with any mechanism.
    pub auth: bool,
    pub auth_plain: bool,
    pub auth_login: bool,
    pub enhanced_status_codes: bool,
}

impl Extensions {
    /// Reads the keyword lines (all but the first) of an EHLO/LHLO reply.
    pub fn parse(reply: &ServerReply) -> Extensions {
        let mut e = Extensions::default();
        for line in reply.text.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let kw = keyword.to_ascii_uppercase();
            // "AUTH=LOGIN PLAIN" is an old form some servers still send.
            let auth_mechs = if kw == "AUTH" {
                Some(None)
            } else {
                kw.strip_prefix("AUTH=").map(|m| Some(m.to_string()))
            };
            if let Some(first) = auth_mechs {
                e.auth = true;
                for m in first
                    .into_iter()
                    .chain(words.map(|w| w.to_ascii_uppercase()))
                {
                    match m.as_str() {
                        "PLAIN" => e.auth_plain = true,
                        "LOGIN" => e.auth_login = true,
                        _ => {}
                    }
                }
                continue;
            }
            match kw.as_str() {
                "PIPELINING" => e.pipelining = true,
                "SIZE" => {
                    e.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0));
                }
                "8BITMIME" => e.eight_bit_mime = true,
                "BINARYMIME" => e.binary_mime = true,
                "SMTPUTF8" => e.smtputf8 = true,
                "DSN" => e.dsn = true,
                "CHUNKING" => e.chunking = true,
                "STARTTLS" => e.starttls = true,
                "ENHANCEDSTATUSCODES" => e.enhanced_status_codes = true,
                _ => {}
            }
        }
        e
    }
}

/// One reply as received: code, RFC 3463 enhanced code if the first line
/// carried one of the code's class (it is removed from every line that
/// repeats it), and the text, lines joined with '\n'. Control characters in
/// the text are replaced by '?'; invalid UTF-8 is replaced too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    pub code: u16,
    pub enhanced: Option<EnhancedCode>,
    pub text: String,
}

impl ServerReply {
    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    pub fn is_2xx(&self) -> bool {
        (200..300).contains(&self.code)
    }

    fn is_failure(&self) -> bool {
        (400..600).contains(&self.code)
    }

    /// A reply made up on our side when the server's never came (connection
    /// lost, protocol error), so every recipient still gets an outcome.
    fn local(code: u16, enhanced: EnhancedCode, text: &str) -> ServerReply {
        ServerReply {
            code,
            enhanced: Some(enhanced),
            text: text.to_string(),
        }
    }
}

impl fmt::Display for ServerReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        if !self.text.is_empty() {
            write!(f, " {}", self.text.replace('\n', " / "))?;
        }
        Ok(())
    }
}

/// `send_message` refused to start a transaction; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub permanent: bool,
    pub enhanced: EnhancedCode,
    pub text: String,
}

impl Refusal {
    fn permanent(enhanced: EnhancedCode, text: impl Into<String>) -> Refusal {
        Refusal {
            permanent: true,
            enhanced,
            text: text.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.enhanced, self.text)
    }
}

/// One message to transfer. The content is supplied later through
/// [`ClientSession::body_chunk`].
#[derive(Debug, Clone, Default)]
pub struct OutMessage {
    /// Reverse path without angle brackets; "" for `<>`.
    pub sender: String,
    /// `address` is sent in RCPT; `orcpt` and `notify` only if the server
    /// offers DSN.
    pub recipients: Vec<Recipient>,
    /// Content length in bytes, for SIZE=.
    pub size: u64,
    pub body_type: BodyType,
    /// The message needs SMTPUTF8 (also implied by a non-ASCII address).
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    /// Decoded ENVID; sent as xtext.
    pub envid: Option<String>,
}

/// What became of one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// Accepted at RCPT; the reply is the server's verdict on the message
    /// for this recipient: the reply after the content (per recipient in
    /// LMTP), or the refusal of DATA/BDAT. Delivered only if it is 2xx.
    Accepted(ServerReply),
    /// Refused at RCPT, or MAIL was refused (then this is the MAIL reply,
    /// not the 503 the server gives to the RCPTs that follow it).
    Rejected(ServerReply),
}

impl RcptOutcome {
    /// The reply that decides this recipient's fate.
    pub fn reply(&self) -> &ServerReply {
        match self {
            RcptOutcome::Accepted(r) | RcptOutcome::Rejected(r) => r,
        }
    }

    /// The server took responsibility for the message for this recipient.
    pub fn is_delivered(&self) -> bool {
        matches!(self, RcptOutcome::Accepted(r) if r.is_2xx())
    }
}

/// Outcome of one `send_message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionResult {
    /// The MAIL reply, if it was a refusal.
    pub mail: Option<ServerReply>,
    /// One per recipient, in the order given.
    pub rcpts: Vec<RcptOutcome>,
    /// SMTP: the reply after the content, or the refusal of DATA/BDAT;
    /// None if the content phase never began. LMTP: only a refusal of DATA
    /// (the per-recipient replies are in `rcpts`).
    pub data: Option<ServerReply>,
}

/// Where the session was when something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    Hello,
    StartTls,
    Auth,
    /// Between transactions.
    Idle,
    Mail,
    Rcpt,
    /// DATA, the content, BDAT.
    Data,
    Rset,
    Quit,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionOutcome {
    /// We sent QUIT (the reply, whatever it was, does not matter).
    Quit,
    /// The server refused us: greeting not 220, EHLO and HELO refused,
    /// STARTTLS refused when required, AUTH failed, RSET failed, or a 421
    /// at any point. The reply is the server's.
    Refused { stage: Stage, reply: ServerReply },
    /// STARTTLS is required but the server does not offer it.
    TlsNotOffered,
    /// AUTH is configured but cannot be done (why).
    AuthUnavailable(&'static str),
    /// The server sent something we cannot make sense of.
    ProtocolError { stage: Stage, detail: String },
    /// The driver reported the connection lost (or timed out).
    ConnectionLost { stage: Stage },
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Write these bytes. With PIPELINING, MAIL, every RCPT and DATA (or
    /// the first BDAT chunk) come in one `Send`.
    Send(Vec<u8>),
    /// Read from the server and `feed` it.
    NeedInput,
    /// The server said 220 to STARTTLS: discard anything unread, run the
    /// TLS handshake, then call `tls_established`.
    StartTls,
    /// Supply content with `body_chunk` (stored, canonical CRLF form, not
    /// dot-stuffed).
    NeedBody,
    /// Idle: call `send_message` or `quit`.
    Ready,
    /// The last `send_message` is over.
    TransactionDone(TransactionResult),
    /// The session is over; close the connection. Repeats on every poll.
    Closed(SessionOutcome),
}

/// Streaming encoder of message content for the wire.
///
/// DATA mode ([`DotStuffer::new`]): dot-stuffs every line that begins with
/// "." (RFC 5321 §4.5.2) and ends with `.CRLF` after a final CRLF. Both
/// modes turn every bare CR and bare LF into CRLF, so the output never
/// carries a line ending a server could read differently (SMTP smuggling).
#[derive(Debug, Clone)]
pub struct DotStuffer {
    st: StuffState,
    stuff: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StuffState {
    /// At the start of a line (after CRLF, or at the very start).
    LineStart,
    /// Inside a line.
    Text,
    /// After a CR not yet written: CRLF follows in any case.
    Cr,
}

impl Default for DotStuffer {
    fn default() -> DotStuffer {
        DotStuffer::new()
    }
}

impl DotStuffer {
    /// An encoder for DATA.
    pub fn new() -> DotStuffer {
        DotStuffer {
            st: StuffState::LineStart,
            stuff: true,
        }
    }

    /// Line-ending normalisation only (BDAT of non-binary content).
    fn normaliser() -> DotStuffer {
        DotStuffer {
            st: StuffState::LineStart,
            stuff: false,
        }
    }

    /// Encodes `input`, appending to `out`. A CR at the end of `input` is
    /// held back until the next byte shows whether an LF follows.
    pub fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 4);
        let mut i = 0;
        while i < input.len() {
            match self.st {
                StuffState::Cr => {
                    // CRLF, or a bare CR made into one.
                    out.extend_from_slice(b"\r\n");
                    if input[i] == b'\n' {
                        i += 1;
                    }
                    self.st = StuffState::LineStart;
                }
                StuffState::LineStart => {
                    if self.stuff && input[i] == b'.' {
                        out.push(b'.');
                    }
                    self.st = StuffState::Text;
                }
                StuffState::Text => {
                    let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                    out.extend_from_slice(&input[i..i + run]);
                    i += run;
                    if let Some(&c) = input.get(i) {
                        i += 1;
                        if c == b'\n' {
                            // Bare LF.
                            out.extend_from_slice(b"\r\n");
                            self.st = StuffState::LineStart;
                        } else {
                            self.st = StuffState::Cr;
                        }
                    }
                }
            }
        }
    }

    /// Ends the content: a final CRLF if it did not end with one, then (in
    /// DATA mode) the terminating `.CRLF`. The encoder is ready for a new
    /// message afterwards.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.end_line(out);
        if self.stuff {
            out.extend_from_slice(b".\r\n");
        }
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        if self.st != StuffState::LineStart {
            out.extend_from_slice(b"\r\n");
        }
        self.st = StuffState::LineStart;
    }
}

// ---------------------------------------------------------------------------
// The session.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HelloKind {
    Ehlo,
    Helo,
    Lhlo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AuthStep {
    /// AUTH PLAIN with the initial response sent.
    Plain,
    /// AUTH LOGIN sent; the server asks for the user name.
    LoginUser,
    /// User name sent; the server asks for the password.
    LoginPass,
    /// Password sent.
    Final,
}

/// One reply we are waiting for, in the order the commands were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Hello(HelloKind),
    StartTls,
    Auth(AuthStep),
    Mail,
    Rcpt(usize),
    Data,
    /// The reply to the final dot (one per accepted recipient in LMTP: this
    /// entry then stays in front until all have come).
    DataEnd,
    Bdat {
        last: bool,
    },
    Rset,
    Quit,
}

impl Expect {
    fn stage(self) -> Stage {
        match self {
            Expect::Greeting => Stage::Greeting,
            Expect::Hello(_) => Stage::Hello,
            Expect::StartTls => Stage::StartTls,
            Expect::Auth(_) => Stage::Auth,
            Expect::Mail => Stage::Mail,
            Expect::Rcpt(_) => Stage::Rcpt,
            Expect::Data | Expect::DataEnd | Expect::Bdat { .. } => Stage::Data,
            Expect::Rset => Stage::Rset,
            Expect::Quit => Stage::Quit,
        }
    }
}

#[derive(Debug)]
enum Phase {
    /// Greeting, EHLO, STARTTLS, AUTH.
    Setup,
    /// Waiting for the driver's TLS handshake.
    Handshake,
    Ready,
    Txn,
    /// RSET after an aborted transaction.
    Rset,
    /// QUIT sent; the outcome to report once it is answered.
    Quitting(SessionOutcome),
    Closed(SessionOutcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyMode {
    Data,
    /// BDAT; `normalise` unless the content is BINARYMIME.
    Bdat {
        normalise: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    NotYet,
    Wanted,
    /// The last content byte has been handed over.
    Done,
}

/// One transaction in progress.
#[derive(Debug)]
struct Txn {
    lmtp: bool,
    pipelined: bool,
    mode: BodyMode,
    /// Without pipelining: the RCPT commands not sent yet.
    pending_rcpts: VecDeque<Vec<u8>>,
    /// Pipelined BDAT: MAIL and RCPTs, held back to go out with the first
    /// chunk.
    group: Option<Vec<u8>>,
    mail: Option<ServerReply>,
    rcpt: Vec<Option<ServerReply>>,
    /// LMTP: the per-recipient replies after the content.
    finals: Vec<Option<ServerReply>>,
    data: Option<ServerReply>,
    body: BodyState,
    encoder: DotStuffer,
    /// Something failed: no (more) content; finish once replies are in.
    failed: bool,
    /// DATA got 354 though nothing was accepted: an empty message was sent
    /// to close it (RFC 2920 §3.1).
    empty_dot: bool,
    /// The server answered the end of the content: its transaction is over.
    ended: bool,
}

impl Txn {
    fn mail_ok(&self) -> bool {
        self.mail.as_ref().is_some_and(ServerReply::is_2xx)
    }

    fn accepted(&self, i: usize) -> bool {
        self.rcpt
            .get(i)
            .and_then(Option::as_ref)
            .is_some_and(ServerReply::is_2xx)
    }

    fn any_accepted(&self) -> bool {
        (0..self.rcpt.len()).any(|i| self.accepted(i))
    }

    /// Accepted recipients still waiting for their LMTP reply.
    fn lmtp_pending(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.rcpt.len()).filter(|&i| self.accepted(i) && self.finals[i].is_none())
    }

    /// The result; `fill` stands in for any reply that never came.
    fn into_result(self, fill: &ServerReply) -> TransactionResult {
        let mail = self.mail.clone().unwrap_or_else(|| fill.clone());
        let mail_failed = !mail.is_2xx();
        let rcpts = (0..self.rcpt.len())
            .map(|i| {
                if mail_failed {
                    return RcptOutcome::Rejected(mail.clone());
                }
                match &self.rcpt[i] {
                    Some(r) if r.is_2xx() => RcptOutcome::Accepted(
                        self.finals[i]
                            .clone()
                            .or_else(|| self.data.clone())
                            .unwrap_or_else(|| fill.clone()),
                    ),
                    Some(r) => RcptOutcome::Rejected(r.clone()),
                    None => RcptOutcome::Rejected(fill.clone()),
                }
            })
            .collect();
        TransactionResult {
            mail: mail_failed.then_some(mail),
            rcpts,
            data: self.data,
        }
    }
}

/// A multi-line reply being read.
#[derive(Debug)]
struct Partial {
    code: u16,
    lines: Vec<String>,
    bytes: usize,
}

/// One outgoing SMTP/LMTP connection. Each field is owned here alone.
#[derive(Debug)]
pub struct ClientSession {
    cfg: ClientConfig,
    ext: Extensions,
    phase: Phase,
    tls_active: bool,
    /// STARTTLS was sent once already (refused, or done).
    tls_tried: bool,
    authenticated: bool,
    /// AUTH credentials are in the bytes being handed out.
    secret: bool,
    quit_requested: bool,
    /// Replies owed to us, oldest first.
    expect: VecDeque<Expect>,
    /// Bytes to send, not yet handed to the driver.
    out: Vec<u8>,
    events: VecDeque<ClientEvent>,
    txn: Option<Txn>,
    /// The reply line being read (without its LF).
    line: Vec<u8>,
    partial: Option<Partial>,
}

impl ClientSession {
    /// A session that waits for the server's greeting.
    pub fn new(cfg: ClientConfig) -> ClientSession {
        let tls_active = cfg.implicit_tls;
        ClientSession {
            cfg,
            ext: Extensions::default(),
            phase: Phase::Setup,
            tls_active,
            tls_tried: false,
            authenticated: false,
            secret: false,
            quit_requested: false,
            expect: VecDeque::from([Expect::Greeting]),
            out: Vec::new(),
            events: VecDeque::new(),
            txn: None,
            line: Vec::new(),
            partial: None,
        }
    }

    /// What the server offered in its last EHLO/LHLO reply.
    pub fn extensions(&self) -> &Extensions {
        &self.ext
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// True while the bytes most recently handed out in `Send` carry AUTH
    /// credentials: do not log them.
    pub fn sending_secret(&self) -> bool {
        self.secret
    }

    /// Which timeout applies to what the driver waits for now.
    pub fn timeout_class(&self) -> Timeout {
        match self.expect.front() {
            Some(Expect::Greeting) => Timeout::Greeting,
            Some(
                Expect::Hello(_) | Expect::StartTls | Expect::Auth(_) | Expect::Rset | Expect::Quit,
            ) => Timeout::Command,
            Some(Expect::Mail) => Timeout::Mail,
            Some(Expect::Rcpt(_)) => Timeout::Rcpt,
            Some(Expect::Data) => Timeout::DataInit,
            Some(Expect::Bdat { last: false }) => Timeout::DataBlock,
            Some(Expect::DataEnd | Expect::Bdat { last: true }) => Timeout::DataTermination,
            None => match self.phase {
                Phase::Txn => Timeout::DataBlock,
                _ => Timeout::Command,
            },
        }
    }

    /// Consumes bytes read from the server; replies may come split anywhere
    /// or several at once. Returns how many bytes were consumed: all of them
    /// unless the session closed part way (the rest is then meaningless).
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let max_line = self.cfg.max_line.max(MIN_REPLY_LINE) + 1; // + CR
        let mut i = 0;
        while i < input.len() {
            match self.phase {
                Phase::Closed(_) => break,
                Phase::Handshake => {
                    // RFC 3207 §5: nothing may follow the 220 in clear text.
                    self.protocol_error("data after the 220 reply to STARTTLS".into());
                    break;
                }
                _ => {}
            }
            let rest = &input[i..];
            let (piece, complete) = match memchr::memchr(b'\n', rest) {
                Some(p) => (&rest[..p], true),
                None => (rest, false),
            };
            i += piece.len() + usize::from(complete);
            if self.line.len() + piece.len() > max_line {
                self.protocol_error("reply line too long".into());
                break;
            }
            self.line.extend_from_slice(piece);
            if complete {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                match self.take_line(&line) {
                    Ok(Some(reply)) => self.on_reply(reply),
                    Ok(None) => {}
                    Err(detail) => {
                        self.protocol_error(detail);
                        break;
                    }
                }
                // Reuse the allocation.
                line.clear();
                if self.line.is_empty() {
                    self.line = line;
                }
            }
        }
        i
    }

    /// What to do next.
    pub fn poll(&mut self) -> ClientEvent {
        if !self.out.is_empty() {
            return ClientEvent::Send(std::mem::take(&mut self.out));
        }
        self.secret = false;
        if let Some(ev) = self.events.pop_front() {
            return ev;
        }
        match &self.phase {
            Phase::Closed(outcome) => ClientEvent::Closed(outcome.clone()),
            Phase::Handshake => ClientEvent::StartTls,
            Phase::Ready => ClientEvent::Ready,
            Phase::Txn if self.wants_body() => ClientEvent::NeedBody,
            _ => ClientEvent::NeedInput,
        }
    }

    /// The TLS handshake after `ClientEvent::StartTls` succeeded: EHLO again
    /// and forget what the server offered in clear text (RFC 3207 §4.2).
    pub fn tls_established(&mut self) {
        if !matches!(self.phase, Phase::Handshake) {
            return;
        }
        self.tls_active = true;
        self.ext = Extensions::default();
        self.line.clear();
        self.partial = None;
        self.phase = Phase::Setup;
        self.send_hello(self.first_hello());
    }

    /// Starts a transaction when `poll` said `Ready`. Refuses, sending
    /// nothing, what this server cannot take: too big for its SIZE (5.3.4),
    /// SMTPUTF8 needed but not offered (5.6.7), 8-bit or binary content the
    /// server does not accept (5.6.3; we do not downgrade).
    pub fn send_message(&mut self, msg: &OutMessage) -> Result<(), Refusal> {
        if !matches!(self.phase, Phase::Ready) {
            return Err(Refusal {
                permanent: false,
                enhanced: EnhancedCode::new(4, 3, 0),
                text: "client session is not ready for a transaction".into(),
            });
        }
        if msg.recipients.is_empty() {
            return Err(Refusal::permanent(
                EnhancedCode::new(5, 5, 1),
                "message has no recipients",
            ));
        }
        let addresses = std::iter::once(msg.sender.as_str())
            .chain(msg.recipients.iter().map(|r| r.address.as_str()));
        for (n, a) in addresses.enumerate() {
            if n > 0 && a.is_empty() {
                return Err(Refusal::permanent(
                    EnhancedCode::new(5, 1, 3),
                    "empty recipient address",
                ));
            }
            if a.chars().any(char::is_control) {
                return Err(Refusal::permanent(
                    EnhancedCode::new(5, 1, 3),
                    "address contains control characters",
                ));
            }
        }
        let ext = &self.ext;
        let utf8 = msg.smtputf8
            || !msg.sender.is_ascii()
            || msg.recipients.iter().any(|r| !r.address.is_ascii());
        if utf8 && !ext.smtputf8 {
            return Err(Refusal::permanent(
                EnhancedCode::new(5, 6, 7),
                "message needs SMTPUTF8, which the server does not offer",
            ));
        }
        if let Some(limit) = ext.size {
            if limit > 0 && msg.size > limit {
                return Err(Refusal::permanent(
                    EnhancedCode::new(5, 3, 4),
                    format!(
                        "message size {} exceeds the server's limit of {limit}",
                        msg.size
                    ),
                ));
            }
        }
        let chunking = ext.chunking && !self.cfg.lmtp;
        match msg.body_type {
            BodyType::SevenBit => {}
            BodyType::EightBitMime if ext.eight_bit_mime => {}
            BodyType::EightBitMime => {
                return Err(Refusal::permanent(
                    EnhancedCode::new(5, 6, 3),
                    "8-bit content but the server does not offer 8BITMIME",
                ))
            }
            BodyType::BinaryMime if ext.binary_mime && chunking => {}
            BodyType::BinaryMime => {
                return Err(Refusal::permanent(
                    EnhancedCode::new(5, 6, 3),
                    "binary content but the server does not offer BINARYMIME and CHUNKING",
                ))
            }
        }

        let mail = mail_command(msg, ext, utf8);
        let rcpts: Vec<Vec<u8>> = msg
            .recipients
            .iter()
            .map(|r| rcpt_command(r, ext.dsn, utf8))
            .collect();
        let mode = if chunking {
            BodyMode::Bdat {
                normalise: msg.body_type != BodyType::BinaryMime,
            }
        } else {
            BodyMode::Data
        };
        let n = rcpts.len();
        let mut txn = Txn {
            lmtp: self.cfg.lmtp,
            pipelined: ext.pipelining,
            mode,
            pending_rcpts: VecDeque::new(),
            group: None,
            mail: None,
            rcpt: vec![None; n],
            finals: vec![None; n],
            data: None,
            body: BodyState::NotYet,
            encoder: match mode {
                BodyMode::Data => DotStuffer::new(),
                BodyMode::Bdat { .. } => DotStuffer::normaliser(),
            },
            failed: false,
            empty_dot: false,
            ended: false,
        };
        self.expect.push_back(Expect::Mail);
        if txn.pipelined {
            // RFC 2920 §3.1: MAIL and RCPT anywhere in a group, DATA last.
            let mut group = mail;
            for (i, r) in rcpts.into_iter().enumerate() {
                group.extend_from_slice(&r);
                self.expect.push_back(Expect::Rcpt(i));
            }
            match mode {
                BodyMode::Data => {
                    group.extend_from_slice(b"DATA\r\n");
                    self.expect.push_back(Expect::Data);
                    self.out.extend_from_slice(&group);
                }
                BodyMode::Bdat { .. } => {
                    txn.group = Some(group);
                    txn.body = BodyState::Wanted;
                }
            }
        } else {
            self.out.extend_from_slice(&mail);
            txn.pending_rcpts = rcpts.into();
        }
        self.txn = Some(txn);
        self.phase = Phase::Txn;
        Ok(())
    }

    /// Content for the transaction, when `poll` said `NeedBody`: the stored
    /// message in canonical CRLF form, not dot-stuffed, in pieces of any
    /// size; `last` on the final piece (which may be empty). With CHUNKING
    /// each call becomes one BDAT chunk. Ignored when no content is wanted
    /// (the transaction failed meanwhile: stop streaming).
    pub fn body_chunk(&mut self, data: &[u8], last: bool) {
        if !self.wants_body() {
            return;
        }
        let Some(txn) = self.txn.as_mut() else {
            return;
        };
        match txn.mode {
            BodyMode::Data => {
                txn.encoder.encode(data, &mut self.out);
                if last {
                    txn.encoder.finish(&mut self.out);
                    txn.body = BodyState::Done;
                    self.expect.push_back(Expect::DataEnd);
                }
            }
            BodyMode::Bdat { normalise } => {
                let mut chunk = Vec::with_capacity(data.len() + 8);
                if normalise {
                    txn.encoder.encode(data, &mut chunk);
                    if last {
                        txn.encoder.end_line(&mut chunk);
                    }
                } else {
                    chunk.extend_from_slice(data);
                }
                if chunk.is_empty() && !last {
                    return;
                }
                if let Some(group) = txn.group.take() {
                    self.out.extend_from_slice(&group);
                }
                let head = format!(
                    "BDAT {}{}\r\n",
                    chunk.len(),
                    if last { " LAST" } else { "" }
                );
                self.out.extend_from_slice(head.as_bytes());
                self.out.extend_from_slice(&chunk);
                self.expect.push_back(Expect::Bdat { last });
                if last {
                    txn.body = BodyState::Done;
                }
            }
        }
    }

    /// Ends the session politely: QUIT now if idle, else once the current
    /// setup or transaction is over.
    pub fn quit(&mut self) {
        match self.phase {
            Phase::Ready => self.quit_with(SessionOutcome::Quit),
            Phase::Quitting(_) | Phase::Closed(_) => {}
            _ => self.quit_requested = true,
        }
    }

    /// The driver lost the connection (EOF, error, timeout). A transaction
    /// in progress ends with "451 4.4.2" for every recipient without a
    /// verdict (RFC 5321 §6.1: the message may have been delivered if the
    /// content had been sent; the retry may duplicate it).
    pub fn connection_lost(&mut self) {
        match &self.phase {
            Phase::Closed(_) => {}
            Phase::Quitting(outcome) => {
                let outcome = outcome.clone();
                self.close(outcome);
            }
            _ => {
                let stage = self.stage();
                self.abort(
                    SessionOutcome::ConnectionLost { stage },
                    ServerReply::local(
                        451,
                        EnhancedCode::new(4, 4, 2),
                        "connection lost before the server replied",
                    ),
                );
            }
        }
    }

    // --- internals ---------------------------------------------------------

    fn first_hello(&self) -> HelloKind {
        if self.cfg.lmtp {
            HelloKind::Lhlo
        } else {
            HelloKind::Ehlo
        }
    }

    fn stage(&self) -> Stage {
        if let Some(e) = self.expect.front() {
            return e.stage();
        }
        match self.phase {
            Phase::Setup => Stage::Greeting,
            Phase::Handshake => Stage::StartTls,
            Phase::Ready | Phase::Closed(_) => Stage::Idle,
            Phase::Txn => Stage::Data,
            Phase::Rset => Stage::Rset,
            Phase::Quitting(_) => Stage::Quit,
        }
    }

    fn wants_body(&self) -> bool {
        if !matches!(self.phase, Phase::Txn) {
            return false;
        }
        let Some(txn) = &self.txn else {
            return false;
        };
        if txn.body != BodyState::Wanted || txn.failed {
            return false;
        }
        match txn.mode {
            BodyMode::Data => true,
            BodyMode::Bdat { .. } if txn.group.is_some() => true,
            BodyMode::Bdat { .. } if txn.pipelined => self.expect.len() < MAX_IN_FLIGHT,
            BodyMode::Bdat { .. } => self.expect.is_empty(),
        }
    }

    /// Adds one complete line to the reply being read.
    fn take_line(&mut self, line: &[u8]) -> Result<Option<ServerReply>, String> {
        let (code, last, text) = parse_reply_line(line)?;
        let p = self.partial.get_or_insert(Partial {
            code,
            lines: Vec::new(),
            bytes: 0,
        });
        if p.code != code {
            return Err(format!(
                "reply lines with different codes ({} then {code})",
                p.code
            ));
        }
        p.bytes += line.len() + 2;
        if p.bytes > MAX_REPLY_BYTES {
            return Err("reply too long".into());
        }
        p.lines.push(clean_text(text));
        if !last {
            return Ok(None);
        }
        Ok(self.partial.take().map(finish_reply))
    }

    fn on_reply(&mut self, reply: ServerReply) {
        let Some(expect) = self.expect.pop_front() else {
            return self.unsolicited(reply);
        };
        if expect == Expect::Quit {
            let outcome = match &self.phase {
                Phase::Quitting(o) => o.clone(),
                _ => SessionOutcome::Quit,
            };
            return self.close(outcome);
        }
        if reply.code == 421 {
            // RFC 5321 §3.8: the server is closing the channel; no more
            // replies will come.
            let stage = expect.stage();
            return self.abort(
                SessionOutcome::Refused {
                    stage,
                    reply: reply.clone(),
                },
                reply,
            );
        }
        match expect {
            Expect::Greeting => {
                if reply.code == 220 {
                    self.send_hello(self.first_hello());
                } else if reply.is_failure() {
                    self.refused(Stage::Greeting, reply);
                } else {
                    self.unexpected(expect, &reply);
                }
            }
            Expect::Hello(kind) => {
                if reply.is_2xx() {
                    self.ext = if kind == HelloKind::Helo {
                        Extensions::default()
                    } else {
                        Extensions::parse(&reply)
                    };
                    self.next_setup_step();
                } else if reply.is_permanent() && kind == HelloKind::Ehlo {
                    // RFC 5321 §4.1.4: an old server; try HELO.
                    self.send_hello(HelloKind::Helo);
                } else if reply.is_failure() {
                    self.refused(Stage::Hello, reply);
                } else {
                    self.unexpected(expect, &reply);
                }
            }
            Expect::StartTls => {
                if reply.code == 220 {
                    self.tls_tried = true;
                    self.phase = Phase::Handshake;
                } else if reply.is_failure() {
                    if self.cfg.use_starttls == StartTls::Required {
                        self.refused(Stage::StartTls, reply);
                    } else {
                        self.next_setup_step();
                    }
                } else {
                    self.unexpected(expect, &reply);
                }
            }
            Expect::Auth(step) => self.auth_reply(step, reply),
            Expect::Rset => {
                if reply.is_2xx() {
                    self.become_idle();
                } else if reply.is_failure() {
                    self.refused(Stage::Rset, reply);
                } else {
                    self.unexpected(expect, &reply);
                }
            }
            Expect::Mail
            | Expect::Rcpt(_)
            | Expect::Data
            | Expect::DataEnd
            | Expect::Bdat { .. } => self.txn_reply(expect, reply),
            Expect::Quit => {}
        }
    }

    fn unsolicited(&mut self, reply: ServerReply) {
        if reply.code == 421 {
            // An idle connection timed out on the server side, or it is
            // shutting down.
            let stage = self.stage();
            self.abort(
                SessionOutcome::Refused {
                    stage,
                    reply: reply.clone(),
                },
                reply,
            );
        } else {
            self.protocol_error(format!("unexpected reply: {reply}"));
        }
    }

    fn unexpected(&mut self, expect: Expect, reply: &ServerReply) {
        let stage = expect.stage();
        self.protocol_error_at(stage, format!("unexpected reply to {stage:?}: {reply}"));
    }

    fn send_line(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn send_hello(&mut self, kind: HelloKind) {
        let verb = match kind {
            HelloKind::Ehlo => "EHLO",
            HelloKind::Helo => "HELO",
            HelloKind::Lhlo => "LHLO",
        };
        let mut name: String = self
            .cfg
            .helo_name
            .chars()
            .filter(char::is_ascii_graphic)
            .collect();
        if name.is_empty() {
            name.push_str("localhost");
        }
        self.send_line(&format!("{verb} {name}"));
        self.expect.push_back(Expect::Hello(kind));
    }

    /// After a successful EHLO/HELO, STARTTLS refusal or AUTH: what next.
    fn next_setup_step(&mut self) {
        if !self.tls_active
            && !self.tls_tried
            && self.cfg.use_starttls != StartTls::Never
            && self.ext.starttls
        {
            self.tls_tried = true;
            self.send_line("STARTTLS");
            self.expect.push_back(Expect::StartTls);
            return;
        }
        if !self.tls_active && self.cfg.use_starttls == StartTls::Required {
            return self.quit_with(SessionOutcome::TlsNotOffered);
        }
        if self.cfg.auth.is_some() && !self.authenticated {
            return self.start_auth();
        }
        self.become_idle();
    }

    fn start_auth(&mut self) {
        if !self.tls_active && !self.cfg.allow_plaintext_auth {
            return self.quit_with(SessionOutcome::AuthUnavailable(
                "TLS is not active; credentials are not sent in clear text",
            ));
        }
        let Some(c) = &self.cfg.auth else {
            return self.become_idle();
        };
        if self.ext.auth_plain {
            // RFC 4616 with the RFC 4954 initial response.
            let mut msg =
                Vec::with_capacity(c.authzid.len() + c.login.len() + c.password.len() + 2);
            msg.extend_from_slice(c.authzid.as_bytes());
            msg.push(0);
            msg.extend_from_slice(c.login.as_bytes());
            msg.push(0);
            msg.extend_from_slice(c.password.as_bytes());
            let line = format!("AUTH PLAIN {}", sasl::encode(&msg));
            self.send_line(&line);
            self.secret = true;
            self.expect.push_back(Expect::Auth(AuthStep::Plain));
        } else if self.ext.auth_login {
            self.send_line("AUTH LOGIN");
            self.expect.push_back(Expect::Auth(AuthStep::LoginUser));
        } else if self.ext.auth {
            self.quit_with(SessionOutcome::AuthUnavailable(
                "the server offers neither AUTH PLAIN nor AUTH LOGIN",
            ));
        } else {
            self.quit_with(SessionOutcome::AuthUnavailable(
                "the server does not offer AUTH",
            ));
        }
    }

    fn auth_reply(&mut self, step: AuthStep, reply: ServerReply) {
        if reply.is_2xx() {
            self.authenticated = true;
            return self.next_setup_step();
        }
        if reply.is_failure() {
            return self.refused(Stage::Auth, reply);
        }
        let (secret, next) = match (step, reply.code, &self.cfg.auth) {
            (AuthStep::LoginUser, 334, Some(c)) => (c.login.as_bytes(), AuthStep::LoginPass),
            (AuthStep::LoginPass, 334, Some(c)) => (c.password.as_bytes(), AuthStep::Final),
            _ => return self.unexpected(Expect::Auth(step), &reply),
        };
        let line = sasl::encode(secret);
        self.send_line(&line);
        self.secret = true;
        self.expect.push_back(Expect::Auth(next));
    }

    fn txn_reply(&mut self, expect: Expect, reply: ServerReply) {
        let expected_code = if expect == Expect::Data {
            reply.code == 354
        } else {
            reply.is_2xx()
        };
        if !expected_code && !reply.is_failure() {
            return self.unexpected(expect, &reply);
        }
        let Some(txn) = self.txn.as_mut() else {
            return self.unexpected(expect, &reply);
        };
        let ok = !reply.is_failure();
        match expect {
            Expect::Mail => {
                txn.mail = Some(reply);
                if !ok {
                    txn.failed = true;
                } else if !txn.pipelined {
                    if let Some(cmd) = txn.pending_rcpts.pop_front() {
                        self.out.extend_from_slice(&cmd);
                        self.expect.push_back(Expect::Rcpt(0));
                    }
                }
            }
            Expect::Rcpt(i) => {
                if let Some(slot) = txn.rcpt.get_mut(i) {
                    *slot = Some(reply);
                }
                let last = i + 1 == txn.rcpt.len();
                if !txn.pipelined {
                    if let Some(cmd) = txn.pending_rcpts.pop_front() {
                        self.out.extend_from_slice(&cmd);
                        self.expect.push_back(Expect::Rcpt(i + 1));
                    } else if !txn.any_accepted() {
                        txn.failed = true;
                    } else if txn.mode == BodyMode::Data {
                        self.out.extend_from_slice(b"DATA\r\n");
                        self.expect.push_back(Expect::Data);
                    } else {
                        txn.body = BodyState::Wanted;
                    }
                } else if last && !txn.any_accepted() {
                    // Pipelined BDAT: send no more chunks.
                    txn.failed = true;
                }
            }
            Expect::Data => {
                if !ok {
                    txn.data = Some(reply);
                    txn.failed = true;
                } else if txn.mail_ok() && txn.any_accepted() {
                    txn.body = BodyState::Wanted;
                } else {
                    // RFC 2920 §3.1: DATA accepted although nothing else
                    // was; close it with an empty message.
                    self.out.extend_from_slice(b".\r\n");
                    self.expect.push_back(Expect::DataEnd);
                    txn.empty_dot = true;
                    txn.failed = true;
                }
            }
            Expect::DataEnd => {
                txn.ended = true;
                if txn.lmtp && !txn.empty_dot {
                    let (first, more) = {
                        let mut pending = txn.lmtp_pending();
                        (pending.next(), pending.next().is_some())
                    };
                    if let Some(j) = first {
                        txn.finals[j] = Some(reply);
                    }
                    if more {
                        self.expect.push_front(Expect::DataEnd);
                    }
                } else {
                    txn.data = Some(reply);
                }
            }
            Expect::Bdat { last } => {
                if !ok {
                    // Keep the first refusal: later ones are 503s to chunks
                    // already in the pipeline.
                    if txn.data.is_none() {
                        txn.data = Some(reply);
                    }
                    txn.failed = true;
                } else if last && !txn.failed {
                    txn.data = Some(reply);
                    txn.ended = true;
                }
            }
            _ => {}
        }
        self.txn_progress();
    }

    /// Ends the transaction once no reply is owed and no content wanted.
    fn txn_progress(&mut self) {
        let Some(txn) = &self.txn else {
            return;
        };
        if !self.expect.is_empty() || !(txn.failed || txn.body == BodyState::Done) {
            return;
        }
        let Some(txn) = self.txn.take() else {
            return;
        };
        // The server still holds a transaction we did not complete.
        let rset = txn.mail_ok() && !txn.ended;
        let fill = ServerReply::local(451, EnhancedCode::new(4, 5, 0), "no reply from the server");
        self.events
            .push_back(ClientEvent::TransactionDone(txn.into_result(&fill)));
        if rset && !self.quit_requested {
            self.send_line("RSET");
            self.expect.push_back(Expect::Rset);
            self.phase = Phase::Rset;
        } else {
            self.become_idle();
        }
    }

    fn become_idle(&mut self) {
        if self.quit_requested {
            self.quit_with(SessionOutcome::Quit);
        } else {
            self.phase = Phase::Ready;
        }
    }

    /// The server said no during setup (or to RSET): QUIT, then report.
    fn refused(&mut self, stage: Stage, reply: ServerReply) {
        self.quit_with(SessionOutcome::Refused { stage, reply });
    }

    fn quit_with(&mut self, outcome: SessionOutcome) {
        self.send_line("QUIT");
        self.expect.clear();
        self.expect.push_back(Expect::Quit);
        self.phase = Phase::Quitting(outcome);
    }

    fn protocol_error(&mut self, detail: String) {
        let stage = self.stage();
        self.protocol_error_at(stage, detail);
    }

    fn protocol_error_at(&mut self, stage: Stage, detail: String) {
        self.abort(
            SessionOutcome::ProtocolError { stage, detail },
            ServerReply::local(
                451,
                EnhancedCode::new(4, 5, 0),
                "protocol error in the server's reply",
            ),
        );
    }

    /// Ends the session at once: no QUIT (the server is gone or the stream
    /// cannot be trusted). A transaction in progress ends with `fill` for
    /// every verdict not received.
    fn abort(&mut self, outcome: SessionOutcome, fill: ServerReply) {
        if let Some(txn) = self.txn.take() {
            self.events
                .push_back(ClientEvent::TransactionDone(txn.into_result(&fill)));
        }
        self.close(outcome);
    }

    fn close(&mut self, outcome: SessionOutcome) {
        self.expect.clear();
        self.out.clear();
        self.line.clear();
        self.partial = None;
        self.phase = Phase::Closed(outcome);
    }
}

// ---------------------------------------------------------------------------
// Reply parsing.

/// Splits "ddd text", "ddd-text" or "ddd" into (code, is last line, text).
fn parse_reply_line(line: &[u8]) -> Result<(u16, bool, &[u8]), String> {
    let bad = || {
        let shown = String::from_utf8_lossy(&line[..line.len().min(40)]).into_owned();
        format!("malformed reply line {:?}", clean_text(shown.as_bytes()))
    };
    if line.len() < 3
        || !line[..3].iter().all(u8::is_ascii_digit)
        || !(b'2'..=b'5').contains(&line[0])
    {
        return Err(bad());
    }
    let code = line[..3]
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    match line.get(3) {
        None => Ok((code, true, &[])),
        Some(b' ') => Ok((code, true, &line[4..])),
        Some(b'-') => Ok((code, false, &line[4..])),
        Some(_) => Err(bad()),
    }
}

fn clean_text(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .chars()
        .map(|c| match c {
            '\t' => ' ',
            c if c.is_control() => '?',
            c => c,
        })
        .collect()
}

/// "d.ddd.ddd" at the start of `line` (followed by a space or the end).
fn enhanced_code(line: &str) -> Option<(EnhancedCode, &str)> {
    let token = line.split(' ').next()?;
    Some((EnhancedCode::parse(token)?, token))
}

fn finish_reply(p: Partial) -> ServerReply {
    let enhanced = p
        .lines
        .first()
        .and_then(|l| enhanced_code(l))
        .filter(|(e, _)| u16::from(e.class) == p.code / 100)
        .map(|(code, token)| (code, token.to_string()));
    let text = match &enhanced {
        Some((_, token)) => p
            .lines
            .iter()
            .map(|l| match l.strip_prefix(token.as_str()) {
                Some(rest) if rest.is_empty() || rest.starts_with(' ') => {
                    rest.strip_prefix(' ').unwrap_or(rest)
                }
                _ => l.as_str(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        None => p.lines.join("\n"),
    };
    ServerReply {
        code: p.code,
        enhanced: enhanced.map(|(c, _)| c),
        text,
    }
}

// ---------------------------------------------------------------------------
// Command encoding.

/// RFC 3461 §4 xtext: '+', '=' and bytes outside 33..=126 become "+HH".
/// With `keep_utf8`, non-ASCII characters stay as they are (the
/// utf-8-addr-unitext of RFC 6533, for SMTPUTF8 transactions).
pub fn encode_xtext(s: &str, keep_utf8: bool) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_ascii() {
            let b = c as u8;
            if (33..=126).contains(&b) && b != b'+' && b != b'=' {
                out.push(c);
                continue;
            }
        } else if keep_utf8 && !c.is_control() {
            out.push(c);
            continue;
        }
        let mut buf = [0u8; 4];
        for &b in c.encode_utf8(&mut buf).as_bytes() {
            out.push('+');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

fn mail_command(msg: &OutMessage, ext: &Extensions, utf8: bool) -> Vec<u8> {
    let mut s = format!("MAIL FROM:<{}>", msg.sender);
    if ext.size.is_some() {
        s.push_str(&format!(" SIZE={}", msg.size));
    }
    match msg.body_type {
        BodyType::SevenBit => {}
        BodyType::EightBitMime => s.push_str(" BODY=8BITMIME"),
        BodyType::BinaryMime => s.push_str(" BODY=BINARYMIME"),
    }
    if utf8 {
        s.push_str(" SMTPUTF8");
    }
    if ext.dsn {
        match msg.ret {
            Some(Ret::Full) => s.push_str(" RET=FULL"),
            Some(Ret::Hdrs) => s.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = msg.envid.as_deref().filter(|e| !e.is_empty()) {
            let v = encode_xtext(envid, false);
            // A value the server must refuse would fail the whole message.
            if v.len() <= MAX_ENVID {
                s.push_str(" ENVID=");
                s.push_str(&v);
            }
        }
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn rcpt_command(r: &Recipient, dsn: bool, utf8: bool) -> Vec<u8> {
    let mut s = format!("RCPT TO:<{}>", r.address);
    if dsn {
        if let Some(n) = notify_value(r.notify) {
            s.push_str(" NOTIFY=");
            s.push_str(&n);
        }
        if let Some(o) = r.orcpt.as_deref().and_then(|o| orcpt_value(o, utf8)) {
            s.push_str(" ORCPT=");
            s.push_str(&o);
        }
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn notify_value(n: Notify) -> Option<String> {
    if n.has(Notify::NEVER) {
        return Some("NEVER".into());
    }
    let v: Vec<&str> = [
        (Notify::SUCCESS, "SUCCESS"),
        (Notify::FAILURE, "FAILURE"),
        (Notify::DELAY, "DELAY"),
    ]
    .iter()
    .filter(|(bit, _)| n.has(*bit))
    .map(|(_, name)| *name)
    .collect();
    (!v.is_empty()).then(|| v.join(","))
}

/// "addr-type;address" (decoded) to its wire form, or None if unusable.
fn orcpt_value(orcpt: &str, utf8: bool) -> Option<String> {
    let (atype, addr) = orcpt.split_once(';').unwrap_or(("rfc822", orcpt));
    let atype_ok = atype
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && atype
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if !atype_ok || addr.is_empty() {
        return None;
    }
    let v = format!("{atype};{}", encode_xtext(addr, utf8));
    (v.len() <= MAX_ORCPT).then_some(v)
}
