//! A whole daemon in the test process: server, delivery manager (remote
//! and local transports) and the queue, on a spool the test gives.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{self as common, queued_id, Client};
use pigeon::config::Config;
use pigeon::delivery;
use pigeon::dns::HickoryResolver;
use pigeon::queue::{Queue, QueueId};
use tokio::sync::watch;

pub struct Daemon {
    pub addr: SocketAddr,
    pub spool: PathBuf,
    pub queue: Queue,
    pub handle: delivery::Handle,
    pub stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<()>,
    pub running: pigeon::server::Running,
}

/// Maildirs go under the spool's parent unless the configuration says.
pub async fn start(cfg: Config, spool: PathBuf) -> Daemon {
    let mut cfg = cfg;
    cfg.spool.dir = spool.clone();
    if let Some(parent) = spool.parent() {
        common::mail_under(&mut cfg, parent);
    }
    // A daemon stopped just before (a restart test) may still be letting go
    // of the spool: its aborted delivery tasks drop their handles on the
    // queue as the runtime gets to them.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let queue = loop {
        match Queue::open(&spool, 1) {
            Ok((q, _)) => break q,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("open {}: {e}", spool.display()),
        }
    };
    let live = common::live(cfg);
    let cfg = live.cfg();
    let listeners = pigeon::server::bind_all(&cfg).unwrap();
    let running = pigeon::server::start(live.clone(), queue.clone(), listeners, None).unwrap();
    let resolver = HickoryResolver::new(&cfg.dns.nameservers, Duration::from_secs(1), 1).unwrap();
    let transport = Arc::new(pigeon::delivery::remote::RemoteTransport::new(
        live.clone(),
        Arc::new(resolver),
    ));
    let local = Arc::new(pigeon::delivery::local::LocalTransport::new(
        live.clone(),
        queue.clone(),
    ));
    let (stop, stop_rx) = watch::channel(false);
    let (handle, task) = delivery::start(live, queue.clone(), transport, local, stop_rx);
    Daemon {
        addr: running.addrs[0],
        spool,
        queue,
        handle,
        stop,
        task,
        running,
    }
}

impl Daemon {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.running.shutdown(Duration::from_secs(1)).await;
        drop(self.queue);
    }

    pub async fn send(&self, from: &str, to: &[&str], body: &str) -> QueueId {
        let mut c = Client::connect(self.addr).await;
        c.reply().await;
        c.cmd("EHLO client.test").await;
        let r = c.mail(from, to, body).await;
        assert!(r.starts_with("250 2.0.0"), "{r}");
        c.cmd("QUIT").await;
        queued_id(&r).parse().unwrap()
    }

    /// Waits until the queue holds exactly `n` messages.
    pub async fn wait_queue_len(&self, n: usize, secs: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        while self.queue.len() != n {
            assert!(
                std::time::Instant::now() < deadline,
                "queue has {} messages, want {n}",
                self.queue.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
