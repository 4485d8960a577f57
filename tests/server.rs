//! The real server on 127.0.0.1:0 with a temporary spool, spoken to in raw SMTP.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn accepts_and_stores_durably() {
    let srv = start(test_config()).await;
    let mut c = srv.client().await;
    assert!(c.reply().await.starts_with("220 mx.test ESMTP"));
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.contains("250-PIPELINING") && ehlo.ends_with("250 DSN"),
        "{ehlo}"
    );
    let body = "Subject: test\r\nFrom: a@src.test\r\n\r\nline 1\r\n..starts with a dot\r\n\u{e9}t\u{e9}\r\n";
    let r = c
        .mail(
            "a@src.test",
            &["u@example.org", "v@example.org"],
            &body.replace("\r\n..", "\r\n..."),
        )
        .await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
    let id = queued_id(&r);
    assert_eq!(c.cmd("QUIT").await, "221 2.0.0 Bye");
    let list = srv.queued();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);
    assert_eq!(list[0].sender, "a@src.test");
    let msg = pigeon::queue::read_message(&srv.spool, id.parse().unwrap()).unwrap();
    assert_eq!(msg.envelope.recipients.len(), 2);
    assert_eq!(strip_received(&msg.body), body.as_bytes());
    let text = String::from_utf8_lossy(&msg.body);
    assert!(
        text.starts_with(
            "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (pigeon) with ESMTP id "
        ),
        "{text}"
    );
    assert!(text.contains(&format!("id {id};")), "{text}");
}

#[tokio::test]
async fn pipelined_transaction_in_one_write() {
    let srv = start(test_config()).await;
    let mut c = srv.client().await;
    c.reply().await;
    c.send("EHLO c\r\nMAIL FROM:<a@src.test>\r\nRCPT TO:<u@example.org>\r\nRCPT TO:<bad address>\r\nRCPT TO:<w@example.org>\r\nDATA\r\n").await;
    let replies: Vec<String> = futures_replies(&mut c, 6).await;
    assert!(replies[0].starts_with("250-"));
    assert!(replies[1].starts_with("250 2.1.0"));
    assert!(replies[2].starts_with("250 2.1.5"));
    assert!(replies[3].starts_with("501 5.5.4"));
    assert!(replies[4].starts_with("250 2.1.5"));
    assert!(replies[5].starts_with("354"));
    c.send("x\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<u@example.org>\r\nBDAT 3 LAST\r\nabcQUIT\r\n")
        .await;
    let replies = futures_replies(&mut c, 5).await;
    assert!(replies[0].starts_with("250 2.0.0 Ok: queued as"));
    assert!(
        replies[3].starts_with("250 2.0.0 Ok: queued as"),
        "{replies:?}"
    );
    assert!(replies[4].starts_with("221"));
    assert_eq!(srv.queued().len(), 2);
}

async fn futures_replies(c: &mut Client, n: usize) -> Vec<String> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(c.reply().await);
    }
    v
}

#[tokio::test]
async fn unauthenticated_relay_refused() {
    let mut cfg = test_config();
    cfg.relay.trusted_networks = vec![];
    let srv = start(cfg).await;
    let mut c = srv.client().await;
    c.reply().await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@src.test>").await;
    for rcpt in [
        "<bob@remote.test>",
        "<bob%remote.test@example.org>",
        "<remote.test!bob@example.org>",
        "<\"bob@remote.test\"@example.org>",
        "<bob@[127.0.0.1]>",
        "<bob@example.org.>",
        "<@example.org:bob@remote.test>",
    ] {
        let r = c.cmd(&format!("RCPT TO:{rcpt}")).await;
        assert!(
            r.starts_with("554 5.7.1") || r.starts_with("501"),
            "{rcpt}: {r}"
        );
    }
    assert!(c.cmd("RCPT TO:<bob@example.org>").await.starts_with("250"));
}

#[tokio::test]
async fn per_ip_and_global_connection_limits() {
    let mut cfg = test_config();
    cfg.relay.trusted_networks = vec![];
    cfg.limits.max_connections_per_ip = 2;
    let srv = start(cfg).await;
    let mut a = srv.client().await;
    let mut b = srv.client().await;
    assert!(a.reply().await.starts_with("220"));
    assert!(b.reply().await.starts_with("220"));
    let mut c = srv.client().await;
    assert!(c.reply().await.starts_with("421 4.7.0"));
    drop(a);
    // The slot is free once the server has seen the close: until then a
    // new connection may still be refused.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut d = srv.client().await;
        let r = d.reply().await;
        if r.starts_with("220") {
            break;
        }
        assert!(r.starts_with("421 4.7.0"), "{r}");
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::task::yield_now().await;
    }

    let mut cfg = test_config();
    cfg.limits.max_connections = 2;
    let srv = start(cfg).await;
    let mut a = srv.client().await;
    let mut b = srv.client().await;
    assert!(a.reply().await.starts_with("220"));
    assert!(b.reply().await.starts_with("220"));
    let mut c = srv.client().await;
    assert!(c.reply().await.starts_with("421 4.7.0"));
}

#[tokio::test]
async fn idle_client_times_out() {
    let mut cfg = test_config();
    cfg.limits.command_timeout_secs = 1;
    let srv = start(cfg).await;
    let mut c = srv.client().await;
    c.reply().await;
    let t = std::time::Instant::now();
    assert!(c.reply().await.starts_with("421 4.4.2"));
    assert!(t.elapsed() >= Duration::from_millis(900));
    assert_eq!(c.reply().await, "");
}

#[tokio::test]
async fn low_disk_space_refuses_mail() {
    let mut cfg = test_config();
    cfg.spool.reserve_bytes = u64::MAX / 4;
    let srv = start(cfg).await;
    let mut c = srv.client().await;
    c.reply().await;
    c.cmd("EHLO c").await;
    assert!(c
        .cmd("MAIL FROM:<a@src.test>")
        .await
        .starts_with("452 4.3.1"));
}

#[tokio::test]
async fn oversized_message_leaves_nothing() {
    let mut cfg = test_config();
    cfg.limits.max_message_size = 100_000;
    let srv = start(cfg).await;
    let mut c = srv.client().await;
    c.reply().await;
    c.cmd("EHLO c").await;
    assert!(c
        .cmd("MAIL FROM:<a@src.test> SIZE=100001")
        .await
        .starts_with("552 5.3.4"));
    let line = format!("{}\r\n", "x".repeat(998));
    let r = c
        .mail("a@src.test", &["u@example.org"], &line.repeat(400))
        .await;
    assert!(r.starts_with("552 5.3.4"), "{r}");
    assert!(c.cmd("NOOP").await.starts_with("250"));
    assert!(srv.queued().is_empty());
    assert_eq!(std::fs::read_dir(srv.spool.join("tmp")).unwrap().count(), 0);
}

#[tokio::test]
async fn large_message_spills_and_round_trips() {
    let srv = start(test_config()).await;
    let mut c = srv.client().await;
    c.reply().await;
    c.cmd("EHLO c").await;
    let mut body = String::from("Subject: big\r\n\r\n");
    for i in 0..20_000 {
        body.push_str(&format!("{i:06} .{}\r\n", "y".repeat(90)));
    }
    let r = c.mail("a@src.test", &["u@example.org"], &body).await;
    let id = queued_id(&r);
    let msg = pigeon::queue::read_message(&srv.spool, id.parse().unwrap()).unwrap();
    assert_eq!(strip_received(&msg.body), body.as_bytes());
    // The same through BDAT in uneven chunks.
    c.cmd("MAIL FROM:<a@src.test>").await;
    c.cmd("RCPT TO:<u@example.org>").await;
    let bytes = body.as_bytes();
    let (p1, p2) = bytes.split_at(777_777);
    c.send(&format!("BDAT {}\r\n", p1.len())).await;
    c.send_bytes(p1).await;
    assert!(c.reply().await.starts_with("250 2.0.0"));
    c.send(&format!("BDAT {} LAST\r\n", p2.len())).await;
    c.send_bytes(p2).await;
    let r = c.reply().await;
    let msg = pigeon::queue::read_message(&srv.spool, queued_id(&r).parse().unwrap()).unwrap();
    assert_eq!(strip_received(&msg.body), body.as_bytes());
}

#[tokio::test]
async fn smuggled_commands_never_make_a_message() {
    let srv = start(test_config()).await;
    for variant in ["\n.\n", "\r.\r", "\n.\r\n", "\r\n.\r", "\r\n.\r\r\n"] {
        let mut c = srv.client().await;
        c.reply().await;
        c.cmd("EHLO c").await;
        c.cmd("MAIL FROM:<a@src.test>").await;
        c.cmd("RCPT TO:<u@example.org>").await;
        c.cmd("DATA").await;
        c.send(&format!("Subject: s\r\n\r\nhello{variant}MAIL FROM:<evil@src.test>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\nsmuggled\r\n.\r\n")).await;
        let r = c.reply().await;
        assert!(r.starts_with("250 2.0.0"), "{variant:?}: {r}");
        assert!(c.cmd("QUIT").await.starts_with("221"));
    }
    let list = srv.queued();
    assert_eq!(list.len(), 5);
    for m in &list {
        assert_eq!(m.sender, "a@src.test");
        assert_eq!(m.recipients.len(), 1);
        assert_eq!(m.recipients[0].address, "u@example.org");
    }
}

#[tokio::test]
async fn huge_line_is_refused_and_session_goes_on() {
    let srv = start(test_config()).await;
    let mut c = srv.client().await;
    c.reply().await;
    c.send(&format!("EHLO {}\r\n", "x".repeat(1 << 20))).await;
    assert!(c.reply().await.starts_with("500 5.5.2"));
    assert!(c.cmd("NOOP").await.starts_with("250 2.0.0"));
}

#[tokio::test]
async fn shutdown_lets_data_finish_then_closes() {
    let srv = start(test_config()).await;
    let mut idle = srv.client().await;
    idle.reply().await;
    let mut c = srv.client().await;
    c.reply().await;
    c.cmd("EHLO c").await;
    c.cmd("MAIL FROM:<a@src.test>").await;
    c.cmd("RCPT TO:<u@example.org>").await;
    c.cmd("DATA").await;
    c.send("Subject: in flight\r\n\r\npart one\r\n").await;
    let mut srv = srv;
    let running = srv.running.take().unwrap();
    let stopper = tokio::spawn(running.shutdown(Duration::from_secs(10)));
    // The idle session's 421 shows the shutdown under way.
    assert!(idle.reply().await.starts_with("421 4.3.2"));
    c.send("part two\r\n.\r\n").await;
    assert!(c.reply().await.starts_with("250 2.0.0 Ok: queued as"));
    assert!(c.reply().await.starts_with("421 4.3.2"));
    tokio::time::timeout(Duration::from_secs(5), stopper)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(srv.queued().len(), 1);
    assert!(tokio::net::TcpStream::connect(srv.addr).await.is_err());
}

/// A write failure mid-DATA (a full file system) gives 451 4.3.0 and leaves
/// no partial file. Needs root to mount a small tmpfs (fails without it).
#[tokio::test]
async fn needs_mount_full_disk_mid_data_gives_451_and_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    let _guard = Tmpfs::mount(&mnt, "1m");
    let mut cfg = test_config();
    cfg.spool.reserve_bytes = 1;
    let spool = mnt.join("spool");
    cfg.spool.dir = spool.clone();
    let (queue, _) = pigeon::queue::Queue::open(&spool, 1).unwrap();
    let listeners = pigeon::server::bind_all(&cfg).unwrap();
    let running = pigeon::server::start(common::live(cfg), queue, listeners, None).unwrap();
    let mut c = Client::connect(running.addrs[0]).await;
    c.reply().await;
    c.cmd("EHLO c").await;
    let line = format!("{}\r\n", "z".repeat(500));
    let r = c
        .mail("a@src.test", &["u@example.org"], &line.repeat(4000))
        .await;
    assert!(r.starts_with("451 4.3.0"), "{r}");
    assert!(c.cmd("NOOP").await.starts_with("250"));
    assert_eq!(std::fs::read_dir(spool.join("tmp")).unwrap().count(), 0);
    assert!(pigeon::queue::list(&spool).unwrap().is_empty());
    // A small message still fits and is accepted.
    let r = c
        .mail(
            "a@src.test",
            &["u@example.org"],
            "Subject: small\r\n\r\nok\r\n",
        )
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    running.shutdown(Duration::from_secs(1)).await;
}

/// A client's own `Delivered-To:` naming an alias without a mailbox
/// (postmaster, as every install has) is refused at the end of DATA and
/// of BDAT, never accepted and then bounced by local delivery.
#[tokio::test]
async fn forged_delivered_to_loop_refused_in_session() {
    let srv = start(test_config()).await;
    let mut c = srv.client().await;
    c.reply().await;
    c.cmd("EHLO c").await;
    let forged = "Delivered-To: postmaster@example.org\r\nSubject: x\r\n\r\nbody\r\n";
    let r = c
        .mail("victim@remote.test", &["postmaster@example.org"], forged)
        .await;
    assert!(r.starts_with("554 5.4.6"), "{r}");
    // The same through BDAT, with the field folded.
    assert!(c
        .cmd("MAIL FROM:<victim@remote.test>")
        .await
        .starts_with("250"));
    assert!(c
        .cmd("RCPT TO:<postmaster@example.org>")
        .await
        .starts_with("250"));
    let content = "Delivered-To:\r\n postmaster@example.org\r\n\r\nbody\r\n";
    c.send(&format!("BDAT {} LAST\r\n{content}", content.len()))
        .await;
    let r = c.reply().await;
    assert!(r.starts_with("554 5.4.6"), "{r}");
    // A message for the mailbox itself is fine.
    let r = c
        .mail("victim@remote.test", &["box@example.org"], forged)
        .await;
    assert!(r.starts_with("250 2.0.0"), "{r}");
    assert_eq!(srv.queued().len(), 1);
}

/// The local submission socket ends up 0666, set without following links.
#[tokio::test]
async fn sendmail_socket_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run/sendmail.sock");
    let _l = pigeon::server::bind_sendmail(&path).unwrap();
    let mode = std::fs::symlink_metadata(&path)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
}
