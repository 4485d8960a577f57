//! Delivery end to end: the real server and delivery manager, a DNS server
//! the test controls, and scripted SMTP sinks on 127.0.0.x. Retry times
//! are shortened to a second.

mod common;

use std::time::Duration;

use common::daemon::{self, start};
use common::dns::{Record, RecordType};
use common::harness::Net;
use common::sink::Behaviour;
use common::test_config;
use pigeon::config::{Config, DoubleBounce};
use pigeon::delivery::Request;
use pigeon::queue::{Queue, QueueId};
use tokio::sync::watch;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Zone used by every test: sender domain s.test (its sink takes DSNs),
/// and one recipient domain per behaviour.
fn zone() -> Vec<Record> {
    vec![
        Record::a("s.test", "127.0.0.5"),
        Record::mx("a.test", 10, "mx1.a.test"),
        Record::mx("a.test", 20, "mx2.a.test"),
        Record::a("mx1.a.test", "127.0.0.2"),
        Record::a("mx2.a.test", "127.0.0.3"),
        Record::a("b.test", "127.0.0.4"),
        Record::null_mx("c.test"),
        Record::a("d.test", "127.0.0.6"),
        Record::a("e.test", "127.0.0.7"),
        Record::a("f.test", "127.0.0.8"),
        Record::mx("loop.test", 10, "mx.test"),
        Record::cname("alias.test", "b.test"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_preference_fallback_implicit_mx_and_two_domains() {
    let net = Net::new(zone()).await;
    // mx1 (127.0.0.2) has no server: delivery falls back to mx2.
    let mx2 = net.sink(3, Behaviour::default()).await;
    let implicit = net.sink(4, Behaviour::default()).await;
    let d = net.start(net.config()).await;
    let body = "Subject: hello\r\n\r\nline\r\n..dot line\r\n\u{e9}\r\n";
    d.send("s@s.test", &["u@a.test", "v@a.test", "w@b.test"], body)
        .await;
    let got = mx2.wait_for(1, 20).await;
    assert_eq!(got.len(), 1, "one transaction for both a.test recipients");
    assert_eq!(got[0].rcpts, ["u@a.test", "v@a.test"]);
    assert_eq!(got[0].mail_from, "s@s.test");
    assert!(
        text(&got[0].data).ends_with("line\r\n.dot line\r\n\u{e9}\r\n"),
        "{}",
        text(&got[0].data)
    );
    let got = implicit.wait_for(1, 20).await;
    assert_eq!(got[0].rcpts, ["w@b.test"]);
    d.wait_queue_len(0, 10).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_fails_at_once_and_the_sender_gets_a_dsn() {
    let net = Net::new(zone()).await;
    let sender_mx = net.sink(5, Behaviour::default()).await;
    let d = net.start(net.config()).await;
    d.send(
        "s@s.test",
        &["x@c.test"],
        "Subject: to null mx\r\n\r\nhi\r\n",
    )
    .await;
    let got = sender_mx.wait_for(1, 20).await;
    let dsn = text(&got[0].data);
    assert_eq!(got[0].mail_from, "", "DSNs come from <>");
    assert_eq!(got[0].rcpts, ["s@s.test"]);
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(dsn.contains("Final-Recipient: rfc822; x@c.test"), "{dsn}");
    assert!(dsn.contains("Status: 5.1.10"), "{dsn}");
    assert!(dsn.contains("Action: failed"), "{dsn}");
    assert_eq!(
        net.dns.queries("c.test", RecordType::A),
        0,
        "no address lookup for a null MX domain"
    );
    d.wait_queue_len(0, 10).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_recipient_refused_the_other_delivered_dsn_names_the_failed_one() {
    let net = Net::new(zone()).await;
    let sender_mx = net.sink(5, Behaviour::default()).await;
    let dest = net
        .sink(
            6,
            Behaviour {
                reject_rcpts: vec!["bad@d.test".into()],
                ..Default::default()
            },
        )
        .await;
    let d = net.start(net.config()).await;
    d.send(
        "s@s.test",
        &["good@d.test", "bad@d.test"],
        "Subject: two\r\n\r\nbody\r\n",
    )
    .await;
    let got = dest.wait_for(1, 20).await;
    assert_eq!(got[0].rcpts, ["good@d.test"]);
    let dsn = sender_mx.wait_for(1, 20).await;
    let t = text(&dsn[0].data);
    assert!(t.contains("Final-Recipient: rfc822; bad@d.test"), "{t}");
    assert!(t.contains("Status: 5.1.1"), "{t}");
    assert!(!t.contains("Final-Recipient: rfc822; good@d.test"), "{t}");
    assert!(
        t.contains("no such user here"),
        "the remote reply is quoted: {t}"
    );
    d.wait_queue_len(0, 10).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_sender_failure_never_bounces() {
    let net = Net::new(zone()).await;
    let dest = net
        .sink(
            6,
            Behaviour {
                reject_rcpts: vec!["bad@d.test".into()],
                ..Default::default()
            },
        )
        .await;
    let mut cfg = net.config();
    cfg.delivery.double_bounce = DoubleBounce::Drop;
    let d = net.start(cfg).await;
    d.send("", &["bad@d.test"], "Subject: a bounce\r\n\r\nx\r\n")
        .await;
    d.wait_queue_len(0, 20).await;
    assert!(dest.messages().is_empty());
    d.stop().await;

    // With double_bounce = postmaster, the failure goes to the local
    // postmaster: an alias of box@example.org, into its Maildir.
    let dir = tempfile::tempdir().unwrap();
    let d = start(net.config(), dir.path().join("spool")).await;
    d.send("", &["bad@d.test"], "Subject: a bounce\r\n\r\nx\r\n")
        .await;
    let maildir = dir.path().join("mail/example.org/box/Maildir");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = common::maildir_messages(&maildir);
        if let Some(m) = got.first() {
            let t = text(m);
            assert!(
                t.starts_with("Return-Path: <>\nDelivered-To: box@example.org\n"),
                "{t}"
            );
            assert!(t.contains("Undelivered Mail Returned to Sender"), "{t}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no double bounce to the postmaster: {:?}",
            pigeon::queue::list(&d.spool).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.wait_queue_len(0, 10).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failure_then_success_after_retry() {
    let net = Net::new(zone()).await;
    let dest = net
        .sink(
            7,
            Behaviour {
                tempfail_first: 1,
                ..Default::default()
            },
        )
        .await;
    let d = net.start(net.config()).await;
    let id = d
        .send("s@s.test", &["r@e.test"], "Subject: retry\r\n\r\nx\r\n")
        .await;
    // After the first attempt the status records the failure.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(st)) = d.queue.status(id) {
            assert_eq!(st.rcpts[0].attempts, 1);
            assert!(st.rcpts[0].last_reply.contains("451"), "{:?}", st.rcpts[0]);
            break;
        }
        if !dest.messages().is_empty() {
            break; // the retry already happened
        }
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = dest.wait_for(1, 20).await;
    assert_eq!(got[0].rcpts, ["r@e.test"]);
    d.wait_queue_len(0, 10).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_and_delay_warning() {
    let net = Net::new(zone()).await;
    let sender_mx = net.sink(5, Behaviour::default()).await;
    // f.test has no server: connections are refused, every attempt is temporary.
    let mut cfg = net.config();
    cfg.delivery.delay_warning_secs = 1;
    cfg.delivery.max_queue_lifetime_secs = 4;
    let d = net.start(cfg).await;
    d.send("s@s.test", &["r@f.test"], "Subject: nowhere\r\n\r\nx\r\n")
        .await;
    let got = sender_mx.wait_for(2, 30).await;
    let warn = text(&got[0].data);
    assert!(warn.contains("Action: delayed"), "{warn}");
    assert!(warn.contains("Will-Retry-Until:"), "{warn}");
    let fail = text(&got[1].data);
    assert!(fail.contains("Action: failed"), "{fail}");
    assert!(fail.contains("Status: 4.4.7"), "{fail}");
    // The queue is empty, the DSNs delivered: nothing else can come.
    d.wait_queue_len(0, 10).await;
    assert_eq!(
        sender_mx.messages().len(),
        2,
        "exactly one delay warning and one failure"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_pointing_back_at_us_is_a_loop() {
    let net = Net::new(zone()).await;
    let sender_mx = net.sink(5, Behaviour::default()).await;
    let d = net.start(net.config()).await;
    d.send("s@s.test", &["x@loop.test"], "Subject: loop\r\n\r\nx\r\n")
        .await;
    let got = sender_mx.wait_for(1, 20).await;
    assert!(text(&got[0].data).contains("Status: 5.4.6"));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_between_attempts_never_delivers_twice() {
    let net = Net::new(zone()).await;
    let done = net.sink(4, Behaviour::default()).await;
    // e.test keeps failing temporarily.
    let slow = net
        .sink(
            7,
            Behaviour {
                tempfail_first: 1000,
                ..Default::default()
            },
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let d = start(net.config(), spool.clone()).await;
    let id = d
        .send(
            "s@s.test",
            &["one@b.test", "two@e.test"],
            "Subject: restart\r\n\r\nx\r\n",
        )
        .await;
    done.wait_for(1, 20).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !matches!(d.queue.status(id), Ok(Some(_))) {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.stop().await;
    let d = start(net.config(), spool).await;
    let _ = d.handle.request(Request::Flush(vec![])).await;
    // The pending recipient's next attempt is recorded: the pass after the
    // restart is over, and it is the one that could have repeated the
    // delivered recipient.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let st = loop {
        let st = pigeon::queue::read_message(&d.spool, id).unwrap().status;
        if st.rcpts[1].attempts >= 2 {
            break st;
        }
        assert!(std::time::Instant::now() < deadline, "not retried: {st:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        done.messages().len(),
        1,
        "the delivered recipient got it once"
    );
    assert!(
        slow.connections.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the other one was retried"
    );
    assert_eq!(st.rcpts[0].state, pigeon::queue::RcptState::Delivered);
    assert_eq!(st.rcpts[1].state, pigeon::queue::RcptState::Pending);
    d.stop().await;
}

/// Waits until every message of `ids` is on hold in its status file.
async fn wait_held(spool: &std::path::Path, ids: &[QueueId]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let list = pigeon::queue::list(spool).unwrap();
        let held = ids
            .iter()
            .all(|id| list.iter().any(|m| m.id == id.to_string() && m.hold));
        if held {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "not held: {list:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_release_bounce_delete_through_the_control_socket() {
    let net = Net::new(zone()).await;
    let sender_mx = net.sink(5, Behaviour::default()).await;
    let dest = net
        .sink(
            7,
            Behaviour {
                tempfail_first: 1,
                ..Default::default()
            },
        )
        .await;
    let d = net.start(net.config()).await;
    let (cstop, crx) = watch::channel(false);
    let sock = pigeon::delivery::control::socket_path(&d.spool);
    tokio::spawn(pigeon::delivery::control::serve(
        sock.clone(),
        d.handle.clone(),
        crx,
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "control socket not up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ask = |line: String| {
        let spool = d.spool.clone();
        async move {
            tokio::task::spawn_blocking(move || pigeon::delivery::control::request(&spool, &line))
                .await
                .unwrap()
                .unwrap()
        }
    };
    let id = d
        .send("s@s.test", &["r@e.test"], "Subject: held\r\n\r\nx\r\n")
        .await;
    // The first attempt fails (451); hold it before the retry.
    let answer = ask(format!("hold {id}")).await;
    assert!(
        answer.contains("on hold") || answer.contains("in progress"),
        "{answer}"
    );
    wait_held(&d.spool, &[id]).await;
    // Flushing skips it: the manager answers once it has decided.
    let answer = ask("flush".into()).await;
    assert!(
        answer.contains(&format!("{id}: on hold, not flushed")),
        "{answer}"
    );
    assert!(
        dest.messages().is_empty(),
        "a held message is not delivered"
    );
    assert!(ask(format!("release {id}")).await.contains("released"));
    dest.wait_for(1, 20).await;
    d.wait_queue_len(0, 10).await;

    // bounce: returned to the sender at once; delete: gone without notice.
    let b = d
        .send("s@s.test", &["r@f.test"], "Subject: bounce me\r\n\r\nx\r\n")
        .await;
    let x = d
        .send("s@s.test", &["r@f.test"], "Subject: delete me\r\n\r\nx\r\n")
        .await;
    ask(format!("hold {b} {x}")).await;
    wait_held(&d.spool, &[b, x]).await;
    let a = ask(format!("bounce {b}")).await;
    assert!(a.contains("returned") || a.contains("in progress"), "{a}");
    let a = ask(format!("delete {x}")).await;
    assert!(a.contains("deleted") || a.contains("in progress"), "{a}");
    let got = sender_mx.wait_for(1, 20).await;
    assert!(text(&got[0].data).contains("Final-Recipient: rfc822; r@f.test"));
    d.wait_queue_len(0, 10).await;
    assert!(ask("hold 0000000000000".into())
        .await
        .contains("not in the queue"));
    let _ = cstop.send(true);
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_one_destination_share_a_connection() {
    let net = Net::new(zone()).await;
    let dest = net.sink(4, Behaviour::default()).await;
    let d = net.start(net.config()).await;
    for i in 0..3 {
        d.send(
            "s@s.test",
            &["w@b.test"],
            &format!("Subject: {i}\r\n\r\nx\r\n"),
        )
        .await;
        dest.wait_for(i + 1, 20).await;
    }
    let got = dest.messages();
    assert_eq!(got.len(), 3);
    assert_eq!(
        dest.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "one connection, three transactions"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_connection_closed_by_the_server_is_replaced_at_once() {
    let net = Net::new(zone()).await;
    let dest = net
        .sink(
            4,
            Behaviour {
                close_after_message: true,
                ..Default::default()
            },
        )
        .await;
    // A deferral would wait five minutes: the test would time out.
    let mut cfg = net.config();
    cfg.delivery.first_retry_secs = 300;
    cfg.delivery.max_retry_interval_secs = 300;
    let d = net.start(cfg).await;
    for i in 0..3 {
        d.send(
            "s@s.test",
            &["w@b.test"],
            &format!("Subject: {i}\r\n\r\nx\r\n"),
        )
        .await;
        // Delivered now, not after a retry delay.
        dest.wait_for(i + 1, 5).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    d.wait_queue_len(0, 5).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drop_mid_data_and_a_slow_server_are_retried_then_delivered() {
    let net = Net::new(zone()).await;
    let dropper = net
        .sink(
            7,
            Behaviour {
                drop_in_data_first: 1,
                ..Default::default()
            },
        )
        .await;
    let slow = net
        .sink(
            4,
            Behaviour {
                greeting_delay: Duration::from_millis(1500),
                ..Default::default()
            },
        )
        .await;
    let d = net.start(net.config()).await;
    let id = d
        .send(
            "s@s.test",
            &["r@e.test", "w@b.test"],
            &format!("Subject: drop\r\n\r\n{}\r\n", "x".repeat(200)),
        )
        .await;
    // The slow greeting is waited for (well within the 5-minute timeout).
    let got = slow.wait_for(1, 20).await;
    assert_eq!(got[0].rcpts, ["w@b.test"]);
    // The connection dropped mid-DATA: a temporary failure, retried, delivered once.
    let got = dropper.wait_for(1, 20).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, ["r@e.test"]);
    assert!(
        dropper
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 2
    );
    d.wait_queue_len(0, 10).await;
    let _ = id;
    d.stop().await;
}

/// A smart host that wants STARTTLS and AUTH: another pigeon on a
/// submission listener with one user, and a certificate for 127.0.0.1
/// from `ca`, or self-signed when `ca` is None.
fn smart_host(dir: &std::path::Path, ca: Option<&common::TestCa>) -> Config {
    use pigeon::config::{ListenerConfig, ListenerMode};
    let mut hcfg = test_config();
    hcfg.listeners = vec![ListenerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        ListenerMode::Submission,
    )];
    match ca {
        Some(ca) => hcfg.tls.certificates = vec![ca.issue(&["127.0.0.1"])],
        None => hcfg.tls.self_signed = true,
    }
    hcfg.delivery.enabled = false;
    hcfg.auth.users.push(common::user(
        "relayuser",
        &pigeon::users::hash_password("relaypass").unwrap(),
        &["@s.test"],
    ));
    hcfg.spool.dir = dir.join("spool");
    hcfg
}

/// The smart host's certificate verifies against `delivery.tls_ca_file`:
/// the mail goes through it with AUTH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_host_with_starttls_and_auth() {
    let net = Net::new(zone()).await;
    let hdir = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new(hdir.path());
    let hcfg = smart_host(hdir.path(), Some(&ca));
    let (hq, _) = Queue::open(&hcfg.spool.dir, 1).unwrap();
    let hl = pigeon::server::bind_all(&hcfg).unwrap();
    let host = pigeon::server::start(common::live(hcfg.clone()), hq, hl, None).unwrap();
    let hport = host.addrs[0].port();
    // The sender, relaying everything through it.
    let mut cfg = net.config();
    cfg.delivery.remote_port = 25;
    cfg.delivery.relay_host = format!("[127.0.0.1]:{hport}");
    cfg.delivery.relay_login = "relayuser".into();
    cfg.delivery.relay_password = "relaypass".into();
    cfg.delivery.tls_ca_file = ca.pem.display().to_string();
    let d = net.start(cfg).await;
    d.send(
        "s@s.test",
        &["far@remote.test"],
        "Subject: via smart host\r\n\r\nhello\r\n",
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let list = loop {
        let l = pigeon::queue::list(&hcfg.spool.dir).unwrap();
        if !l.is_empty() {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing reached the smart host"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(list[0].sender, "s@s.test");
    assert_eq!(list[0].recipients[0].address, "far@remote.test");
    let id: QueueId = list[0].id.parse().unwrap();
    let m = pigeon::queue::read_message(&hcfg.spool.dir, id).unwrap();
    assert_eq!(m.envelope.auth_user.as_deref(), Some("relayuser"));
    assert!(text(&m.body).contains("with ESMTPSA"), "{}", text(&m.body));
    d.wait_queue_len(0, 10).await;
    d.stop().await;
    host.shutdown(Duration::from_secs(1)).await;
}

/// A smart host (or a man in the middle) whose certificate does not
/// verify never sees the password: the attempt is a temporary failure
/// that names the certificate, and the message stays queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_password_never_goes_to_an_unverified_certificate() {
    let net = Net::new(zone()).await;
    let hdir = tempfile::tempdir().unwrap();
    let hcfg = smart_host(hdir.path(), None);
    let (hq, _) = Queue::open(&hcfg.spool.dir, 1).unwrap();
    let hl = pigeon::server::bind_all(&hcfg).unwrap();
    let host = pigeon::server::start(common::live(hcfg.clone()), hq, hl, None).unwrap();
    let hport = host.addrs[0].port();
    let mut cfg = net.config();
    cfg.delivery.remote_port = 25;
    cfg.delivery.relay_host = format!("[127.0.0.1]:{hport}");
    cfg.delivery.relay_login = "relayuser".into();
    cfg.delivery.relay_password = "relaypass".into();
    let d = net.start(cfg).await;
    let id = d
        .send(
            "s@s.test",
            &["far@remote.test"],
            "Subject: via smart host\r\n\r\nhello\r\n",
        )
        .await;
    // Wait until the first attempt is recorded, then look at it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let reply = loop {
        let m = pigeon::queue::read_message(&d.spool, id).unwrap();
        if m.status.rcpts[0].attempts > 0 {
            break m.status.rcpts[0].last_reply.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no attempt recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(reply.starts_with("4."), "{reply}");
    assert!(reply.contains("certificate"), "{reply}");
    assert!(
        pigeon::queue::list(&hcfg.spool.dir).unwrap().is_empty(),
        "the smart host took mail"
    );
    d.stop().await;
    host.shutdown(Duration::from_secs(1)).await;
}

/// The status of message `id` once its first recipient has had
/// `attempts` attempts.
async fn status_after(
    spool: &std::path::Path,
    id: QueueId,
    attempts: u32,
) -> pigeon::queue::MessageStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = pigeon::queue::read_message(spool, id).unwrap();
        if m.status.rcpts[0].attempts >= attempts {
            return m.status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt {attempts}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends one message with RET=FULL through a raw session; returns its id.
async fn send_ret_full(d: &daemon::Daemon, from: &str, to: &str, body: &str) -> QueueId {
    let mut c = common::Client::connect(d.addr).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let r = c.cmd(&format!("MAIL FROM:<{from}> RET=FULL")).await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd(&format!("RCPT TO:<{to}>")).await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("DATA").await;
    assert!(r.starts_with("354"), "{r}");
    c.send(body).await;
    let r = c.cmd(".").await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    c.cmd("QUIT").await;
    common::queued_id(&r).parse().unwrap()
}

/// RET=FULL returns the whole original only up to
/// `delivery.bounce_size_limit`; a larger one comes back as its header
/// lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dsn_returns_at_most_bounce_size_limit_of_the_original() {
    let net = Net::new(zone()).await;
    let sender_mx = net.sink(5, Behaviour::default()).await;
    let _dest = net
        .sink(
            6,
            Behaviour {
                reject_rcpts: vec!["bad@d.test".into()],
                ..Default::default()
            },
        )
        .await;
    let mut cfg = net.config();
    cfg.delivery.bounce_size_limit = 2000;
    let d = net.start(cfg).await;
    send_ret_full(
        &d,
        "s@s.test",
        "bad@d.test",
        "Subject: small\r\n\r\nshort\r\n",
    )
    .await;
    let big = format!("Subject: large\r\n\r\n{}\r\n", "z".repeat(3000));
    send_ret_full(&d, "s@s.test", "bad@d.test", &big).await;
    let dsns = sender_mx.wait_for(2, 20).await;
    let small = dsns
        .iter()
        .map(|m| text(&m.data))
        .find(|t| t.contains("Subject: small"))
        .unwrap();
    assert!(small.contains("Content-Type: message/rfc822"), "{small}");
    assert!(small.contains("short"), "{small}");
    let large = dsns
        .iter()
        .map(|m| text(&m.data))
        .find(|t| t.contains("Subject: large"))
        .unwrap();
    assert!(
        large.contains("Content-Type: text/rfc822-headers"),
        "{large}"
    );
    assert!(!large.contains("zzzz"), "the body came back: {large}");
    d.wait_queue_len(0, 10).await;
    d.stop().await;
}

/// A DSN that cannot be queued (the spool is full) is owed, not lost: the
/// original stays queued with the DSN recorded as owed in its status, and
/// once there is room again the DSN goes out and only then is the
/// original removed. Needs root (a small tmpfs for the spool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_mount_a_dsn_that_cannot_be_queued_keeps_the_original() {
    let net = Net::new(zone()).await;
    let sender_mx = net.sink(5, Behaviour::default()).await;
    // First attempt deferred (451), the second refused (550): a DSN.
    let _dest = net
        .sink(
            6,
            Behaviour {
                tempfail_first: 1,
                reject_rcpts: vec!["bad@d.test".into()],
                ..Default::default()
            },
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let fs = dir.path().join("spoolfs");
    let _mnt = common::Tmpfs::mount(&fs, "2m");
    let mut cfg = net.config();
    cfg.spool.reserve_bytes = 0;
    let d = start(cfg, fs.join("spool")).await;
    let body = format!(
        "Subject: owed\r\n\r\n{}",
        format!("{}\r\n", "q".repeat(70)).repeat(430)
    );
    let id = send_ret_full(&d, "s@s.test", "bad@d.test", &body).await;
    let st = status_after(&d.spool, id, 1).await;
    assert_eq!(st.rcpts[0].state, pigeon::queue::RcptState::Pending);
    // Fill the spool, leaving room for a status file but not for the DSN
    // (which carries the 30 KB original).
    let filler = fs.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![b'x'; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    let len = f.metadata().unwrap().len();
    f.set_len(len.saturating_sub(12 * 1024)).unwrap();
    drop(f);
    let st = status_after(&d.spool, id, 2).await;
    assert_eq!(st.rcpts[0].state, pigeon::queue::RcptState::Failed);
    assert_eq!(st.rcpts[0].dsn_owed, Some(pigeon::queue::DsnOwed::Failed));
    assert!(sender_mx.messages().is_empty());
    assert_eq!(pigeon::queue::list(&d.spool).unwrap().len(), 1);
    // Room again: the next pass queues the DSN and lets the original go.
    std::fs::remove_file(&filler).unwrap();
    d.handle
        .request(pigeon::delivery::Request::Flush(vec![id]))
        .await;
    let got = sender_mx.wait_for(1, 20).await;
    let t = text(&got[0].data);
    assert!(t.contains("Final-Recipient: rfc822; bad@d.test"), "{t}");
    assert!(t.contains("Status: 5.1.1"), "{t}");
    assert!(t.contains("Content-Type: message/rfc822"), "{t}");
    d.wait_queue_len(0, 10).await;
    d.stop().await;
}

/// The trace stream: one event per thing that happens, in order, for a
/// message deferred once and then delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_events_tell_the_story_of_a_message() {
    use pigeon::trace::{Event, Removal, Subscriber};
    use std::sync::{Arc, Mutex};
    struct Collect(Mutex<Vec<Event>>);
    impl Subscriber for Collect {
        fn on(&self, e: &Event) {
            self.0.lock().unwrap().push(e.clone());
        }
    }
    let seen = Arc::new(Collect(Mutex::new(Vec::new())));
    pigeon::trace::subscribe(seen.clone());
    let net = Net::new(zone()).await;
    let dest = net
        .sink(
            7,
            Behaviour {
                tempfail_first: 1,
                ..Default::default()
            },
        )
        .await;
    let d = net.start(net.config()).await;
    let id = d
        .send(
            "s@s.test",
            &["r@e.test"],
            "Message-ID: <story@s.test>\r\nSubject: story\r\n\r\nx\r\n",
        )
        .await;
    dest.wait_for(1, 20).await;
    d.wait_queue_len(0, 10).await;
    d.stop().await;
    let mine: Vec<Event> = seen
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| match e {
            Event::Accepted { queue_id, .. }
            | Event::Delivered { queue_id, .. }
            | Event::Deferred { queue_id, .. }
            | Event::Failed { queue_id, .. }
            | Event::DsnQueued { queue_id, .. }
            | Event::Removed { queue_id, .. } => *queue_id == id,
            _ => false,
        })
        .cloned()
        .collect();
    assert_eq!(mine.len(), 4, "{mine:#?}");
    match &mine[0] {
        Event::Accepted {
            message_id,
            sender,
            recipients,
            helo,
            ..
        } => {
            assert_eq!(message_id.as_deref(), Some("<story@s.test>"));
            assert_eq!(sender, "s@s.test");
            assert_eq!(recipients, &["r@e.test"]);
            assert_eq!(helo, "client.test");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&mine[1], Event::Deferred { recipient, status, .. } if recipient == "r@e.test" && status.is_transient()),
        "{:?}",
        mine[1]
    );
    assert!(
        matches!(&mine[2], Event::Delivered { recipient, local: false, .. } if recipient == "r@e.test")
    );
    assert!(matches!(
        &mine[3],
        Event::Removed {
            why: Removal::Done,
            ..
        }
    ));
}
