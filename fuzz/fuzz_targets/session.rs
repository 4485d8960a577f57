//! Fuzz target: a whole SMTP server session, without sockets.
//!
//! Arbitrary client bytes are fed to a `ServerSession` in two pieces, as a
//! real connection would deliver them. Every decision the session asks for
//! (connect, HELO, MAIL, RCPT, content) gets a random verdict from a
//! generator seeded by the input: accept (often with a header edit),
//! reject or drop. Depending on a flag byte, commits fail or credentials
//! are refused. STARTTLS and AUTH are offered depending on the flags; a
//! STARTTLS "handshake" drops the unread bytes, as the real driver does,
//! and succeeds at once.
//!
//! Properties:
//! - no panic;
//! - the session always makes progress (no endless loop of actions);
//! - everything it writes to the client is well-formed replies: lines of the
//!   form `DDD-text\r\n` / `DDD text\r\n`, a multi-line reply keeping one
//!   code, and the output never ends in the middle of a reply;
//! - STARTTLS is only accepted outside a mail transaction, and after TLS
//!   starts the session holds no envelope, no content and no login: every
//!   message committed after it was begun inside TLS (its Received: line,
//!   written when content starts, names the TLS session);
//! - a decision is asked for only with a pending decision of that stage;
//! - a committed message carries exactly the header edits accepted in its
//!   own transaction (each edit names the transaction it was made in), so
//!   nothing of an earlier, refused or reset transaction reaches it.
//!
//! Input layout: byte 0 = flags, byte 1 = split point (scaled), byte 2 =
//! the verdict generator's seed, rest = the client's bytes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pigeon::message::HeaderEdits;
use pigeon::proto::reply;
use pigeon::proto::{Action, AuthOutcome, Host, ServerSession, SessionConfig, Stage, Verdict};

struct FakeHost {
    next_id: u32,
    rng: u32,
}

impl FakeHost {
    fn next(&mut self) -> u32 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 17;
        self.rng ^= self.rng << 5;
        self.rng
    }

    /// A random verdict; an accepted MAIL, RCPT or content carries an
    /// edit naming transaction `txn`.
    fn verdict(&mut self, stage: Stage, txn: u32) -> Verdict {
        match self.next() % 16 {
            0..=10 => {
                let mut e = HeaderEdits::new();
                if matches!(stage, Stage::Mail | Stage::Rcpt | Stage::Content) && self.next() % 2 == 0 {
                    e.add("X-Fuzz-Txn", &txn.to_string());
                }
                Verdict::Accept(e)
            }
            11..=13 => Verdict::Reject(if self.next() % 2 == 0 { reply::RELAY_DENIED } else { reply::INSUFFICIENT_STORAGE }),
            _ => Verdict::Drop(reply::SHUTTING_DOWN),
        }
    }
}

impl Host for FakeHost {
    fn new_queue_id(&mut self) -> String {
        self.next_id += 1;
        format!("ID{}", self.next_id)
    }
    fn now(&mut self) -> i64 {
        1_795_459_500
    }
}

/// Checks that `out` is a sequence of complete, well-formed replies.
fn check_replies(out: &[u8]) {
    let mut rest = out;
    let mut open_code: Option<&[u8]> = None;
    while !rest.is_empty() {
        let lf = rest.iter().position(|&b| b == b'\n').unwrap_or_else(|| panic!("reply line without LF: {rest:?}"));
        let line = &rest[..lf + 1];
        rest = &rest[lf + 1..];
        assert!(line.len() >= 6 && line.ends_with(b"\r\n"), "malformed reply line {line:?}");
        let body = &line[..line.len() - 2];
        assert!(!body.contains(&b'\r'), "CR inside reply line {line:?}");
        assert!(body[..3].iter().all(u8::is_ascii_digit), "reply line without a code {line:?}");
        assert!((b'2'..=b'5').contains(&body[0]), "reply code out of range {line:?}");
        assert!(body[3] == b' ' || body[3] == b'-', "bad separator in {line:?}");
        if let Some(code) = open_code {
            assert_eq!(code, &body[..3], "code changes inside a multi-line reply: {line:?}");
        }
        open_code = if body[3] == b'-' { Some(&line[..3]) } else { None };
    }
    assert!(open_code.is_none(), "output ends inside a multi-line reply: {out:?}");
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let flags = data[0];
    let input = &data[3..];
    let split = data[1] as usize * input.len() / 255;
    let cfg = SessionConfig {
        hostname: "mx.test".into(),
        max_command_line: 512,
        max_message_size: if flags & 0x10 != 0 { 64 } else { 10_000 },
        max_recipients: 5,
        max_errors: 10,
        max_received_headers: 3,
        reject_bare_newline: flags & 0x08 != 0,
        starttls: flags & 0x20 != 0,
        auth: flags & 0x40 != 0,
        plaintext_auth: flags & 0x80 != 0,
        max_auth_failures: 3,
        max_junk_commands: 100,
    };
    let mut s = ServerSession::new(Arc::new(cfg), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let mut host = FakeHost { next_id: 0, rng: 0x9e37_79b9 ^ (u32::from(data[2]) << 8 | u32::from(flags)) | 1 };
    let fail_commit = flags & 0x04 != 0;
    let auth_ok = flags & 0x01 == 0;
    // The transaction the session is in, as far as verdicts go: a new one
    // begins with every accepted MAIL.
    let mut txn = 0u32;

    let mut written: Vec<u8> = Vec::new();
    let mut tls = false;
    let mut buf: Vec<u8> = Vec::new();
    // Every step either consumes bytes or moves the session to another
    // state; a small multiple of the input length is far more than enough.
    let mut budget = 64 + 8 * input.len();
    'conn: for piece in [&input[..split], &input[split..]] {
        buf.extend_from_slice(piece);
        loop {
            budget = budget.checked_sub(1).expect("session makes no progress");
            let (n, action) = s.feed(&buf, &mut host);
            assert!(n <= buf.len(), "consumed {n} of {} bytes", buf.len());
            buf.drain(..n);
            match action {
                Action::NeedInput => break,
                Action::Decide(stage) => {
                    let d = s.decision().expect("Decide without a pending decision");
                    assert_eq!(d.stage(), stage, "the pending decision is of another stage");
                    if stage == Stage::Mail {
                        txn += 1;
                    }
                    let v = host.verdict(stage, txn);
                    s.decided(v);
                    assert!(s.decision().is_none(), "a decision is still pending after the verdict");
                }
                Action::Commit => {
                    assert!(s.envelope().is_some(), "commit without an envelope");
                    let edits = s.header_edits().expect("commit without a transaction");
                    let text = String::from_utf8_lossy(edits.as_bytes()).into_owned();
                    for line in text.lines() {
                        assert_eq!(line, format!("X-Fuzz-Txn: {txn}"), "an edit of another transaction: {text:?}");
                    }
                    if tls {
                        let body = String::from_utf8_lossy(s.body());
                        let first = body.split("\r\n\t").take(2).collect::<Vec<_>>().join(" ");
                        assert!(first.starts_with("Received: from ") && first.contains("(using TLSv1.3 (fuzz))"),
                            "a message committed inside TLS was begun before it: {first:?}");
                    }
                    assert!(s.queue_id().is_some(), "commit without a queue id");
                    s.body().clear();
                    if fail_commit {
                        s.commit_result(Err(reply::INSUFFICIENT_STORAGE));
                    } else {
                        let id = s.queue_id().unwrap_or_default().to_string();
                        s.commit_result(Ok(id));
                    }
                }
                Action::Abort => s.body().clear(),
                Action::StartTls => {
                    // Bytes sent before the handshake are never executed.
                    buf.clear();
                    assert!(s.envelope().is_none(), "STARTTLS accepted inside a transaction");
                    s.tls_started("TLSv1.3 (fuzz)".to_string());
                    tls = true;
                    assert!(s.body().is_empty(), "content survived the start of TLS");
                    assert!(s.envelope().is_none(), "an envelope survived the start of TLS");
                    assert!(s.auth_user().is_none(), "a login survived the start of TLS");
                    assert!(!s.has_open_message());
                }
                Action::Authenticate => {
                    let login = s.credentials().expect("authenticate without credentials").login.clone();
                    s.auth_result(if auth_ok { AuthOutcome::Success(login) } else { AuthOutcome::Failure });
                }
                Action::Close => {
                    assert!(s.is_closed());
                    break 'conn;
                }
            }
            written.append(s.output());
        }
        written.append(s.output());
    }
    if !s.is_closed() {
        if split % 2 == 1 {
            s.timeout();
        } else {
            s.shutdown();
        }
    }
    written.append(s.output());
    check_replies(&written);
});
