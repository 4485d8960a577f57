//! A test network: a DNS server with the test's zone, scripted SMTP sinks
//! on 127.0.0.2 .. 127.0.0.12 (one port for all, so that MX records need
//! no port), a temporary directory, and the daemon started on it with
//! retries shortened to a second.

use std::net::SocketAddr;
use std::time::Duration;

use pigeon::config::Config;

use super::daemon::{self, Daemon};
use super::dns::{Record, TestDns};
use super::sink::{Behaviour, Sink};

pub struct Net {
    pub dns: TestDns,
    /// The port every sink listens on.
    pub port: u16,
    pub dir: tempfile::TempDir,
}

/// A port free on 127.0.0.2 .. 127.0.0.12, for the sinks.
fn sink_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let free =
            (3..=12).all(|i| std::net::TcpListener::bind(format!("127.0.0.{i}:{port}")).is_ok());
        if free {
            return port;
        }
    }
}

impl Net {
    pub async fn new(zone: Vec<Record>) -> Net {
        Net {
            dns: TestDns::start(zone).await,
            port: sink_port(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// 127.0.0.`n` at the sinks' port.
    pub fn ip(&self, n: u8) -> SocketAddr {
        format!("127.0.0.{n}:{}", self.port).parse().unwrap()
    }

    /// A sink on 127.0.0.`n`.
    pub async fn sink(&self, n: u8, b: Behaviour) -> Sink {
        Sink::start(self.ip(n), b).await
    }

    /// The base configuration ([`super::test_config`]) resolving through
    /// this DNS, delivering to the sinks' port, retrying after a second.
    pub fn config(&self) -> Config {
        let mut cfg = super::test_config();
        cfg.dns.nameservers = vec![self.dns.addr];
        cfg.dns.timeout_secs = 1;
        cfg.dns.attempts = 1;
        cfg.delivery.remote_port = self.port;
        cfg.delivery.first_retry_secs = 1;
        cfg.delivery.max_retry_interval_secs = 1;
        cfg.delivery.connect_timeout_secs = 2;
        cfg.delivery.delay_warning_secs = 0;
        cfg
    }

    /// The daemon on `cfg`, its spool (and Maildirs) in this directory.
    pub async fn start(&self, cfg: Config) -> Daemon {
        daemon::start(cfg, self.dir.path().join("spool")).await
    }

    /// How long to wait for things in these tests.
    pub fn patience() -> Duration {
        Duration::from_secs(20)
    }
}
