//! Whole-dialog tests of the server session, without sockets.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use super::reply::{self, Reply};
use super::session::{Action, AuthOutcome, Decision, Host, ServerSession, SessionConfig};
use super::stage::Verdict;

#[derive(Default)]
struct FakeHost {
    next_id: u32,
    relay_ok: bool,
    space_ok: bool,
    /// What the Content decision was given: (header, complete, recipients).
    checked: Vec<(Vec<u8>, bool, Vec<String>)>,
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

impl FakeHost {
    /// The verdict table of these tests: no room refuses MAIL, remote
    /// recipients need `relay_ok`, a header with X-Refuse: is refused.
    fn verdict(&mut self, d: Decision<'_>) -> Verdict {
        match d {
            Decision::Connect | Decision::Helo { .. } => Verdict::accept(),
            Decision::Mail { .. } if !self.space_ok => Verdict::Reject(reply::INSUFFICIENT_STORAGE),
            Decision::Mail { .. } => Verdict::accept(),
            Decision::Rcpt { rcpt, .. } => {
                let d = rcpt.rcpt.domain.as_str();
                if self.relay_ok || d == "local.test" || d == "mx.test" {
                    Verdict::accept()
                } else {
                    Verdict::Reject(reply::RELAY_DENIED)
                }
            }
            Decision::Content {
                rcpts,
                header,
                header_complete,
                ..
            } => {
                self.checked.push((
                    header.to_vec(),
                    header_complete,
                    rcpts.iter().map(|r| r.address.clone()).collect(),
                ));
                if memchr::memmem::find(header, b"X-Refuse:").is_some() {
                    Verdict::Reject(reply::DELIVERED_TO_LOOP)
                } else {
                    Verdict::accept()
                }
            }
        }
    }
}

/// Feeds `input`, answering every decision with the host's verdict, until
/// the session wants something else: returns the bytes consumed and that
/// action (never `Decide`).
fn feed(s: &mut ServerSession, input: &[u8], host: &mut FakeHost) -> (usize, Action) {
    let mut pos = 0;
    loop {
        let (n, a) = s.feed(&input[pos..], host);
        pos += n;
        match a {
            Action::Decide(stage) => {
                let d = s.decision().expect("a decision is pending");
                assert_eq!(d.stage(), stage);
                let v = host.verdict(d);
                s.decided(v);
            }
            a => return (pos, a),
        }
    }
}

fn cfg() -> SessionConfig {
    SessionConfig {
        hostname: "mx.test".into(),
        max_command_line: 512,
        max_message_size: 10_000,
        max_recipients: 5,
        max_errors: 10,
        max_received_headers: 3,
        reject_bare_newline: false,
        starttls: false,
        auth: false,
        plaintext_auth: false,
        max_auth_failures: 3,
        max_junk_commands: 100,
    }
}

struct Run {
    out: String,
    /// (queue id, envelope sender, recipients, content)
    msgs: Vec<(String, String, Vec<String>, Vec<u8>)>,
    closed: bool,
    /// What the host's check_message was given, per message.
    checked: Vec<(Vec<u8>, bool, Vec<String>)>,
}

fn run_with(cfg: SessionConfig, chunks: &[&[u8]]) -> Run {
    let mut s = ServerSession::new(Arc::new(cfg), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let mut host = FakeHost {
        next_id: 0,
        relay_ok: false,
        space_ok: true,
        ..Default::default()
    };
    let mut msgs = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut closed = false;
    'outer: for c in chunks {
        buf.extend_from_slice(c);
        loop {
            let (n, a) = feed(&mut s, &buf, &mut host);
            buf.drain(..n);
            match a {
                Action::NeedInput => break,
                Action::Commit => {
                    let env = s.envelope().unwrap();
                    let id = s.queue_id().unwrap().to_string();
                    let body = std::mem::take(s.body());
                    msgs.push((
                        id.clone(),
                        env.sender,
                        env.recipients.iter().map(|r| r.address.clone()).collect(),
                        body,
                    ));
                    s.commit_result(Ok(id));
                }
                Action::Abort => s.body().clear(),
                Action::Decide(_) => unreachable!("feed() answers every decision"),
                Action::StartTls => {
                    // Whatever followed STARTTLS in the buffer is dropped.
                    buf.clear();
                    s.tls_started("TLSv1.3 with cipher TEST".into());
                    break;
                }
                Action::Authenticate => {
                    let c = s.credentials().unwrap().clone();
                    let outcome = if c.login == "blocked" {
                        AuthOutcome::Blocked
                    } else if c.login == "alice"
                        && c.password == "pw"
                        && (c.authzid.is_empty() || c.authzid == "alice")
                    {
                        AuthOutcome::Success(c.login)
                    } else {
                        AuthOutcome::Failure
                    };
                    s.auth_result(outcome);
                }
                Action::Close => {
                    closed = true;
                    break 'outer;
                }
            }
        }
    }
    let out = String::from_utf8_lossy(s.output()).into_owned();
    Run {
        out,
        msgs,
        closed,
        checked: host.checked,
    }
}

fn run(input: &str) -> Run {
    run_with(cfg(), &[input.as_bytes()])
}

fn codes(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| l[..3].to_string())
        .collect()
}

/// Strips our Received: header (first header field, folded) from content.
fn content(body: &[u8]) -> &[u8] {
    let s = body;
    let mut i = 0;
    loop {
        let nl = s[i..].iter().position(|&b| b == b'\n').unwrap() + i + 1;
        i = nl;
        if s.get(i) != Some(&b'\t') {
            return &s[i..];
        }
    }
}

#[test]
fn basic_transaction() {
    let r = run("EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    assert_eq!(
        codes(&r.out),
        ["220", "250", "250", "250", "354", "250", "221"]
    );
    assert!(r.out.contains("250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250 DSN\r\n"));
    assert!(r.out.contains("250 2.0.0 Ok: queued as ID1\r\n"));
    assert_eq!(r.msgs.len(), 1);
    assert_eq!(content(&r.msgs[0].3), b"Subject: hi\r\n\r\nbody\r\n");
    let body = String::from_utf8_lossy(&r.msgs[0].3);
    assert!(body.starts_with("Received: from c.test ([192.0.2.1])\r\n\tby mx.test (pigeon) with ESMTP id ID1\r\n\tfor <u@local.test>;\r\n\tMon, 23 Nov 2026 18:45:00 +0000\r\n"), "{body}");
    assert!(r.closed);
}

#[test]
fn every_reply_has_enhanced_code_except_greeting_ehlo_354() {
    let r = run("HELO c\r\nNOOP\r\nRSET\r\nVRFY x\r\nHELP\r\nFOO\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n");
    for l in r.out.lines() {
        let code = &l[..3];
        if code == "220" || code == "354" || l.starts_with("250 mx.test") {
            continue;
        }
        let enh = l[4..].split(' ').next().unwrap();
        assert!(
            enh.len() == 5 && enh.as_bytes()[1] == b'.',
            "no enhanced code: {l}"
        );
        assert_eq!(enh.as_bytes()[0], code.as_bytes()[0], "{l}");
    }
}

#[test]
fn sequence_errors() {
    let r = run("MAIL FROM:<a@b.test>\r\nEHLO c\r\nRCPT TO:<u@local.test>\r\nDATA\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n");
    assert_eq!(
        codes(&r.out),
        ["220", "503", "250", "503", "503", "250", "503", "554"]
    );
    assert!(r.out.contains("503 5.5.1 Error: send HELO/EHLO first"));
    assert!(r.out.contains("503 5.5.1 Error: nested MAIL"));
    assert!(r.out.contains("554 5.5.1 Error: no valid recipients"));
}

#[test]
fn unknown_and_syntax() {
    let r = run("XYZZY\r\nEHLO\r\nEHLO c\r\nMAIL FROM:a@b.test\r\nMAIL FROM:<a@b.test> FOO=BAR\r\nVRFY bob\r\nEXPN list\r\n");
    assert_eq!(
        codes(&r.out),
        ["220", "500", "501", "250", "501", "555", "252", "502"]
    );
    assert!(r.out.contains("500 5.5.2"));
    assert!(r
        .out
        .contains("501 5.5.4 Syntax error: address must be enclosed in <>"));
}

#[test]
fn long_lines() {
    let long = format!("NOOP {}\r\n", "x".repeat(600));
    let huge = format!("NOOP {}\r\n", "x".repeat(100_000));
    let rcpt_ok = format!(
        "RCPT TO:<u@local.test> ORCPT=rfc822;{}@local.test\r\n",
        "a".repeat(60)
    );
    let input = format!("EHLO c\r\n{long}{huge}MAIL FROM:<a@b.test>\r\n{rcpt_ok}QUIT\r\n");
    let r = run(&input);
    assert_eq!(
        codes(&r.out),
        ["220", "250", "500", "500", "250", "250", "221"]
    );
    // A huge line fed in pieces is skipped without buffering it whole.
    let mut s = ServerSession::new(Arc::new(cfg()), IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut host = FakeHost {
        next_id: 0,
        relay_ok: false,
        space_ok: true,
        ..Default::default()
    };
    let chunk = vec![b'x'; 4096];
    for _ in 0..100 {
        let (n, a) = feed(&mut s, &chunk, &mut host);
        assert_eq!(a, Action::NeedInput);
        assert!(chunk.len() - n <= 2048);
        if n == chunk.len() {
            continue;
        }
    }
}

#[test]
fn pipelined_transaction_replies_in_order() {
    let r = run("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nRCPT TO:<x@remote.test>\r\nRCPT TO:<v@local.test>\r\nDATA\r\nhello\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<w@local.test>\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n");
    assert_eq!(
        codes(&r.out),
        [
            "220", "250", "250", "250", "554", "250", "354", "250", "250", "250", "354", "250",
            "221"
        ]
    );
    assert_eq!(r.msgs.len(), 2);
    assert_eq!(r.msgs[0].2, ["u@local.test", "v@local.test"]);
    assert_eq!(r.msgs[1].1, "");
}

#[test]
fn byte_at_a_time() {
    let input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n..x\r\n.\r\nBDAT 3\r\nabcBDAT 0 LAST\r\n";
    let one: Vec<&[u8]> = input.chunks(1).collect();
    let r = run_with(cfg(), &one);
    let whole = run_with(cfg(), &[input]);
    assert_eq!(r.out, whole.out);
    assert_eq!(r.msgs.len(), 1);
    assert_eq!(content(&r.msgs[0].3), b".x\r\n");
}

#[test]
fn size_limits() {
    let r = run("EHLO c\r\nMAIL FROM:<a@b.test> SIZE=10001\r\nMAIL FROM:<a@b.test> SIZE=9999\r\nRCPT TO:<u@local.test>\r\nDATA\r\n");
    assert!(r.out.contains("552 5.3.4"));
    let big = "x".repeat(200);
    let mut input =
        String::from("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n");
    for _ in 0..60 {
        input.push_str(&big);
        input.push_str("\r\n");
    }
    input.push_str(".\r\nNOOP\r\n");
    let r = run(&input);
    assert!(r.msgs.is_empty());
    assert_eq!(
        codes(&r.out),
        ["220", "250", "250", "250", "354", "552", "250"]
    );
    // BDAT over the limit: chunk read, 552 at LAST, nothing queued.
    let r = run_with(
        cfg(),
        &[
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nBDAT 20000 LAST\r\n",
            &vec![b'y'; 20000],
            b"NOOP\r\n",
        ],
    );
    assert!(r.msgs.is_empty());
    assert_eq!(codes(&r.out), ["220", "250", "250", "250", "552", "250"]);
}

#[test]
fn recipient_limit_keeps_accepted() {
    let mut input = String::from("EHLO c\r\nMAIL FROM:<a@b.test>\r\n");
    for i in 0..7 {
        input.push_str(&format!("RCPT TO:<u{i}@local.test>\r\n"));
    }
    input.push_str("DATA\r\nx\r\n.\r\n");
    let r = run(&input);
    assert_eq!(r.out.matches("452 4.5.3").count(), 2);
    assert_eq!(r.msgs[0].2.len(), 5);
}

#[test]
fn error_limit_closes() {
    let input = "FOO\r\n".repeat(12);
    let r = run(&input);
    assert!(r
        .out
        .ends_with("421 4.7.0 Error: too many errors, closing connection\r\n"));
    assert_eq!(r.out.matches("500 5.5.2").count(), 11);
    assert!(r.closed);
}

#[test]
fn hop_count_loop() {
    let mut input =
        String::from("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n");
    input.push_str(&"Received: from x by y\r\n".repeat(4));
    input.push_str("\r\nbody\r\n.\r\n");
    let r = run(&input);
    assert!(r.out.contains("554 5.4.6"));
    assert!(r.msgs.is_empty());
    // Exactly at the limit passes; Received: in the body does not count.
    let mut input =
        String::from("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n");
    input.push_str(&"Received: from x by y\r\n".repeat(3));
    input.push_str("\r\nReceived: x\r\nReceived: x\r\n.\r\n");
    assert_eq!(run(&input).msgs.len(), 1);
}

#[test]
fn smuggling_never_makes_a_second_message() {
    for variant in [
        "\n.\n",
        "\r.\r",
        "\n.\r\n",
        "\r\n.\r",
        "\r\n.\r\r\n",
        "\r\n.\n",
        "\r.\r\n",
    ] {
        for reject in [false, true] {
            let input = format!(
                "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nfirst{variant}MAIL FROM:<evil@b.test>\r\nRCPT TO:<v@local.test>\r\nDATA\r\nsmuggled\r\n.\r\nNOOP\r\n"
            );
            let mut c = cfg();
            c.reject_bare_newline = reject;
            let r = run_with(c, &[input.as_bytes()]);
            assert!(r.msgs.len() <= 1, "{variant:?}: {} messages", r.msgs.len());
            if reject {
                assert!(r.msgs.is_empty(), "{variant:?} accepted in reject mode");
                assert!(r.out.contains("550 5.6.11"));
            } else {
                let c = content(&r.msgs[0].3);
                assert!(!c
                    .windows(2)
                    .enumerate()
                    .any(|(i, w)| (w[1] == b'\n' && w[0] != b'\r')
                        || (w[0] == b'\r' && w[1] != b'\n')
                        || (i == 0 && w[0] == b'\n')));
                assert_eq!(r.msgs[0].2, ["u@local.test"]);
            }
            assert_eq!(codes(&r.out).last().unwrap(), "250", "{variant:?}");
        }
    }
}

#[test]
fn bdat_chunks_and_rset() {
    let r = run_with(
        cfg(),
        &[b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nBDAT 5\r\nhel\r\nBDAT 3\r\nlo\nRSET\r\n",
          b"MAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nBDAT 7\r\nline\r\n.BDAT 2 LAST\r\n\r\nQUIT\r\n"],
    );
    assert_eq!(
        codes(&r.out),
        ["220", "250", "250", "250", "250", "250", "250", "250", "250", "250", "250", "221"]
    );
    assert_eq!(r.msgs.len(), 1);
    assert_eq!(content(&r.msgs[0].3), b"line\r\n.\r\n");
    // DATA during BDAT, BDAT without MAIL, BDAT without recipients.
    let r = run_with(
        cfg(),
        &[b"EHLO c\r\nBDAT 3\r\nabcMAIL FROM:<a@b.test>\r\nBDAT 2 LAST\r\nxyRCPT TO:<u@local.test>\r\nBDAT 1\r\nzDATA\r\nRCPT TO:<v@local.test>\r\nBDAT 0 LAST\r\n"],
    );
    assert_eq!(
        codes(&r.out),
        ["220", "250", "503", "250", "554", "250", "250", "503", "503", "250"]
    );
    assert_eq!(r.msgs.len(), 1);
    assert_eq!(content(&r.msgs[0].3), b"z\r\n");
}

#[test]
fn utf8_and_dsn_params() {
    let r = run("EHLO c\r\nMAIL FROM:<δ@b.test>\r\nMAIL FROM:<δ@b.test> SMTPUTF8 BODY=8BITMIME RET=FULL ENVID=e+2B1\r\nRCPT TO:<ü@local.test> NOTIFY=SUCCESS,DELAY ORCPT=utf-8;ü@local.test\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(
        codes(&r.out),
        ["220", "250", "553", "250", "250", "354", "250"]
    );
    assert_eq!(r.msgs[0].1, "δ@b.test");
    let r2 = run("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<ü@local.test>\r\n");
    assert!(r2.out.contains("553 5.6.7"));
}

#[test]
fn helo_rejects_esmtp_params() {
    let r = run("HELO c\r\nMAIL FROM:<a@b.test> SIZE=10\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(
        codes(&r.out),
        ["220", "250", "555", "250", "250", "354", "250"]
    );
    assert!(String::from_utf8_lossy(&r.msgs[0].3).contains("with SMTP id"));
}

#[test]
fn postmaster_without_domain() {
    let r = run("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<Postmaster>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(r.msgs[0].2, ["postmaster@mx.test"]);
}

#[test]
fn relay_and_space_verdicts_are_the_hosts() {
    let r = run("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@remote.test>\r\n");
    assert!(r.out.contains("554 5.7.1 Error: relay access denied"));
    let mut s = ServerSession::new(Arc::new(cfg()), IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut host = FakeHost {
        next_id: 0,
        relay_ok: false,
        space_ok: false,
        ..Default::default()
    };
    feed(&mut s, b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n", &mut host);
    assert!(String::from_utf8_lossy(s.output()).contains("452 4.3.1"));
}

#[test]
fn commit_failure_is_reported_and_session_goes_on() {
    let mut s = ServerSession::new(Arc::new(cfg()), IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut host = FakeHost {
        next_id: 0,
        relay_ok: false,
        space_ok: true,
        ..Default::default()
    };
    let input =
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n";
    let (n, a) = feed(&mut s, input, &mut host);
    assert_eq!(a, Action::Commit);
    s.commit_result(Err(reply::LOCAL_ERROR));
    let (_, a) = feed(&mut s, &input[n..], &mut host);
    assert_eq!(a, Action::NeedInput);
    let out = String::from_utf8_lossy(s.output()).into_owned();
    assert!(out.contains("451 4.3.0"));
    assert!(!out.contains("queued as"));
    assert!(out.ends_with("250 2.0.0 Ok\r\n"));
}

#[test]
fn dot_lines_survive() {
    let r = run("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\n..\r\n...\r\n.. leading\r\n\r\n.\r\n");
    assert_eq!(content(&r.msgs[0].3), b".\r\n..\r\n. leading\r\n\r\n");
}

fn tls_cfg() -> SessionConfig {
    let mut c = cfg();
    c.starttls = true;
    c.auth = true;
    c
}

#[test]
fn starttls_discards_injected_commands_and_resets() {
    let r = run_with(
        tls_cfg(),
        &[
            b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<u@local.test>\r\n",
            b"MAIL FROM:<a@b.test>\r\nEHLO c\r\n",
        ],
    );
    // The injected MAIL/RCPT were never executed; after TLS the session
    // starts over, so MAIL before EHLO is out of sequence.
    assert_eq!(codes(&r.out), ["220", "250", "220", "503", "250"]);
    assert!(r.out.contains("250-STARTTLS"));
    let after = r
        .out
        .rsplit("220 2.0.0 Ready to start TLS\r\n")
        .next()
        .unwrap();
    assert!(!after.contains("STARTTLS"), "{after}");
    assert!(after.contains("250-AUTH PLAIN LOGIN"));
}

/// A man in the middle injects a transaction and a BDAT chunk before the
/// client's STARTTLS; the client's own transaction then runs inside TLS.
/// Nothing injected may reach the message committed inside TLS.
#[test]
fn starttls_in_an_open_transaction_is_refused_and_nothing_crosses_into_tls() {
    let injected: &[u8] =
        b"EHLO c\r\nMAIL FROM:<x@y.test>\r\nRCPT TO:<bob@local.test>\r\nBDAT 18\r\nX-Injected: evil\r\nSTARTTLS\r\n";
    let r = run_with(
        tls_cfg(),
        &[
            injected,
            b"RSET\r\nSTARTTLS\r\n",
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<alice@local.test>\r\nBDAT 8 LAST\r\nSubj: x\n",
        ],
    );
    assert!(
        r.out
            .contains("503 5.5.1 Error: STARTTLS not allowed during a mail transaction"),
        "{}",
        r.out
    );
    assert_eq!(
        codes(&r.out),
        ["220", "250", "250", "250", "250", "503", "250", "220", "250", "250", "250", "250"]
    );
    assert_eq!(r.msgs.len(), 1);
    let (_, sender, rcpts, body) = &r.msgs[0];
    assert_eq!(sender, "a@b.test");
    assert_eq!(rcpts, &["alice@local.test"]);
    let text = String::from_utf8_lossy(body);
    assert!(!text.contains("X-Injected"), "{text}");
    assert_eq!(text.matches("Received:").count(), 1, "{text}");
    assert!(text.contains("ESMTPS"), "{text}");
    // Refused after MAIL alone too, and after DATA's content has begun
    // the STARTTLS line is only message content.
    let r = run_with(
        tls_cfg(),
        &[b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nSTARTTLS\r\n"],
    );
    assert!(
        r.out
            .ends_with("503 5.5.1 Error: STARTTLS not allowed during a mail transaction\r\n"),
        "{}",
        r.out
    );
}

/// Whatever state the session is in, the start of TLS leaves nothing of
/// before it: no envelope, no content, no authenticated user.
#[test]
fn tls_started_forgets_everything() {
    let mut c = tls_cfg();
    c.plaintext_auth = true;
    let mut s = ServerSession::new(Arc::new(c), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let mut host = FakeHost {
        next_id: 0,
        relay_ok: true,
        space_ok: true,
        checked: Vec::new(),
    };
    let input = b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n";
    let (n, a) = feed(&mut s, input, &mut host);
    assert_eq!(a, Action::Authenticate);
    s.auth_result(AuthOutcome::Success("alice".into()));
    let rest = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nBDAT 100\r\nX-A: 1\r\n";
    let (_, a) = feed(
        &mut s,
        &input[n..]
            .iter()
            .chain(rest.iter())
            .copied()
            .collect::<Vec<u8>>(),
        &mut host,
    );
    assert_eq!(a, Action::NeedInput);
    assert!(!s.body().is_empty());
    assert!(s.envelope().is_some());
    assert_eq!(s.auth_user(), Some("alice"));
    s.tls_started("TLSv1.3 with cipher TEST".into());
    assert!(s.body().is_empty());
    assert!(s.envelope().is_none());
    assert!(s.auth_user().is_none());
    assert!(!s.has_open_message());
    // The session starts over: MAIL before EHLO is out of sequence.
    s.output().clear();
    let (_, a) = feed(&mut s, b"MAIL FROM:<a@b.test>\r\n", &mut host);
    assert_eq!(a, Action::NeedInput);
    assert!(
        String::from_utf8_lossy(s.output()).starts_with("503 5.5.1 Error: send HELO/EHLO first")
    );
}

#[test]
fn junk_commands_without_progress_close_the_session() {
    let mut c = cfg();
    c.max_junk_commands = 5;
    let r = run_with(
        c.clone(),
        &[b"EHLO c\r\nNOOP\r\nRSET\r\nVRFY x\r\nHELP\r\nNOOP\r\nNOOP\r\nNOOP\r\n"],
    );
    assert!(r.closed);
    assert!(
        r.out.ends_with(
            "421 4.7.0 Error: too many commands without progress, closing connection\r\n"
        ),
        "{}",
        r.out
    );
    assert_eq!(r.out.matches("421").count(), 1);
    // An accepted message is progress: the count starts over.
    let r = run_with(c, &[b"EHLO c\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nx\r\n.\r\nNOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\nQUIT\r\n"]);
    assert!(!r.out.contains("421"), "{}", r.out);
    assert_eq!(r.msgs.len(), 1);
}

#[test]
fn auth_busy_is_temporary_and_not_a_failure() {
    let mut s = ServerSession::new(Arc::new(tls_cfg()), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let mut host = FakeHost {
        next_id: 0,
        relay_ok: true,
        space_ok: true,
        checked: Vec::new(),
    };
    s.tls_started("TLSv1.3 with cipher TEST".into());
    for _ in 0..5 {
        let (_, a) = feed(&mut s, b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n", &mut host);
        assert_eq!(a, Action::Authenticate);
        s.auth_result(AuthOutcome::Busy);
        feed(&mut s, b"", &mut host);
    }
    let out = String::from_utf8_lossy(s.output()).into_owned();
    assert_eq!(out.matches("454 4.7.0").count(), 5, "{out}");
    assert!(!s.is_closed());
}

#[test]
fn starttls_twice_and_unavailable() {
    let r = run_with(
        tls_cfg(),
        &[b"EHLO c\r\nSTARTTLS\r\n", b"EHLO c\r\nSTARTTLS\r\n"],
    );
    assert!(
        r.out.ends_with("503 5.5.1 Error: TLS already active\r\n"),
        "{}",
        r.out
    );
    let r = run("EHLO c\r\nSTARTTLS\r\n");
    assert!(r.out.contains("502 5.5.1"));
    assert!(!r.out.contains("STARTTLS\r\n250"));
}

#[test]
fn auth_needs_tls_and_must_be_enabled() {
    let r = run("EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n");
    assert!(r
        .out
        .contains("503 5.5.1 Error: authentication not enabled"));
    let r = run_with(tls_cfg(), &[b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n"]);
    assert!(r.out.contains("538 5.7.11"), "{}", r.out);
    assert!(!r.out.contains("AUTH PLAIN LOGIN"));
    let mut c = tls_cfg();
    c.plaintext_auth = true;
    let r = run_with(c, &[b"EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\n"]);
    assert!(r.out.contains("235 2.7.0"), "{}", r.out);
}

fn tls_then(cmds: &str) -> Run {
    run_with(tls_cfg(), &[b"EHLO c\r\nSTARTTLS\r\n", cmds.as_bytes()])
}

#[test]
fn auth_plain_and_login() {
    // PLAIN with an initial response; then a message is ESMTPSA.
    let r = tls_then("EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nx\r\n.\r\n");
    assert!(r.out.contains("235 2.7.0 Authentication successful"));
    assert!(String::from_utf8_lossy(&r.msgs[0].3)
        .contains("(using TLSv1.3 with cipher TEST)\r\n\tby mx.test (pigeon) with ESMTPSA id"));
    // PLAIN without initial response, authzid = authcid.
    let r = tls_then("EHLO c\r\nAUTH PLAIN\r\nYWxpY2UAYWxpY2UAcHc=\r\n");
    assert!(r.out.contains("334 \r\n235 2.7.0"), "{}", r.out);
    // LOGIN in two steps, and with the user name as initial response.
    let r = tls_then("EHLO c\r\nAUTH LOGIN\r\nYWxpY2U=\r\ncHc=\r\n");
    assert!(
        r.out
            .contains("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0"),
        "{}",
        r.out
    );
    let r = tls_then("EHLO c\r\nAUTH login YWxpY2U=\r\ncHc=\r\n");
    assert!(r.out.contains("334 UGFzc3dvcmQ6\r\n235 2.7.0"), "{}", r.out);
    // Without TLS the message is ESMTP, after TLS without AUTH ESMTPS.
    let r =
        tls_then("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nx\r\n.\r\n");
    assert!(String::from_utf8_lossy(&r.msgs[0].3).contains("with ESMTPS id"));
}

#[test]
fn auth_errors() {
    let r = tls_then("EHLO c\r\nAUTH CRAM-MD5\r\nAUTH PLAIN !!!\r\nAUTH LOGIN\r\n*\r\nAUTH PLAIN\r\n*\r\nAUTH PLAIN AGFsaWNlAHB3 extra\r\n");
    assert_eq!(
        codes(&r.out)[4..],
        ["504", "501", "334", "501", "334", "501", "501"]
    );
    assert!(r.out.contains("504 5.5.4"));
    assert!(r.out.contains("501 5.5.2 Error: cannot decode response"));
    assert!(r.out.contains("501 5.7.0 Error: authentication cancelled"));
    // Twice, and inside a transaction.
    let r = tls_then("EHLO c\r\nAUTH PLAIN AGFsaWNlAHB3\r\nAUTH PLAIN AGFsaWNlAHB3\r\n");
    assert!(r
        .out
        .ends_with("503 5.5.1 Error: already authenticated\r\n"));
    let r = tls_then("EHLO c\r\nMAIL FROM:<a@b.test>\r\nAUTH PLAIN AGFsaWNlAHB3\r\n");
    assert!(r
        .out
        .ends_with("503 5.5.1 Error: authentication not allowed during a mail transaction\r\n"));
    // authzid different from the login fails.
    let r = tls_then("EHLO c\r\nAUTH PLAIN Ym9iAGFsaWNlAHB3\r\n");
    assert!(
        r.out
            .ends_with("535 5.7.8 Error: authentication failed\r\n"),
        "{}",
        r.out
    );
}

#[test]
fn three_failures_close_and_blocked_address_closes() {
    // "alice"/"bad": AGFsaWNlAGJhZA==
    let r = tls_then("EHLO c\r\nAUTH PLAIN AGFsaWNlAGJhZA==\r\nAUTH PLAIN AGFsaWNlAGJhZA==\r\nAUTH PLAIN AGFsaWNlAGJhZA==\r\nNOOP\r\n");
    assert_eq!(r.out.matches("535 5.7.8").count(), 3);
    assert!(r
        .out
        .ends_with("421 4.7.0 Error: too many failed authentications, closing connection\r\n"));
    assert!(r.closed);
    // "blocked"/"pw"
    let r = tls_then("EHLO c\r\nAUTH PLAIN AGJsb2NrZWQAcHc=\r\nNOOP\r\n");
    assert!(r.out.ends_with(
        "421 4.7.0 Error: too many failed authentications from your address, try again later\r\n"
    ));
    assert!(r.closed);
}

/// At the end of DATA the host gets the whole header section as it will
/// be stored (our Received: first, the body left out), bounded, and the
/// accepted recipients; its refusal is the reply and nothing is kept.
#[test]
fn end_of_data_check_gets_header_section_and_recipients() {
    let pad = "p".repeat(5000);
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nRCPT TO:<nobody@remote.test>\r\nRCPT TO:<v@local.test>\r\nDATA\r\nFrom: \"{pad}\" <a@b.test>, hidden@x.test\r\nSubject: s\r\n\r\nX-Refuse: in the body\r\n.\r\n"
    );
    let r = run(&input);
    assert_eq!(r.msgs.len(), 1, "{}", r.out);
    let (header, complete, rcpts) = &r.checked[0];
    assert!(complete);
    assert_eq!(rcpts, &["u@local.test", "v@local.test"]);
    let body = &r.msgs[0].3;
    let end = memchr::memmem::find(body, b"\r\n\r\n").unwrap() + 2;
    assert_eq!(&header[..], &body[..end]);
    assert!(header.starts_with(b"Received: from c "));
    assert!(memchr::memmem::find(header, b"hidden@x.test").is_some());

    // Refused by the host: its reply, and no message.
    let r = run("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nX-Refuse: yes\r\n\r\nb\r\n.\r\nQUIT\r\n");
    assert!(r.out.contains("554 5.4.6 Error: mail loop"), "{}", r.out);
    assert!(r.msgs.is_empty());

    // Over the bound: the start only, marked incomplete.
    let content = format!("X-Pad: {}\r\n", "q".repeat(200_000));
    let big = format!(
        "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nBDAT {} LAST\r\n{content}",
        content.len()
    );
    let mut c = cfg();
    c.max_message_size = 1_000_000;
    let r = run_with(c, &[big.as_bytes()]);
    let (header, complete, _) = &r.checked[0];
    assert!(!complete);
    assert_eq!(header.len(), crate::message::MAX_HEADER_SECTION);
}

/// A HELO/EHLO name with a TAB or another control character is refused;
/// a non-ASCII one reaches Received: raw only in an SMTPUTF8 message.
#[test]
fn helo_controls_refused_non_ascii_made_safe() {
    let r = run("EHLO a\tb\r\nHELO x\tb\r\nQUIT\r\n");
    assert_eq!(codes(&r.out), ["220", "501", "501", "221"], "{}", r.out);
    let r = run("EHLO h\u{e9}.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nx\r\n.\r\nMAIL FROM:<a@b.test> SMTPUTF8\r\nRCPT TO:<u@local.test>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(r.msgs.len(), 2, "{}", r.out);
    assert!(r.msgs[0].3.starts_with(b"Received: from h?.test "));
    assert!(r.msgs[1]
        .3
        .starts_with("Received: from h\u{e9}.test ".as_bytes()));
}

/// Mail to postmaster at an address literal is for our postmaster
/// (RFC 5321 §4.1.3), from any client; other literals are not.
#[test]
fn postmaster_at_address_literal_is_local() {
    let r = run("EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<PostMaster@[192.0.2.25]>\r\nRCPT TO:<postmaster@[IPv6:2001:db8::25]>\r\nRCPT TO:<bob@[192.0.2.25]>\r\nDATA\r\nx\r\n.\r\n");
    assert_eq!(
        codes(&r.out),
        ["220", "250", "250", "250", "250", "554", "354", "250"],
        "{}",
        r.out
    );
    assert_eq!(r.msgs[0].2, ["PostMaster@mx.test", "postmaster@mx.test"]);
}

/// A session driven with verdicts from `verdict`: the output, each
/// committed message's header edits, whether it closed, and the stages
/// decided, in order.
fn drive(
    input: &[u8],
    mut verdict: impl FnMut(Decision<'_>) -> Verdict,
) -> (String, Vec<Vec<u8>>, bool, Vec<super::stage::Stage>) {
    let mut s = ServerSession::new(Arc::new(cfg()), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    let mut host = FakeHost::default();
    let mut pos = 0;
    let mut edits = Vec::new();
    let mut stages = Vec::new();
    let mut closed = false;
    for _ in 0..1000 {
        let (n, a) = s.feed(&input[pos..], &mut host);
        pos += n;
        match a {
            Action::NeedInput => break,
            Action::Decide(stage) => {
                stages.push(stage);
                let v = verdict(s.decision().unwrap());
                s.decided(v);
            }
            Action::Commit => {
                edits.push(s.header_edits().unwrap().as_bytes().to_vec());
                let id = s.queue_id().unwrap().to_string();
                s.body().clear();
                s.commit_result(Ok(id));
            }
            Action::Abort => s.body().clear(),
            Action::Close => {
                closed = true;
                break;
            }
            a => panic!("unexpected {a:?}"),
        }
    }
    (
        String::from_utf8_lossy(s.output()).into_owned(),
        edits,
        closed,
        stages,
    )
}

/// RFC 5321 §3.1: a connection refused at the start gets the refusal
/// instead of the greeting, then 503 to everything until QUIT.
#[test]
fn refused_at_connect_only_quit_works() {
    let (out, edits, closed, stages) =
        drive(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nQUIT\r\n", |d| match d {
            Decision::Connect => Verdict::Reject(Reply::new(554, "5.7.1", "blocked")),
            _ => panic!("decided after a refused connect: {:?}", d.stage()),
        });
    assert_eq!(stages, [super::stage::Stage::Connect]);
    assert!(!out.contains("220"), "{out}");
    assert_eq!(
        out,
        "554 5.7.1 blocked\r\n503 5.5.1 Error: this connection was refused; send QUIT\r\n503 5.5.1 Error: this connection was refused; send QUIT\r\n221 2.0.0 Bye\r\n"
    );
    assert!(closed);
    assert!(edits.is_empty());
}

/// Pipelined commands are decided one after the other, in order, and a
/// drop ends the session at once: nothing after it is decided or answered.
#[test]
fn decisions_in_order_and_drop_closes() {
    let input = b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nRCPT TO:<v@local.test>\r\nRCPT TO:<w@local.test>\r\nDATA\r\n";
    let mut rcpts = 0;
    let (out, _, closed, stages) = drive(input, |d| match d {
        Decision::Rcpt { accepted, .. } => {
            assert_eq!(accepted.len(), rcpts);
            rcpts += 1;
            if rcpts == 2 {
                Verdict::Drop(reply::SHUTTING_DOWN)
            } else {
                Verdict::accept()
            }
        }
        _ => Verdict::accept(),
    });
    use super::stage::Stage::*;
    assert_eq!(stages, [Connect, Helo, Mail, Rcpt, Rcpt]);
    assert!(closed);
    assert!(
        out.ends_with("250 2.1.5 Ok\r\n421 4.3.2 Service shutting down, closing connection\r\n"),
        "{out}"
    );
}

/// Header edits accepted at MAIL, RCPT and the end of the content all
/// reach the committed message, in that order; a transaction that was
/// reset leaves none of its edits to the next one.
#[test]
fn header_edits_belong_to_their_transaction() {
    let input = b"EHLO c\r\nMAIL FROM:<first@b.test>\r\nRSET\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n";
    let (out, edits, _, _) = drive(input, |d| {
        let mut e = crate::message::HeaderEdits::new();
        match d {
            Decision::Mail { mail } => {
                e.add("X-Mail", &mail.sender.as_ref().unwrap().address());
            }
            Decision::Rcpt { rcpt, .. } => {
                e.add("X-Rcpt", &rcpt.rcpt.address());
            }
            Decision::Content { header, .. } => {
                assert!(memchr::memmem::find(header, b"X-Mail").is_none());
                e.add("X-Content", "checked");
            }
            _ => {}
        }
        Verdict::Accept(e)
    });
    assert!(out.contains("250 2.0.0 Ok: queued as ID1"), "{out}");
    assert_eq!(edits.len(), 1);
    assert_eq!(
        String::from_utf8_lossy(&edits[0]),
        "X-Mail: a@b.test\r\nX-Rcpt: u@local.test\r\nX-Content: checked\r\n"
    );
}

/// A refused EHLO leaves the session without HELO; a refused message
/// gets the verdict's reply and is aborted.
#[test]
fn refused_helo_and_refused_content() {
    let (out, edits, _, _) = drive(
        b"EHLO bad\r\nMAIL FROM:<a@b.test>\r\nEHLO good\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u@local.test>\r\nDATA\r\nx\r\n.\r\nNOOP\r\n",
        |d| match d {
            Decision::Helo { name: "bad", .. } => Verdict::Reject(Reply::new(550, "5.7.1", "no")),
            Decision::Content { .. } => Verdict::Reject(Reply::new(550, "5.7.1", "spam")),
            _ => Verdict::accept(),
        },
    );
    assert!(
        out.contains("550 5.7.1 no\r\n503 5.5.1 Error: send HELO/EHLO first\r\n"),
        "{out}"
    );
    assert!(out.contains("354"), "{out}");
    assert!(out.ends_with("550 5.7.1 spam\r\n250 2.0.0 Ok\r\n"), "{out}");
    assert!(edits.is_empty());
}
