//! The daemon as an operating-system service, with the real binary: the
//! systemd notify protocol (READY, RELOADING, STOPPING, watchdog) on a
//! datagram socket the test owns, socket activation, SIGHUP reload (users,
//! aliases, limits; a bad file keeps the old configuration; sessions in
//! progress go on), the privilege drop (as root), `pigeon sendmail` and the
//! metrics endpoint.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::binary::{free_port, BIN};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

struct Daemon {
    child: Child,
    notify: UnixDatagram,
    dir: PathBuf,
    config: PathBuf,
    port: u16,
}

/// The base configuration: one smtp listener (AUTH allowed in clear on
/// loopback), example.org local with user alice (password "secret", a
/// $6$ hash), Maildirs and the sendmail socket in the test directory.
fn config_text(dir: &Path, port: u16, extra_server: &str, extra: &str) -> String {
    format!(
        "[server]\nhostname = \"mx.test\"\n{extra_server}\n\
         [[listener]]\nbind = \"127.0.0.1:{port}\"\nmode = \"smtp\"\nauth = true\nplaintext_auth = true\n\n\
         [domains]\nlocal = [\"example.org\"]\n\n\
         [spool]\ndir = \"{d}/spool\"\n\n\
         [auth]\nusers_file = \"{d}/users.toml\"\nfailure_delay_ms = 10\n\n\
         [local]\nmaildir = \"{d}/mail/{{user}}\"\n\n\
         [local.aliases]\npostmaster = \"alice@example.org\"\nabuse = \"alice@example.org\"\n\n\
         [sendmail]\nsocket = \"{d}/sendmail.sock\"\n\n\
         [log]\nlevel = \"info\"\n{extra}",
        d = dir.display()
    )
}

fn users_text(extra: &str) -> String {
    // sha512-crypt of "secret" (salt "saltsalt").
    format!(
        "[[user]]\nlogin = \"alice\"\npassword = \"{}\"\naddresses = [\"alice@example.org\"]\n{extra}",
        sha512("secret")
    )
}

fn sha512(pw: &str) -> String {
    sha_crypt::sha512_simple(pw, &sha_crypt::Sha512Params::new(5000).unwrap()).unwrap()
}

impl Daemon {
    fn start_with(dir: &Path, text: &str, env: &[(&str, &str)]) -> Daemon {
        let config = dir.join("pigeon.toml");
        std::fs::write(&config, text).unwrap();
        let sock = dir.join("notify.sock");
        let _ = std::fs::remove_file(&sock);
        let notify = UnixDatagram::bind(&sock).unwrap();
        // Writable by all, as systemd's own socket is (the daemon may have
        // dropped root by the time it notifies).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let port = text
            .split("bind = \"127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        // `exec` keeps the pid, so WATCHDOG_PID can name it.
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "WATCHDOG_PID=$$ exec {BIN} serve --config {} 2>>{}",
                config.display(),
                dir.join("log.txt").display()
            ))
            .env("NOTIFY_SOCKET", &sock)
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Daemon {
            child,
            notify,
            dir: dir.to_path_buf(),
            config,
            port,
        }
    }

    fn start(dir: &Path) -> Daemon {
        std::fs::write(dir.join("users.toml"), users_text("")).unwrap();
        let port = free_port();
        Daemon::start_with(dir, &config_text(dir, port, "allow_root = true", ""), &[])
    }

    /// The next notification datagram that contains `want`, skipping others.
    fn wait_for(&self, want: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut buf = [0u8; 4096];
        loop {
            assert!(
                Instant::now() < deadline,
                "no {want} notification; log:\n{}",
                self.log()
            );
            if let Ok(n) = self.notify.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if msg.lines().any(|l| l == want) {
                    return msg;
                }
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log.txt")).unwrap_or_default()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_for("STOPPING=1", 10);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Smtp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Smtp {
    fn connect(port: u16) -> Smtp {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Smtp {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let g = c.reply();
        assert!(g.starts_with("220"), "{g}");
        c
    }

    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.r.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            if line.as_bytes().get(3) == Some(&b' ') {
                return all;
            }
        }
    }

    fn cmd(&mut self, c: &str) -> String {
        self.w.write_all(format!("{c}\r\n").as_bytes()).unwrap();
        self.reply()
    }
}

#[test]
fn notify_ready_watchdog_reloading_stopping() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("users.toml"), users_text("")).unwrap();
    let port = free_port();
    let d = Daemon::start_with(
        t.path(),
        &config_text(t.path(), port, "allow_root = true", ""),
        &[("WATCHDOG_USEC", "200000")],
    );
    let ready = d.wait_for("READY=1", 20);
    assert!(ready.contains("STATUS="), "{ready}");
    // READY comes once every listener is bound and the queue is recovered.
    Smtp::connect(port);
    assert!(d.log().contains("queue recovered"));
    // WatchdogSec=0.2s: pings every 0.1 s.
    d.wait_for("WATCHDOG=1", 2);
    d.wait_for("WATCHDOG=1", 2);
    d.signal(libc::SIGHUP);
    let r = d.wait_for("RELOADING=1", 10);
    assert!(r.contains("MONOTONIC_USEC="), "{r}");
    d.wait_for("READY=1", 10);
    let st = d.stop();
    assert!(st.success(), "{st:?}");
}

#[test]
fn reload_applies_users_aliases_and_limits_keeps_sessions_and_refuses_bad_files() {
    let t = tempfile::tempdir().unwrap();
    let d = Daemon::start(t.path());
    d.wait_for("READY=1", 20);
    let mut c = Smtp::connect(d.port);
    c.cmd("EHLO c.test");
    assert!(c.cmd("MAIL FROM:<s@src.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<info@example.org>").starts_with("550 5.1.1"));
    // A session in the middle of a transaction when the reload happens.
    assert!(c.cmd("RCPT TO:<alice@example.org>").starts_with("250"));

    // New: user bob, alias info@ -> bob, at most 2 errors per session.
    std::fs::write(
        t.path().join("users.toml"),
        users_text(&format!(
            "\n[[user]]\nlogin = \"bob\"\npassword = \"{}\"\naddresses = [\"bob@example.org\"]\n",
            sha512("hunter2")
        )),
    )
    .unwrap();
    let text = config_text(
        d.dir.as_path(),
        d.port,
        "allow_root = true",
        "\n[limits]\nmax_errors = 2\n",
    )
    .replace(
        "abuse = \"alice@example.org\"\n",
        "abuse = \"alice@example.org\"\n\"info@example.org\" = \"bob\"\n",
    );
    std::fs::write(&d.config, text).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for("RELOADING=1", 10);
    d.wait_for("READY=1", 10);
    assert!(d.log().contains("configuration reloaded"), "{}", d.log());

    let mut n = Smtp::connect(d.port);
    n.cmd("EHLO n.test");
    assert!(n.cmd("MAIL FROM:<s@src.test>").starts_with("250"));
    let r = n.cmd("RCPT TO:<info@example.org>");
    assert!(r.starts_with("250"), "new alias in force: {r}");
    n.cmd("RSET");
    // "\0bob\0hunter2"
    let r = n.cmd("AUTH PLAIN AGJvYgBodW50ZXIy");
    assert!(r.starts_with("235"), "new user may log in: {r}");
    // The new error limit: two errors tolerated, the third closes.
    n.cmd("XYZZY");
    n.cmd("XYZZY");
    assert!(n.cmd("XYZZY").starts_with("500"));
    let r = n.reply();
    assert!(r.starts_with("421"), "max_errors = 2 in force: {r}");

    // The old session goes on with what it had.
    assert!(c.cmd("DATA").starts_with("354"));
    c.w.write_all(b"Subject: across a reload\r\n\r\nx\r\n.\r\n")
        .unwrap();
    let r = c.reply();
    assert!(r.starts_with("250"), "{r}");

    // A broken file: every error logged with key and line; nothing changes.
    let broken = std::fs::read_to_string(&d.config)
        .unwrap()
        .replace("max_errors = 2", "max_errors = 0\nno_such_key = 1");
    std::fs::write(&d.config, &broken).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for("READY=1", 10);
    let log = d.log();
    assert!(log.contains("configuration NOT reloaded"), "{log}");
    assert!(log.contains("key `limits.no_such_key`"), "{log}");
    let broken = broken.replace("\nno_such_key = 1", "");
    std::fs::write(&d.config, &broken).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for("READY=1", 10);
    let log = d.log();
    assert!(
        log.contains("line ") && log.contains("key `limits.max_errors`: is 0"),
        "{log}"
    );
    let mut m = Smtp::connect(d.port);
    m.cmd("EHLO m.test");
    m.cmd("MAIL FROM:<s@src.test>");
    assert!(m.cmd("RCPT TO:<info@example.org>").starts_with("250"));
    let st = d.stop();
    assert!(st.success());
}

#[test]
fn socket_activation_uses_the_passed_socket() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("users.toml"), users_text("")).unwrap();
    let passed = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = passed.local_addr().unwrap().port();
    // The configuration names another port: the socket is matched by its
    // name (FileDescriptorName=smtp), as for ListenStream=25.
    let text = config_text(t.path(), free_port(), "allow_root = true", "");
    std::fs::write(t.path().join("pigeon.toml"), text).unwrap();
    let fd = passed.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "LISTEN_PID=$$ exec {BIN} serve --config {} 2>>{}",
            t.path().join("pigeon.toml").display(),
            t.path().join("log.txt").display()
        ))
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "smtp")
        .stdin(Stdio::null());
    // SAFETY: between fork and exec only dup2 and fcntl are called.
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::fcntl(3, libc::F_GETFD);
            libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(passed);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut c = loop {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            break s;
        }
        assert!(Instant::now() < deadline, "nothing on the passed socket");
        std::thread::sleep(Duration::from_millis(50));
    };
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut g = [0u8; 64];
    let n = c.read(&mut g).unwrap();
    assert!(
        g[..n].starts_with(b"220 mx.test"),
        "{:?}",
        String::from_utf8_lossy(&g[..n])
    );
    let log = std::fs::read_to_string(t.path().join("log.txt")).unwrap();
    assert!(
        log.contains("using the socket from the service manager"),
        "{log}"
    );
    // SAFETY: kill on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

/// Needs root: fails without it (tests/run.sh skips needs_root_* tests
/// when it does not run as root, and lists them as skipped).
#[test]
fn needs_root_must_drop_privileges_or_say_so_and_keeps_its_low_port() {
    assert!(is_root(), "this test needs root");
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("users.toml"), users_text("")).unwrap();
    // Without server.user or allow_root: refused.
    let port = free_port();
    let mut d = Daemon::start_with(t.path(), &config_text(t.path(), port, "", ""), &[]);
    let st = d.child.wait().unwrap();
    assert!(!st.success());
    assert!(d.log().contains("refusing to run as root"), "{}", d.log());
    drop(d);

    // With user = "nobody": binds a port below 1024, then runs as nobody.
    let t = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(t.path().join("users.toml"), users_text("")).unwrap();
    std::fs::set_permissions(
        t.path().join("users.toml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let low = (600..1000)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port below 1024");
    let text = config_text(t.path(), low, "user = \"nobody\"", "");
    let d = Daemon::start_with(t.path(), &text, &[]);
    std::fs::set_permissions(&d.config, std::fs::Permissions::from_mode(0o644)).unwrap();
    d.wait_for("READY=1", 20);
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["65534"; 4],
        "{uid}"
    );
    let mut c = Smtp::connect(low);
    c.cmd("EHLO c.test");
    c.cmd("MAIL FROM:<s@src.test>");
    c.cmd("RCPT TO:<alice@example.org>");
    c.cmd("DATA");
    c.w.write_all(b"Subject: as nobody\r\n\r\nx\r\n.\r\n")
        .unwrap();
    assert!(c.reply().starts_with("250"));
    // The spool was created for the user it now runs as.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(t.path().join("spool")).unwrap().uid(),
        65534
    );
    assert!(d.log().contains("privileges dropped"));
    let st = d.stop();
    assert!(st.success());
}

fn sendmail(args: &[&str], input: &str, argv0: Option<&Path>) -> (i32, String) {
    let mut cmd = match argv0 {
        Some(p) => Command::new(p),
        None => {
            let mut c = Command::new(BIN);
            c.arg("sendmail");
            c
        }
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It may exit before reading (a usage error): a broken pipe is fine.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn maildir(dir: &Path, user: &str) -> Vec<String> {
    let new = dir.join("mail").join(user).join("new");
    let mut v: Vec<String> = std::fs::read_dir(new)
        .map(|d| {
            d.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn wait_maildir(dir: &Path, user: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = maildir(dir, user);
        if m.len() >= n {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{user}: {} of {n} messages",
            m.len()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sendmail_command_options_and_exit_codes() {
    let t = tempfile::tempdir().unwrap();
    let d = Daemon::start(t.path());
    d.wait_for("READY=1", 20);
    let cfg = d.config.display().to_string();
    // -t: recipients from the header, Bcc removed, From/Date/Message-ID added.
    let (code, err) = sendmail(
        &["-C", &cfg, "-t", "-i", "-F", "Cron Daemon"],
        "To: postmaster\nBcc: alice@example.org\nSubject: from -t\n\nline one\n.\nafter the dot\n",
        None,
    );
    assert_eq!(code, 0, "{err}");
    let m = wait_maildir(t.path(), "alice", 1);
    assert_eq!(
        m.len(),
        1,
        "postmaster (a bare name: postmaster@mx.test) and alice are one mailbox: one copy"
    );
    let msg = &m[0];
    let user = if is_root() {
        "root".to_string()
    } else {
        std::env::var("USER").unwrap_or_default()
    };
    assert!(
        msg.contains(&format!("Return-Path: <{user}@mx.test>")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("From: \"Cron Daemon\" <{user}@mx.test>")),
        "{msg}"
    );
    assert!(
        msg.contains("\nDate: ") && msg.contains("\nMessage-ID: <"),
        "{msg}"
    );
    assert!(!msg.contains("Bcc"), "{msg}");
    assert!(msg.contains("(pigeon, from userid "), "{msg}");
    assert!(
        msg.ends_with("line one\n.\nafter the dot\n"),
        "-i keeps dot lines: {msg}"
    );

    // Called as "sendmail" (a link), recipients as arguments, -f, a lone
    // dot ends the message without -i.
    let link = t.path().join("sendmail");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let (code, err) = sendmail(
        &[
            "-C",
            &cfg,
            "-f",
            "cron@example.org",
            "--",
            "alice@example.org",
        ],
        "Subject: as sendmail\n\nbody\n.\nnot sent\n",
        Some(&link),
    );
    assert_eq!(code, 0, "{err}");
    let m = wait_maildir(t.path(), "alice", 2);
    let msg = m.iter().find(|x| x.contains("as sendmail")).unwrap();
    assert!(msg.starts_with("Return-Path: <cron@example.org>"), "{msg}");
    assert!(
        msg.ends_with("\nbody\n") && !msg.contains("not sent"),
        "{msg}"
    );

    // Exit codes: unknown local user 67, no recipient 64, bad option 64.
    let (code, err) = sendmail(&["-C", &cfg, "ghost@example.org"], "x\n", None);
    assert_eq!(code, 67, "{err}");
    assert!(err.contains("ghost@example.org: 550 5.1.1"), "{err}");
    assert_eq!(sendmail(&["-C", &cfg], "x\n", None).0, 64);
    assert_eq!(
        sendmail(&["-C", &cfg, "-t"], "Subject: none\n\nx\n", None).0,
        64
    );
    assert_eq!(sendmail(&["-C", &cfg, "-Q", "x"], "x\n", None).0, 64);
    let st = d.stop();
    assert!(st.success());
    // The daemon is not running: try again later (75).
    let (code, err) = sendmail(&["-C", &cfg, "alice@example.org"], "x\n", None);
    assert_eq!(code, 75, "{err}");
}

/// A strict reading of the Prometheus text format (0.0.4): every sample
/// belongs to a family announced by HELP and TYPE; names and labels are
/// well formed; values are numbers; counters end in `_total`; histogram
/// buckets grow, end with `+Inf` equal to `_count`.
fn check_exposition(text: &str) -> Result<usize, String> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut types: std::collections::HashMap<String, String> = Default::default();
    let mut helped: std::collections::HashSet<String> = Default::default();
    let mut samples = 0;
    let mut buckets: Vec<(String, f64, f64)> = Vec::new();
    let mut counts: std::collections::HashMap<String, f64> = Default::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !name_ok(name) || !helped.insert(name.to_string()) {
                return Err(format!("bad or repeated HELP: {line}"));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split(' ');
            let (name, kind) = (p.next().unwrap_or(""), p.next().unwrap_or(""));
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(format!("bad TYPE: {line}"));
            }
            if types.insert(name.to_string(), kind.to_string()).is_some() {
                return Err(format!("repeated TYPE: {line}"));
            }
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(format!("unexpected line: {line:?}"));
        }
        let (series, value) = line.rsplit_once(' ').ok_or(format!("no value: {line}"))?;
        let value: f64 = value.parse().map_err(|_| format!("bad value: {line}"))?;
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').ok_or(format!("bad labels: {line}"))?),
            None => (series, ""),
        };
        if !name_ok(name) {
            return Err(format!("bad name: {line}"));
        }
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').ok_or(format!("bad label: {line}"))?;
            if !name_ok(k) || !v.starts_with('"') || !v.ends_with('"') || v.len() < 2 {
                return Err(format!("bad label: {line}"));
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        let kind = types
            .get(family)
            .ok_or(format!("sample before its TYPE: {line}"))?;
        if !helped.contains(family) {
            return Err(format!("no HELP for {family}"));
        }
        if kind == "counter" && !family.ends_with("_total") {
            return Err(format!("counter without _total: {family}"));
        }
        if value < 0.0 && kind != "gauge" {
            return Err(format!("negative {kind}: {line}"));
        }
        if name.ends_with("_bucket") {
            let le = labels
                .split("le=\"")
                .nth(1)
                .and_then(|x| x.split('"').next())
                .ok_or("bucket without le")?;
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().map_err(|_| "bad le")?
            };
            buckets.push((family.to_string(), le, value));
        }
        if name.ends_with("_count") && kind == "histogram" {
            counts.insert(family.to_string(), value);
        }
        samples += 1;
    }
    for w in buckets.windows(2) {
        if w[0].0 == w[1].0 && (w[1].1 <= w[0].1 || w[1].2 < w[0].2) {
            return Err(format!("buckets out of order: {w:?}"));
        }
    }
    for (family, count) in counts {
        let inf = buckets
            .iter()
            .rev()
            .find(|b| b.0 == family)
            .ok_or("no buckets")?;
        if inf.1 != f64::INFINITY || inf.2 != count {
            return Err(format!("{family}: +Inf bucket {} != count {count}", inf.2));
        }
    }
    Ok(samples)
}

#[test]
fn metrics_endpoint_counts_connections_messages_and_deliveries() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("users.toml"), users_text("")).unwrap();
    let port = free_port();
    let mport = free_port();
    let text = config_text(
        t.path(),
        port,
        "allow_root = true",
        &format!("\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"),
    );
    let d = Daemon::start_with(t.path(), &text, &[]);
    d.wait_for("READY=1", 20);
    let mut c = Smtp::connect(port);
    c.cmd("EHLO c.test");
    c.cmd("MAIL FROM:<s@src.test>");
    assert!(c.cmd("RCPT TO:<nobody@example.org>").starts_with("550"));
    c.cmd("RCPT TO:<alice@example.org>");
    c.cmd("DATA");
    c.w.write_all(b"Subject: counted\r\n\r\nx\r\n.\r\n")
        .unwrap();
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT");
    wait_maildir(t.path(), "alice", 1);
    let get = |path: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", mport)).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let resp = get("/metrics");
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(
            resp.contains("Content-Type: text/plain; version=0.0.4"),
            "{resp}"
        );
        let body = resp.split_once("\r\n\r\n").unwrap().1.to_string();
        if body.contains("pigeon_deliveries_total{transport=\"local\",outcome=\"delivered\"} 1\n") {
            break body;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let n = check_exposition(&body).unwrap_or_else(|e| panic!("{e}\n{body}"));
    assert!(n > 30, "{n} samples");
    for want in [
        "pigeon_connections_total{listener=\"smtp\"} 1\n",
        "pigeon_messages_accepted_total{listener=\"smtp\"} 1\n",
        "pigeon_rcpt_refused_total{class=\"5xx\"} 1\n",
        "pigeon_queue_messages{state=\"waiting\"} 0\n",
        "pigeon_delivery_latency_seconds_count 1\n",
    ] {
        assert!(body.contains(want), "missing {want:?} in\n{body}");
    }
    assert!(get("/other").starts_with("HTTP/1.1 404"));
    assert!(
        check_exposition("pigeon_x 1\n").is_err(),
        "the checker does check"
    );
    let st = d.stop();
    assert!(st.success());
}

/// `pigeon sendmail` run by a local user other than root: a sender that
/// is not the user's own gets `X-Authentication-Warning:`; with
/// `sendmail.restrict_senders` it is refused, and with
/// `sendmail.allowed_users` the user may not submit at all. Needs root
/// (to run the command as nobody).
#[test]
fn needs_root_local_users_are_named_and_restricted() {
    assert!(is_root(), "this test needs root");
    let t = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let as_nobody = |cfg: &str, from: &str, text: &str| -> (i32, String) {
        let mut child = Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                BIN,
                "sendmail",
                "-C",
                cfg,
                "-f",
                from,
                "alice@example.org",
            ])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
        let out = child.wait_with_output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let start = |sendmail_keys: &str| {
        std::fs::write(t.path().join("users.toml"), users_text("")).unwrap();
        let port = free_port();
        let text = config_text(t.path(), port, "allow_root = true", "").replace(
            "[sendmail]\nsocket",
            &format!("[sendmail]\n{sendmail_keys}\nsocket"),
        );
        let d = Daemon::start_with(t.path(), &text, &[]);
        d.wait_for("READY=1", 20);
        std::fs::set_permissions(&d.config, std::fs::Permissions::from_mode(0o644)).unwrap();
        d
    };
    let d = start("");
    let cfg = d.config.display().to_string();
    let (code, err) = as_nobody(&cfg, "ceo@example.org", "Subject: spoofed\n\nx\n");
    assert_eq!(code, 0, "{err}");
    let (code, err) = as_nobody(&cfg, "nobody@mx.test", "Subject: own\n\nx\n");
    assert_eq!(code, 0, "{err}");
    let (code, err) = sendmail(
        &["-C", &cfg, "-f", "ceo@example.org", "alice@example.org"],
        "Subject: by root\n\nx\n",
        None,
    );
    assert_eq!(code, 0, "{err}");
    let m = wait_maildir(t.path(), "alice", 3);
    let find = |s: &str| m.iter().find(|x| x.contains(s)).unwrap().clone();
    let spoofed = find("Subject: spoofed");
    assert!(
        spoofed.contains(
            "\nX-Authentication-Warning: mx.test: nobody set sender to <ceo@example.org>\n"
        ),
        "{spoofed}"
    );
    assert!(spoofed.contains("from userid 65534 (nobody)"), "{spoofed}");
    assert!(!find("Subject: own").contains("X-Authentication-Warning"));
    assert!(!find("Subject: by root").contains("X-Authentication-Warning"));
    assert!(d.stop().success());

    let d = start("restrict_senders = true");
    let (code, err) = as_nobody(&cfg, "ceo@example.org", "Subject: refused\n\nx\n");
    assert_ne!(code, 0);
    assert!(err.contains("553 5.7.1"), "{err}");
    let (code, err) = as_nobody(&cfg, "nobody@mx.test", "Subject: own again\n\nx\n");
    assert_eq!(code, 0, "{err}");
    assert!(d.stop().success());

    let d = start("allowed_users = [\"root\"]");
    let (code, err) = as_nobody(&cfg, "nobody@mx.test", "Subject: not allowed\n\nx\n");
    assert_ne!(code, 0);
    assert_eq!(code, 77, "{err}");
    assert!(err.contains("554 5.7.1"), "{err}");
    assert!(d.stop().success());
    let m = maildir(t.path(), "alice");
    assert_eq!(m.len(), 4, "{m:?}");
}
