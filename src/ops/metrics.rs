//! Counters and the Prometheus text endpoint. The counters are process-wide
//! atomics that the server and delivery bump as things happen; the
//! endpoint (off unless `metrics.listen` is set, loopback only) renders
//! them in the text exposition format, with the queue's current size asked
//! of the delivery manager at each scrape.
//!
//! Untrusted bytes: HTTP requests from whoever can reach the loopback
//! address; only the request line is read (capped, with a deadline, at
//! most 4 requests at once) and anything but `GET /metrics` gets an error
//! status.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Listener kinds, as label values.
pub const LISTENERS: [&str; 4] = ["smtp", "submission", "submissions", "local"];
/// Delivery transports, as label values.
pub const TRANSPORTS: [&str; 2] = ["remote", "local"];
/// Delivery outcomes, as label values.
pub const OUTCOMES: [&str; 3] = ["delivered", "deferred", "failed"];
/// Upper bounds (seconds) of the delivery latency histogram: time from
/// arrival in the queue to delivery.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
];

/// Index of a reply class in the `class` arrays: 4xx, 5xx.
pub fn class_index(code: u16) -> Option<usize> {
    match code / 100 {
        4 => Some(0),
        5 => Some(1),
        _ => None,
    }
}
const CLASSES: [&str; 2] = ["4xx", "5xx"];

#[derive(Default)]
pub struct Metrics {
    pub connections_open: [AtomicI64; 4],
    pub connections_total: [AtomicU64; 4],
    /// Refused at once: connection limits.
    pub connections_refused: AtomicU64,
    pub tls_handshakes_ok: [AtomicU64; 4],
    pub tls_handshakes_failed: [AtomicU64; 4],
    pub messages_accepted: [AtomicU64; 4],
    /// Refused after the content (policy, size, a failed commit), by class.
    pub messages_refused: [AtomicU64; 2],
    /// MAIL refused by policy, by class.
    pub mail_refused: [AtomicU64; 2],
    /// RCPT refused by policy (relay denied, unknown user), by class.
    pub rcpt_refused: [AtomicU64; 2],
    pub auth_ok: AtomicU64,
    pub auth_failed: AtomicU64,
    /// Per transport, per outcome, counted per recipient.
    pub deliveries: [[AtomicU64; 3]; 2],
    pub latency_buckets: [AtomicU64; 12],
    pub latency_count: AtomicU64,
    /// Milliseconds.
    pub latency_sum_ms: AtomicU64,
    pub dsns: AtomicU64,
}

impl Metrics {
    pub fn observe_latency(&self, secs: f64) {
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Relaxed);
        self.latency_sum_ms
            .fetch_add((secs.max(0.0) * 1000.0) as u64, Relaxed);
    }
}

static METRICS: std::sync::OnceLock<Metrics> = std::sync::OnceLock::new();

/// The process's counters.
pub fn get() -> &'static Metrics {
    METRICS.get_or_init(Metrics::default)
}

/// The queue as seen at a scrape.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueGauges {
    /// Being delivered now.
    pub active: usize,
    /// Waiting for their next attempt (new or retried).
    pub waiting: usize,
    /// On hold.
    pub held: usize,
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The exposition text.
pub fn render(m: &Metrics, q: Option<QueueGauges>) -> String {
    let mut o = String::with_capacity(4096);
    header(
        &mut o,
        "pigeon_connections_open",
        "gauge",
        "SMTP connections open now, by listener.",
    );
    for (i, l) in LISTENERS.iter().enumerate() {
        let _ = writeln!(
            o,
            "pigeon_connections_open{{listener=\"{l}\"}} {}",
            m.connections_open[i].load(Relaxed).max(0)
        );
    }
    header(
        &mut o,
        "pigeon_connections_total",
        "counter",
        "SMTP connections accepted, by listener.",
    );
    for (i, l) in LISTENERS.iter().enumerate() {
        let _ = writeln!(
            o,
            "pigeon_connections_total{{listener=\"{l}\"}} {}",
            m.connections_total[i].load(Relaxed)
        );
    }
    header(
        &mut o,
        "pigeon_connections_refused_total",
        "counter",
        "Connections refused at once by a connection limit.",
    );
    let _ = writeln!(
        o,
        "pigeon_connections_refused_total {}",
        m.connections_refused.load(Relaxed)
    );
    header(
        &mut o,
        "pigeon_tls_handshakes_total",
        "counter",
        "TLS handshakes, by listener and result.",
    );
    for (i, l) in LISTENERS.iter().enumerate().take(3) {
        let _ = writeln!(
            o,
            "pigeon_tls_handshakes_total{{listener=\"{l}\",result=\"ok\"}} {}",
            m.tls_handshakes_ok[i].load(Relaxed)
        );
        let _ = writeln!(
            o,
            "pigeon_tls_handshakes_total{{listener=\"{l}\",result=\"failed\"}} {}",
            m.tls_handshakes_failed[i].load(Relaxed)
        );
    }
    header(
        &mut o,
        "pigeon_messages_accepted_total",
        "counter",
        "Messages accepted (250 after the content), by listener.",
    );
    for (i, l) in LISTENERS.iter().enumerate() {
        let _ = writeln!(
            o,
            "pigeon_messages_accepted_total{{listener=\"{l}\"}} {}",
            m.messages_accepted[i].load(Relaxed)
        );
    }
    for (name, arr, help) in [
        (
            "pigeon_messages_refused_total",
            &m.messages_refused,
            "Messages refused after the content, by reply class.",
        ),
        (
            "pigeon_mail_refused_total",
            &m.mail_refused,
            "MAIL commands refused by policy, by reply class.",
        ),
        (
            "pigeon_rcpt_refused_total",
            &m.rcpt_refused,
            "RCPT commands refused by policy (relay denied, unknown user), by reply class.",
        ),
    ] {
        header(&mut o, name, "counter", help);
        for (i, c) in CLASSES.iter().enumerate() {
            let _ = writeln!(o, "{name}{{class=\"{c}\"}} {}", arr[i].load(Relaxed));
        }
    }
    header(
        &mut o,
        "pigeon_auth_total",
        "counter",
        "SMTP AUTH attempts, by result.",
    );
    let _ = writeln!(
        o,
        "pigeon_auth_total{{result=\"ok\"}} {}",
        m.auth_ok.load(Relaxed)
    );
    let _ = writeln!(
        o,
        "pigeon_auth_total{{result=\"failed\"}} {}",
        m.auth_failed.load(Relaxed)
    );
    if let Some(q) = q {
        header(
            &mut o,
            "pigeon_queue_messages",
            "gauge",
            "Messages in the queue, by state.",
        );
        let _ = writeln!(o, "pigeon_queue_messages{{state=\"active\"}} {}", q.active);
        let _ = writeln!(
            o,
            "pigeon_queue_messages{{state=\"waiting\"}} {}",
            q.waiting
        );
        let _ = writeln!(o, "pigeon_queue_messages{{state=\"held\"}} {}", q.held);
    }
    header(
        &mut o,
        "pigeon_deliveries_total",
        "counter",
        "Delivery attempts per recipient, by transport and outcome.",
    );
    for (t, tname) in TRANSPORTS.iter().enumerate() {
        for (k, oname) in OUTCOMES.iter().enumerate() {
            let _ = writeln!(
                o,
                "pigeon_deliveries_total{{transport=\"{tname}\",outcome=\"{oname}\"}} {}",
                m.deliveries[t][k].load(Relaxed)
            );
        }
    }
    header(
        &mut o,
        "pigeon_dsn_total",
        "counter",
        "Delivery status notifications queued.",
    );
    let _ = writeln!(o, "pigeon_dsn_total {}", m.dsns.load(Relaxed));
    header(
        &mut o,
        "pigeon_delivery_latency_seconds",
        "histogram",
        "Time from arrival in the queue to delivery, per recipient.",
    );
    for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
        let _ = writeln!(
            o,
            "pigeon_delivery_latency_seconds_bucket{{le=\"{le}\"}} {}",
            m.latency_buckets[i].load(Relaxed)
        );
    }
    let count = m.latency_count.load(Relaxed);
    let _ = writeln!(
        o,
        "pigeon_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
    );
    let _ = writeln!(
        o,
        "pigeon_delivery_latency_seconds_sum {}",
        m.latency_sum_ms.load(Relaxed) as f64 / 1000.0
    );
    let _ = writeln!(o, "pigeon_delivery_latency_seconds_count {count}");
    o
}

/// Longest request head read.
const MAX_REQUEST: usize = 8192;

/// Serves `GET /metrics` on `addr` until `stop`. `queue` gives the queue
/// gauges (None when delivery is off).
pub async fn serve<F, Fut>(
    addr: SocketAddr,
    queue: F,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<QueueGauges>> + Send + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %addr, "metrics endpoint listening");
    let queue = std::sync::Arc::new(queue);
    // A few scrapes at once; a client that sends nothing holds only its own.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    loop {
        let (mut s, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return Ok(()),
        };
        let queue = queue.clone();
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        tokio::spawn(tokio::time::timeout(Duration::from_secs(10), async move {
            let _slot = slot;
            let mut buf = Vec::with_capacity(1024);
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n")
            {
                if buf.len() >= MAX_REQUEST {
                    break;
                }
                let mut chunk = [0u8; 1024];
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let line = buf.split(|&b| b == b'\n').next().unwrap_or(b"");
            let line = String::from_utf8_lossy(line);
            let mut parts = line.split_ascii_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, body, ctype) = if method != "GET" {
                (
                    "405 Method Not Allowed",
                    "only GET\n".to_string(),
                    "text/plain",
                )
            } else if path != "/metrics" {
                ("404 Not Found", "see /metrics\n".to_string(), "text/plain")
            } else {
                let q = queue().await;
                (
                    "200 OK",
                    render(get(), q),
                    "text/plain; version=0.0.4; charset=utf-8",
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes()).await;
            let _ = s.write_all(body.as_bytes()).await;
            let _ = s.shutdown().await;
        }));
    }
}

/// The counters of mail events, as a subscriber of [`crate::trace`].
pub struct Counters;

/// Counts mail events from now on (once per process).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| crate::trace::subscribe(std::sync::Arc::new(Counters)));
}

impl crate::trace::Subscriber for Counters {
    fn on(&self, e: &crate::trace::Event) {
        use crate::proto::Stage;
        use crate::trace::Event;
        let m = get();
        let class = |counters: &[AtomicU64; 2], code: u16| {
            if let Some(i) = class_index(code) {
                counters[i].fetch_add(1, Relaxed);
            }
        };
        match e {
            Event::Accepted { listener, .. } => {
                m.messages_accepted[listener.index()].fetch_add(1, Relaxed);
            }
            Event::Refused { stage, reply, .. } => match stage {
                Stage::Mail => class(&m.mail_refused, reply.code),
                Stage::Rcpt => class(&m.rcpt_refused, reply.code),
                Stage::Content => class(&m.messages_refused, reply.code),
                Stage::Connect | Stage::Helo => {}
            },
            Event::Delivered {
                local,
                latency_secs,
                ..
            } => {
                m.deliveries[usize::from(*local)][0].fetch_add(1, Relaxed);
                m.observe_latency(*latency_secs);
            }
            Event::Deferred { local, .. } => {
                m.deliveries[usize::from(*local)][1].fetch_add(1, Relaxed);
            }
            Event::Failed { local, .. } => {
                m.deliveries[usize::from(*local)][2].fetch_add(1, Relaxed);
            }
            Event::DsnQueued { .. } => {
                m.dsns.fetch_add(1, Relaxed);
            }
            Event::Connected { .. } | Event::Removed { .. } | Event::Authenticated { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_lines_are_well_formed() {
        let m = Metrics::default();
        m.connections_total[0].fetch_add(3, Relaxed);
        m.observe_latency(0.7);
        m.observe_latency(4000.0);
        let text = render(
            &m,
            Some(QueueGauges {
                active: 1,
                waiting: 2,
                held: 0,
            }),
        );
        assert!(text.contains("pigeon_connections_total{listener=\"smtp\"} 3\n"));
        assert!(text.contains("pigeon_delivery_latency_seconds_bucket{le=\"1\"} 1\n"));
        assert!(text.contains("pigeon_delivery_latency_seconds_bucket{le=\"14400\"} 2\n"));
        assert!(text.contains("pigeon_delivery_latency_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(text.contains("pigeon_queue_messages{state=\"waiting\"} 2\n"));
        for line in text.lines() {
            assert!(
                line.starts_with("# HELP pigeon_")
                    || line.starts_with("# TYPE pigeon_")
                    || line.starts_with("pigeon_"),
                "{line}"
            );
        }
    }
}
