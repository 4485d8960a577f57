//! Shared helpers for integration tests: start the real server on
//! 127.0.0.1:0 with a temporary spool, and a raw SMTP client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use pigeon::config::{Config, ListenerConfig, ListenerMode};
use pigeon::queue::Queue;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

pub struct TestServer {
    pub addr: SocketAddr,
    pub spool: PathBuf,
    pub running: Option<pigeon::server::Running>,
    _dir: tempfile::TempDir,
}

pub fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.server.hostname = "mx.test".into();
    cfg.domains.local = vec!["example.org".into()];
    cfg.listeners = vec![ListenerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        ListenerMode::Smtp,
    )];
    cfg
}

pub async fn start(mut cfg: Config) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    cfg.spool.dir = spool.clone();
    let reserve = cfg.spool.effective_reserve(&cfg.limits);
    let (queue, _) = Queue::open(&spool, reserve).unwrap();
    let listeners = pigeon::server::bind_all(&cfg).unwrap();
    let running = pigeon::server::start(Arc::new(cfg), queue, listeners).unwrap();
    TestServer {
        addr: running.addrs[0],
        spool,
        running: Some(running),
        _dir: dir,
    }
}

impl TestServer {
    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    pub fn queued(&self) -> Vec<pigeon::queue::Summary> {
        pigeon::queue::list(&self.spool).unwrap()
    }
}

pub struct Client {
    pub r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let s = TcpStream::connect(addr).await.unwrap();
        let (r, w) = s.into_split();
        Client {
            r: BufReader::new(r),
            w,
        }
    }

    pub async fn send(&mut self, data: &str) {
        self.w.write_all(data.as_bytes()).await.unwrap();
    }

    pub async fn send_bytes(&mut self, data: &[u8]) {
        self.w.write_all(data).await.unwrap();
    }

    /// Reads one (possibly multi-line) reply; returns its lines joined by '\n'.
    /// Empty string on EOF.
    pub async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.r.read_line(&mut line))
                .await
                .expect("reply timeout")
                .unwrap_or(0);
            if n == 0 {
                return all;
            }
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            let done = line.as_bytes().get(3) == Some(&b' ');
            all.push_str(line.trim_end());
            if done {
                return all;
            }
            all.push('\n');
        }
    }

    /// Sends a command and returns the reply.
    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }

    /// Runs a whole transaction and returns the final reply.
    pub async fn mail(&mut self, from: &str, to: &[&str], body: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        assert!(r.starts_with("250"), "{r}");
        for t in to {
            let r = self.cmd(&format!("RCPT TO:<{t}>")).await;
            assert!(r.starts_with("250"), "{r}");
        }
        let r = self.cmd("DATA").await;
        assert!(r.starts_with("354"), "{r}");
        self.send(body).await;
        self.send(".\r\n").await;
        self.reply().await
    }
}

/// The queue id from "250 2.0.0 Ok: queued as ID".
pub fn queued_id(reply: &str) -> String {
    reply.rsplit(' ').next().unwrap().to_string()
}

/// Content after pigeon's own Received: header (the first field, folded).
pub fn strip_received(body: &[u8]) -> Vec<u8> {
    let mut i = 0;
    loop {
        let nl = body[i..].iter().position(|&b| b == b'\n').unwrap() + i + 1;
        i = nl;
        if body.get(i) != Some(&b'\t') {
            return body[i..].to_vec();
        }
    }
}
