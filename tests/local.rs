//! Local delivery end to end: the real server and delivery manager with
//! users, aliases, a catch-all and subaddresses; Maildirs in a temporary
//! directory; a scripted LMTP server on a Unix socket; a scripted SMTP sink
//! for mail that aliases send elsewhere and for DSNs.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::sink::{Behaviour, Sink};
use common::{alias, maildir_messages, user, Client};
use common::{daemon, lmtp};
use pigeon::config::{Config, ListenerConfig, ListenerMode, UserDelivery};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// example.org and example.net are local. Users alice (two addresses)
/// and bob; postmaster and abuse go to alice. Other domains (remote.test,
/// src.test) are routed to `sink`.
fn config(sink: &Sink) -> Config {
    let mut cfg = Config::default();
    cfg.server.hostname = "mx.example.org".into();
    cfg.domains.local = vec!["example.org".into(), "example.net".into()];
    cfg.listeners = vec![ListenerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        ListenerMode::Smtp,
    )];
    cfg.auth.users = vec![
        user(
            "alice",
            "$6$x$y",
            &["alice@example.org", "a.smith@example.org"],
        ),
        user("bob", "$6$x$y", &["bob@example.org"]),
    ];
    alias(&mut cfg, "postmaster", &["alice@example.org"]);
    alias(&mut cfg, "abuse", &["alice@example.org"]);
    let hop = format!("[127.0.0.1]:{}", sink.addr.port());
    cfg.delivery
        .routes
        .insert("remote.test".into(), hop.clone());
    cfg.delivery.routes.insert("src.test".into(), hop);
    cfg.dns.nameservers = vec!["127.0.0.1:1".parse().unwrap()];
    cfg.delivery.first_retry_secs = 1;
    cfg.delivery.max_retry_interval_secs = 1;
    cfg.delivery.delay_warning_secs = 0;
    cfg
}

fn maildir(root: &Path, domain: &str, user: &str) -> PathBuf {
    root.join("mail").join(domain).join(user).join("Maildir")
}

/// Waits until the Maildir holds `n` messages.
async fn wait_maildir(md: &Path, n: usize, secs: u64) -> Vec<Vec<u8>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let m = maildir_messages(md);
        if m.len() >= n {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: {} of {n} messages",
            md.display(),
            m.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stored message without the headers added on the way (Return-Path,
/// Delivered-To, Received with its continuation lines).
fn content(stored: &[u8]) -> String {
    let t = text(stored);
    let mut out = String::new();
    let mut skipping = false;
    let mut in_header = true;
    for line in t.split_inclusive('\n') {
        if in_header {
            if line == "\n" {
                in_header = false;
            } else if line.starts_with([' ', '\t']) {
                if skipping {
                    continue;
                }
            } else {
                let l = line.to_ascii_lowercase();
                skipping = l.starts_with("return-path:")
                    || l.starts_with("delivered-to:")
                    || l.starts_with("received:");
                if skipping {
                    continue;
                }
            }
        }
        out.push_str(line);
    }
    out
}

fn header<'a>(stored: &'a str, name: &str) -> Vec<&'a str> {
    let end = stored.find("\n\n").unwrap_or(stored.len());
    stored[..end]
        .lines()
        .filter_map(|l| {
            l.split_once(':')
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim())
        })
        .collect()
}

/// Waits for the first attempt at the message's first recipient, and checks
/// that it was deferred with this status.
async fn assert_deferred(spool: &Path, id: pigeon::queue::QueueId, status: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = pigeon::queue::read_message(spool, id).unwrap();
        let st = &m.status.rcpts[0];
        if st.attempts >= 1 {
            assert_eq!(st.state, pigeon::queue::RcptState::Pending);
            assert!(
                st.last_reply.starts_with(&format!("{status} ")),
                "{}",
                st.last_reply
            );
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never attempted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn session(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::connect(addr).await;
    c.reply().await;
    c.cmd("EHLO client.src.test").await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_aliases_catch_all_and_subaddresses_reach_the_right_maildir() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sink);
    cfg.local.subaddress_folders = true;
    alias(&mut cfg, "team@example.org", &["alice", "bob@example.org"]);
    alias(&mut cfg, "fwd@example.org", &["far@remote.test"]);
    alias(&mut cfg, "@example.net", &["bob@example.org"]);
    let d = daemon::start(cfg, dir.path().join("spool")).await;
    let alice = maildir(dir.path(), "example.org", "alice");
    let bob = maildir(dir.path(), "example.org", "bob");
    // A folder for alice+lists@ (Maildir++): used because it exists.
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(alice.join(".lists").join(sub)).unwrap();
    }

    let mut c = session(d.addr).await;
    let r = c.cmd("MAIL FROM:<s@src.test>").await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("RCPT TO:<nobody@example.org>").await;
    assert!(
        r.starts_with("550 5.1.1"),
        "unknown user refused at RCPT: {r}"
    );
    let r = c.cmd("RCPT TO:<nobody+x@example.org>").await;
    assert!(r.starts_with("550 5.1.1"), "{r}");
    c.cmd("RSET").await;

    let body = |n: &str| {
        format!(
            "From: s@src.test\r\nSubject: {n}\r\nMessage-Id: <{n}@src.test>\r\n\r\nline one\r\n..dotted\r\n\r\nend {n}\r\n"
        )
    };
    let sent_as = |n: &str| {
        content(
            body(n)
                .replace("\r\n", "\n")
                .replace("\n..", "\n.")
                .as_bytes(),
        )
    };
    for (to, n) in [
        ("alice@example.org", "direct"),
        ("A.Smith@EXAMPLE.org", "second-address"),
        ("alice+news@example.org", "subaddress"),
        ("alice+lists@example.org", "folder"),
        ("team@example.org", "alias"),
        ("whoever@example.net", "catch-all"),
        ("fwd@example.org", "forward"),
    ] {
        let r = c.mail("s@src.test", &[to], &body(n)).await;
        assert!(r.starts_with("250 2.0.0"), "{to}: {r}");
    }
    c.cmd("QUIT").await;

    let got = wait_maildir(&alice, 4, 20).await;
    let by_subject = |msgs: &[Vec<u8>], n: &str| -> String {
        let m = msgs
            .iter()
            .map(|m| text(m))
            .find(|m| m.contains(&format!("Subject: {n}\n")))
            .unwrap_or_else(|| panic!("no message {n}"));
        assert_eq!(content(m.as_bytes()), sent_as(n), "{n} intact");
        assert!(
            m.starts_with("Return-Path: <s@src.test>\nDelivered-To: "),
            "{m}"
        );
        assert!(!m.contains('\r'), "Unix line ends in the Maildir");
        m
    };
    assert_eq!(got.len(), 4, "direct, second address, subaddress, alias");
    let m = by_subject(&got, "direct");
    assert_eq!(header(&m, "Delivered-To"), ["alice@example.org"]);
    by_subject(&got, "second-address");
    let m = by_subject(&got, "subaddress");
    assert_eq!(header(&m, "Delivered-To"), ["alice+news@example.org"]);
    let m = by_subject(&got, "alias");
    assert_eq!(
        header(&m, "Delivered-To"),
        ["alice@example.org", "team@example.org"],
        "final address, then the alias it came through"
    );
    let lists = maildir_messages(&alice.join(".lists"));
    assert_eq!(lists.len(), 1);
    by_subject(&lists, "folder");

    let got = wait_maildir(&bob, 2, 20).await;
    by_subject(&got, "alias");
    let m = by_subject(&got, "catch-all");
    assert_eq!(header(&m, "Delivered-To"), ["bob@example.org"]);

    let fwd = sink.wait_for(1, 20).await;
    assert_eq!(fwd[0].mail_from, "s@src.test");
    assert_eq!(fwd[0].rcpts, ["far@remote.test"]);
    let t = text(&fwd[0].data);
    assert!(t.contains("Delivered-To: fwd@example.org\r\n"), "{t}");
    assert!(t.contains("Subject: forward\r\n"), "{t}");
    d.wait_queue_len(0, 20).await;
    assert_eq!(sink.messages().len(), 1, "no DSN for successful deliveries");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmtp_replies_per_recipient_retry_on_4xx_and_bounce_on_5xx() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), Behaviour::default()).await;
    let server = lmtp::Lmtp::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sink);
    cfg.local.lmtp = server.path.display().to_string();
    for u in ["carol", "dave", "erin"] {
        let mut x = user(u, "$6$x$y", &[&format!("{u}@example.org")]);
        x.delivery = Some(UserDelivery::Lmtp);
        cfg.auth.users.push(x);
    }
    // A subaddress reaches the LMTP server with its tag.
    server.after_data("dave+x@example.org", &["452 4.2.2 Mailbox is full"]);
    server.after_data("erin@example.org", &["552 5.2.2 Quota exceeded for good"]);
    let d = daemon::start(cfg, dir.path().join("spool")).await;
    let id = d
        .send(
            "s@src.test",
            &[
                "carol@example.org",
                "dave+x@example.org",
                "erin@example.org",
            ],
            "Subject: via lmtp\r\n\r\nhello\r\n",
        )
        .await;
    let txns = server.wait_for(2, 20).await;
    assert_eq!(
        txns[0].rcpts,
        [
            "carol@example.org",
            "dave+x@example.org",
            "erin@example.org"
        ],
        "one LMTP transaction for the three"
    );
    assert_eq!(txns[0].mail_from, "s@src.test");
    assert!(text(&txns[0].data).contains("Subject: via lmtp\r\n"));
    assert_eq!(
        txns[1].rcpts,
        ["dave+x@example.org"],
        "only the 4xx one is retried"
    );
    // The 5xx one is returned to the sender.
    let dsn = sink.wait_for(1, 20).await;
    assert_eq!(dsn[0].mail_from, "");
    assert_eq!(dsn[0].rcpts, ["s@src.test"]);
    let t = text(&dsn[0].data);
    assert!(
        t.contains("Final-Recipient: rfc822; erin@example.org"),
        "{t}"
    );
    assert!(t.contains("Status: 5.2.2"), "{t}");
    assert!(t.contains("Quota exceeded for good"), "{t}");
    assert!(
        !t.contains("carol@example.org"),
        "only the failed recipient: {t}"
    );
    d.wait_queue_len(0, 20).await;
    assert!(!pigeon::queue::list(&d.spool)
        .unwrap()
        .iter()
        .any(|m| m.id == id.to_string()));
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_maildir_bounces_and_a_broken_one_is_retried() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sink);
    cfg.local.create_maildir = false;
    let d = daemon::start(cfg, dir.path().join("spool")).await;
    d.send(
        "s@src.test",
        &["bob@example.org"],
        "Subject: no box\r\n\r\nx\r\n",
    )
    .await;
    let dsn = sink.wait_for(1, 20).await;
    let t = text(&dsn[0].data);
    assert!(
        t.contains("Final-Recipient: rfc822; bob@example.org"),
        "{t}"
    );
    assert!(t.contains("Status: 5.1.1"), "{t}");
    assert!(t.contains("does not exist"), "{t}");
    d.wait_queue_len(0, 10).await;
    d.stop().await;

    // A file where the Maildir's parent should be: a local error the
    // administrator can fix, so the message waits and is retried.
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("mail/example.org/bob");
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a directory").unwrap();
    let d = daemon::start(config(&sink), dir.path().join("spool")).await;
    let id = d
        .send(
            "s@src.test",
            &["bob@example.org"],
            "Subject: later\r\n\r\nx\r\n",
        )
        .await;
    assert_deferred(&d.spool, id, "4.3.0").await;
    std::fs::remove_file(&blocker).unwrap();
    let got = wait_maildir(&maildir(dir.path(), "example.org", "bob"), 1, 20).await;
    assert!(text(&got[0]).contains("Subject: later\n"));
    d.wait_queue_len(0, 10).await;
    assert!(
        sink.messages().is_empty(),
        "no DSN for a delivery that succeeded"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alias_with_its_own_address_keeps_a_copy_and_loops_stop() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sink);
    alias(
        &mut cfg,
        "bob@example.org",
        &["bob@example.org", "bob@remote.test"],
    );
    let d = daemon::start(cfg, dir.path().join("spool")).await;
    d.send(
        "s@src.test",
        &["bob@example.org"],
        "Subject: copy\r\n\r\nx\r\n",
    )
    .await;
    let got = wait_maildir(&maildir(dir.path(), "example.org", "bob"), 1, 20).await;
    assert!(text(&got[0]).contains("Subject: copy\n"));
    let fwd = sink.wait_for(1, 20).await;
    assert_eq!(fwd[0].rcpts, ["bob@remote.test"]);
    // The forwarded copy comes back (a loop elsewhere): it is kept in the
    // mailbox, not forwarded again.
    let mut back = fwd[0].data.clone();
    let back = String::from_utf8(std::mem::take(&mut back)).unwrap();
    let mut c = session(d.addr).await;
    let r = c.mail("s@src.test", &["bob@example.org"], &back).await;
    assert!(r.starts_with("250"), "{r}");
    c.cmd("QUIT").await;
    wait_maildir(&maildir(dir.path(), "example.org", "bob"), 2, 20).await;
    d.wait_queue_len(0, 20).await;
    assert_eq!(sink.messages().len(), 1, "not forwarded a second time");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_recipients_reaching_one_mailbox_get_one_copy() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon::start(config(&sink), dir.path().join("spool")).await;
    // alice@ and her second address, and postmaster@ of two domains: all alice.
    d.send(
        "s@src.test",
        &[
            "alice@example.org",
            "a.smith@example.org",
            "postmaster@example.net",
            "postmaster@mx.example.org",
        ],
        "Subject: once\r\n\r\nx\r\n",
    )
    .await;
    d.wait_queue_len(0, 20).await;
    let got = maildir_messages(&maildir(dir.path(), "example.org", "alice"));
    assert_eq!(got.len(), 1, "one copy in the mailbox");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmtp_over_tcp() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), Behaviour::default()).await;
    let server = lmtp::Lmtp::start_tcp().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&sink);
    cfg.local.lmtp = server.path.display().to_string();
    cfg.local.delivery = pigeon::config::LocalDelivery::Lmtp;
    let d = daemon::start(cfg, dir.path().join("spool")).await;
    d.send(
        "s@src.test",
        &["bob@example.org"],
        "Subject: tcp\r\n\r\nx\r\n",
    )
    .await;
    let t = server.wait_for(1, 20).await;
    assert_eq!(t[0].rcpts, ["bob@example.org"]);
    d.wait_queue_len(0, 20).await;
    assert!(sink.messages().is_empty());
    d.stop().await;
}

/// A full mail file system is a temporary failure: the message waits and
/// is delivered once there is room. Needs root (a small tmpfs; fails
/// without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_mount_full_mail_disk_is_retried_then_delivered() {
    let sink = Sink::start("127.0.0.1:0".parse().unwrap(), Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let _mnt = common::Tmpfs::mount(&dir.path().join("mail"), "256k");
    // Bob's Maildir exists; the rest of the file system is taken.
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir(dir.path(), "example.org", "bob").join(sub)).unwrap();
    }
    let filler = dir.path().join("mail/filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![b'x'; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let d = daemon::start(config(&sink), dir.path().join("spool")).await;
    let body = format!("Subject: big\r\n\r\n{}\r\n", "y".repeat(64 * 1024));
    let id = d.send("s@src.test", &["bob@example.org"], &body).await;
    assert_deferred(&d.spool, id, "4.3.1").await;
    assert!(maildir_messages(&maildir(dir.path(), "example.org", "bob")).is_empty());
    std::fs::remove_file(&filler).unwrap();
    let got = wait_maildir(&maildir(dir.path(), "example.org", "bob"), 1, 20).await;
    assert!(text(&got[0]).contains("Subject: big\n"));
    assert_eq!(
        std::fs::read_dir(maildir(dir.path(), "example.org", "bob").join("tmp"))
            .unwrap()
            .count(),
        0,
        "the failed write left nothing in tmp/"
    );
    d.wait_queue_len(0, 10).await;
    assert!(sink.messages().is_empty(), "no DSN");
    d.stop().await;
}
