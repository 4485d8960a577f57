//! The one test harness every integration test uses: the real server on
//! 127.0.0.1:0 with a temporary spool and a raw SMTP client (here), the
//! whole daemon with delivery ([`daemon`]), a DNS server the test controls
//! ([`dns`]), scripted SMTP and LMTP servers ([`sink`], [`lmtp`]), and
//! [`harness::Net`], which puts DNS, sinks and a daemon together.
#![allow(dead_code, unused_imports)]

pub mod binary;
pub mod daemon;
pub mod dns;
pub mod harness;
pub mod lmtp;
pub mod sink;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pigeon::config::{AliasTargets, Config, ListenerConfig, ListenerMode, UserConfig};
use pigeon::live::{Live, Snapshot};
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

/// Local domains example.org and mx.test (the hostname). Every address
/// of example.org exists: a catch-all sends what no user has to the user
/// `box` (box@example.org), as do postmaster and abuse.
pub fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.server.hostname = "mx.test".into();
    cfg.domains.local = vec!["example.org".into()];
    cfg.listeners = vec![ListenerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        ListenerMode::Smtp,
    )];
    cfg.auth
        .users
        .push(user("box", "$6$x$y", &["box@example.org"]));
    for (k, t) in [
        ("@example.org", "box@example.org"),
        ("postmaster", "box@example.org"),
        ("abuse", "box@example.org"),
    ] {
        alias(&mut cfg, k, &[t]);
    }
    cfg
}

pub fn user(login: &str, hash: &str, addresses: &[&str]) -> UserConfig {
    UserConfig {
        login: login.into(),
        password: hash.into(),
        addresses: addresses.iter().map(|a| a.to_string()).collect(),
        delivery: None,
        maildir: None,
    }
}

pub fn alias(cfg: &mut Config, key: &str, targets: &[&str]) {
    cfg.local.aliases.insert(
        key.to_string(),
        AliasTargets(targets.iter().map(|t| t.to_string()).collect()),
    );
}

/// Maildirs under `<dir>/mail/{domain}/{user}/Maildir` unless the test chose.
pub fn mail_under(cfg: &mut Config, dir: &std::path::Path) {
    if cfg.local.maildir == Config::default().local.maildir {
        cfg.local.maildir = format!("{}/mail/{{domain}}/{{user}}/Maildir", dir.display());
    }
}

/// The reloadable state of a configuration (users and aliases must load).
pub fn live(cfg: Config) -> Live {
    Live::new(Snapshot::load(cfg).unwrap_or_else(|e| panic!("{e:?}")))
}

/// The contents of the messages in a Maildir's `new/`, oldest name first.
pub fn maildir_messages(maildir: &std::path::Path) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(maildir.join("new")) else {
        return Vec::new();
    };
    let mut names: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
    names.sort();
    names.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

pub async fn start(mut cfg: Config) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    cfg.spool.dir = spool.clone();
    mail_under(&mut cfg, dir.path());
    let reserve = cfg.spool.effective_reserve(&cfg.limits);
    let (queue, _) = Queue::open(&spool, reserve).unwrap();
    let listeners = pigeon::server::bind_all(&cfg).unwrap();
    let running = pigeon::server::start(live(cfg), queue, listeners, None).unwrap();
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

/// A small tmpfs mounted at `dir` (created), unmounted on drop. Needs root
/// and the right to mount; without them it panics, so the test fails
/// instead of passing without having run. Tests that use it are named
/// `needs_mount_*`: tests/run.sh skips those, and lists them as skipped,
/// where a tmpfs cannot be mounted.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Tmpfs(dir.to_path_buf()),
            Ok(o) => panic!(
                "mount tmpfs on {} failed ({}): this test needs root and the right to mount \
                 (tests/run.sh skips needs_mount_* tests where that is missing): {}",
                dir.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("cannot run mount(8): {e}"),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A certificate authority of the test's own: its PEM file is what
/// `delivery.tls_ca_file` (or `SSL_CERT_FILE`) names for pigeon to trust.
pub struct TestCa {
    pub pem: PathBuf,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    dir: PathBuf,
}

impl TestCa {
    pub fn new(dir: &std::path::Path) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pigeon test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join("test-ca.pem");
        std::fs::write(&pem, cert.pem()).unwrap();
        TestCa {
            pem,
            issuer: rcgen::Issuer::new(params, key),
            dir: dir.to_path_buf(),
        }
    }

    /// A certificate for `names` (host names or IP addresses) signed by
    /// this CA, written next to the CA's file.
    pub fn issue(&self, names: &[&str]) -> pigeon::config::CertificateConfig {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let stem = names
            .first()
            .copied()
            .unwrap_or("leaf")
            .replace([':', '/'], "_");
        let cert_path = self.dir.join(format!("{stem}.crt"));
        let key_path = self.dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        pigeon::config::CertificateConfig {
            cert: cert_path,
            key: key_path,
            ocsp: Default::default(),
        }
    }
}
