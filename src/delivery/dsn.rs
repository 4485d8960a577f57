//! Delivery status notifications: OWNS THE DSN MESSAGE FORMAT (RFC 3464
//! `message/delivery-status` inside an RFC 6522 `multipart/report`, with the
//! RFC 6533 `utf-8` address type and `message/global-*` types for
//! internationalized mail).
//!
//! A pure function of its input: no I/O, no clock (`now` is passed in), no
//! randomness. The caller (the delivery manager) decides *whether* a DSN is
//! due ([`should_notify`], and never for the null sender, RFC 5321 §6.1),
//! builds one with [`build_dsn`] and enqueues it from the null sender like
//! any other message. The caller must enqueue it with `BODY=8BITMIME` if
//! `!dsn.is_ascii()`, and with `SMTPUTF8` if the original sender's address is
//! not ASCII (it appears in `To:`).
//!
//! # Untrusted input
//! Everything in [`DsnInput`] except `reporting_mta`, `now` and `message_id`
//! came from outside: addresses, ORCPT and ENVID from SMTP clients, the
//! diagnostic text from remote servers, the original message from whoever
//! sent it. The envelope strings have been validated (no CR, LF or control
//! characters) but may be long or UTF-8; this module still replaces any
//! control character with a space and caps every value, so that no input can
//! break a line or the MIME structure:
//! - every header-style field is folded at spaces before 78 octets and
//!   hard-split below 998 octets if a single word is longer;
//! - the multipart boundary is checked against the content of every part
//!   (including the quoted server replies) and changed until it occurs in
//!   none of them;
//! - the original message is returned only if it is clean (CRLF line ends,
//!   no NUL, no line over 998 octets); otherwise only its header section is
//!   returned, or nothing, and the text part says so.

use crate::message::header::push_field;
use crate::message::rfc5322_date;
use crate::proto::envelope::{Notify, Ret};
use crate::proto::reply::EnhancedCode;

/// Longest piece of one word placed on a line of the text part.
const WORD_CHUNK: usize = 900;
/// Width of the human-readable text, in characters.
const TEXT_WIDTH: usize = 76;
/// Caps on input values, in bytes (longer values are cut and marked "...").
const MAX_FIELD: usize = 512;
const MAX_DIAGNOSTIC: usize = 4096;
const MAX_SUBJECT: usize = 200;

/// The action-field values of RFC 3464 §2.3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// Permanently undeliverable (or retries have expired).
    Failed,
    /// Not delivered yet; still being retried.
    Delayed,
    /// Delivered to the recipient's mailbox.
    Delivered,
    /// Handed to a next hop that does not return DSNs (no SUCCESS report will follow).
    Relayed,
    /// Delivered to an alias or list, which expanded it to other addresses.
    Expanded,
}

impl DsnAction {
    /// The field value as written in `Action:`.
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
            DsnAction::Expanded => "expanded",
        }
    }

    fn is_success(self) -> bool {
        matches!(
            self,
            DsnAction::Delivered | DsnAction::Relayed | DsnAction::Expanded
        )
    }
}

/// What happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// The recipient address (`local@domain`, no brackets). Written as
    /// `rfc822; addr`, or `utf-8; addr` (RFC 6533) if it is not ASCII.
    pub final_recipient: String,
    /// The ORCPT value as stored, `addr-type;address` with xtext decoded;
    /// written as `Original-Recipient: addr-type; address`.
    pub original_recipient: Option<String>,
    pub action: DsnAction,
    /// Enhanced status code, e.g. "5.1.1", "4.4.1", "2.0.0". A value that is
    /// not of the form `c.s.d` is replaced by a generic code for the action.
    pub status: Option<EnhancedCode>,
    /// Host name or `[ip]` of the server that answered, for `Remote-MTA: dns; ...`.
    pub remote_mta: Option<String>,
    /// The remote reply text, e.g. "550 5.1.1 <bob@x>: user unknown", for
    /// `Diagnostic-Code: smtp; ...`; text that does not start with a reply
    /// code (a local explanation) is written as `X-Pigeon; ...`.
    pub diagnostic: Option<String>,
    /// Unix time of the last attempt, for `Last-Attempt-Date`.
    pub last_attempt: Option<i64>,
    /// Unix time when retries stop, for `Will-Retry-Until` (written for `Delayed` only).
    pub will_retry_until: Option<i64>,
}

/// Everything one DSN is made from.
pub struct DsnInput<'a> {
    /// Our host name, for `Reporting-MTA: dns; host` and `From:`.
    pub reporting_mta: &'a str,
    /// Queue id of the original message, for `X-Pigeon-Queue-ID` and the text.
    pub queue_id: &'a str,
    /// Unix time the original message was accepted, for `Arrival-Date`.
    pub arrival: i64,
    /// ENVID of the original message (xtext decoded), for `Original-Envelope-Id`.
    pub envid: Option<&'a str>,
    /// Envelope sender of the original message: the DSN goes `To:` it.
    pub original_sender: &'a str,
    /// At least one; one DSN covers all of them, mixed actions allowed.
    pub recipients: &'a [DsnRecipient],
    /// The stored original message (header section, blank line, body; CRLF lines).
    pub original: &'a [u8],
    /// `Some(Full)`: return the whole original; `None` or `Some(Hdrs)`: only its header section.
    pub ret: Option<Ret>,
    /// Unix time now, for `Date:` and the boundary.
    pub now: i64,
    /// The DSN's own `Message-ID`, angle brackets included.
    pub message_id: &'a str,
    /// Largest original returned in full; beyond it only the header section is returned.
    pub max_original_bytes: usize,
}

/// RFC 3461 §4.1: does this recipient's NOTIFY ask for a DSN about `action`?
/// An empty set (no NOTIFY given) means FAILURE and DELAY. `Relayed` and
/// `Expanded` are success reports. The caller must also never send a DSN to
/// the null sender.
pub fn should_notify(notify: Notify, action: DsnAction) -> bool {
    if notify.has(Notify::NEVER) {
        return false;
    }
    if notify.0 == 0 {
        return matches!(action, DsnAction::Failed | DsnAction::Delayed);
    }
    match action {
        DsnAction::Failed => notify.has(Notify::FAILURE),
        DsnAction::Delayed => notify.has(Notify::DELAY),
        DsnAction::Delivered | DsnAction::Relayed | DsnAction::Expanded => {
            notify.has(Notify::SUCCESS)
        }
    }
}

/// The DSN's subject: the worst outcome among the recipients decides.
pub fn dsn_subject(recipients: &[DsnRecipient]) -> &'static str {
    if recipients.iter().any(|r| r.action == DsnAction::Failed) {
        "Undelivered Mail Returned to Sender"
    } else if recipients.iter().any(|r| r.action == DsnAction::Delayed) {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    }
}

/// Builds a complete RFC 5322 message: CRLF line ends only, no line over 998
/// octets, three parts (text, delivery status, original) or two when the
/// original cannot be returned.
pub fn build_dsn(input: &DsnInput) -> Vec<u8> {
    let headers = header_section(input.original);
    let (returned, note) = choose_returned(input, headers);
    let subject = original_subject(headers);
    let text = human_text(input, subject.as_deref(), note);
    let status = delivery_status(input);
    let status_global = !status.is_ascii();

    let returned_bytes: &[u8] = match returned {
        Returned::Full(b) | Returned::Headers(b) => b,
        Returned::Nothing => b"",
    };
    let boundary = pick_boundary(
        input.queue_id,
        input.now,
        &[text.as_bytes(), status.as_bytes(), returned_bytes],
    );

    let report_type = if status_global {
        "global-delivery-status"
    } else {
        "delivery-status"
    };
    let host = clean(input.reporting_mta, MAX_FIELD);
    let mut head = String::with_capacity(1024);
    push_field(
        &mut head,
        "From",
        &format!("Mail Delivery System <MAILER-DAEMON@{host}>"),
    );
    push_field(
        &mut head,
        "To",
        &format!("<{}>", clean(input.original_sender, MAX_FIELD)),
    );
    push_field(&mut head, "Subject", dsn_subject(input.recipients));
    push_field(&mut head, "Date", &rfc5322_date(input.now));
    push_field(&mut head, "Message-ID", &clean(input.message_id, MAX_FIELD));
    push_field(&mut head, "MIME-Version", "1.0");
    push_field(
        &mut head,
        "Content-Type",
        &format!("multipart/report; report-type={report_type}; boundary=\"{boundary}\""),
    );
    push_field(&mut head, "Auto-Submitted", "auto-replied");

    let eight_bit = !(text.is_ascii() && status.is_ascii() && returned_bytes.is_ascii());
    push_field(
        &mut head,
        "Content-Transfer-Encoding",
        if eight_bit { "8bit" } else { "7bit" },
    );
    head.push_str("\r\n");
    head.push_str("This is a MIME-encapsulated delivery status notification.\r\n");

    let mut out =
        Vec::with_capacity(head.len() + text.len() + status.len() + returned_bytes.len() + 512);
    out.extend_from_slice(head.as_bytes());

    // Part 1: the human-readable explanation.
    let mut part = String::new();
    push_delimiter(&mut part, &boundary);
    push_field(&mut part, "Content-Type", "text/plain; charset=utf-8");
    push_field(&mut part, "Content-Description", "Notification");
    push_field(&mut part, "Content-Transfer-Encoding", cte(text.is_ascii()));
    part.push_str("\r\n");
    out.extend_from_slice(part.as_bytes());
    out.extend_from_slice(text.as_bytes());

    // Part 2: the machine-readable report.
    let mut part = String::new();
    push_delimiter(&mut part, &boundary);
    let status_type = if status_global {
        "message/global-delivery-status"
    } else {
        "message/delivery-status"
    };
    push_field(&mut part, "Content-Type", status_type);
    push_field(&mut part, "Content-Description", "Delivery report");
    push_field(&mut part, "Content-Transfer-Encoding", cte(!status_global));
    part.push_str("\r\n");
    out.extend_from_slice(part.as_bytes());
    out.extend_from_slice(status.as_bytes());

    // Part 3: the original, or its header section.
    let third = match returned {
        Returned::Full(b) => Some((
            if b.is_ascii() || header_section(b).is_ascii() {
                "message/rfc822"
            } else {
                "message/global"
            },
            "Undelivered message",
            b,
        )),
        Returned::Headers(b) => Some((
            if b.is_ascii() {
                "text/rfc822-headers"
            } else {
                "message/global-headers"
            },
            "Undelivered message headers",
            b,
        )),
        Returned::Nothing => None,
    };
    if let Some((ctype, description, bytes)) = third {
        let mut part = String::new();
        push_delimiter(&mut part, &boundary);
        push_field(&mut part, "Content-Type", ctype);
        push_field(&mut part, "Content-Description", description);
        push_field(
            &mut part,
            "Content-Transfer-Encoding",
            cte(bytes.is_ascii()),
        );
        part.push_str("\r\n");
        out.extend_from_slice(part.as_bytes());
        out.extend_from_slice(bytes);
    }

    out.extend_from_slice(b"\r\n--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
    out
}

fn cte(ascii: bool) -> &'static str {
    if ascii {
        "7bit"
    } else {
        "8bit"
    }
}

/// A delimiter line; the CRLF before it belongs to the delimiter (RFC 2046
/// §5.1.1), so the previous part's content is unchanged.
fn push_delimiter(out: &mut String, boundary: &str) {
    out.push_str("\r\n--");
    out.push_str(boundary);
    out.push_str("\r\n");
}

// ---------------------------------------------------------------------------
// The returned original

enum Returned<'a> {
    Full(&'a [u8]),
    Headers(&'a [u8]),
    Nothing,
}

/// What to attach, and the sentence telling the sender what was attached.
fn choose_returned<'a>(input: &DsnInput<'a>, headers: &'a [u8]) -> (Returned<'a>, &'static str) {
    let headers_ok = is_clean(headers) && headers.len() <= input.max_original_bytes;
    let headers_or_nothing = |why: &'static str| {
        if headers_ok {
            (Returned::Headers(headers), why)
        } else {
            (
                Returned::Nothing,
                "Your original message could not be attached to this report.",
            )
        }
    };
    if input.ret == Some(Ret::Full) {
        if input.original.len() > input.max_original_bytes {
            return headers_or_nothing(
                "Your message was too large to send back in full, so only its \
                 technical details (the header lines) are attached below.",
            );
        }
        if !is_clean(input.original) {
            return headers_or_nothing(
                "Your message could not be sent back in full, so only its \
                 technical details (the header lines) are attached below.",
            );
        }
        return (
            Returned::Full(input.original),
            "A copy of your original message is attached below.",
        );
    }
    headers_or_nothing(
        "The technical details of your original message (its header lines) \
         are attached below.",
    )
}

/// The header section of a message, including the CRLF of its last field
/// but not the blank line. All of the message if it has no body.
fn header_section(msg: &[u8]) -> &[u8] {
    if msg.starts_with(b"\r\n") {
        return b"";
    }
    match memchr::memmem::find(msg, b"\r\n\r\n") {
        Some(pos) => &msg[..pos + 2],
        None => msg,
    }
}

/// True if `b` can be quoted verbatim in a MIME part: every CR is followed by
/// LF, every LF preceded by CR, no NUL, no line longer than 998 octets.
fn is_clean(b: &[u8]) -> bool {
    let mut line_len = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\r' => {
                if b.get(i + 1) != Some(&b'\n') {
                    return false;
                }
                line_len = 0;
                i += 2;
                continue;
            }
            b'\n' | 0 => return false,
            _ => {
                line_len += 1;
                if line_len > 998 {
                    return false;
                }
            }
        }
        i += 1;
    }
    true
}

// ---------------------------------------------------------------------------
// message/delivery-status

fn delivery_status(input: &DsnInput) -> String {
    let mut s = String::with_capacity(256 + 256 * input.recipients.len());
    if let Some(envid) = input.envid {
        let envid = clean(envid, MAX_FIELD);
        if !envid.is_empty() {
            push_field(&mut s, "Original-Envelope-Id", &envid);
        }
    }
    push_field(
        &mut s,
        "Reporting-MTA",
        &format!("dns; {}", clean(input.reporting_mta, MAX_FIELD)),
    );
    push_field(&mut s, "Arrival-Date", &rfc5322_date(input.arrival));
    // Extension fields come last in the per-message group (RFC 3464 §2.2).
    push_field(
        &mut s,
        "X-Pigeon-Queue-ID",
        &clean(input.queue_id, MAX_FIELD),
    );

    for r in input.recipients {
        s.push_str("\r\n");
        if let Some(orcpt) = &r.original_recipient {
            let orcpt = clean(orcpt, MAX_FIELD);
            let (kind, addr) = match orcpt.split_once(';') {
                Some((k, a)) => (k.trim().to_string(), a.trim().to_string()),
                None => ("rfc822".to_string(), orcpt.clone()),
            };
            if !kind.is_empty() && !addr.is_empty() {
                push_field(&mut s, "Original-Recipient", &format!("{kind}; {addr}"));
            }
        }
        let addr = clean(&r.final_recipient, MAX_FIELD);
        let kind = if addr.is_ascii() { "rfc822" } else { "utf-8" };
        push_field(&mut s, "Final-Recipient", &format!("{kind}; {addr}"));
        push_field(&mut s, "Action", r.action.as_str());
        push_field(&mut s, "Status", &status_code(r).to_string());
        if let Some(mta) = &r.remote_mta {
            let mta = clean(mta, MAX_FIELD);
            if !mta.is_empty() {
                push_field(&mut s, "Remote-MTA", &format!("dns; {mta}"));
            }
        }
        if let Some(diag) = &r.diagnostic {
            let diag = clean(diag, MAX_DIAGNOSTIC);
            if !diag.is_empty() {
                let kind = if is_smtp_reply(&diag) {
                    "smtp"
                } else {
                    "X-Pigeon"
                };
                push_field(&mut s, "Diagnostic-Code", &format!("{kind}; {diag}"));
            }
        }
        if let Some(t) = r.last_attempt {
            push_field(&mut s, "Last-Attempt-Date", &rfc5322_date(t));
        }
        if r.action == DsnAction::Delayed {
            if let Some(t) = r.will_retry_until {
                push_field(&mut s, "Will-Retry-Until", &rfc5322_date(t));
            }
        }
    }
    s
}

/// The recipient's status code, or a generic one matching the action when
/// none is known (RFC 3464 §2.3.4 requires one).
fn status_code(r: &DsnRecipient) -> EnhancedCode {
    r.status.unwrap_or(match r.action {
        DsnAction::Failed => EnhancedCode::generic(5),
        DsnAction::Delayed => EnhancedCode::generic(4),
        _ => EnhancedCode::generic(2),
    })
}

// ---------------------------------------------------------------------------
// The human-readable text

fn human_text(input: &DsnInput, subject: Option<&str>, returned_note: &str) -> String {
    let mut t = String::with_capacity(1024);
    let host = clean(input.reporting_mta, MAX_FIELD);
    push_wrapped(
        &mut t,
        "",
        "",
        &format!("This is an automatic message from the mail system at {host}."),
    );
    t.push_str("\r\n");
    let mut about = format!(
        "It is about the message you sent on {}",
        human_date(input.arrival)
    );
    if let Some(s) = subject {
        about.push_str(&format!(" with the subject \"{s}\""));
    }
    about.push('.');
    push_wrapped(&mut t, "", "", &about);

    let failed: Vec<&DsnRecipient> = input
        .recipients
        .iter()
        .filter(|r| r.action == DsnAction::Failed)
        .collect();
    let delayed: Vec<&DsnRecipient> = input
        .recipients
        .iter()
        .filter(|r| r.action == DsnAction::Delayed)
        .collect();
    let done: Vec<&DsnRecipient> = input
        .recipients
        .iter()
        .filter(|r| r.action.is_success())
        .collect();

    if !failed.is_empty() {
        t.push_str("\r\n");
        push_wrapped(
            &mut t,
            "",
            "",
            &format!(
                "We could not deliver your message to the following {}:",
                plural(failed.len())
            ),
        );
        let mut advice: Vec<&'static str> = Vec::new();
        for r in &failed {
            push_problem(&mut t, r);
            let a = advice_for(r);
            if !advice.contains(&a) {
                advice.push(a);
            }
        }
        t.push_str("\r\n");
        push_wrapped(&mut t, "", "", "What you can do:");
        for a in advice {
            push_wrapped(&mut t, "  - ", "    ", a);
        }
    }

    if !delayed.is_empty() {
        t.push_str("\r\n");
        push_wrapped(
            &mut t,
            "",
            "",
            &format!(
                "We have not been able to deliver your message to the following {} yet:",
                plural(delayed.len())
            ),
        );
        for r in &delayed {
            push_problem(&mut t, r);
        }
        t.push_str("\r\n");
        let until = delayed.iter().filter_map(|r| r.will_retry_until).max();
        let keep_trying = match until {
            Some(u) => format!(
                "There is nothing you need to do: we will keep trying until {}. \
                 If we still cannot deliver it by then, we will write to you again.",
                human_date(u)
            ),
            None => "There is nothing you need to do: we will keep trying for a while. \
                     If we still cannot deliver it, we will write to you again."
                .to_string(),
        };
        push_wrapped(&mut t, "", "", &keep_trying);
    }

    if !done.is_empty() {
        t.push_str("\r\n");
        push_wrapped(
            &mut t,
            "",
            "",
            &format!(
                "Your message was delivered to the following {}:",
                plural(done.len())
            ),
        );
        t.push_str("\r\n");
        for r in &done {
            let addr = clean(&r.final_recipient, MAX_FIELD);
            let line = match r.action {
                DsnAction::Relayed => format!(
                    "{addr} (handed on to another mail system, which may not \
                     confirm the final delivery)"
                ),
                DsnAction::Expanded => format!(
                    "{addr} (a mailing list or forwarding address, which passed \
                     it on to its members)"
                ),
                _ => addr,
            };
            push_wrapped(&mut t, "  ", "    ", &line);
        }
    }

    t.push_str("\r\n");
    push_wrapped(&mut t, "", "", returned_note);
    t.push_str("\r\n");
    push_wrapped(
        &mut t,
        "",
        "",
        &format!(
            "If you ask your email administrator for help, give them this \
             reference: message {} at {host}.",
            clean(input.queue_id, MAX_FIELD)
        ),
    );
    t
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        "recipient"
    } else {
        "recipients"
    }
}

/// One failed or delayed recipient: the address, the reason in plain words,
/// and the server's reply quoted.
fn push_problem(t: &mut String, r: &DsnRecipient) {
    t.push_str("\r\n");
    push_wrapped(t, "  ", "  ", &clean(&r.final_recipient, MAX_FIELD));
    let diag = r
        .diagnostic
        .as_deref()
        .map(|d| clean(d, MAX_DIAGNOSTIC))
        .filter(|d| !d.is_empty());
    let reason = if mentions_full_mailbox(r.status, diag.as_deref()) {
        Some("The recipient's mailbox is full.")
    } else {
        plain_reason(status_code(r))
    };
    if let Some(reason) = reason {
        push_wrapped(t, "    Reason: ", "            ", reason);
    }
    if let Some(d) = diag {
        if is_smtp_reply(&d) {
            push_wrapped(t, "    ", "    ", "The recipient's mail server replied:");
        } else {
            push_wrapped(t, "    ", "    ", "Details:");
        }
        push_wrapped(t, "      ", "      ", &d);
    }
}

/// True if `diag` starts like an SMTP reply ("550 ...", "421-..."): it is
/// then written as `smtp; ...`, anything else (our own explanation of a
/// connection or DNS failure) as `X-Pigeon; ...` (RFC 3464 §2.3.6).
fn is_smtp_reply(diag: &str) -> bool {
    let b = diag.as_bytes();
    b.len() >= 3
        && matches!(b[0], b'2'..=b'5')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && matches!(b.get(3), None | Some(b' ') | Some(b'-'))
}

/// A plain-words explanation of an enhanced status code (RFC 3463).
fn plain_reason(status: EnhancedCode) -> Option<&'static str> {
    let class = status.class;
    if class == 2 {
        return None;
    }
    Some(match (status.subject, status.detail) {
        (1, 1) => "There is no mailbox with this address.",
        (1, 2) => "The part of the address after the @ could not be found.",
        (1, 3) => "The address is not written correctly.",
        (1, 6) => "The recipient has moved and left no forwarding address.",
        (1, 10) => "The part of the address after the @ does not accept email.",
        (2, 1) => "The recipient's mailbox is disabled.",
        (2, 2) => "The recipient's mailbox is full.",
        (2, 3) | (3, 4) => "Your message is larger than the recipient's mail system accepts.",
        (4, 1) | (4, 2) => "The recipient's mail server could not be reached.",
        (4, 3) | (4, 4) => "We could not find the mail server for this address.",
        (4, 7) => "We tried for too long without success and had to give up.",
        (7, 1) => "The recipient's mail system refused to accept your message.",
        (7, _) => "The recipient's mail system refused your message because of its security rules.",
        _ if class == 4 => "The recipient's mail system had a temporary problem.",
        _ => "The recipient's mail system could not accept your message.",
    })
}

/// Over quota: status x.2.2, or a reply that says so in words.
fn mentions_full_mailbox(status: Option<EnhancedCode>, diag: Option<&str>) -> bool {
    if status.is_some_and(|s| (s.subject, s.detail) == (2, 2)) {
        return true;
    }
    let Some(d) = diag else { return false };
    let d = d.to_ascii_lowercase();
    [
        "quota",
        "mailbox full",
        "mailbox is full",
        "mailbox is over",
        "insufficient storage",
    ]
    .iter()
    .any(|w| d.contains(w))
}

/// One piece of advice for a failed recipient, in plain words.
fn advice_for(r: &DsnRecipient) -> &'static str {
    if mentions_full_mailbox(r.status, r.diagnostic.as_deref()) {
        return "The recipient's mailbox is full. You can try sending again \
                later, or reach the recipient another way.";
    }
    let code = status_code(r);
    match (code.subject, code.detail) {
        (1, 1 | 2 | 3 | 10) => {
            "Check the address for typing mistakes, then send your message again."
        }
        (2, 3) | (3, 4) => {
            "Make your message smaller (for example, leave out large \
             attachments) and send it again."
        }
        _ => {
            "If you think this should have worked, reach the recipient \
             another way, or forward this message to your email administrator."
        }
    }
}

/// "Mon, 3 Mar 2025 10:00 UTC": the RFC 5322 date without seconds and zone number.
fn human_date(unix: i64) -> String {
    let d = rfc5322_date(unix);
    match d.strip_suffix(" +0000") {
        Some(rest) if rest.len() > 3 => format!("{} UTC", &rest[..rest.len() - 3]),
        _ => d,
    }
}

// ---------------------------------------------------------------------------
// The original's Subject, decoded for the text part

/// The Subject of the original, unfolded and RFC 2047 decoded (by
/// mail-parser, which knows the common charsets), if it can be shown
/// faithfully: a value it could not decode (an unknown charset, bytes that
/// are not text) is left out rather than shown garbled.
fn original_subject(headers: &[u8]) -> Option<String> {
    let raw = crate::message::header::field_values(headers, "subject").next()?;
    let raw = String::from_utf8(raw).ok()?;
    let mut field = b"Subject:".to_vec();
    field.extend_from_slice(raw.as_bytes());
    field.extend_from_slice(b"\r\n\r\n");
    let parsed = mail_parser::MessageParser::default().parse_headers(&field)?;
    let decoded = parsed.subject()?;
    if decoded.contains('\u{fffd}') || decoded.contains("=?") {
        return None;
    }
    let cleaned = clean(decoded, MAX_SUBJECT);
    let collapsed = cleaned.split_whitespace().collect::<Vec<_>>().join(" ");
    if collapsed.is_empty() {
        None
    } else {
        Some(collapsed)
    }
}

// ---------------------------------------------------------------------------
// Line building

/// `s` with control characters replaced by spaces, trimmed, and cut to at
/// most `cap` bytes (on a character boundary, marked with "...").
fn clean(s: &str, cap: usize) -> String {
    let mut out = String::with_capacity(s.len().min(cap + 3));
    for ch in s.trim().chars() {
        if out.len() + ch.len_utf8() > cap {
            out.push_str("...");
            break;
        }
        out.push(if ch.is_control() { ' ' } else { ch });
    }
    out.trim().to_string()
}

/// Appends `text` word-wrapped to TEXT_WIDTH characters: the first line
/// starts with `first`, the others with `rest`. Runs of spaces collapse. A
/// word longer than WORD_CHUNK bytes is split, so no line passes 998 octets.
fn push_wrapped(out: &mut String, first: &str, rest: &str, text: &str) {
    let mut line = String::from(first);
    let mut line_chars = first.chars().count();
    let mut has_word = false;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        for chunk in chunks(word, WORD_CHUNK) {
            let n = chunk.chars().count();
            if has_word && line_chars + 1 + n > TEXT_WIDTH {
                out.push_str(line.trim_end());
                out.push_str("\r\n");
                line = String::from(rest);
                line_chars = rest.chars().count();
                has_word = false;
            }
            if has_word {
                line.push(' ');
                line_chars += 1;
            }
            line.push_str(chunk);
            line_chars += n;
            has_word = true;
        }
    }
    out.push_str(line.trim_end());
    out.push_str("\r\n");
}

/// `s` cut into pieces of at most `max` bytes on character boundaries.
fn chunks(s: &str, max: usize) -> Vec<&str> {
    let mut v = Vec::new();
    let mut start = 0;
    let mut end = 0;
    for (i, ch) in s.char_indices() {
        if i + ch.len_utf8() - start > max && end > start {
            v.push(&s[start..end]);
            start = end;
        }
        end = i + ch.len_utf8();
    }
    if start < s.len() {
        v.push(&s[start..]);
    }
    v
}

/// A boundary made of the queue id and the time, changed by a counter until
/// it occurs in none of `contents` (so no content line can end a part).
fn pick_boundary(queue_id: &str, now: i64, contents: &[&[u8]]) -> String {
    let id: String = queue_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(20)
        .collect();
    // At most 13 + 20 + 1 + 16 characters, plus "_" and 16 for the counter:
    // within the 70 that RFC 2046 §5.1.1 allows.
    let base = format!("=_pigeon-dsn_{id}_{:x}", now as u64);
    let occurs = |b: &str| {
        contents
            .iter()
            .any(|c| memchr::memmem::find(c, b.as_bytes()).is_some())
    };
    if !occurs(&base) {
        return base;
    }
    // Each occurrence of the base in the contents rules out only a few
    // suffixes (those whose digits it starts with), so this ends quickly.
    let mut n: u64 = 1;
    loop {
        let candidate = format!("{base}_{n:x}");
        if !occurs(&candidate) {
            return candidate;
        }
        n = n.wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: Bob <bob@example.net>\r\n\
Subject: Quarterly report\r\n\
Message-ID: <m1@example.org>\r\n\
\r\n\
Hello Bob,\r\n\
\r\n\
the numbers are attached.\r\n";

    fn rcpt(addr: &str, action: DsnAction, status: &str) -> DsnRecipient {
        DsnRecipient {
            final_recipient: addr.to_string(),
            original_recipient: None,
            action,
            status: EnhancedCode::parse(status),
            remote_mta: None,
            diagnostic: None,
            last_attempt: None,
            will_retry_until: None,
        }
    }

    fn input<'a>(
        recipients: &'a [DsnRecipient],
        original: &'a [u8],
        ret: Option<Ret>,
    ) -> DsnInput<'a> {
        DsnInput {
            reporting_mta: "mx.example.org",
            queue_id: "0J9ZQ4M7C2X1A",
            arrival: 1_741_000_000,
            envid: None,
            original_sender: "alice@example.org",
            recipients,
            original,
            ret,
            now: 1_741_003_600,
            message_id: "<0J9ZQ4M7C2X1A.dsn@mx.example.org>",
            max_original_bytes: 10 << 20,
        }
    }

    fn failed_pair() -> Vec<DsnRecipient> {
        let mut bob = rcpt("bob@example.net", DsnAction::Failed, "5.1.1");
        bob.original_recipient = Some("rfc822;Bob@Example.NET".into());
        bob.remote_mta = Some("mx1.example.net".into());
        bob.diagnostic =
            Some("550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown".into());
        bob.last_attempt = Some(1_741_003_500);
        let mut carol = rcpt("carol@example.com", DsnAction::Failed, "5.2.2");
        carol.remote_mta = Some("[192.0.2.7]".into());
        carol.diagnostic = Some("552 5.2.2 carol: mailbox full".into());
        vec![bob, carol]
    }

    type Fields = Vec<(String, String)>;

    struct Part {
        headers: Fields,
        body: Vec<u8>,
    }

    struct Parsed {
        headers: Fields,
        boundary: String,
        parts: Vec<Part>,
    }

    /// Every line ends in CRLF, no CR or LF elsewhere, no line over 998 octets.
    fn check_lines(msg: &[u8]) {
        assert!(msg.ends_with(b"\r\n"), "message must end with CRLF");
        for (i, w) in msg.windows(2).enumerate() {
            assert!(!(w[0] == b'\r' && w[1] != b'\n'), "bare CR at {i}");
            assert!(!(w[1] == b'\n' && w[0] != b'\r'), "bare LF at {}", i + 1);
        }
        assert_ne!(msg[0], b'\n');
        for line in msg.split(|&b| b == b'\n') {
            assert!(line.len() <= 999, "line of {} octets", line.len());
        }
    }

    /// Field list of a header block (CRLF-terminated lines), unfolded by
    /// removing each CRLF that precedes white space.
    fn fields(block: &[u8]) -> Fields {
        let text = std::str::from_utf8(block).expect("UTF-8 header block");
        let unfolded = text.replace("\r\n ", " ").replace("\r\n\t", "\t");
        unfolded
            .split("\r\n")
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("field has a colon");
                (n.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string())
            })
            .collect()
    }

    fn get<'a>(f: &'a Fields, name: &str) -> Option<&'a str> {
        f.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn names(f: &Fields) -> Vec<&str> {
        f.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn split_head(m: &[u8]) -> (&[u8], &[u8]) {
        let pos = memchr::memmem::find(m, b"\r\n\r\n").expect("blank line after headers");
        (&m[..pos + 2], &m[pos + 4..])
    }

    fn parse(msg: &[u8]) -> Parsed {
        check_lines(msg);
        let (head, body) = split_head(msg);
        let headers = fields(head);
        let ctype = get(&headers, "Content-Type").expect("Content-Type");
        let start = ctype.find("boundary=\"").expect("boundary parameter") + 10;
        let boundary = ctype[start..]
            .split('"')
            .next()
            .expect("closing quote")
            .to_string();
        assert!(!boundary.is_empty() && boundary.len() <= 70);
        let delim = format!("\r\n--{boundary}");
        let hits: Vec<usize> = memchr::memmem::find_iter(body, delim.as_bytes()).collect();
        assert!(
            hits.len() >= 2,
            "need at least one part and a close delimiter"
        );
        let last = *hits.last().expect("close delimiter");
        assert_eq!(
            &body[last + delim.len()..],
            b"--\r\n",
            "close delimiter ends the message"
        );
        let mut parts = Vec::new();
        for pair in hits.windows(2) {
            let after = pair[0] + delim.len();
            assert_eq!(
                &body[after..after + 2],
                b"\r\n",
                "delimiter line ends right after the boundary"
            );
            let content = &body[after + 2..pair[1]];
            let (ph, pb) = split_head(content);
            parts.push(Part {
                headers: fields(ph),
                body: pb.to_vec(),
            });
        }
        Parsed {
            headers,
            boundary,
            parts,
        }
    }

    /// The groups of a delivery-status body: per-message first, then one per recipient.
    fn groups(body: &[u8]) -> Vec<Fields> {
        let text = std::str::from_utf8(body).expect("UTF-8 status");
        text.split("\r\n\r\n")
            .filter(|g| !g.trim().is_empty())
            .map(|g| fields(format!("{g}\r\n").as_bytes()))
            .collect()
    }

    /// The text part with line breaks and indentation collapsed to single spaces.
    fn text_of(p: &Parsed) -> String {
        let t = std::str::from_utf8(&p.parts[0].body).expect("UTF-8 text");
        t.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn failed_two_recipients_parses_back() {
        let rs = failed_pair();
        let mut inp = input(&rs, ORIGINAL, None);
        inp.envid = Some("QQ314159");
        let msg = build_dsn(&inp);
        let p = parse(&msg);

        assert_eq!(
            names(&p.headers),
            [
                "From",
                "To",
                "Subject",
                "Date",
                "Message-ID",
                "MIME-Version",
                "Content-Type",
                "Auto-Submitted",
                "Content-Transfer-Encoding"
            ]
        );
        assert_eq!(
            get(&p.headers, "From"),
            Some("Mail Delivery System <MAILER-DAEMON@mx.example.org>")
        );
        assert_eq!(get(&p.headers, "To"), Some("<alice@example.org>"));
        assert_eq!(
            get(&p.headers, "Subject"),
            Some("Undelivered Mail Returned to Sender")
        );
        assert_eq!(
            get(&p.headers, "Date"),
            Some(rfc5322_date(1_741_003_600).as_str())
        );
        assert_eq!(
            get(&p.headers, "Message-ID"),
            Some("<0J9ZQ4M7C2X1A.dsn@mx.example.org>")
        );
        assert_eq!(get(&p.headers, "MIME-Version"), Some("1.0"));
        assert_eq!(get(&p.headers, "Auto-Submitted"), Some("auto-replied"));
        assert_eq!(get(&p.headers, "Content-Transfer-Encoding"), Some("7bit"));
        assert_eq!(
            get(&p.headers, "Content-Type"),
            Some(
                format!(
                    "multipart/report; report-type=delivery-status; boundary=\"{}\"",
                    p.boundary
                )
                .as_str()
            )
        );

        assert_eq!(p.parts.len(), 3);
        assert_eq!(
            get(&p.parts[0].headers, "Content-Type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(
            get(&p.parts[1].headers, "Content-Type"),
            Some("message/delivery-status")
        );
        assert_eq!(
            get(&p.parts[2].headers, "Content-Type"),
            Some("text/rfc822-headers")
        );

        let g = groups(&p.parts[1].body);
        assert_eq!(g.len(), 3);
        assert_eq!(
            names(&g[0]),
            [
                "Original-Envelope-Id",
                "Reporting-MTA",
                "Arrival-Date",
                "X-Pigeon-Queue-ID"
            ]
        );
        assert_eq!(get(&g[0], "Original-Envelope-Id"), Some("QQ314159"));
        assert_eq!(get(&g[0], "Reporting-MTA"), Some("dns; mx.example.org"));
        assert_eq!(
            get(&g[0], "Arrival-Date"),
            Some(rfc5322_date(1_741_000_000).as_str())
        );
        assert_eq!(get(&g[0], "X-Pigeon-Queue-ID"), Some("0J9ZQ4M7C2X1A"));

        assert_eq!(
            names(&g[1]),
            [
                "Original-Recipient",
                "Final-Recipient",
                "Action",
                "Status",
                "Remote-MTA",
                "Diagnostic-Code",
                "Last-Attempt-Date"
            ]
        );
        assert_eq!(
            get(&g[1], "Original-Recipient"),
            Some("rfc822; Bob@Example.NET")
        );
        assert_eq!(
            get(&g[1], "Final-Recipient"),
            Some("rfc822; bob@example.net")
        );
        assert_eq!(get(&g[1], "Action"), Some("failed"));
        assert_eq!(get(&g[1], "Status"), Some("5.1.1"));
        assert_eq!(get(&g[1], "Remote-MTA"), Some("dns; mx1.example.net"));
        assert_eq!(
            get(&g[1], "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown")
        );
        assert_eq!(
            get(&g[1], "Last-Attempt-Date"),
            Some(rfc5322_date(1_741_003_500).as_str())
        );

        assert_eq!(
            names(&g[2]),
            [
                "Final-Recipient",
                "Action",
                "Status",
                "Remote-MTA",
                "Diagnostic-Code"
            ]
        );
        assert_eq!(
            get(&g[2], "Final-Recipient"),
            Some("rfc822; carol@example.com")
        );
        assert_eq!(get(&g[2], "Remote-MTA"), Some("dns; [192.0.2.7]"));

        // RET absent: the header section only, byte for byte.
        assert_eq!(p.parts[2].body, header_section(ORIGINAL));
        assert!(!p.parts[2].body.windows(5).any(|w| w == b"Hello"));

        let text = text_of(&p);
        assert!(text.contains("bob@example.net"));
        assert!(text.contains("carol@example.com"));
        assert!(text.contains("Quarterly report"));
        assert!(text.contains("There is no mailbox with this address."));
        assert!(text.contains("550 5.1.1 <bob@example.net>: Recipient address rejected:"));
        assert!(text.contains("typing mistakes"));
        assert!(text.contains("mailbox is full"));
        assert!(text.contains("0J9ZQ4M7C2X1A"));
    }

    #[test]
    fn ret_hdrs_returns_only_the_header_section() {
        let rs = failed_pair();
        let msg = build_dsn(&input(&rs, ORIGINAL, Some(Ret::Hdrs)));
        let p = parse(&msg);
        assert_eq!(p.parts.len(), 3);
        assert_eq!(
            get(&p.parts[2].headers, "Content-Type"),
            Some("text/rfc822-headers")
        );
        assert_eq!(p.parts[2].body, header_section(ORIGINAL));
        assert!(p.parts[2]
            .body
            .ends_with(b"Message-ID: <m1@example.org>\r\n"));
    }

    #[test]
    fn ret_full_returns_the_original_byte_exact() {
        let rs = failed_pair();
        let msg = build_dsn(&input(&rs, ORIGINAL, Some(Ret::Full)));
        let p = parse(&msg);
        assert_eq!(p.parts.len(), 3);
        assert_eq!(
            get(&p.parts[2].headers, "Content-Type"),
            Some("message/rfc822")
        );
        assert_eq!(
            get(&p.parts[2].headers, "Content-Transfer-Encoding"),
            Some("7bit")
        );
        assert_eq!(p.parts[2].body, ORIGINAL);
        assert!(text_of(&p).contains("A copy of your original message is attached"));

        // An original that does not end in CRLF is still returned as is.
        let odd = b"Subject: x\r\n\r\nno final newline";
        let p = parse(&build_dsn(&input(&rs, odd, Some(Ret::Full))));
        assert_eq!(p.parts[2].body, odd);
    }

    #[test]
    fn oversized_original_falls_back_to_headers_with_a_note() {
        let rs = failed_pair();
        let mut inp = input(&rs, ORIGINAL, Some(Ret::Full));
        inp.max_original_bytes = header_section(ORIGINAL).len() + 5;
        let p = parse(&build_dsn(&inp));
        assert_eq!(p.parts.len(), 3);
        assert_eq!(
            get(&p.parts[2].headers, "Content-Type"),
            Some("text/rfc822-headers")
        );
        assert_eq!(p.parts[2].body, header_section(ORIGINAL));
        assert!(text_of(&p).contains("too large to send back in full"));

        // Even the header section is too large: nothing is attached, and the text says so.
        inp.max_original_bytes = 10;
        let p = parse(&build_dsn(&inp));
        assert_eq!(p.parts.len(), 2);
        assert!(text_of(&p).contains("could not be attached"));
    }

    #[test]
    fn unclean_original_is_not_quoted() {
        let rs = failed_pair();
        // A bare LF in the body: the header section is still fine.
        let bare_lf = b"Subject: x\r\n\r\nline\nother\r\n";
        let p = parse(&build_dsn(&input(&rs, bare_lf, Some(Ret::Full))));
        assert_eq!(p.parts.len(), 3);
        assert_eq!(p.parts[2].body, b"Subject: x\r\n");
        assert!(text_of(&p).contains("could not be sent back in full"));

        // A 2000-octet line and a bare CR in the header section: nothing attached.
        let mut long = b"Subject: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 2000));
        long.extend_from_slice(b"\r\n\r\nbody\r\n");
        let bad: [&[u8]; 3] = [&long, b"X: a\rb\r\n\r\nbody\r\n", b"X: a\0\r\n\r\nbody\r\n"];
        for orig in bad {
            for ret in [None, Some(Ret::Hdrs), Some(Ret::Full)] {
                let p = parse(&build_dsn(&input(&rs, orig, ret)));
                assert_eq!(p.parts.len(), 2);
            }
        }
    }

    #[test]
    fn utf8_recipient_uses_rfc6533_types() {
        let mut r = rcpt("用户@例子.测试", DsnAction::Failed, "5.1.1");
        r.original_recipient = Some("utf-8;用户@例子.测试".into());
        r.diagnostic = Some("550 5.1.1 用户不存在".into());
        r.remote_mta = Some("mx.例子.测试".into());
        let rs = vec![r, rcpt("dave@example.org", DsnAction::Failed, "5.1.1")];
        let msg = build_dsn(&input(&rs, ORIGINAL, None));
        let p = parse(&msg);
        assert!(get(&p.headers, "Content-Type").is_some_and(
            |v| v.starts_with("multipart/report; report-type=global-delivery-status;")
        ));
        assert_eq!(get(&p.headers, "Content-Transfer-Encoding"), Some("8bit"));
        assert_eq!(
            get(&p.parts[1].headers, "Content-Type"),
            Some("message/global-delivery-status")
        );
        assert_eq!(
            get(&p.parts[1].headers, "Content-Transfer-Encoding"),
            Some("8bit")
        );
        let g = groups(&p.parts[1].body);
        assert_eq!(
            get(&g[1], "Original-Recipient"),
            Some("utf-8; 用户@例子.测试")
        );
        assert_eq!(get(&g[1], "Final-Recipient"), Some("utf-8; 用户@例子.测试"));
        assert_eq!(
            get(&g[1], "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 用户不存在")
        );
        assert_eq!(
            get(&g[2], "Final-Recipient"),
            Some("rfc822; dave@example.org")
        );
        assert_eq!(
            get(&p.parts[0].headers, "Content-Transfer-Encoding"),
            Some("8bit")
        );
        assert!(text_of(&p).contains("用户@例子.测试"));
    }

    #[test]
    fn utf8_original_uses_global_message_types() {
        let rs = failed_pair();
        let intl =
            "From: Jürgen <jürgen@example.org>\r\nSubject: Grüße\r\n\r\nHallo\r\n".as_bytes();
        let p = parse(&build_dsn(&input(&rs, intl, None)));
        assert_eq!(
            get(&p.parts[2].headers, "Content-Type"),
            Some("message/global-headers")
        );
        assert_eq!(
            get(&p.parts[2].headers, "Content-Transfer-Encoding"),
            Some("8bit")
        );
        assert!(text_of(&p).contains("\"Grüße\""));
        let p = parse(&build_dsn(&input(&rs, intl, Some(Ret::Full))));
        assert_eq!(
            get(&p.parts[2].headers, "Content-Type"),
            Some("message/global")
        );
        assert_eq!(p.parts[2].body, intl);

        // ASCII headers, 8-bit body (8BITMIME): message/rfc822 with 8bit encoding.
        let eight = "Subject: hi\r\n\r\nGrüße\r\n".as_bytes();
        let p = parse(&build_dsn(&input(&rs, eight, Some(Ret::Full))));
        assert_eq!(
            get(&p.parts[2].headers, "Content-Type"),
            Some("message/rfc822")
        );
        assert_eq!(
            get(&p.parts[2].headers, "Content-Transfer-Encoding"),
            Some("8bit")
        );
        assert_eq!(get(&p.headers, "Content-Transfer-Encoding"), Some("8bit"));
        assert_eq!(
            get(&p.parts[1].headers, "Content-Type"),
            Some("message/delivery-status")
        );
    }

    #[test]
    fn delayed_report() {
        let mut r = rcpt("bob@example.net", DsnAction::Delayed, "4.4.1");
        r.remote_mta = Some("mx1.example.net".into());
        r.diagnostic = Some("421 4.4.1 connection timed out".into());
        r.last_attempt = Some(1_741_003_000);
        r.will_retry_until = Some(1_741_432_000);
        let rs = vec![r];
        let p = parse(&build_dsn(&input(&rs, ORIGINAL, None)));
        assert_eq!(
            get(&p.headers, "Subject"),
            Some("Delayed Mail (still being retried)")
        );
        let g = groups(&p.parts[1].body);
        assert_eq!(
            names(&g[1]),
            [
                "Final-Recipient",
                "Action",
                "Status",
                "Remote-MTA",
                "Diagnostic-Code",
                "Last-Attempt-Date",
                "Will-Retry-Until"
            ]
        );
        assert_eq!(get(&g[1], "Action"), Some("delayed"));
        assert_eq!(get(&g[1], "Status"), Some("4.4.1"));
        assert_eq!(
            get(&g[1], "Will-Retry-Until"),
            Some(rfc5322_date(1_741_432_000).as_str())
        );
        let text = text_of(&p);
        assert!(text.contains("nothing you need to do"));
        assert!(text.contains(&human_date(1_741_432_000)));
        assert!(!text.contains("What you can do"));
        assert!(text.contains("The recipient's mail server replied: 421 4.4.1"));

        // Our own explanation (no reply from a server) is not passed off as one.
        let mut r = rcpt("bob@example.net", DsnAction::Delayed, "4.4.1");
        r.diagnostic =
            Some("connect to mx1.example.net[192.0.2.1]:25: Connection timed out".into());
        let rs = vec![r];
        let p = parse(&build_dsn(&input(&rs, ORIGINAL, None)));
        let g = groups(&p.parts[1].body);
        assert_eq!(
            get(&g[1], "Diagnostic-Code"),
            Some("X-Pigeon; connect to mx1.example.net[192.0.2.1]:25: Connection timed out")
        );
        let text = text_of(&p);
        assert!(text.contains("Details: connect to mx1.example.net"));
        assert!(!text.contains("replied"));
    }

    #[test]
    fn success_report() {
        let mut relayed = rcpt("carol@example.com", DsnAction::Relayed, "2.0.0");
        relayed.will_retry_until = Some(1); // ignored: only for delayed
        let rs = vec![
            rcpt("bob@example.net", DsnAction::Delivered, "2.0.0"),
            relayed,
        ];
        let p = parse(&build_dsn(&input(&rs, ORIGINAL, None)));
        assert_eq!(
            get(&p.headers, "Subject"),
            Some("Successful Mail Delivery Report")
        );
        let g = groups(&p.parts[1].body);
        assert_eq!(get(&g[1], "Action"), Some("delivered"));
        assert_eq!(get(&g[2], "Action"), Some("relayed"));
        assert_eq!(get(&g[2], "Will-Retry-Until"), None);
        let text = text_of(&p);
        assert!(text.contains("was delivered to the following recipients"));
        assert!(!text.contains("could not deliver"));
    }

    #[test]
    fn subject_picks_the_worst_outcome() {
        let ok = rcpt("a@x", DsnAction::Delivered, "2.0.0");
        let late = rcpt("b@x", DsnAction::Delayed, "4.0.0");
        let bad = rcpt("c@x", DsnAction::Failed, "5.0.0");
        assert_eq!(
            dsn_subject(&[ok.clone(), late.clone(), bad]),
            "Undelivered Mail Returned to Sender"
        );
        assert_eq!(
            dsn_subject(&[ok.clone(), late]),
            "Delayed Mail (still being retried)"
        );
        assert_eq!(dsn_subject(&[ok]), "Successful Mail Delivery Report");
    }

    #[test]
    fn diagnostic_is_folded_and_unfolds_to_the_original() {
        let diag = "550-5.1.1 The email account that you tried to reach does not exist. \
                    Please try double-checking the recipient's email address for typos or \
                    unnecessary spaces. For more information, go to  https://support.example.com/mail/?p=NoSuchUser \
                    a1b2c3d4e5f6.99 - gsmtp";
        let mut r = rcpt("bob@example.net", DsnAction::Failed, "5.1.1");
        r.diagnostic = Some(diag.into());
        let rs = vec![r];
        let msg = build_dsn(&input(&rs, ORIGINAL, None));
        let p = parse(&msg);
        let status = std::str::from_utf8(&p.parts[1].body).expect("ASCII");
        let start = status.find("Diagnostic-Code:").expect("field present");
        let field: Vec<&str> = status[start..]
            .split("\r\n")
            .enumerate()
            .take_while(|(i, l)| *i == 0 || l.starts_with(' '))
            .map(|(_, l)| l)
            .collect();
        assert!(field.len() > 2, "long diagnostic is folded");
        for l in &field {
            assert!(l.len() <= 78, "folded line of {} octets: {l:?}", l.len());
        }
        assert_eq!(field.concat(), format!("Diagnostic-Code: smtp; {diag}"));
    }

    #[test]
    fn long_values_never_break_lines() {
        let word = "x".repeat(3000);
        let mut r = rcpt(
            &format!("{}@example.net", "b".repeat(300)),
            DsnAction::Failed,
            "5.7.1",
        );
        r.diagnostic = Some(format!("550 {word} and {}", "ü".repeat(2000)));
        r.remote_mta = Some("m".repeat(2000));
        r.original_recipient = Some(format!("rfc822;{}", "o".repeat(1500)));
        let rs = vec![r];
        let envid = "e".repeat(1200);
        let subject = format!("Subject: {}x\r\n\r\nbody\r\n", "Grüße\r\n ".repeat(150));
        let mut inp = input(&rs, subject.as_bytes(), None);
        inp.envid = Some(&envid);
        let msg = build_dsn(&inp);
        let p = parse(&msg);
        assert_eq!(p.parts.len(), 3);
        let g = groups(&p.parts[1].body);
        let diag = get(&g[1], "Diagnostic-Code").expect("present");
        assert!(diag.starts_with("smtp; 550 xxx") && diag.ends_with("..."));
        assert!(diag.len() <= MAX_DIAGNOSTIC + 20);
    }

    #[test]
    fn control_characters_cannot_inject_lines() {
        let mut r = rcpt("bob@example.net", DsnAction::Failed, "5.1.1");
        r.diagnostic = Some("550 no\r\n\r\nFinal-Recipient: rfc822; evil@x\r\n--=_pigeon".into());
        r.remote_mta = Some("mx\n.example.net".into());
        let rs = vec![r];
        let mut inp = input(&rs, ORIGINAL, None);
        inp.original_sender = "alice@example.org>\r\nBcc: x@y";
        let msg = build_dsn(&inp);
        let p = parse(&msg);
        assert_eq!(p.parts.len(), 3);
        assert_eq!(get(&p.headers, "Bcc"), None);
        let g = groups(&p.parts[1].body);
        assert_eq!(g.len(), 2);
        assert_eq!(
            names(&g[1]),
            [
                "Final-Recipient",
                "Action",
                "Status",
                "Remote-MTA",
                "Diagnostic-Code"
            ]
        );
    }

    #[test]
    fn boundary_avoids_collisions_with_content() {
        let base = format!("=_pigeon-dsn_0J9ZQ4M7C2X1A_{:x}", 1_741_003_600u64);
        let original = format!("Subject: trap\r\n\r\n--{base}\r\n--{base}_1--\r\n");
        let mut r = rcpt("bob@example.net", DsnAction::Failed, "5.1.1");
        r.diagnostic = Some(format!("550 --{base}_2"));
        let rs = vec![r];
        let msg = build_dsn(&input(&rs, original.as_bytes(), Some(Ret::Full)));
        let p = parse(&msg);
        assert_eq!(p.boundary, format!("{base}_3"));
        assert_eq!(p.parts.len(), 3);
        assert_eq!(p.parts[2].body, original.as_bytes());
    }

    #[test]
    fn malformed_status_gets_a_generic_code() {
        let rs = vec![
            rcpt("a@x", DsnAction::Failed, "550"),
            rcpt("b@x", DsnAction::Delayed, "4.x.1"),
            rcpt("c@x", DsnAction::Delivered, ""),
            rcpt("d@x", DsnAction::Failed, "5.7.26"),
        ];
        let p = parse(&build_dsn(&input(&rs, ORIGINAL, None)));
        let g = groups(&p.parts[1].body);
        let codes: Vec<_> = g[1..]
            .iter()
            .map(|f| get(f, "Status").unwrap_or(""))
            .collect();
        assert_eq!(codes, ["5.0.0", "4.0.0", "2.0.0", "5.7.26"]);
    }

    #[test]
    fn encoded_subject_is_decoded_for_the_text() {
        assert_eq!(
            original_subject(b"Subject: =?UTF-8?B?R3LDvMOfZQ==?= =?utf-8?q?_aus_K=C3=B6ln?=\r\n"),
            Some("Grüße aus Köln".to_string())
        );
        assert_eq!(
            original_subject(b"X: y\r\nsubject: long\r\n  folded\r\nZ: z\r\n"),
            Some("long folded".to_string())
        );
        // mail-parser knows the common single-byte charsets.
        assert_eq!(
            original_subject(b"Subject: =?koi8-r?B?5dTP?=\r\n"),
            Some("\u{415}\u{442}\u{43e}".to_string())
        );
        // An unknown charset is left out, not shown garbled.
        assert_eq!(original_subject(b"Subject: =?x-no-such?B?5dTP?=\r\n"), None);
        assert_eq!(original_subject(b"From: a@b\r\n"), None);
    }

    #[test]
    fn notify_rules() {
        use DsnAction::*;
        let n = |f: u8| Notify(f);
        assert!(should_notify(n(0), Failed));
        assert!(should_notify(n(0), Delayed));
        assert!(!should_notify(n(0), Delivered));
        assert!(!should_notify(n(Notify::NEVER), Failed));
        assert!(should_notify(n(Notify::SUCCESS), Relayed));
        assert!(should_notify(n(Notify::SUCCESS), Expanded));
        assert!(!should_notify(n(Notify::SUCCESS), Failed));
        assert!(should_notify(n(Notify::FAILURE | Notify::DELAY), Delayed));
        assert!(!should_notify(n(Notify::FAILURE), Delayed));
    }

    #[test]
    fn folding_and_wrapping_helpers() {
        let mut s = String::new();
        push_field(&mut s, "X", "a  b   ");
        assert_eq!(s, "X: a  b   \r\n");
        assert_eq!(chunks("ab\u{fc}cd", 3), ["ab", "\u{fc}c", "d"]);
        let mut t = String::new();
        push_wrapped(&mut t, "- ", "  ", &"word ".repeat(40));
        for l in t.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(l.chars().count() <= TEXT_WIDTH);
        }
        assert_eq!(human_date(0), "Thu, 01 Jan 1970 00:00 UTC");
    }

    /// Prints a sample (cargo test sample_dsn -- --nocapture).
    #[test]
    fn sample_dsn() {
        let mut rs = failed_pair();
        let mut late = rcpt("dave@example.com", DsnAction::Delayed, "4.4.1");
        late.remote_mta = Some("mx.example.com".into());
        late.diagnostic =
            Some("connect to mx.example.com[198.51.100.4]:25: Connection timed out".into());
        late.last_attempt = Some(1_741_003_000);
        late.will_retry_until = Some(1_741_432_000);
        rs.push(late);
        let mut inp = input(&rs, ORIGINAL, Some(Ret::Hdrs));
        inp.envid = Some("QQ314159");
        let msg = build_dsn(&inp);
        parse(&msg);
        println!("{}", String::from_utf8_lossy(&msg));
    }
}
