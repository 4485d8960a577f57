//! Unit tests of the queue against real directories (tempfile).

use std::collections::BTreeSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::Instant;

use super::codec::{CHUNK, MSG_MAGIC, PREAMBLE_LEN};
use super::*;
use crate::proto::{BodyType, Notify, Recipient, Ret};

fn envelope(n_rcpts: usize) -> Envelope {
    Envelope {
        sender: "alice@example.org".into(),
        recipients: (0..n_rcpts)
            .map(|i| Recipient {
                address: format!("rcpt{i}@example.net"),
                orcpt: (i % 2 == 0).then(|| format!("rfc822;orig{i}@example.net")),
                notify: Notify(Notify::SUCCESS | Notify::FAILURE),
            })
            .collect(),
        ret: Some(Ret::Hdrs),
        envid: Some("env\r\nid\0x".into()),
        body_type: BodyType::EightBitMime,
        smtputf8: true,
        client_ip: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        helo: "client.example.org".into(),
        protocol: "ESMTPSA".into(),
        auth_user: Some("alice".into()),
    }
}

fn plain_envelope() -> Envelope {
    Envelope {
        sender: String::new(),
        recipients: vec![Recipient {
            address: "bob@example.com".into(),
            orcpt: None,
            notify: Notify::default(),
        }],
        ret: None,
        envid: None,
        body_type: BodyType::SevenBit,
        smtputf8: false,
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        helo: "[192.0.2.7]".into(),
        protocol: "SMTP".into(),
        auth_user: None,
    }
}

/// Deterministic bytes covering every value, CR, LF and NUL included.
fn body_bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

async fn store(q: &Queue, env: Envelope, body: &[u8], piece: usize) -> QueueId {
    let id = q.new_id();
    let mut w = q.writer(id, 1_700_000_000, env);
    for part in body.chunks(piece.max(1)) {
        w.write(part).await.unwrap();
    }
    assert_eq!(w.body_len(), body.len() as u64);
    q.commit(w).await.unwrap()
}

#[tokio::test]
async fn commit_then_read_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, rec) = Queue::open(tmp.path(), 0).unwrap();
    assert_eq!((rec.loaded, rec.corrupt, rec.tmp_removed), (0, 0, 0));
    let body = b"Subject: hi\r\n\r\nline\r\n.\r\n\0\xff\xfe\r\n".to_vec();
    let env = envelope(3);
    let id = store(&q, env.clone(), &body, 5).await;
    assert_eq!(q.len(), 1);
    assert_eq!(q.ids(), vec![id]);
    assert!(names(&tmp.path().join("tmp")).is_empty());

    let m = read_message(tmp.path(), id).unwrap();
    assert_eq!(m.id, id);
    assert_eq!(m.arrival, 1_700_000_000);
    assert_eq!(m.envelope, env);
    assert_eq!(m.body, body);
    assert_eq!(m.status, MessageStatus::all_pending(3));

    let id2 = store(&q, plain_envelope(), b"", 1).await;
    let m2 = read_message(tmp.path(), id2).unwrap();
    assert_eq!(m2.envelope, plain_envelope());
    assert!(m2.body.is_empty());

    assert!(matches!(
        read_message(tmp.path(), QueueId(12345)),
        Err(ReadError::NotFound)
    ));
}

#[tokio::test]
async fn writer_output_equals_encode_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let sizes = [
        0,
        1,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        MEMORY_LIMIT,
        MEMORY_LIMIT + 1,
        4 * CHUNK + MEMORY_LIMIT,
        3 * MEMORY_LIMIT + 17,
    ];
    for (i, &size) in sizes.iter().enumerate() {
        for piece in [1000, 4096, 100_003, MEMORY_LIMIT + 5] {
            if size > 100_000 && piece == 1000 && size != MEMORY_LIMIT + 1 {
                continue; // keep the debug-build test fast
            }
            let body = body_bytes(size, i as u32);
            let env = envelope(i % 4);
            let id = store(&q, env.clone(), &body, piece).await;
            let on_disk = fs::read(tmp.path().join("queue").join(id.to_string())).unwrap();
            assert_eq!(
                on_disk,
                encode_message(id, 1_700_000_000, &env, &body, &Extras::default()),
                "size {size} piece {piece}"
            );
            let m = read_message(tmp.path(), id).unwrap();
            assert_eq!(m.body, body);
        }
    }
    assert!(names(&tmp.path().join("tmp")).is_empty());
}

#[tokio::test]
async fn dropping_a_spilled_writer_cleans_tmp() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let tmp_dir = tmp.path().join("tmp");
    let mut w = q.writer(q.new_id(), 0, plain_envelope());
    w.write(&body_bytes(MEMORY_LIMIT, 1)).await.unwrap();
    assert!(names(&tmp_dir).is_empty(), "no file while in memory");
    w.write(&body_bytes(MEMORY_LIMIT, 2)).await.unwrap();
    assert_eq!(names(&tmp_dir).len(), 1, "spilled to tmp/");
    drop(w);
    assert!(names(&tmp_dir).is_empty());
    assert!(names(&tmp.path().join("queue")).is_empty());
    assert_eq!(q.len(), 0);

    // An in-memory writer dropped: nothing was ever written.
    let mut w = q.writer(q.new_id(), 0, plain_envelope());
    w.write(b"small").await.unwrap();
    drop(w);
    assert!(names(&tmp_dir).is_empty());
}

#[tokio::test]
async fn commit_failure_leaves_no_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    // A file already holding the temporary name makes the exclusive create fail.
    let id = q.new_id();
    fs::write(tmp.path().join("tmp").join(id.to_string()), b"squatter").unwrap();
    let mut w = q.writer(id, 0, plain_envelope());
    w.write(b"hello\r\n").await.unwrap();
    assert!(matches!(q.commit(w).await, Err(QueueError::Io(_))));
    // The squatter is not ours and is left alone; nothing reached queue/.
    assert_eq!(names(&tmp.path().join("tmp")).len(), 1);
    assert!(names(&tmp.path().join("queue")).is_empty());
    assert_eq!(q.len(), 0);
}

#[test]
fn no_space_errors_map_to_no_space() {
    let e = QueueError::from(io::Error::from_raw_os_error(libc::ENOSPC));
    assert!(matches!(e, QueueError::NoSpace));
    let e = QueueError::from(io::Error::from_raw_os_error(libc::EDQUOT));
    assert!(matches!(e, QueueError::NoSpace));
    let e = QueueError::from(io::Error::from_raw_os_error(libc::EIO));
    assert!(matches!(e, QueueError::Io(_)));
}

#[test]
fn space_reserve() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (q, _) = Queue::open(tmp.path(), 0).unwrap();
        assert!(q.space_ok());
    }
    let (q, _) = Queue::open(tmp.path(), u64::MAX).unwrap();
    assert!(!q.space_ok());
    q.refresh_space();
    assert!(!q.space_ok());
}

#[tokio::test]
async fn open_recovers_quarantines_and_cleans() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut good = Vec::new();
    let real;
    {
        let (q, _) = Queue::open(dir, 0).unwrap();
        for i in 0..3 {
            good.push(store(&q, envelope(2), &body_bytes(300 + i, i as u32), 64).await);
        }
        real = fs::read(dir.join("queue").join(good[0].to_string())).unwrap();
    }
    let qd = dir.join("queue");
    // tmp/ leftovers of a crash.
    fs::write(dir.join("tmp").join("0000000000001"), b"partial").unwrap();
    fs::write(dir.join("tmp").join("junk"), b"x").unwrap();
    // A garbage file with a valid name, a stray name, and every truncation of
    // a real file, each renamed to match the id inside.
    let mut bad_ids = Vec::new();
    let garbage = QueueId(1);
    fs::write(qd.join(garbage.to_string()), b"this is not a queue file").unwrap();
    bad_ids.push(garbage);
    fs::write(qd.join("README"), b"stray").unwrap();
    for cut in 0..real.len() {
        let id = QueueId(1000 + cut as u64);
        fs::write(qd.join(id.to_string()), &real[..cut]).unwrap();
        bad_ids.push(id);
    }
    // A whole, valid file under the wrong name.
    let misnamed = QueueId(999);
    fs::write(qd.join(misnamed.to_string()), &real).unwrap();
    bad_ids.push(misnamed);
    // A status file whose recipient count does not match: only the status
    // file goes to corrupt/; the message stays, every recipient pending.
    let st = encode_status(&MessageStatus::all_pending(5));
    fs::write(qd.join(format!("{}.st", good[2])), &st).unwrap();
    // An orphan status file is removed.
    fs::write(
        qd.join("0000000000099.st"),
        encode_status(&MessageStatus::all_pending(1)),
    )
    .unwrap();

    let (q, rec) = Queue::open(dir, 0).unwrap();
    assert_eq!(rec.tmp_removed, 2);
    assert_eq!(rec.loaded, 3);
    assert_eq!(rec.corrupt, bad_ids.len() + 1); // + README
    assert_eq!(q.ids(), vec![good[0], good[1], good[2]]);
    assert_eq!(
        q.read(good[2]).unwrap().status,
        MessageStatus::all_pending(2)
    );
    assert!(names(&dir.join("tmp")).is_empty());
    let expect_queue: BTreeSet<String> = [
        good[0].to_string(),
        good[1].to_string(),
        good[2].to_string(),
    ]
    .into();
    assert_eq!(names(&qd), expect_queue);
    let corrupt = names(&dir.join("corrupt"));
    for id in &bad_ids {
        assert!(corrupt.contains(&id.to_string()), "{id} quarantined");
    }
    assert!(corrupt.contains("README"));
    assert!(!corrupt.contains(&good[2].to_string()));
    assert!(corrupt.contains(&format!("{}.st", good[2])));
    for id in &good[..2] {
        assert_eq!(read_message(dir, *id).unwrap().envelope, envelope(2));
    }
    drop(q);

    // Quarantining never overwrites what is already in corrupt/.
    fs::write(qd.join("README"), b"again").unwrap();
    let (_q, rec) = Queue::open(dir, 0).unwrap();
    assert_eq!(rec.corrupt, 1);
    assert_eq!(
        fs::read(dir.join("corrupt").join("README")).unwrap(),
        b"stray"
    );
    assert_eq!(
        fs::read(dir.join("corrupt").join("README.1")).unwrap(),
        b"again"
    );
}

#[test]
fn every_single_byte_flip_is_detected() {
    let env = envelope(2);
    let bytes = encode_message(QueueId(77), 5, &env, b"body\r\n", &Extras::default());
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            assert!(decode_message(&b).is_err(), "flip at {i}");
        }
    }
    let mut v3 = bytes.clone();
    v3[MSG_MAGIC.len()] = 3;
    assert!(matches!(decode_message(&v3), Err(ReadError::Corrupt(why)) if why.contains("version")));
    assert_eq!(&bytes[..PREAMBLE_LEN], b"PGNQ\x02");
}

#[tokio::test]
async fn ids_increase_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let mut all = Vec::new();
    let planted = QueueId(u64::MAX / 2); // an id far in the future
    {
        let (q, _) = Queue::open(tmp.path(), 0).unwrap();
        for _ in 0..1000 {
            all.push(q.new_id());
        }
        store(&q, plain_envelope(), b"x", 1).await;
        // A message from a machine whose clock ran ahead.
        fs::write(
            tmp.path().join("queue").join(planted.to_string()),
            encode_message(planted, 0, &plain_envelope(), b"y", &Extras::default()),
        )
        .unwrap();
    }
    {
        let (q, rec) = Queue::open(tmp.path(), 0).unwrap();
        assert_eq!(rec.loaded, 2);
        for _ in 0..1000 {
            all.push(q.new_id());
        }
        assert!(all[1000] > planted);
    }
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    let texts: Vec<String> = all.iter().map(|id| id.to_string()).collect();
    assert!(texts.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn spool_is_locked_while_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let err = Queue::open(tmp.path(), 0).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    drop(q);
    assert!(Queue::open(tmp.path(), 0).is_ok());
}

#[tokio::test]
async fn update_status_then_list() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let a = store(&q, envelope(2), b"aaaa", 4).await;
    let b = store(&q, plain_envelope(), &body_bytes(CHUNK * 2 + 3, 9), 7000).await;
    let st = MessageStatus {
        rcpts: vec![
            RcptStatus {
                state: RcptState::Delivered,
                attempts: 1,
                next_attempt: 0,
                last_reply: "250 2.0.0 ok".into(),
                status: Some(crate::proto::reply::EnhancedCode::new(2, 0, 0)),
                dsn_owed: Some(DsnOwed::Delivered),
            },
            RcptStatus {
                state: RcptState::Pending,
                attempts: 3,
                next_attempt: 1_700_000_900,
                last_reply: "451 4.7.1 try later\r\n\0".into(),
                status: None,
                dsn_owed: None,
            },
        ],
        next_attempt: 1_700_000_900,
        hold: true,
        delay_warned: false,
    };
    let q2 = q.clone();
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || q2.update_status(a, &st2))
        .await
        .unwrap()
        .unwrap();
    assert!(names(&tmp.path().join("tmp")).is_empty());
    // Unknown id: refused, nothing written.
    assert_eq!(
        q.update_status(QueueId(3), &st).unwrap_err().kind(),
        io::ErrorKind::NotFound
    );

    let l = list(tmp.path()).unwrap();
    assert_eq!(l.len(), 2);
    assert_eq!(l[0].id, a.to_string());
    assert_eq!(l[0].size, 4);
    assert_eq!(l[0].sender, "alice@example.org");
    assert_eq!(l[0].recipients[0].address, "rcpt0@example.net");
    assert_eq!(l[0].recipients[0].status, st.rcpts[0]);
    assert_eq!(l[0].recipients[1].status, st.rcpts[1]);
    assert_eq!(l[1].id, b.to_string());
    assert_eq!(l[1].size, (CHUNK * 2 + 3) as u64);
    assert_eq!(l[1].sender, "");
    assert_eq!(l[1].recipients[0].status, RcptStatus::pending());
    assert_eq!(read_message(tmp.path(), a).unwrap().status, st);

    let json = serde_json::to_value(&l[0]).unwrap();
    assert_eq!(json["recipients"][0]["state"], "delivered");
    assert_eq!(json["recipients"][0]["address"], "rcpt0@example.net");
    assert_eq!(json["recipients"][1]["attempts"], 3);

    // The status survives a restart; remove() takes both files away.
    drop(q);
    let (q, rec) = Queue::open(tmp.path(), 0).unwrap();
    assert_eq!(rec.loaded, 2);
    assert_eq!(read_message(tmp.path(), a).unwrap().status, st);
    q.remove(a).unwrap();
    q.remove(a).unwrap();
    assert_eq!(q.ids(), vec![b]);
    assert_eq!(names(&tmp.path().join("queue")), [b.to_string()].into());
    assert_eq!(list(tmp.path()).unwrap().len(), 1);
}

#[test]
fn status_round_trip() {
    let st = MessageStatus {
        rcpts: vec![
            RcptStatus::pending(),
            RcptStatus {
                state: RcptState::Failed,
                attempts: u32::MAX,
                next_attempt: i64::MIN,
                last_reply: "550 no".into(),
                status: Some(crate::proto::reply::EnhancedCode::new(5, 999, 999)),
                dsn_owed: Some(DsnOwed::Failed),
            },
        ],
        next_attempt: -1,
        hold: true,
        delay_warned: false,
    };
    let b = encode_status(&st);
    assert_eq!(decode_status(&b).unwrap(), st);
    assert_eq!(
        decode_status(&encode_status(&MessageStatus::default())).unwrap(),
        MessageStatus::default()
    );
    for i in 0..b.len() {
        let mut c = b.clone();
        c[i] ^= 0x10;
        assert!(decode_status(&c).is_err(), "flip at {i}");
    }
    for cut in 0..b.len() {
        assert!(decode_status(&b[..cut]).is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_are_all_durable_and_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let body = body_bytes(100 + i * 37, i as u32);
            let id = store(&q, envelope(1 + i % 3), &body, 50).await;
            (id, body)
        }));
    }
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap());
    }
    assert_eq!(q.len(), 200);
    let syncs = q.dir_fsyncs();
    assert!((1..=200).contains(&syncs), "{syncs} directory fsyncs");
    println!("200 concurrent commits shared {syncs} directory fsyncs (not gated)");

    let listed: BTreeSet<String> = list(tmp.path())
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(listed.len(), 200);
    for (id, body) in &done {
        assert!(listed.contains(&id.to_string()));
        assert_eq!(&read_message(tmp.path(), *id).unwrap().body, body);
    }
    assert!(names(&tmp.path().join("tmp")).is_empty());
    drop(q);
    let (_q, rec) = Queue::open(tmp.path(), 0).unwrap();
    assert_eq!((rec.loaded, rec.corrupt), (200, 0));
}

/// Group commit, with a deterministic gate: the committer is held (the
/// index lock, which it takes after its directory fsync) while 200
/// messages are fsynced and handed over; once released, one directory
/// fsync serves everything that waited. At most two fsyncs for 200
/// messages: the batch that was held and the one after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
// The lock is held across awaits on purpose: it is the gate.
#[allow(clippy::await_holding_lock)]
async fn group_commit_shares_one_directory_fsync_among_waiting_messages() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let mut writers = Vec::new();
    for i in 0..200usize {
        let mut w = q.writer(q.new_id(), 1_700_000_000, envelope(1));
        w.write(&body_bytes(200, i as u32)).await.unwrap();
        writers.push(w);
    }
    let gate = lock_index(&q.inner.index);
    let before = q.dir_fsyncs();
    let mut tasks = Vec::new();
    for w in writers {
        let q = q.clone();
        tasks.push(tokio::spawn(async move { q.commit(w).await.unwrap() }));
    }
    // Every message fsynced and handed to the committer: all 200 files
    // exist (in tmp/, or queue/ for the held batch) and none is between
    // its fsync and its hand-over.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let files = names(&tmp.path().join("tmp")).len() + names(&tmp.path().join("queue")).len();
        if files == 200 && q.inner.in_flight.load(std::sync::atomic::Ordering::Acquire) == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{files} files");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(gate);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(q.len(), 200);
    let syncs = q.dir_fsyncs() - before;
    assert!(
        (1..=2).contains(&syncs),
        "{syncs} directory fsyncs for 200 messages"
    );
}

/// Start-up time on a large spool. Plants files directly (no fsync) then
/// times open(). Run with `cargo test --lib queue::tests::recovery_time -- --ignored --nocapture`.
/// Set PIGEON_RECOVERY_N to change the message count (default 100000).
#[test]
#[ignore]
fn recovery_time() {
    let n: u64 = std::env::var("PIGEON_RECOVERY_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let tmp = tempfile::tempdir().unwrap();
    // PIGEON_RECOVERY_DIR: plant into that spool and keep it (for timing
    // the whole daemon's start-up with benches/startup.sh).
    let keep = std::env::var_os("PIGEON_RECOVERY_DIR").map(std::path::PathBuf::from);
    let spool = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    drop(Queue::open(&spool, 0).unwrap());
    let qd = spool.join("queue");
    let env = plain_envelope();
    let body = body_bytes(1024, 3);
    let plant = Instant::now();
    for i in 0..n {
        let id = QueueId(1_700_000_000_000_000 + i);
        fs::write(
            qd.join(id.to_string()),
            encode_message(id, 0, &env, &body, &Extras::default()),
        )
        .unwrap();
    }
    println!("planted {n} messages in {:?}", plant.elapsed());
    let (q, rec) = Queue::open(&spool, 0).unwrap();
    assert_eq!(rec.loaded as u64, n);
    assert_eq!(q.len() as u64, n);
    println!(
        "open() of {n} x 1 KiB messages (warm cache): {:?}",
        rec.elapsed
    );
    drop(q);
    let t = Instant::now();
    let l = list(&spool).unwrap();
    println!("list() of {} messages: {:?}", l.len(), t.elapsed());
}

#[tokio::test]
async fn list_reads_long_envelopes_and_skips_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    // About 40 KiB of envelope: several read windows.
    let big = envelope(700);
    let a = store(&q, big.clone(), b"short body", 3).await;
    let b = store(&q, plain_envelope(), b"", 1).await;
    // Damaged files are skipped, not fatal, and stay where they are.
    let qd = tmp.path().join("queue");
    fs::write(
        qd.join(QueueId(5).to_string()),
        b"PGNQ\x01M\xff\xff\xff\x7f",
    )
    .unwrap();
    fs::write(qd.join(QueueId(6).to_string()), b"").unwrap();
    let l = list(tmp.path()).unwrap();
    assert_eq!(
        l.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        vec![a.to_string(), b.to_string()]
    );
    assert_eq!(l[0].recipients.len(), 700);
    assert_eq!(l[0].recipients[699].address, "rcpt699@example.net");
    assert_eq!(l[0].size, 10);
    assert_eq!(l[1].size, 0);
    assert!(qd.join(QueueId(5).to_string()).exists());
    assert_eq!(read_message(tmp.path(), a).unwrap().envelope, big);
    assert!(matches!(
        read_message(tmp.path(), QueueId(5)),
        Err(ReadError::Corrupt(_))
    ));
}

fn golden_envelope() -> Envelope {
    Envelope {
        sender: "a@b.example".into(),
        recipients: vec![Recipient {
            address: "d@e.example".into(),
            orcpt: None,
            notify: Notify(Notify::FAILURE),
        }],
        ret: None,
        envid: None,
        body_type: BodyType::SevenBit,
        smtputf8: false,
        client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
        helo: "c.example".into(),
        protocol: "ESMTP".into(),
        auth_user: None,
    }
}

fn hex_bytes(hex: &str) -> Vec<u8> {
    hex.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

/// A version 1 file (written before header edits existed), planted in a
/// spool: it verifies at start-up, reads with no edits and no Message-ID,
/// and is listed like any other.
#[test]
fn planted_version_1_file_still_reads() {
    let v1 = hex_bytes(V1_EXAMPLE);
    let id = QueueId(0x0006_09D4_A7A7_E1C0);
    let m = decode_message(&v1).unwrap();
    assert_eq!(m.envelope, golden_envelope());
    assert_eq!(m.body, b"Hi\r\n");
    assert!(m.edits.is_empty());
    assert_eq!(m.message_id, None);
    let tmp = tempfile::tempdir().unwrap();
    drop(Queue::open(tmp.path(), 0).unwrap());
    fs::write(tmp.path().join("queue").join(id.to_string()), &v1).unwrap();
    let (q, rec) = Queue::open(tmp.path(), 0).unwrap();
    assert_eq!((rec.loaded, rec.corrupt), (1, 0));
    assert_eq!(q.read(id).unwrap().body, b"Hi\r\n");
    assert_eq!(list(tmp.path()).unwrap()[0].size, 4);
    // A version 1 file cannot carry version 2 records.
    let with_edits = encode_message(
        id,
        1_700_000_000,
        &golden_envelope(),
        b"Hi\r\n",
        &Extras {
            edits: b"X-A: b\r\n".to_vec(),
            message_id: None,
        },
    );
    let mut as_v1 = with_edits.clone();
    as_v1[4] = 1;
    let n = as_v1.len();
    let crc = crc32fast::hash(&as_v1[..n - 4]);
    as_v1[n - 4..].copy_from_slice(&crc.to_le_bytes());
    assert!(decode_message(&as_v1).is_err());
    assert!(decode_message(&with_edits).is_ok());
}

const V1_EXAMPLE: &str = "50 47 4E 51 01
        4D 10 00 00 00  C0 E1 A7 A7 D4 09 06 00 00 F1 53 65 00 00 00 00
        53 0B 00 00 00  61 40 62 2E 65 78 61 6D 70 6C 65
        50 08 00 00 00  00 00 00 04 C0 00 02 07
        48 09 00 00 00  63 2E 65 78 61 6D 70 6C 65
        57 05 00 00 00  45 53 4D 54 50
        52 11 00 00 00  04 00 0B 00 00 00 64 40 65 2E 65 78 61 6D 70 6C 65
        42 04 00 00 00  48 69 0D 0A
        45 0C 00 00 00  04 00 00 00 00 00 00 00 09 28 65 70";

/// The worked example in docs/queue.md, byte for byte: version 2, with a
/// header edit and the Message-ID.
#[test]
fn golden_example_matches_docs() {
    let id = QueueId(0x0006_09D4_A7A7_E1C0);
    let extras = Extras {
        edits: b"X-A: b\r\n".to_vec(),
        message_id: Some("<1@c>".into()),
    };
    let bytes = encode_message(id, 1_700_000_000, &golden_envelope(), b"Hi\r\n", &extras);
    let shown: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(bytes, hex_bytes(V2_EXAMPLE), "{}", shown.join(" "));
    let m = decode_message(&bytes).unwrap();
    assert_eq!(m.content().as_ref(), b"X-A: b\r\nHi\r\n");
    assert_eq!(m.message_id.as_deref(), Some("<1@c>"));
}

const V2_EXAMPLE: &str = "50 47 4E 51 02
        4D 10 00 00 00  C0 E1 A7 A7 D4 09 06 00 00 F1 53 65 00 00 00 00
        53 0B 00 00 00  61 40 62 2E 65 78 61 6D 70 6C 65
        50 08 00 00 00  00 00 00 04 C0 00 02 07
        48 09 00 00 00  63 2E 65 78 61 6D 70 6C 65
        57 05 00 00 00  45 53 4D 54 50
        52 11 00 00 00  04 00 0B 00 00 00 64 40 65 2E 65 78 61 6D 70 6C 65
        42 04 00 00 00  48 69 0D 0A
        58 08 00 00 00  58 2D 41 3A 20 62 0D 0A
        49 05 00 00 00  3C 31 40 63 3E
        45 0C 00 00 00  04 00 00 00 00 00 00 00 9F 47 70 99";

#[test]
fn handles_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Queue>();
    send::<MessageWriter>();
    send::<StoredMessage>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_writes_leave_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let big = body_bytes(MEMORY_LIMIT + 10, 4);
    for _ in 0..20 {
        let mut w = q.writer(q.new_id(), 0, plain_envelope());
        // Cut the spill short at its first await point.
        let r = tokio::time::timeout(std::time::Duration::ZERO, w.write(&big)).await;
        if r.is_err() {
            // Interrupted midway: the writer refuses further use.
            assert!(w.write(b"more").await.is_err());
            assert!(q.commit(w).await.is_err());
        } else {
            drop(w);
        }
    }
    // Let any I/O task still running finish (and clean up after itself).
    for _ in 0..100 {
        if names(&tmp.path().join("tmp")).is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(names(&tmp.path().join("tmp")).is_empty());
    assert!(names(&tmp.path().join("queue")).is_empty());
}

#[tokio::test]
async fn first_read_of_a_new_message_comes_from_memory_and_equals_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let body = body_bytes(10_000, 7);
    let id = store(&q, envelope(2), &body, 4096).await;
    let from_disk = read_message(tmp.path(), id).unwrap();
    let first = q.take_recent(id).expect("kept for the first attempt");
    assert_eq!(first, from_disk, "what is kept is what was written");
    assert!(q.take_recent(id).is_none(), "taken once");
    assert_eq!(q.read(id).unwrap(), from_disk, "later reads use the file");
    // Removed before its first attempt: not served from memory.
    let id2 = store(&q, envelope(1), b"x\r\n", 1).await;
    q.remove(id2).unwrap();
    assert!(q.take_recent(id2).is_none());
    // Off (delivery disabled): nothing kept.
    q.keep_recent(false);
    let id3 = store(&q, envelope(1), b"y\r\n", 1).await;
    assert!(q.take_recent(id3).is_none());
}

#[tokio::test]
async fn delivered_files_are_emptied_and_reused() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let id = store(&q, envelope(1), &body_bytes(5000, 1), 5000).await;
    let inode = std::fs::metadata(tmp.path().join("queue").join(id.to_string()))
        .unwrap()
        .ino();
    q.remove(id).unwrap();
    let free = names(&tmp.path().join("free"));
    assert_eq!(free.len(), 1, "{free:?}");
    // The next message is written into that same inode.
    let body = body_bytes(300, 2);
    let id2 = store(&q, envelope(2), &body, 300).await;
    let path2 = tmp.path().join("queue").join(id2.to_string());
    assert_eq!(std::fs::metadata(&path2).unwrap().ino(), inode);
    assert!(names(&tmp.path().join("free")).is_empty());
    let m = read_message(tmp.path(), id2).unwrap();
    assert_eq!(m.body, body, "nothing of the old content");
    assert_eq!(
        std::fs::metadata(&path2).unwrap().len() as usize,
        encode_message(id2, 1_700_000_000, &envelope(2), &body, &Extras::default()).len()
    );
    // Pooled files survive a restart and are not messages.
    q.remove(id2).unwrap();
    drop(q);
    let (q, rec) = Queue::open(tmp.path(), 0).unwrap();
    assert_eq!((rec.loaded, rec.corrupt), (0, 0));
    assert_eq!(names(&tmp.path().join("free")).len(), 1);
    let id3 = store(&q, envelope(1), b"z\r\n", 1).await;
    assert_eq!(
        std::fs::metadata(tmp.path().join("queue").join(id3.to_string()))
            .unwrap()
            .ino(),
        inode
    );
}

#[test]
fn a_name_sharing_a_queued_inode_is_set_aside_whatever_its_link_count() {
    use super::store::{name_fate, NameFate};
    let queued: std::collections::HashSet<u64> = [42, 7].into();
    let shared = |i: u64| queued.contains(&i);
    // The case a crash without fsck leaves: the count says one name, but
    // the inode is a queued message's.
    assert_eq!(name_fate(42, 1, shared), NameFate::SetAside);
    assert_eq!(name_fate(7, 2, shared), NameFate::SetAside);
    assert_eq!(name_fate(43, 1, shared), NameFate::Reuse);
    assert_eq!(name_fate(43, 2, shared), NameFate::Unlink);
}

#[tokio::test]
async fn a_pooled_name_still_linked_to_a_message_is_never_reused() {
    // After a crash on a file system without a journal, a name in free/
    // may still point at the inode that became a queued message.
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let body = body_bytes(2000, 3);
    let id = store(&q, envelope(1), &body, 2000).await;
    drop(q);
    let msg = tmp.path().join("queue").join(id.to_string());
    std::fs::hard_link(&msg, tmp.path().join("free").join("7")).unwrap();
    let (q, rec) = Queue::open(tmp.path(), 0).unwrap();
    assert_eq!(rec.loaded, 1);
    assert!(
        names(&tmp.path().join("free")).is_empty(),
        "the extra name leaves the pool"
    );
    assert!(
        names(&tmp.path().join("corrupt")).contains("free-7"),
        "and is moved aside, never unlinked: {:?}",
        names(&tmp.path().join("corrupt"))
    );
    let _ = store(&q, envelope(1), b"new\r\n", 1).await;
    assert_eq!(
        read_message(tmp.path(), id).unwrap().body,
        body,
        "the queued message is intact"
    );
    // Once delivered, that inode still has its other name: it is neither
    // pooled (truncated later) nor unlinked.
    q.remove(id).unwrap();
    assert!(names(&tmp.path().join("free")).is_empty());
    assert!(names(&tmp.path().join("corrupt")).contains(&format!("delivered-{id}")));
    // Large files are not kept.
    let big = store(&q, envelope(1), &body_bytes(100_000, 4), 100_000).await;
    q.remove(big).unwrap();
    assert!(names(&tmp.path().join("free")).is_empty());
}

#[tokio::test]
async fn a_stale_tmp_name_of_a_queued_message_is_not_unlinked_at_recovery() {
    use std::os::unix::fs::MetadataExt;
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let body = body_bytes(1500, 5);
    let id = store(&q, envelope(1), &body, 1500).await;
    drop(q);
    // The tmp/ name the message was written under, as a crash before the
    // directory block reached the disk leaves it.
    let msg = tmp.path().join("queue").join(id.to_string());
    let stale = tmp.path().join("tmp").join(id.to_string());
    std::fs::hard_link(&msg, &stale).unwrap();
    let (q, rec) = Queue::open(tmp.path(), 0).unwrap();
    assert_eq!((rec.loaded, rec.corrupt, rec.tmp_removed), (1, 0, 1));
    assert!(names(&tmp.path().join("tmp")).is_empty());
    let aside = tmp.path().join("corrupt").join(format!("tmp-{id}"));
    assert_eq!(
        std::fs::metadata(&aside).unwrap().ino(),
        std::fs::metadata(&msg).unwrap().ino(),
        "moved aside with its inode, not unlinked"
    );
    assert_eq!(q.read(id).unwrap().body, body);
}

#[tokio::test]
async fn a_pool_name_found_on_a_queued_inode_while_running_is_set_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let body = body_bytes(800, 6);
    let id = store(&q, envelope(1), &body, 800).await;
    let free = tmp.path().join("free").join("99");
    std::fs::hard_link(tmp.path().join("queue").join(id.to_string()), &free).unwrap();
    super::store::Pool::plant(&q, free);
    let body2 = body_bytes(900, 7);
    let id2 = store(&q, envelope(1), &body2, 900).await;
    assert_eq!(read_message(tmp.path(), id).unwrap().body, body);
    assert_eq!(read_message(tmp.path(), id2).unwrap().body, body2);
    assert!(names(&tmp.path().join("corrupt")).contains("free-99"));
}

#[tokio::test]
async fn a_damaged_status_file_found_while_running_sets_only_itself_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let id = store(&q, envelope(2), b"x\r\n", 3).await;
    let _ = q.take_recent(id);
    let st = tmp.path().join("queue").join(format!("{id}.st"));
    fs::write(&st, b"PGNS\x01garbage").unwrap();
    let m = q.read(id).unwrap();
    assert_eq!(m.status, MessageStatus::all_pending(2));
    assert!(!st.exists());
    assert!(names(&tmp.path().join("corrupt")).contains(&format!("{id}.st")));
    assert_eq!(q.ids(), vec![id]);
}

#[tokio::test]
async fn quarantine_while_running_moves_the_message_aside() {
    let tmp = tempfile::tempdir().unwrap();
    let (q, _) = Queue::open(tmp.path(), 0).unwrap();
    let id = store(&q, envelope(1), b"x\r\n", 3).await;
    let path = tmp.path().join("queue").join(id.to_string());
    let mut b = fs::read(&path).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    fs::write(&path, &b).unwrap();
    let _ = q.take_recent(id);
    let Err(ReadError::Corrupt(why)) = q.read(id) else {
        panic!("corruption not detected")
    };
    q.quarantine(id, &why);
    assert!(q.ids().is_empty());
    assert!(!path.exists());
    assert!(names(&tmp.path().join("corrupt")).contains(&id.to_string()));
}

/// A version 1 status file (before status codes were recorded) still
/// reads; the code comes from the start of its reply text.
#[test]
fn version_1_status_file_still_reads() {
    let mut v1 = b"PGNS\x01".to_vec();
    codec::put_record(&mut v1, codec::rec::NEXT, &1_700_000_900i64.to_le_bytes());
    let mut r = vec![2u8 | 1 << 4];
    r.extend_from_slice(&3u32.to_le_bytes());
    r.extend_from_slice(&0i64.to_le_bytes());
    r.extend_from_slice(b"5.1.1 550 no such user");
    codec::put_record(&mut v1, codec::rec::RCPT, &r);
    v1.push(codec::rec::END);
    v1.extend_from_slice(&4u32.to_le_bytes());
    let crc = crc32fast::hash(&v1);
    v1.extend_from_slice(&crc.to_le_bytes());
    let st = decode_status(&v1).unwrap();
    assert_eq!(st.rcpts[0].state, RcptState::Failed);
    assert_eq!(st.rcpts[0].dsn_owed, Some(DsnOwed::Failed));
    assert_eq!(st.rcpts[0].attempts, 3);
    assert_eq!(
        st.rcpts[0].status,
        Some(crate::proto::reply::EnhancedCode::new(5, 1, 1))
    );
    // Re-encoded, it is version 2 and keeps everything.
    let again = encode_status(&st);
    assert_eq!(again[4], 2);
    assert_eq!(decode_status(&again).unwrap(), st);
}
