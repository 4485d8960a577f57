//! Durability order, checked on the system calls themselves: the real
//! binary runs under `strace -f` while sessions send messages that are
//! delivered into a Maildir. For every acknowledged message the trace must
//! show, in this order:
//!
//! - acceptance: the message file's fsync, its rename into `queue/`, an
//!   fsync of `queue/` begun after that rename, and only then the write of
//!   `250 ... queued as ID` to the client;
//! - local delivery: the Maildir file's fsync, its rename into `new/`, an
//!   fsync of `new/` begun after that rename, and only then the removal of
//!   `queue/ID`.
//!
//! Unlike a kill -9 test, this cannot be fooled by the page cache: a
//! missing or misplaced fsync shows in the trace. Needs strace(1)
//! (tests/run.sh installs it).

mod common;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::{free_port, queue_list, write_config, BIN};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const SESSIONS: usize = 4;
const PER_SESSION: usize = 25;

async fn read_reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(60), r.read_line(&mut line))
            .await
            .expect("reply timeout")
            .unwrap();
        assert!(n > 0, "connection closed");
        all.push_str(&line);
        if line.as_bytes().get(3) == Some(&b' ') {
            return all;
        }
    }
}

/// One session sending `PER_SESSION` messages; returns their queue ids.
async fn session(port: u16, n: usize) -> Vec<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    read_reply(&mut r).await;
    w.write_all(b"EHLO durability.test\r\n").await.unwrap();
    read_reply(&mut r).await;
    let mut ids = Vec::new();
    for i in 0..PER_SESSION {
        w.write_all(
            format!("MAIL FROM:<s{n}@src.test>\r\nRCPT TO:<u{i}@example.org>\r\nDATA\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        for _ in 0..3 {
            let l = read_reply(&mut r).await;
            assert!(l.starts_with('2') || l.starts_with('3'), "{l}");
        }
        w.write_all(format!("Subject: d {n}/{i}\r\n\r\nbody {n} {i}\r\n.\r\n").as_bytes())
            .await
            .unwrap();
        let l = read_reply(&mut r).await;
        assert!(l.starts_with("250 2.0.0 Ok: queued as "), "{l}");
        ids.push(l.trim_end().rsplit(' ').next().unwrap().to_string());
    }
    w.write_all(b"QUIT\r\n").await.unwrap();
    ids
}

/// One system call from the trace: where it began and ended (line
/// numbers of the trace file, which strace writes in the order it sees
/// events), its name, its arguments as printed, and its result.
#[derive(Debug, Clone)]
struct Call {
    start: usize,
    end: usize,
    name: String,
    args: String,
    ok: bool,
}

/// Parses `strace -f` output, joining `<unfinished ...>` with its
/// `<... name resumed>` line.
fn parse(trace: &str) -> Vec<Call> {
    let mut calls = Vec::new();
    let mut open: HashMap<(String, String), (usize, String)> = HashMap::new();
    for (i, line) in trace.lines().enumerate() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if let Some(resumed) = rest.strip_prefix("<... ") {
            let Some((name, tail)) = resumed.split_once(" resumed>") else {
                continue;
            };
            if let Some((start, args)) = open.remove(&(pid.to_string(), name.to_string())) {
                calls.push(Call {
                    start,
                    end: i,
                    name: name.to_string(),
                    ok: result_ok(tail),
                    args: args + tail,
                });
            }
            continue;
        }
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if let Some(args) = args.strip_suffix(" <unfinished ...>") {
            open.insert((pid.to_string(), name.to_string()), (i, args.to_string()));
        } else {
            calls.push(Call {
                start: i,
                end: i,
                name: name.to_string(),
                ok: result_ok(args),
                args: args.to_string(),
            });
        }
    }
    calls
}

fn result_ok(tail: &str) -> bool {
    match tail.rsplit_once(" = ") {
        Some((_, r)) => !r.trim_start().starts_with('-'),
        None => false,
    }
}

fn is_fsync(c: &Call) -> bool {
    (c.name == "fsync" || c.name == "fdatasync") && c.ok
}

fn is_rename(c: &Call) -> bool {
    c.name.starts_with("rename") && c.ok
}

/// The last successful fsync of a file whose descriptor shows `path_end`
/// that ended before line `before`.
fn synced_before<'a>(calls: &'a [Call], path_end: &str, before: usize) -> Option<&'a Call> {
    calls
        .iter()
        .filter(|c| is_fsync(c) && c.end < before && c.args.contains(path_end))
        .max_by_key(|c| c.end)
}

/// The first successful fsync of the directory `dir_end` (as its
/// descriptor shows) that began after line `after`.
fn dir_synced_after<'a>(calls: &'a [Call], dir_end: &str, after: usize) -> Option<&'a Call> {
    calls
        .iter()
        .filter(|c| is_fsync(c) && c.start > after && c.args.contains(dir_end))
        .min_by_key(|c| c.start)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsyncs_come_before_every_acknowledgement_and_every_removal() {
    let have_strace = Command::new("strace").arg("-V").output().is_ok();
    assert!(
        have_strace,
        "strace(1) is needed (Debian package strace; tests/run.sh installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, true);
    let trace_path = dir.path().join("trace.txt");
    let mut strace = Command::new("strace")
        .args(["-f", "-qq", "-y", "-s", "600", "-o"])
        .arg(&trace_path)
        .args([
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat,write,writev,sendto,sendmsg",
        ])
        .arg(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut tasks = Vec::new();
    for n in 0..SESSIONS {
        tasks.push(tokio::spawn(session(port, n)));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await.unwrap());
    }
    assert_eq!(acked.len(), SESSIONS * PER_SESSION);
    // Every message delivered: the queue is empty.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if queue_list(&config).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "queue not drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Stop pigeon (strace's child), then strace.
    let _ = Command::new("pkill")
        .args(["-TERM", "-P", &strace.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while strace.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "strace did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    let trace = std::fs::read_to_string(&trace_path).unwrap();
    let calls = parse(&trace);
    let spool = dir.path().join("spool");
    let queue_dir = format!("{}>", spool.join("queue").display());
    let mut checked_accept = 0;
    for id in &acked {
        // The reply write naming this id.
        let reply = calls
            .iter()
            .find(|c| {
                matches!(c.name.as_str(), "write" | "writev" | "sendto" | "sendmsg")
                    && c.args.contains(&format!("queued as {id}\\r\\n"))
            })
            .unwrap_or_else(|| panic!("no reply write for {id}"));
        let rename = calls
            .iter()
            .filter(|c| {
                is_rename(c)
                    && c.end < reply.start
                    && c.args.contains(&format!("/tmp/{id}\""))
                    && c.args.contains(&format!("/queue/{id}\""))
            })
            .max_by_key(|c| c.end)
            .unwrap_or_else(|| panic!("{id}: no rename into queue/ before its 250"));
        let file_sync = synced_before(&calls, &format!("/{id}>"), rename.start)
            .unwrap_or_else(|| panic!("{id}: no fsync of the message file before its rename"));
        let dir_sync = dir_synced_after(&calls, &queue_dir, rename.end)
            .unwrap_or_else(|| panic!("{id}: no fsync of queue/ after its rename"));
        assert!(
            dir_sync.end < reply.start,
            "{id}: 250 written (line {}) before queue/ was fsynced (lines {}..{})",
            reply.start,
            dir_sync.start,
            dir_sync.end
        );
        assert!(file_sync.end < rename.start);
        checked_accept += 1;
    }
    // Local delivery: map each Maildir file to its queue id through the
    // Received: line written into it.
    let maildir = dir.path().join("mail/box");
    let new_dir = format!("{}>", maildir.join("new").display());
    let tmp_prefix = format!("{}/", maildir.join("tmp").display());
    let mut by_id: HashMap<String, String> = HashMap::new();
    for c in calls.iter().filter(|c| c.name == "write" && c.ok) {
        let Some(after) = c.args.split_once(&tmp_prefix).map(|(_, a)| a) else {
            continue;
        };
        let Some((name, rest)) = after.split_once('>') else {
            continue;
        };
        if let Some(id) = acked.iter().find(|id| rest.contains(&format!(" id {id}"))) {
            by_id.insert(id.clone(), name.to_string());
        }
    }
    let mut checked_delivery = 0;
    for id in &acked {
        let name = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{id}: no Maildir write found"));
        let removal = calls
            .iter()
            .filter(|c| {
                c.ok && (c.name.starts_with("rename") || c.name.starts_with("unlink"))
                    && c.args.contains(&format!("/queue/{id}\""))
                    && !c.args.contains(&format!("/tmp/{id}\""))
            })
            .min_by_key(|c| c.start)
            .unwrap_or_else(|| panic!("{id}: queue file never removed"));
        let rename = calls
            .iter()
            .find(|c| {
                is_rename(c)
                    && c.args.contains(&format!("/tmp/{name}\""))
                    && c.args.contains(&format!("/new/{name}\""))
            })
            .unwrap_or_else(|| panic!("{id}: Maildir file {name} never renamed into new/"));
        let file_sync = synced_before(&calls, &format!("/{name}>"), rename.start)
            .unwrap_or_else(|| panic!("{id}: Maildir file not fsynced before its rename"));
        let dir_sync = dir_synced_after(&calls, &new_dir, rename.end)
            .unwrap_or_else(|| panic!("{id}: new/ not fsynced after the rename"));
        assert!(file_sync.end < rename.start);
        assert!(
            dir_sync.end < removal.start,
            "{id}: queue file removed (line {}) before new/ was fsynced (lines {}..{})",
            removal.start,
            dir_sync.start,
            dir_sync.end
        );
        checked_delivery += 1;
    }
    eprintln!(
        "checked {checked_accept} acknowledgements and {checked_delivery} deliveries against {} traced calls",
        calls.len()
    );
    assert_eq!(checked_accept, acked.len());
    assert_eq!(checked_delivery, acked.len());
}
