//! Scripted dialogs for the client session, without sockets, and a
//! loopback run against our own server session.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use proptest::prelude::*;

use super::client::*;
use super::data::{BodyDecoder, Progress};
use super::envelope::{BodyType, Notify, Recipient, Ret};
use super::reply::{EnhancedCode, Reply};
use super::sasl::Credentials;
use super::session::{Action, Decision, Host, ServerSession, SessionConfig};
use super::stage::Verdict;

// --- helpers -----------------------------------------------------------------

fn cfg() -> ClientConfig {
    let mut c = ClientConfig::new("client.test");
    c.use_starttls = StartTls::Never;
    c
}

fn rcpt(a: &str) -> Recipient {
    Recipient {
        address: a.into(),
        orcpt: None,
        notify: Notify::default(),
    }
}

fn msg(rcpts: &[&str]) -> OutMessage {
    OutMessage {
        sender: "s@z.test".into(),
        recipients: rcpts.iter().map(|a| rcpt(a)).collect(),
        size: 42,
        ..OutMessage::default()
    }
}

fn reply(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> ServerReply {
    let enhanced = enhanced.map(|(c, s, d)| EnhancedCode::new(c, s, d));
    ServerReply {
        code,
        enhanced,
        text: text.into(),
    }
}

/// What the machine did until it waited for something.
#[derive(Debug)]
struct Step {
    /// One entry per `Send`.
    sends: Vec<String>,
    done: Vec<TransactionResult>,
    wait: ClientEvent,
}

fn pump(s: &mut ClientSession) -> Step {
    let mut sends = Vec::new();
    let mut done = Vec::new();
    for _ in 0..100 {
        match s.poll() {
            ClientEvent::Send(b) => {
                assert!(!b.is_empty());
                sends.push(String::from_utf8(b).unwrap());
            }
            ClientEvent::TransactionDone(r) => done.push(r),
            wait => return Step { sends, done, wait },
        }
    }
    panic!("poll does not settle");
}

fn feed(s: &mut ClientSession, bytes: &str) {
    assert_eq!(
        s.feed(bytes.as_bytes()),
        bytes.len(),
        "not all consumed: {bytes:?}"
    );
}

/// Expects exactly these sends, then this wait.
fn expect(s: &mut ClientSession, sends: &[&str], wait: ClientEvent) -> Vec<TransactionResult> {
    let st = pump(s);
    assert_eq!(st.sends, sends);
    assert_eq!(st.wait, wait);
    st.done
}

const EHLO_PIPE: &str = "250-mx.test Hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
                         250 ENHANCEDSTATUSCODES\r\n";
const EHLO_PLAIN: &str = "250-mx.test Hello\r\n250 8BITMIME\r\n";

/// A session that has done greeting and EHLO with this reply.
fn ready(cfg: ClientConfig, ehlo_reply: &str) -> ClientSession {
    let mut s = ClientSession::new(cfg);
    expect(&mut s, &[], ClientEvent::NeedInput);
    assert_eq!(s.timeout_class(), Timeout::Greeting);
    feed(&mut s, "220 mx.test ESMTP\r\n");
    expect(&mut s, &["EHLO client.test\r\n"], ClientEvent::NeedInput);
    assert_eq!(s.timeout_class(), Timeout::Command);
    feed(&mut s, ehlo_reply);
    expect(&mut s, &[], ClientEvent::Ready);
    s
}

fn quit(s: &mut ClientSession) {
    s.quit();
    expect(s, &["QUIT\r\n"], ClientEvent::NeedInput);
    feed(s, "221 2.0.0 Bye\r\n");
    expect(s, &[], ClientEvent::Closed(SessionOutcome::Quit));
}

fn closed(s: &mut ClientSession) -> SessionOutcome {
    match pump(s).wait {
        ClientEvent::Closed(o) => o,
        other => panic!("not closed: {other:?}"),
    }
}

// --- plain dialogs -------------------------------------------------------------

#[test]
fn pipelined_two_recipients_one_rejected() {
    let mut s = ready(cfg(), EHLO_PIPE);
    let e = s.extensions().clone();
    assert!(e.pipelining && e.eight_bit_mime && e.enhanced_status_codes);
    assert_eq!(e.size, Some(1000));
    assert!(!e.chunking && !e.dsn && !e.starttls);

    s.send_message(&msg(&["a@x.test", "b@y.test"])).unwrap();
    expect(
        &mut s,
        &["MAIL FROM:<s@z.test> SIZE=42\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"],
        ClientEvent::NeedInput,
    );
    assert_eq!(s.timeout_class(), Timeout::Mail);
    feed(
        &mut s,
        "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n550 5.1.1 <b@y.test>: no such user\r\n354 go ahead\r\n",
    );
    expect(&mut s, &[], ClientEvent::NeedBody);
    assert_eq!(s.timeout_class(), Timeout::DataBlock);
    s.body_chunk(b"Subject: hi\r\n\r\n.hidden\r\n", false);
    expect(
        &mut s,
        &["Subject: hi\r\n\r\n..hidden\r\n"],
        ClientEvent::NeedBody,
    );
    s.body_chunk(b"end", true);
    expect(&mut s, &["end\r\n.\r\n"], ClientEvent::NeedInput);
    assert_eq!(s.timeout_class(), Timeout::DataTermination);
    feed(&mut s, "250 2.0.0 Ok: queued as X1\r\n");
    let done = expect(&mut s, &[], ClientEvent::Ready);
    let ok = reply(250, Some((2, 0, 0)), "Ok: queued as X1");
    assert_eq!(
        done,
        vec![TransactionResult {
            mail: None,
            rcpts: vec![
                RcptOutcome::Accepted(ok.clone()),
                RcptOutcome::Rejected(reply(550, Some((5, 1, 1)), "<b@y.test>: no such user")),
            ],
            data: Some(ok),
        }]
    );
    assert!(done[0].rcpts[0].is_delivered());
    assert!(!done[0].rcpts[1].is_delivered());
    quit(&mut s);
}

#[test]
fn without_pipelining_one_command_at_a_time() {
    let mut s = ready(cfg(), EHLO_PLAIN);
    s.send_message(&msg(&["a@x.test", "b@y.test"])).unwrap();
    expect(
        &mut s,
        &["MAIL FROM:<s@z.test>\r\n"],
        ClientEvent::NeedInput,
    );
    feed(&mut s, "250 ok\r\n");
    expect(&mut s, &["RCPT TO:<a@x.test>\r\n"], ClientEvent::NeedInput);
    assert_eq!(s.timeout_class(), Timeout::Rcpt);
    feed(&mut s, "451 4.3.0 try later\r\n");
    expect(&mut s, &["RCPT TO:<b@y.test>\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "250 ok\r\n");
    expect(&mut s, &["DATA\r\n"], ClientEvent::NeedInput);
    assert_eq!(s.timeout_class(), Timeout::DataInit);
    feed(&mut s, "354 go\r\n");
    expect(&mut s, &[], ClientEvent::NeedBody);
    s.body_chunk(b".\r\n", true);
    expect(&mut s, &["..\r\n.\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "250 queued\r\n");
    let done = expect(&mut s, &[], ClientEvent::Ready);
    assert_eq!(
        done[0].rcpts,
        vec![
            RcptOutcome::Rejected(reply(451, Some((4, 3, 0)), "try later")),
            RcptOutcome::Accepted(reply(250, None, "queued")),
        ]
    );
    quit(&mut s);
}

#[test]
fn helo_fallback() {
    let mut s = ClientSession::new(cfg());
    feed(&mut s, "220 old.test SMTP\r\n");
    expect(&mut s, &["EHLO client.test\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "502 5.5.1 command not implemented\r\n");
    expect(&mut s, &["HELO client.test\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "250 old.test\r\n");
    expect(&mut s, &[], ClientEvent::Ready);
    assert_eq!(s.extensions(), &Extensions::default());
    // No extensions: no parameters, no pipelining.
    s.send_message(&msg(&["a@x.test"])).unwrap();
    expect(
        &mut s,
        &["MAIL FROM:<s@z.test>\r\n"],
        ClientEvent::NeedInput,
    );

    // HELO refused too: QUIT and report the HELO reply.
    let mut s = ClientSession::new(cfg());
    feed(&mut s, "220 old.test SMTP\r\n500 what\r\n");
    expect(
        &mut s,
        &["EHLO client.test\r\nHELO client.test\r\n"],
        ClientEvent::NeedInput,
    );
    feed(&mut s, "550 5.7.1 go away\r\n");
    expect(&mut s, &["QUIT\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "221 bye\r\n");
    assert_eq!(
        closed(&mut s),
        SessionOutcome::Refused {
            stage: Stage::Hello,
            reply: reply(550, Some((5, 7, 1)), "go away")
        }
    );
}

#[test]
fn greeting_refused_and_temporary_ehlo_failure() {
    let mut s = ClientSession::new(cfg());
    feed(&mut s, "554 5.7.1 no service for you\r\n");
    expect(&mut s, &["QUIT\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "221 bye\r\n");
    assert_eq!(
        closed(&mut s),
        SessionOutcome::Refused {
            stage: Stage::Greeting,
            reply: reply(554, Some((5, 7, 1)), "no service for you")
        }
    );
    // Closed is sticky and eats nothing more.
    assert_eq!(s.feed(b"250 late\r\n"), 0);
    assert!(matches!(pump(&mut s).wait, ClientEvent::Closed(_)));

    // 4xx to EHLO: no HELO fallback.
    let mut s = ClientSession::new(cfg());
    feed(&mut s, "220 mx\r\n");
    pump(&mut s);
    feed(&mut s, "454 4.3.0 busy\r\n");
    expect(&mut s, &["QUIT\r\n"], ClientEvent::NeedInput);
    // The server closes without answering QUIT.
    s.connection_lost();
    assert!(matches!(
        closed(&mut s),
        SessionOutcome::Refused {
            stage: Stage::Hello,
            ..
        }
    ));
}

// --- refusals before sending -------------------------------------------------

#[test]
fn refusals_send_nothing() {
    let mut s = ready(cfg(), EHLO_PIPE);
    let mut m = msg(&["a@x.test"]);
    m.size = 1001;
    let r = s.send_message(&m).unwrap_err();
    assert!(r.permanent);
    assert_eq!(r.enhanced, EnhancedCode::new(5, 3, 4));
    m.size = 1000;
    m.body_type = BodyType::BinaryMime;
    assert_eq!(
        s.send_message(&m).unwrap_err().enhanced,
        EnhancedCode::new(5, 6, 3)
    );

    let mut m = msg(&["jos\u{e9}@x.test"]);
    assert_eq!(
        s.send_message(&m).unwrap_err().enhanced,
        EnhancedCode::new(5, 6, 7)
    );
    m.recipients = vec![rcpt("a@x.test")];
    m.smtputf8 = true;
    assert_eq!(
        s.send_message(&m).unwrap_err().enhanced,
        EnhancedCode::new(5, 6, 7)
    );

    let mut m = msg(&["a@x.test\r\nRSET"]);
    assert_eq!(
        s.send_message(&m).unwrap_err().enhanced,
        EnhancedCode::new(5, 1, 3)
    );
    m.recipients.clear();
    assert!(s.send_message(&m).is_err());
    // Nothing went out; still ready.
    expect(&mut s, &[], ClientEvent::Ready);

    // 8BITMIME missing.
    let mut s = ready(cfg(), "250-mx\r\n250 PIPELINING\r\n");
    let mut m = msg(&["a@x.test"]);
    m.body_type = BodyType::EightBitMime;
    let r = s.send_message(&m).unwrap_err();
    assert_eq!(
        (r.permanent, r.enhanced),
        (true, EnhancedCode::new(5, 6, 3))
    );
    // Not ready: temporary.
    s.send_message(&msg(&["a@x.test"])).unwrap();
    let r = s.send_message(&msg(&["a@x.test"])).unwrap_err();
    assert!(!r.permanent);
}

#[test]
fn body_and_utf8_parameters() {
    let mut s = ready(
        cfg(),
        "250-mx\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE\r\n",
    );
    assert_eq!(s.extensions().size, Some(0));
    let mut m = msg(&["jos\u{e9}@x.test"]);
    m.size = 1 << 40; // SIZE without a limit
    m.body_type = BodyType::EightBitMime;
    s.send_message(&m).unwrap();
    expect(
        &mut s,
        &[
            "MAIL FROM:<s@z.test> SIZE=1099511627776 BODY=8BITMIME SMTPUTF8\r\n\
           RCPT TO:<jos\u{e9}@x.test>\r\nDATA\r\n",
        ],
        ClientEvent::NeedInput,
    );
}

// --- DSN -------------------------------------------------------------------------

fn dsn_msg() -> OutMessage {
    let mut m = msg(&["a@x.test", "b@x.test"]);
    m.ret = Some(Ret::Hdrs);
    m.envid = Some("id+x=y z".into());
    m.recipients[0].notify = Notify(Notify::SUCCESS | Notify::FAILURE);
    m.recipients[0].orcpt = Some("rfc822;a+b@x.test".into());
    m.recipients[1].notify = Notify(Notify::NEVER);
    m.recipients[1].orcpt = Some("rfc822;j\u{e9}@x.test".into());
    m
}

#[test]
fn dsn_parameters_only_when_offered() {
    let mut s = ready(cfg(), "250-mx\r\n250 PIPELINING\r\n");
    s.send_message(&dsn_msg()).unwrap();
    expect(
        &mut s,
        &["MAIL FROM:<s@z.test>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"],
        ClientEvent::NeedInput,
    );

    let mut s = ready(cfg(), "250-mx\r\n250-PIPELINING\r\n250 DSN\r\n");
    s.send_message(&dsn_msg()).unwrap();
    expect(
        &mut s,
        &["MAIL FROM:<s@z.test> RET=HDRS ENVID=id+2Bx+3Dy+20z\r\n\
           RCPT TO:<a@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+2Bb@x.test\r\n\
           RCPT TO:<b@x.test> NOTIFY=NEVER ORCPT=rfc822;j+C3+A9@x.test\r\n\
           DATA\r\n"],
        ClientEvent::NeedInput,
    );

    // In an SMTPUTF8 transaction a UTF-8 ORCPT stays UTF-8 (RFC 6533).
    let mut s = ready(cfg(), "250-mx\r\n250-DSN\r\n250 SMTPUTF8\r\n");
    let mut m = dsn_msg();
    m.smtputf8 = true;
    m.recipients.truncate(1);
    m.recipients[0].orcpt = Some("rfc822;j\u{e9}+1@x.test".into());
    m.envid = None;
    s.send_message(&m).unwrap();
    expect(
        &mut s,
        &["MAIL FROM:<s@z.test> SMTPUTF8 RET=HDRS\r\n"],
        ClientEvent::NeedInput,
    );
    feed(&mut s, "250 ok\r\n");
    expect(
        &mut s,
        &["RCPT TO:<a@x.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;j\u{e9}+2B1@x.test\r\n"],
        ClientEvent::NeedInput,
    );
}

#[test]
fn xtext() {
    assert_eq!(encode_xtext("a+b=c d\u{7f}", false), "a+2Bb+3Dc+20d+7F");
    assert_eq!(encode_xtext("\u{e9}", false), "+C3+A9");
    assert_eq!(encode_xtext("\u{e9}+", true), "\u{e9}+2B");
    // What we encode, our server's parser decodes back.
    for s in ["a+b=c", "x y\u{e9}", "plain@x.test"] {
        assert_eq!(
            super::address::decode_xtext(&encode_xtext(s, false)).unwrap(),
            s
        );
    }
}

// --- STARTTLS and AUTH -----------------------------------------------------------

fn tls_cfg(mode: StartTls) -> ClientConfig {
    let mut c = cfg();
    c.use_starttls = mode;
    c
}

#[test]
fn starttls_opportunistic() {
    let mut s = ClientSession::new(tls_cfg(StartTls::Opportunistic));
    feed(&mut s, "220 mx\r\n");
    pump(&mut s);
    feed(&mut s, "250-mx\r\n250-STARTTLS\r\n250 SIZE 10\r\n");
    expect(&mut s, &["STARTTLS\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "220 2.0.0 Ready to start TLS\r\n");
    expect(&mut s, &[], ClientEvent::StartTls);
    // Stays so until the driver is done.
    expect(&mut s, &[], ClientEvent::StartTls);
    assert!(!s.tls_active());
    s.tls_established();
    assert!(s.tls_active());
    expect(&mut s, &["EHLO client.test\r\n"], ClientEvent::NeedInput);
    assert_eq!(s.extensions(), &Extensions::default());
    feed(&mut s, "250-mx\r\n250-PIPELINING\r\n250 SIZE 5000\r\n");
    expect(&mut s, &[], ClientEvent::Ready);
    let e = s.extensions();
    assert!(e.pipelining && !e.starttls);
    assert_eq!(e.size, Some(5000));

    // Not offered: go on in clear text.
    let mut s = ready(tls_cfg(StartTls::Opportunistic), EHLO_PLAIN);
    assert!(!s.tls_active());
    quit(&mut s);

    // Refused: go on in clear text, without trying again.
    let mut s = ClientSession::new(tls_cfg(StartTls::Opportunistic));
    feed(&mut s, "220 mx\r\n250-mx\r\n250 STARTTLS\r\n");
    expect(
        &mut s,
        &["EHLO client.test\r\nSTARTTLS\r\n"],
        ClientEvent::NeedInput,
    );
    feed(&mut s, "454 4.7.0 TLS not available\r\n");
    expect(&mut s, &[], ClientEvent::Ready);
}

#[test]
fn starttls_required() {
    // Not offered.
    let mut s = ClientSession::new(tls_cfg(StartTls::Required));
    feed(&mut s, "220 mx\r\n");
    pump(&mut s);
    feed(&mut s, EHLO_PIPE);
    expect(&mut s, &["QUIT\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "221 bye\r\n");
    assert_eq!(closed(&mut s), SessionOutcome::TlsNotOffered);

    // Refused.
    let mut s = ClientSession::new(tls_cfg(StartTls::Required));
    feed(&mut s, "220 mx\r\n250-mx\r\n250 STARTTLS\r\n");
    expect(
        &mut s,
        &["EHLO client.test\r\nSTARTTLS\r\n"],
        ClientEvent::NeedInput,
    );
    feed(&mut s, "454 4.7.0 no\r\n");
    expect(&mut s, &["QUIT\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "221 bye\r\n");
    assert!(matches!(
        closed(&mut s),
        SessionOutcome::Refused {
            stage: Stage::StartTls,
            ..
        }
    ));

    // Bytes after the 220 (response injection): the session ends.
    let mut s = ClientSession::new(tls_cfg(StartTls::Required));
    feed(&mut s, "220 mx\r\n250-mx\r\n250 STARTTLS\r\n");
    pump(&mut s);
    let evil = b"220 go ahead\r\n250 injected\r\n";
    assert_eq!(s.feed(evil), 14);
    assert!(matches!(
        closed(&mut s),
        SessionOutcome::ProtocolError {
            stage: Stage::StartTls,
            ..
        }
    ));
}

fn creds() -> Credentials {
    Credentials {
        authzid: String::new(),
        login: "alice".into(),
        password: "pw".into(),
    }
}

#[test]
fn auth_plain_after_tls() {
    let mut c = tls_cfg(StartTls::Required);
    c.auth = Some(creds());
    assert!(!format!("{c:?}").contains("pw\""));
    let mut s = ClientSession::new(c);
    feed(
        &mut s,
        "220 mx\r\n250-mx\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n",
    );
    // No AUTH before TLS even though offered.
    expect(
        &mut s,
        &["EHLO client.test\r\nSTARTTLS\r\n"],
        ClientEvent::NeedInput,
    );
    feed(&mut s, "220 go\r\n");
    expect(&mut s, &[], ClientEvent::StartTls);
    s.tls_established();
    expect(&mut s, &["EHLO client.test\r\n"], ClientEvent::NeedInput);
    feed(
        &mut s,
        "250-mx\r\n250-AUTH LOGIN PLAIN\r\n250 PIPELINING\r\n",
    );
    assert_eq!(
        s.poll(),
        ClientEvent::Send(b"AUTH PLAIN AGFsaWNlAHB3\r\n".to_vec())
    );
    assert!(s.sending_secret());
    assert_eq!(s.poll(), ClientEvent::NeedInput);
    assert!(!s.sending_secret());
    feed(&mut s, "235 2.7.0 Authentication successful\r\n");
    expect(&mut s, &[], ClientEvent::Ready);
    assert!(s.is_authenticated());
}

#[test]
fn auth_login_and_failures() {
    let mut c = cfg();
    c.implicit_tls = true;
    c.auth = Some(creds());
    let mut s = ClientSession::new(c.clone());
    feed(&mut s, "220 mx\r\n250-mx\r\n250 AUTH=LOGIN\r\n");
    expect(
        &mut s,
        &["EHLO client.test\r\nAUTH LOGIN\r\n"],
        ClientEvent::NeedInput,
    );
    feed(&mut s, "334 VXNlcm5hbWU6\r\n");
    expect(&mut s, &["YWxpY2U=\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "334 UGFzc3dvcmQ6\r\n");
    expect(&mut s, &["cHc=\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "235 ok\r\n");
    expect(&mut s, &[], ClientEvent::Ready);

    // Wrong password.
    let mut s = ClientSession::new(c.clone());
    feed(&mut s, "220 mx\r\n250-mx\r\n250 AUTH PLAIN\r\n");
    pump(&mut s);
    feed(&mut s, "535 5.7.8 bad credentials\r\n");
    expect(&mut s, &["QUIT\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "221 bye\r\n");
    assert_eq!(
        closed(&mut s),
        SessionOutcome::Refused {
            stage: Stage::Auth,
            reply: reply(535, Some((5, 7, 8)), "bad credentials")
        }
    );

    // No usable mechanism.
    let mut s = ClientSession::new(c.clone());
    feed(&mut s, "220 mx\r\n250-mx\r\n250 AUTH CRAM-MD5\r\n");
    expect(
        &mut s,
        &["EHLO client.test\r\nQUIT\r\n"],
        ClientEvent::NeedInput,
    );
    feed(&mut s, "221 bye\r\n");
    assert!(matches!(closed(&mut s), SessionOutcome::AuthUnavailable(_)));

    // Clear text: credentials are not sent.
    c.implicit_tls = false;
    let mut s = ClientSession::new(c.clone());
    feed(&mut s, "220 mx\r\n250-mx\r\n250 AUTH PLAIN\r\n");
    expect(
        &mut s,
        &["EHLO client.test\r\nQUIT\r\n"],
        ClientEvent::NeedInput,
    );
    // ... unless allowed.
    c.allow_plaintext_auth = true;
    let mut s = ClientSession::new(c);
    feed(&mut s, "220 mx\r\n250-mx\r\n250 AUTH PLAIN\r\n");
    expect(
        &mut s,
        &["EHLO client.test\r\nAUTH PLAIN AGFsaWNlAHB3\r\n"],
        ClientEvent::NeedInput,
    );
}

// --- CHUNKING ----------------------------------------------------------------------

#[test]
fn chunking_pipelined_uses_bdat() {
    let mut s = ready(
        cfg(),
        "250-mx\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 8BITMIME\r\n",
    );
    s.send_message(&msg(&["a@x.test"])).unwrap();
    // MAIL and RCPT wait for the first chunk to go out with it.
    expect(&mut s, &[], ClientEvent::NeedBody);
    s.body_chunk(b"line1\r\n.dot\n", false);
    expect(
        &mut s,
        &["MAIL FROM:<s@z.test>\r\nRCPT TO:<a@x.test>\r\nBDAT 13\r\nline1\r\n.dot\r\n"],
        ClientEvent::NeedBody,
    );
    s.body_chunk(b"x\r", false);
    expect(&mut s, &["BDAT 1\r\nx"], ClientEvent::NeedBody);
    s.body_chunk(b"", true);
    expect(&mut s, &["BDAT 2 LAST\r\n\r\n"], ClientEvent::NeedInput);
    assert_eq!(s.timeout_class(), Timeout::Mail);
    feed(
        &mut s,
        "250 ok\r\n250 ok\r\n250 2.0.0 12 octets\r\n250 2.0.0 1 octet\r\n",
    );
    assert_eq!(s.timeout_class(), Timeout::DataTermination);
    feed(&mut s, "250 2.0.0 queued\r\n");
    let done = expect(&mut s, &[], ClientEvent::Ready);
    assert_eq!(done[0].data, Some(reply(250, Some((2, 0, 0)), "queued")));
    assert!(done[0].rcpts[0].is_delivered());
}

#[test]
fn chunking_without_pipelining_waits() {
    let mut s = ready(
        cfg(),
        "250-mx\r\n250-CHUNKING\r\n250-BINARYMIME\r\n250 8BITMIME\r\n",
    );
    let mut m = msg(&["a@x.test"]);
    m.body_type = BodyType::BinaryMime;
    s.send_message(&m).unwrap();
    expect(
        &mut s,
        &["MAIL FROM:<s@z.test> BODY=BINARYMIME\r\n"],
        ClientEvent::NeedInput,
    );
    feed(&mut s, "250 ok\r\n");
    expect(&mut s, &["RCPT TO:<a@x.test>\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "250 ok\r\n");
    expect(&mut s, &[], ClientEvent::NeedBody);
    // Binary: sent as is.
    s.body_chunk(b"\x00\r.\n", false);
    expect(&mut s, &["BDAT 4\r\n\x00\r.\n"], ClientEvent::NeedInput);
    assert_eq!(s.timeout_class(), Timeout::DataBlock);
    feed(&mut s, "250 ok\r\n");
    expect(&mut s, &[], ClientEvent::NeedBody);
    s.body_chunk(b"end", true);
    expect(&mut s, &["BDAT 3 LAST\r\nend"], ClientEvent::NeedInput);
    feed(&mut s, "552 5.3.4 too big\r\n");
    // The transaction failed after content: RSET.
    let done = expect(&mut s, &["RSET\r\n"], ClientEvent::NeedInput);
    assert_eq!(
        done[0].rcpts,
        vec![RcptOutcome::Accepted(reply(
            552,
            Some((5, 3, 4)),
            "too big"
        ))]
    );
    feed(&mut s, "250 ok\r\n");
    expect(&mut s, &[], ClientEvent::Ready);
}

#[test]
fn chunking_failure_stops_content() {
    let mut s = ready(cfg(), "250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n");
    s.send_message(&msg(&["a@x.test"])).unwrap();
    s.body_chunk(b"one\r\n", false);
    pump(&mut s);
    feed(&mut s, "250 ok\r\n550 5.1.1 unknown\r\n");
    // All recipients refused: no more chunks; wait for the outstanding reply.
    expect(&mut s, &[], ClientEvent::NeedInput);
    s.body_chunk(b"two\r\n", true); // ignored
    expect(&mut s, &[], ClientEvent::NeedInput);
    feed(&mut s, "554 5.5.1 no valid recipients\r\n");
    let done = expect(&mut s, &["RSET\r\n"], ClientEvent::NeedInput);
    assert_eq!(
        done[0].rcpts,
        vec![RcptOutcome::Rejected(reply(
            550,
            Some((5, 1, 1)),
            "unknown"
        ))]
    );
}

// --- failures inside transactions ----------------------------------------------------

#[test]
fn all_recipients_refused() {
    // Pipelined, DATA refused: RSET.
    let mut s = ready(cfg(), EHLO_PIPE);
    s.send_message(&msg(&["a@x.test"])).unwrap();
    pump(&mut s);
    feed(
        &mut s,
        "250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n",
    );
    let done = expect(&mut s, &["RSET\r\n"], ClientEvent::NeedInput);
    assert_eq!(
        done[0].rcpts,
        vec![RcptOutcome::Rejected(reply(550, Some((5, 1, 1)), "no"))]
    );
    assert_eq!(done[0].data.as_ref().map(|r| r.code), Some(554));
    assert_eq!(s.timeout_class(), Timeout::Command);
    feed(&mut s, "250 ok\r\n");
    expect(&mut s, &[], ClientEvent::Ready);

    // Pipelined, DATA accepted anyway: an empty message closes it (RFC
    // 2920 §3.1), no content, no RSET.
    s.send_message(&msg(&["a@x.test"])).unwrap();
    pump(&mut s);
    feed(&mut s, "250 ok\r\n550 5.1.1 no\r\n354 go\r\n");
    expect(&mut s, &[".\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "554 5.5.1 no valid recipients\r\n");
    let done = expect(&mut s, &[], ClientEvent::Ready);
    assert!(!done[0].rcpts[0].is_delivered());

    // Not pipelined: no DATA at all, then RSET.
    let mut s = ready(cfg(), EHLO_PLAIN);
    s.send_message(&msg(&["a@x.test"])).unwrap();
    pump(&mut s);
    feed(&mut s, "250 ok\r\n");
    pump(&mut s);
    feed(&mut s, "550 no\r\n");
    expect(&mut s, &["RSET\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "250 ok\r\n");
    expect(&mut s, &[], ClientEvent::Ready);
}

#[test]
fn mail_refused() {
    // Not pipelined: nothing more, no RSET.
    let mut s = ready(cfg(), EHLO_PLAIN);
    s.send_message(&msg(&["a@x.test", "b@x.test"])).unwrap();
    pump(&mut s);
    feed(&mut s, "452 4.3.1 insufficient storage\r\n");
    let done = expect(&mut s, &[], ClientEvent::Ready);
    let r = reply(452, Some((4, 3, 1)), "insufficient storage");
    assert_eq!(done[0].mail, Some(r.clone()));
    assert_eq!(done[0].rcpts, vec![RcptOutcome::Rejected(r.clone()); 2]);
    assert_eq!(done[0].data, None);

    // Pipelined: the RCPTs' 503s do not hide the MAIL reply.
    let mut s = ready(cfg(), EHLO_PIPE);
    s.send_message(&msg(&["a@x.test", "b@x.test"])).unwrap();
    pump(&mut s);
    feed(
        &mut s,
        "452 4.3.1 insufficient storage\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n\
         503 5.5.1 need MAIL\r\n",
    );
    let done = expect(&mut s, &[], ClientEvent::Ready);
    assert_eq!(done[0].rcpts, vec![RcptOutcome::Rejected(r); 2]);
}

#[test]
fn data_refused_then_rset_and_next_message() {
    let mut s = ready(cfg(), EHLO_PIPE);
    s.send_message(&msg(&["a@x.test"])).unwrap();
    pump(&mut s);
    feed(&mut s, "250 ok\r\n250 ok\r\n451 4.3.0 later\r\n");
    let done = expect(&mut s, &["RSET\r\n"], ClientEvent::NeedInput);
    assert_eq!(
        done[0].rcpts,
        vec![RcptOutcome::Accepted(reply(451, Some((4, 3, 0)), "later"))]
    );
    feed(&mut s, "250 ok\r\n");
    expect(&mut s, &[], ClientEvent::Ready);
    // RSET failing ends the session.
    s.send_message(&msg(&["a@x.test"])).unwrap();
    pump(&mut s);
    feed(&mut s, "250 ok\r\n250 ok\r\n451 4.3.0 later\r\n");
    pump(&mut s);
    feed(&mut s, "500 what\r\n");
    expect(&mut s, &["QUIT\r\n"], ClientEvent::NeedInput);
}

#[test]
fn two_messages_one_connection() {
    let mut s = ready(cfg(), EHLO_PIPE);
    for (i, a) in ["a@x.test", "b@x.test"].iter().enumerate() {
        s.send_message(&msg(&[a])).unwrap();
        expect(
            &mut s,
            &[format!("MAIL FROM:<s@z.test> SIZE=42\r\nRCPT TO:<{a}>\r\nDATA\r\n").as_str()],
            ClientEvent::NeedInput,
        );
        feed(&mut s, "250 ok\r\n250 ok\r\n354 go\r\n");
        expect(&mut s, &[], ClientEvent::NeedBody);
        s.body_chunk(b"hello\r\n", true);
        expect(&mut s, &["hello\r\n.\r\n"], ClientEvent::NeedInput);
        feed(&mut s, &format!("250 queued as Q{i}\r\n"));
        let done = expect(&mut s, &[], ClientEvent::Ready);
        assert_eq!(
            done[0].rcpts,
            vec![RcptOutcome::Accepted(reply(
                250,
                None,
                &format!("queued as Q{i}")
            ))]
        );
    }
    quit(&mut s);
}

#[test]
fn quit_requested_mid_transaction() {
    let mut s = ready(cfg(), EHLO_PIPE);
    s.send_message(&msg(&["a@x.test"])).unwrap();
    pump(&mut s);
    s.quit();
    feed(&mut s, "250 ok\r\n250 ok\r\n354 go\r\n");
    s.body_chunk(b"x\r\n", true);
    pump(&mut s);
    feed(&mut s, "250 queued\r\n");
    let done = expect(&mut s, &["QUIT\r\n"], ClientEvent::NeedInput);
    assert_eq!(done.len(), 1);
    feed(&mut s, "221 bye\r\n");
    assert_eq!(closed(&mut s), SessionOutcome::Quit);
}

#[test]
fn service_closing_421() {
    // 421 to a pipelined RCPT: no more replies will come.
    let mut s = ready(cfg(), EHLO_PIPE);
    s.send_message(&msg(&["a@x.test", "b@x.test"])).unwrap();
    pump(&mut s);
    feed(&mut s, "250 ok\r\n250 ok\r\n421 4.3.2 shutting down\r\n");
    let st = pump(&mut s);
    assert!(st.sends.is_empty(), "no QUIT after 421");
    let r421 = reply(421, Some((4, 3, 2)), "shutting down");
    assert_eq!(
        st.done[0].rcpts,
        vec![
            RcptOutcome::Accepted(r421.clone()),
            RcptOutcome::Rejected(r421.clone())
        ]
    );
    assert_eq!(
        st.wait,
        ClientEvent::Closed(SessionOutcome::Refused {
            stage: Stage::Rcpt,
            reply: r421.clone()
        })
    );

    // 421 while idle.
    let mut s = ready(cfg(), EHLO_PIPE);
    feed(&mut s, "421 4.4.2 idle timeout\r\n");
    assert!(matches!(
        closed(&mut s),
        SessionOutcome::Refused {
            stage: Stage::Idle,
            ..
        }
    ));
}

#[test]
fn connection_lost_mid_transaction() {
    let mut s = ready(cfg(), EHLO_PIPE);
    s.send_message(&msg(&["a@x.test", "b@x.test"])).unwrap();
    pump(&mut s);
    feed(&mut s, "250 ok\r\n250 ok\r\n550 no\r\n354 go\r\n");
    s.body_chunk(b"x\r\n", true);
    pump(&mut s);
    s.connection_lost();
    let st = pump(&mut s);
    let lost = st.done[0].rcpts[0].reply();
    assert_eq!(
        (lost.code, lost.enhanced),
        (451, Some(EnhancedCode::new(4, 4, 2)))
    );
    assert_eq!(
        st.done[0].rcpts[1],
        RcptOutcome::Rejected(reply(550, None, "no"))
    );
    assert_eq!(
        st.wait,
        ClientEvent::Closed(SessionOutcome::ConnectionLost { stage: Stage::Data })
    );
}

// --- reply parsing --------------------------------------------------------------------

#[test]
fn multi_line_replies() {
    let mut s = ready(cfg(), EHLO_PLAIN);
    s.send_message(&msg(&["a@x.test"])).unwrap();
    pump(&mut s);
    feed(&mut s, "250 ok\r\n");
    pump(&mut s);
    feed(
        &mut s,
        "550-5.1.1 first line\r\n550-5.1.1 second\r\n550-third without code\r\n550 5.1.1\r\n",
    );
    let done = expect(&mut s, &["RSET\r\n"], ClientEvent::NeedInput);
    assert_eq!(
        done[0].rcpts[0].reply(),
        &reply(
            550,
            Some((5, 1, 1)),
            "first line\nsecond\nthird without code\n"
        )
    );
    // LF-only line ends, control characters, an enhanced code of another class.
    feed(&mut s, "250-2.0.0 a\tb\x01\n250 c\n");
    expect(&mut s, &[], ClientEvent::Ready);
    s.send_message(&msg(&["a@x.test"])).unwrap();
    pump(&mut s);
    feed(&mut s, "451 2.1.0 odd\r\n");
    let done = expect(&mut s, &[], ClientEvent::Ready);
    assert_eq!(done[0].mail, Some(reply(451, None, "2.1.0 odd")));
}

fn garbage_outcome(script: &[&str]) -> SessionOutcome {
    let mut s = ClientSession::new(cfg());
    for part in script {
        s.feed(part.as_bytes());
        pump(&mut s);
    }
    closed(&mut s)
}

#[test]
fn garbage_is_a_protocol_error() {
    for (script, stage) in [
        (&["hello there\r\n"][..], Stage::Greeting),
        (&["22\r\n"], Stage::Greeting),
        (&["2200 x\r\n"], Stage::Greeting),
        (&["120 wait\r\n"], Stage::Greeting),
        (&["250 not a greeting\r\n"], Stage::Greeting),
        (
            &["220 mx\r\n", "250-mx\r\n251 mixed codes\r\n"],
            Stage::Hello,
        ),
        (&["220 mx\r\n", "354 what\r\n"], Stage::Hello),
        (&["220-mx\r\n220+x\r\n"], Stage::Greeting),
    ] {
        match garbage_outcome(script) {
            SessionOutcome::ProtocolError { stage: st, .. } => assert_eq!(st, stage, "{script:?}"),
            other => panic!("{script:?}: {other:?}"),
        }
    }
    // Over-long line, over-long reply, unsolicited reply.
    let long = format!("220 {}\r\n", "x".repeat(5000));
    assert!(matches!(
        garbage_outcome(&[&long]),
        SessionOutcome::ProtocolError { .. }
    ));
    let mut many = String::new();
    for _ in 0..100 {
        many.push_str(&format!("220-{}\r\n", "y".repeat(1000)));
    }
    assert!(matches!(
        garbage_outcome(&[&many]),
        SessionOutcome::ProtocolError { .. }
    ));
    let mut s = ready(cfg(), EHLO_PLAIN);
    feed(&mut s, "250 surprise\r\n");
    assert!(matches!(
        closed(&mut s),
        SessionOutcome::ProtocolError {
            stage: Stage::Idle,
            ..
        }
    ));
    // Partial garbage without a line end is buffered only up to the cap.
    let mut s = ClientSession::new(cfg());
    s.feed(&[b'9'; 100_000]);
    assert!(matches!(
        closed(&mut s),
        SessionOutcome::ProtocolError { .. }
    ));

    // Garbage mid-transaction: every pending recipient gets a temporary
    // failure.
    let mut s = ready(cfg(), EHLO_PIPE);
    s.send_message(&msg(&["a@x.test", "b@x.test"])).unwrap();
    pump(&mut s);
    feed(&mut s, "250 ok\r\n250 ok\r\n");
    s.feed(b"\x00\xff junk\r\n");
    let st = pump(&mut s);
    assert_eq!(st.done[0].rcpts[0].reply().code, 451);
    assert_eq!(st.done[0].rcpts[1].reply().code, 451);
    assert!(matches!(
        st.wait,
        ClientEvent::Closed(SessionOutcome::ProtocolError {
            stage: Stage::Rcpt,
            ..
        })
    ));
}

// --- LMTP ------------------------------------------------------------------------------

#[test]
fn lmtp_one_reply_per_accepted_recipient() {
    let mut c = cfg();
    c.lmtp = true;
    let mut s = ClientSession::new(c);
    feed(&mut s, "220 lmtp ready\r\n");
    expect(&mut s, &["LHLO client.test\r\n"], ClientEvent::NeedInput);
    feed(
        &mut s,
        "250-lmtp\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n",
    );
    expect(&mut s, &[], ClientEvent::Ready);
    s.send_message(&msg(&["a@x.test", "b@x.test", "c@x.test"]))
        .unwrap();
    // DATA even though CHUNKING is offered.
    expect(
        &mut s,
        &[
            "MAIL FROM:<s@z.test>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n\
           RCPT TO:<c@x.test>\r\nDATA\r\n",
        ],
        ClientEvent::NeedInput,
    );
    feed(
        &mut s,
        "250 ok\r\n250 ok\r\n550 5.1.1 no b\r\n250 ok\r\n354 go\r\n",
    );
    s.body_chunk(b"hi\r\n", true);
    expect(&mut s, &["hi\r\n.\r\n"], ClientEvent::NeedInput);
    feed(&mut s, "250 2.0.0 a delivered\r\n");
    expect(&mut s, &[], ClientEvent::NeedInput);
    feed(&mut s, "452 4.2.2 c over quota\r\n");
    let done = expect(&mut s, &[], ClientEvent::Ready);
    assert_eq!(
        done[0],
        TransactionResult {
            mail: None,
            rcpts: vec![
                RcptOutcome::Accepted(reply(250, Some((2, 0, 0)), "a delivered")),
                RcptOutcome::Rejected(reply(550, Some((5, 1, 1)), "no b")),
                RcptOutcome::Accepted(reply(452, Some((4, 2, 2)), "c over quota")),
            ],
            data: None,
        }
    );

    // LHLO refused: no HELO in LMTP.
    let mut c = cfg();
    c.lmtp = true;
    let mut s = ClientSession::new(c);
    feed(&mut s, "220 x\r\n500 no\r\n");
    expect(
        &mut s,
        &["LHLO client.test\r\nQUIT\r\n"],
        ClientEvent::NeedInput,
    );
}

// --- replies split anywhere --------------------------------------------------------------

/// Runs a whole dialog: the next server blob is fed each time the machine
/// needs input (split in two at `split`), the messages are sent in order
/// when ready, then QUIT. Returns everything sent, the results and the end.
fn dialog(
    cfg: ClientConfig,
    server: &[&str],
    msgs: &[OutMessage],
    body: &[u8],
    split: Option<usize>,
) -> (Vec<u8>, Vec<TransactionResult>, SessionOutcome) {
    let mut s = ClientSession::new(cfg);
    let mut chunks: Vec<&[u8]> = Vec::new();
    for blob in server {
        let b = blob.as_bytes();
        match split {
            Some(k) if k < b.len() => {
                chunks.push(&b[..k]);
                chunks.push(&b[k..]);
            }
            _ => chunks.push(b),
        }
    }
    let mut chunks = chunks.into_iter();
    let mut msgs = msgs.iter();
    let mut sent = Vec::new();
    let mut results = Vec::new();
    for _ in 0..1000 {
        match s.poll() {
            ClientEvent::Send(b) => sent.extend_from_slice(&b),
            ClientEvent::NeedInput => {
                let c = chunks.next().expect("script ran out");
                assert_eq!(s.feed(c), c.len());
            }
            ClientEvent::NeedBody => {
                let (a, b) = body.split_at(body.len() / 2);
                s.body_chunk(a, false);
                s.body_chunk(b, true);
            }
            ClientEvent::Ready => match msgs.next() {
                Some(m) => s.send_message(m).unwrap(),
                None => s.quit(),
            },
            ClientEvent::TransactionDone(r) => results.push(r),
            ClientEvent::StartTls => s.tls_established(),
            ClientEvent::Closed(o) => {
                assert!(chunks.next().is_none(), "script left over");
                return (sent, results, o);
            }
        }
    }
    panic!("dialog does not end");
}

#[test]
fn replies_split_at_every_offset() {
    let scripts: Vec<(ClientConfig, Vec<&str>)> = vec![
        (
            cfg(),
            vec![
                "220-mx.test ESMTP\r\n220 welcome\r\n",
                EHLO_PIPE,
                "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550-5.1.1 no\r\n550 5.1.1 such user\r\n354 go\r\n",
                "250 2.0.0 queued\r\n",
                "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
                "250 2.0.0 queued again\r\n",
                "221 2.0.0 bye\r\n",
            ],
        ),
        (
            cfg(),
            vec![
                "220 mx\r\n",
                "250-mx\r\n250 8BITMIME\r\n",
                "250 ok\r\n",
                "250 ok\r\n",
                "451 4.2.0 later\r\n",
                "354 go\r\n",
                "250 queued\r\n",
                "250 ok\r\n",
                "250 ok\r\n",
                "250 ok\r\n",
                "354 go\r\n",
                "250 queued\r\n",
                "221 bye\r\n",
            ],
        ),
        (
            {
                let mut c = tls_cfg(StartTls::Required);
                c.lmtp = true;
                c
            },
            vec![
                "220 lmtp\r\n",
                "250-lmtp\r\n250-PIPELINING\r\n250 STARTTLS\r\n",
                "220 go\r\n",
                "250-lmtp\r\n250 PIPELINING\r\n",
                "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
                "250 one\r\n",
                "550 two\r\n",
                "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n",
                "250 one\r\n250 two\r\n",
                "221 bye\r\n",
            ],
        ),
    ];
    let msgs = vec![
        msg(&["a@x.test", "b@x.test"]),
        msg(&["a@x.test", "c@x.test"]),
    ];
    let body = b"Subject: t\r\n\r\n.leading dot\r\nbody\r\n";
    for (cfg, script) in scripts {
        let whole = dialog(cfg.clone(), &script, &msgs, body, None);
        assert!(matches!(whole.2, SessionOutcome::Quit), "{:?}", whole.2);
        assert_eq!(whole.1.len(), 2);
        let longest = script.iter().map(|b| b.len()).max().unwrap_or(0);
        for k in 0..=longest {
            assert_eq!(
                dialog(cfg.clone(), &script, &msgs, body, Some(k)),
                whole,
                "split at {k}"
            );
        }
        let text = String::from_utf8(whole.0.clone()).unwrap();
        assert!(text.ends_with("QUIT\r\n"), "{text}");
    }
}

// --- timeouts ------------------------------------------------------------------------

#[test]
fn timeout_values() {
    assert_eq!(Timeout::Greeting.secs(), 300);
    assert_eq!(Timeout::Command.secs(), 300);
    assert_eq!(Timeout::Mail.secs(), 300);
    assert_eq!(Timeout::Rcpt.secs(), 300);
    assert_eq!(Timeout::DataInit.secs(), 120);
    assert_eq!(Timeout::DataBlock.secs(), 180);
    assert_eq!(Timeout::DataTermination.secs(), 600);
}

// --- DotStuffer -------------------------------------------------------------------------

fn stuff(pieces: &[&[u8]]) -> Vec<u8> {
    let mut d = DotStuffer::new();
    let mut out = Vec::new();
    for p in pieces {
        d.encode(p, &mut out);
    }
    d.finish(&mut out);
    out
}

#[test]
fn dot_stuffing() {
    assert_eq!(stuff(&[b"a\r\n.b\r\n"]), b"a\r\n..b\r\n.\r\n");
    assert_eq!(stuff(&[b"a"]), b"a\r\n.\r\n");
    assert_eq!(stuff(&[]), b".\r\n");
    assert_eq!(stuff(&[b"."]), b"..\r\n.\r\n");
    assert_eq!(stuff(&[b".\r\n"]), b"..\r\n.\r\n");
    // Bare CR and LF become CRLF, and a dot after them is at a line start.
    assert_eq!(
        stuff(&[b"a\n.b\r.c\r\r\n"]),
        b"a\r\n..b\r\n..c\r\n\r\n.\r\n"
    );
    // Split anywhere, same output.
    let input = b"x\r\n.\r\n..\r\r\n\n.";
    let whole = stuff(&[input]);
    for k in 0..=input.len() {
        assert_eq!(stuff(&[&input[..k], &input[k..]]), whole, "split {k}");
    }
    // Reusable after finish.
    let mut d = DotStuffer::default();
    let mut out = Vec::new();
    d.encode(b"a\r", &mut out);
    d.finish(&mut out);
    d.encode(b".", &mut out);
    d.finish(&mut out);
    assert_eq!(out, b"a\r\n.\r\n..\r\n.\r\n");
}

/// Bare CR and bare LF to CRLF, and a final CRLF if missing: what a
/// conforming server stores from our DATA.
fn normalised(x: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    let mut i = 0;
    while i < x.len() {
        match x[i] {
            b'\r' => {
                v.extend_from_slice(b"\r\n");
                if x.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => v.extend_from_slice(b"\r\n"),
            c => v.push(c),
        }
        i += 1;
    }
    if !v.is_empty() && !v.ends_with(b"\r\n") {
        v.extend_from_slice(b"\r\n");
    }
    v
}

fn no_bare_newline(out: &[u8]) -> bool {
    out.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => out.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && out[i - 1] == b'\r',
        _ => true,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn dot_stuffer_round_trips(
        body in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'.'), Just(b'a'), any::<u8>()],
            0..300,
        ),
        split in 0usize..300,
    ) {
        let k = split.min(body.len());
        let out = stuff(&[&body[..k], &body[k..]]);
        prop_assert!(no_bare_newline(&out));
        let expected = normalised(&body);
        if expected.is_empty() {
            prop_assert_eq!(&out[..], b".\r\n");
        } else {
            prop_assert!(out.ends_with(b"\r\n.\r\n"));
        }
        let mut d = BodyDecoder::data();
        let mut decoded = Vec::new();
        prop_assert_eq!(d.feed(&out, Some(&mut decoded)), Progress::End(out.len()));
        prop_assert!(!d.saw_bare_newline());
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn reply_parser_never_panics(
        bytes in proptest::collection::vec(
            prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'-'), Just(b' '), Just(b'2'), Just(b'5'), any::<u8>()],
            0..400,
        ),
    ) {
        let mut s = ClientSession::new(cfg());
        let n = s.feed(&bytes);
        prop_assert!(n <= bytes.len());
        let _ = pump(&mut s);
    }
}

// --- against our own server ---------------------------------------------------------------

struct FakeHost(u32);

/// The server's verdicts: every recipient but `nobody@...` is accepted.
fn verdict(d: Decision<'_>) -> Verdict {
    match d {
        Decision::Rcpt { rcpt, .. } if rcpt.rcpt.local == "nobody" => {
            Verdict::Reject(Reply::new(550, "5.1.1", "no such user"))
        }
        _ => Verdict::accept(),
    }
}

impl Host for FakeHost {
    fn new_queue_id(&mut self) -> String {
        self.0 += 1;
        format!("Q{}", self.0)
    }
    fn now(&mut self) -> i64 {
        1_795_459_500
    }
}

/// What the server stored: (recipients, content) per message.
type Stored = Vec<(Vec<String>, Vec<u8>)>;

/// Removes the CHUNKING line from an EHLO reply in `bytes`, if there.
fn hide_chunking(bytes: Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8(bytes).unwrap();
    let mut lines: Vec<String> = text.split_inclusive("\r\n").map(String::from).collect();
    if let Some(i) = lines
        .iter()
        .position(|l| l.get(4..) == Some("CHUNKING\r\n"))
    {
        let last = lines[i].as_bytes()[3] == b' ';
        lines.remove(i);
        if last {
            lines[i - 1].replace_range(3..4, " ");
        }
    }
    lines.concat().into_bytes()
}

/// Transfers `msgs` (each with its content) to a ServerSession; returns the
/// results and what the server stored (recipients, content).
fn loopback(msgs: &[(OutMessage, Vec<u8>)], chunking: bool) -> (Vec<TransactionResult>, Stored) {
    let scfg = SessionConfig {
        hostname: "mx.test".into(),
        max_command_line: 512,
        max_message_size: 100_000,
        max_recipients: 10,
        max_errors: 10,
        max_received_headers: 30,
        reject_bare_newline: false,
        starttls: false,
        auth: false,
        plaintext_auth: false,
        max_auth_failures: 3,
        max_junk_commands: 100,
    };
    let mut server = ServerSession::new(Arc::new(scfg), IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut host = FakeHost(0);
    // The Connect decision: the greeting.
    let (_, a) = server.feed(b"", &mut host);
    assert!(matches!(a, Action::Decide(_)));
    server.decided(Verdict::accept());
    let mut client = ClientSession::new(cfg());
    let mut to_server: Vec<u8> = Vec::new();
    let mut stored = Vec::new();
    let mut results = Vec::new();
    let mut queue = msgs.iter();
    let mut current: Option<&Vec<u8>> = None;
    for _ in 0..10_000 {
        let mut from_server = std::mem::take(server.output());
        if !chunking {
            from_server = hide_chunking(from_server);
        }
        if !from_server.is_empty() {
            assert_eq!(client.feed(&from_server), from_server.len());
        }
        match client.poll() {
            ClientEvent::Send(b) => {
                to_server.extend_from_slice(&b);
                loop {
                    let (n, a) = server.feed(&to_server, &mut host);
                    to_server.drain(..n);
                    match a {
                        Action::NeedInput => break,
                        Action::Decide(_) => {
                            let v = verdict(server.decision().unwrap());
                            server.decided(v);
                        }
                        Action::Commit => {
                            let env = server.envelope().unwrap();
                            let id = server.queue_id().unwrap().to_string();
                            let body = std::mem::take(server.body());
                            stored.push((
                                env.recipients.iter().map(|r| r.address.clone()).collect(),
                                body,
                            ));
                            server.commit_result(Ok(id));
                        }
                        Action::Abort => server.body().clear(),
                        Action::Close => break,
                        other => panic!("unexpected server action {other:?}"),
                    }
                }
            }
            ClientEvent::NeedInput => {
                assert!(!server.output().is_empty(), "deadlock: both sides wait");
            }
            ClientEvent::NeedBody => {
                let body = current.expect("content");
                let (a, b) = body.split_at(body.len() / 3);
                client.body_chunk(a, false);
                client.body_chunk(b, true);
            }
            ClientEvent::Ready => match queue.next() {
                Some((m, body)) => {
                    assert_eq!(client.extensions().chunking, chunking);
                    current = Some(body);
                    client.send_message(m).unwrap();
                }
                None => client.quit(),
            },
            ClientEvent::TransactionDone(r) => results.push(r),
            ClientEvent::StartTls => panic!("no TLS here"),
            ClientEvent::Closed(o) => {
                assert_eq!(o, SessionOutcome::Quit);
                return (results, stored);
            }
        }
    }
    panic!("loopback does not end");
}

#[test]
fn against_our_server() {
    let m1 = msg(&["a@x.test", "nobody@x.test", "b@x.test"]);
    let body1 = b"Subject: one\r\n\r\n.starts with a dot\r\nbare\nlf\r\n.\r\nend".to_vec();
    let mut m2 = msg(&["c@x.test"]);
    m2.body_type = BodyType::EightBitMime;
    let body2 = "Subject: two\r\n\r\n\u{e9}t\u{e9}\r\n".as_bytes().to_vec();
    let m3 = msg(&["nobody@x.test"]);
    for chunking in [true, false] {
        let (results, stored) = loopback(
            &[
                (m1.clone(), body1.clone()),
                (m2.clone(), body2.clone()),
                (m3.clone(), b"never sent\r\n".to_vec()),
            ],
            chunking,
        );
        check_loopback(chunking, &results, &stored, &body2);
    }
}

fn check_loopback(
    chunking: bool,
    results: &[TransactionResult],
    stored: &[(Vec<String>, Vec<u8>)],
    body2: &[u8],
) {
    assert_eq!(results.len(), 3, "chunking {chunking}");
    let d: Vec<Vec<bool>> = results
        .iter()
        .map(|r| r.rcpts.iter().map(RcptOutcome::is_delivered).collect())
        .collect();
    assert_eq!(d, vec![vec![true, false, true], vec![true], vec![false]]);
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].0, ["a@x.test", "b@x.test"]);
    // Our server prepends its Received: header; the rest is the content,
    // line ends normalised.
    assert!(stored[0]
        .1
        .ends_with(b"\r\nSubject: one\r\n\r\n.starts with a dot\r\nbare\r\nlf\r\n.\r\nend\r\n"));
    assert!(stored[1].1.ends_with(body2));
}
