//! The real `pigeon` binary as a child process, for the tests that kill
//! it or trace its system calls: a configuration with one SMTP listener
//! on a free loopback port, example.org local with every address going
//! to box@example.org (Maildir `<dir>/mail/box`), and helpers to start
//! it, wait for it and read its queue.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pigeon");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `<dir>/pigeon.toml`; `deliver`: delivery on.
pub fn write_config(dir: &Path, port: u16, deliver: bool) -> PathBuf {
    let cfg = format!(
        "[server]\nhostname = \"mx.test\"\nallow_root = true\n\n[sendmail]\nsocket = \"\"\n\n\
         [[listener]]\nbind = \"127.0.0.1:{port}\"\nmode = \"smtp\"\n\n\
         [domains]\nlocal = [\"example.org\"]\n\n[spool]\ndir = \"{spool}\"\n\n[log]\nlevel = \"warn\"\n\n\
         [delivery]\nenabled = {deliver}\n\n\
         [[auth.user]]\nlogin = \"box\"\npassword = \"$6$x$y\"\naddresses = [\"box@example.org\"]\n\n\
         [local]\nmaildir = \"{dir}/mail/{{user}}\"\n\n\
         [local.aliases]\npostmaster = \"box@example.org\"\nabuse = \"box@example.org\"\n\"@example.org\" = \"box@example.org\"\n",
        spool = dir.join("spool").display(),
        dir = dir.display()
    );
    let path = dir.join("pigeon.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// `pigeon serve` on `config`, its output discarded.
pub fn spawn(config: &Path) -> Child {
    Command::new(BIN)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until the port takes connections.
pub async fn wait_ready(port: u16) {
    let t = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "server did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `pigeon queue list --json` on the spool of `config`.
pub fn queue_list(config: &Path) -> Vec<serde_json::Value> {
    let out = Command::new(BIN)
        .args(["queue", "--config"])
        .arg(config)
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    list.as_array().unwrap().clone()
}

/// SIGTERM to `pid`.
pub fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}
