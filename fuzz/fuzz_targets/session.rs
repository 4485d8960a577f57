//! Fuzz target: a whole SMTP server session, without sockets.
//!
//! Arbitrary client bytes are fed to a `ServerSession` in two pieces, as a
//! real connection would deliver them, with a trivial host that accepts
//! everything (or, depending on a flag byte, refuses senders, refuses remote
//! recipients, fails commits or refuses credentials). STARTTLS and AUTH are
//! offered depending on the flags; a STARTTLS "handshake" drops the unread
//! bytes, as the real driver does, and succeeds at once.
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
//!   written when content starts, names the TLS session).
//!
//! Input layout: byte 0 = flags, byte 1 = split point (scaled), rest = the
//! client's bytes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pigeon::proto::command::{MailFrom, RcptTo};
use pigeon::proto::reply::{self, Reply};
use pigeon::proto::{Action, AuthOutcome, Host, ServerSession, SessionConfig};

struct FakeHost {
    next_id: u32,
    refuse_mail: bool,
    refuse_remote: bool,
}

impl Host for FakeHost {
    fn check_mail(&mut self, _mail: &MailFrom) -> Result<(), Reply> {
        if self.refuse_mail {
            Err(reply::INSUFFICIENT_STORAGE)
        } else {
            Ok(())
        }
    }
    fn check_rcpt(&mut self, _mail: &MailFrom, rcpt: &RcptTo) -> Result<(), Reply> {
        if self.refuse_remote && rcpt.rcpt.domain.as_str() != "local.test" {
            Err(reply::RELAY_DENIED)
        } else {
            Ok(())
        }
    }
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
    if data.len() < 2 {
        return;
    }
    let flags = data[0];
    let input = &data[2..];
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
    let mut host = FakeHost { next_id: 0, refuse_mail: flags & 0x01 != 0, refuse_remote: flags & 0x02 != 0 };
    let fail_commit = flags & 0x04 != 0;
    // Without a 0x01 flag (sender refusals) credentials are accepted.
    let auth_ok = flags & 0x01 == 0;
    s.greeting();

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
                Action::Commit => {
                    assert!(s.envelope().is_some(), "commit without an envelope");
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
