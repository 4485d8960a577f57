//! The remote SMTP transport: takes the hosts [`super::route`] names,
//! connects to each in turn, and drives the sans-IO client over TCP with
//! the one client driver ([`crate::net::client_driver`]), STARTTLS as
//! [`super::tls_policy`] requires, until each recipient has an outcome.
//! Keeps idle connections for the next message to the same destination.
//! Reports events; never decides retries or bounces. Untrusted bytes
//! (remote replies, DNS answers) reach the client state machine only.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{info, warn};

use super::classify::Event;
use super::route;
use super::tls_policy::{self, Tls};
use super::{BoxFuture, Job};
use crate::config::{Config, IpPreference as CfgIpPreference};
use crate::dns::{DnsError, IpPreference, Resolver};
use crate::live::Live;
use crate::net::client_driver::{drive, Stop};
use crate::net::Stream;
use crate::proto::client::{
    ClientConfig, ClientSession, OutMessage, RcptOutcome, ServerReply, SessionOutcome, Stage,
};
use crate::proto::sasl::Credentials;

pub use tls_policy::load_ca_file;

/// A connection kept open after a transaction, for the next message to the
/// same destination.
struct Idle {
    client: ClientSession,
    stream: Stream,
    host: String,
    ip: IpAddr,
    since: Instant,
    tls: String,
}

/// The connection a session runs on.
enum Conn {
    Fresh(TcpStream),
    Reused(Box<Idle>),
}

/// What one connection attempt came to.
enum Attempt {
    /// Final outcomes for this attempt, one per recipient.
    Done(Vec<Event>),
    /// Nothing was decided with this host: try the next one.
    TryNext(Event),
}

pub struct RemoteTransport {
    /// Delivery settings are read from the live configuration per job, so
    /// a reload applies to the next attempt.
    live: Live,
    resolver: Arc<dyn Resolver>,
    tls: Tls,
    /// Our listening addresses (fixed until a restart): mail routed to
    /// them, or to our host name, loops.
    own_addrs: Vec<SocketAddr>,
    /// Open connections waiting for the next message, by destination.
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl RemoteTransport {
    pub fn new(live: Live, resolver: Arc<dyn Resolver>) -> RemoteTransport {
        let cfg = live.cfg();
        RemoteTransport {
            tls: Tls::new(&cfg),
            own_addrs: cfg.listeners.iter().map(|l| l.bind).collect(),
            idle: Mutex::new(HashMap::new()),
            resolver,
            live,
        }
    }

    fn cfg(&self) -> Arc<Config> {
        self.live.cfg()
    }

    fn is_us(&self, ip: IpAddr, port: u16) -> bool {
        self.own_addrs.iter().any(|a| {
            a.port() == port
                && (a.ip() == ip
                    || (a.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
        })
    }

    fn reuse_window(&self) -> Duration {
        Duration::from_secs(self.cfg().delivery.connection_reuse_secs)
    }

    /// An idle connection to this destination that is still fresh.
    fn take_idle(&self, key: &str) -> Option<Idle> {
        let window = self.reuse_window();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Drop every expired connection while we are here.
        idle.retain(|_, v| {
            v.retain(|c| c.since.elapsed() < window);
            !v.is_empty()
        });
        let v = idle.get_mut(key)?;
        while let Some(c) = v.pop() {
            if !c.stream.peer_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put_idle(&self, key: String, c: Idle) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let v = idle.entry(key).or_default();
        if v.len() < self.cfg().delivery.max_connections_per_destination {
            v.push(c);
        }
    }

    async fn run(&self, job: &Job) -> Vec<Event> {
        let n = job.rcpts.len();
        if !self.reuse_window().is_zero() {
            let key = super::Transport::destination(self, &job.domain);
            while let Some(c) = self.take_idle(&key) {
                let (host, ip) = (c.host.clone(), c.ip);
                match self
                    .session(job, &host, ip, Conn::Reused(Box::new(c)))
                    .await
                {
                    Attempt::Done(events) => return events,
                    // The kept connection had gone stale: another, or a new one.
                    Attempt::TryNext(_) => {}
                }
            }
        }
        let hop = route::hop(&self.cfg().delivery, &job.domain);
        let (hosts, port) = match route::hosts(self.resolver.as_ref(), hop).await {
            Ok(h) => h,
            Err(e) => return vec![e; n],
        };
        let pref = match self.cfg().delivery.ip_preference {
            CfgIpPreference::Ipv4First => IpPreference::Ipv4First,
            CfgIpPreference::Ipv6First => IpPreference::Ipv6First,
            CfgIpPreference::Ipv4Only => IpPreference::Ipv4Only,
            CfgIpPreference::Ipv6Only => IpPreference::Ipv6Only,
        };
        let mut last = Event::Connect("no mail host".into());
        for host in &hosts {
            if host.eq_ignore_ascii_case(&self.cfg().server.hostname) {
                return vec![Event::Loop(host.clone()); n];
            }
            let ips = match host.parse::<IpAddr>() {
                Ok(ip) => vec![ip],
                Err(_) => match self.resolver.addresses(host, pref).await {
                    Ok(v) => v,
                    Err(e) => {
                        // A host of several MX without addresses: try the others.
                        last = match e {
                            DnsError::NotFound(w) => {
                                Event::Connect(format!("{host}: no address ({w})"))
                            }
                            t => Event::Dns(t),
                        };
                        continue;
                    }
                },
            };
            for ip in ips {
                if self.is_us(ip, port) {
                    return vec![Event::Loop(format!("{host} [{ip}]:{port}")); n];
                }
                let addr = SocketAddr::new(ip, port);
                let connect = Duration::from_secs(self.cfg().delivery.connect_timeout_secs);
                let tcp = match timeout(connect, TcpStream::connect(addr)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        last = Event::Connect(format!("{host}[{ip}]:{port}: {e}"));
                        continue;
                    }
                    Err(_) => {
                        last = Event::Connect(format!("{host}[{ip}]:{port}: connection timed out"));
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                match self.session(job, host, ip, Conn::Fresh(tcp)).await {
                    Attempt::Done(events) => return events,
                    Attempt::TryNext(e) => last = e,
                }
            }
        }
        vec![last; n]
    }

    /// One SMTP session with one host: the whole job, or why not.
    async fn session(&self, job: &Job, host: &str, ip: IpAddr, conn: Conn) -> Attempt {
        let cfg = self.cfg();
        let d = &cfg.delivery;
        let relay = route::via_relay(d, &job.domain);
        let req = tls_policy::requirement(d, relay, self.tls.failed_recently(host));
        let mut ccfg = ClientConfig::new(cfg.server.hostname.clone());
        ccfg.use_starttls = req.starttls;
        if relay && !d.relay_login.is_empty() {
            ccfg.auth = Some(Credentials {
                authzid: String::new(),
                login: d.relay_login.clone(),
                password: d.relay_password.clone(),
            });
        }
        let remote = format!("{host} [{ip}]");
        // For DSNs' Remote-MTA: the host name, or the address literal.
        let mta = if host.parse::<IpAddr>().is_ok() {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let msg = &job.msg;
        let env = &msg.envelope;
        // The header edits made at receipt go in front of the message.
        let body: [&[u8]; 2] = [&msg.edits, &msg.body];
        let out = OutMessage {
            sender: env.sender.clone(),
            recipients: job
                .rcpts
                .iter()
                .map(|&i| env.recipients[i].clone())
                .collect(),
            size: (msg.edits.len() + msg.body.len()) as u64,
            body_type: env.body_type,
            smtputf8: env.smtputf8,
            ret: env.ret,
            envid: env.envid.clone(),
        };
        let reused = matches!(conn, Conn::Reused(_));
        let (mut client, mut stream, mut tls_desc) = match conn {
            Conn::Fresh(tcp) => (
                ClientSession::new(ccfg),
                Stream::Tcp(tcp),
                String::from("none"),
            ),
            Conn::Reused(idle) => (idle.client, idle.stream, idle.tls),
        };
        let keep_open = !self.reuse_window().is_zero();
        let mut buf: Vec<u8> = Vec::new();
        let mut sent = false;
        let mut refusal: Option<Vec<Event>> = None;
        let mut result = None;
        // None: the connection is kept for the next message.
        let outcome: Option<SessionOutcome> = loop {
            match drive(&mut client, &mut stream, &mut buf, &body).await {
                Stop::StartTls => {
                    buf.clear();
                    let Stream::Tcp(tcp) = stream else {
                        return Attempt::TryNext(Event::Protocol("STARTTLS inside TLS".into()));
                    };
                    match self.tls.handshake(req, host, ip, tcp).await {
                        Ok((s, desc)) => {
                            tls_desc = desc;
                            stream = Stream::TlsClient(Box::new(s));
                            client.tls_established();
                        }
                        Err(e) => {
                            warn!(host = %remote, error = %e, "TLS handshake failed");
                            return Attempt::TryNext(Event::Tls(format!("{remote}: {e}")));
                        }
                    }
                }
                Stop::Ready => {
                    if sent && keep_open && result.is_some() {
                        break None;
                    } else if sent {
                        client.quit();
                    } else {
                        sent = true;
                        if let Err(r) = client.send_message(&out) {
                            let e = match (r.enhanced.class, r.enhanced.subject, r.enhanced.detail)
                            {
                                (5, 3, 4) => Event::TooBig(mta.clone()),
                                (5, 6, 7) => Event::NeedsSmtputf8(mta.clone()),
                                (5, 6, 3) => Event::Needs8bit(mta.clone()),
                                _ => Event::Reply {
                                    code: if r.permanent { 554 } else { 451 },
                                    enhanced: Some(r.enhanced),
                                    text: r.text.clone(),
                                    remote: mta.clone(),
                                },
                            };
                            refusal = Some(vec![e; out.recipients.len()]);
                            client.quit();
                        }
                    }
                }
                Stop::TransactionDone(r) => result = Some(r),
                Stop::Closed(o) => break Some(o),
            }
        };
        let Some(outcome) = outcome else {
            let key = super::Transport::destination(self, &job.domain);
            let r = result.take();
            let dsn = client.extensions().dsn;
            self.put_idle(
                key,
                Idle {
                    client,
                    stream,
                    host: host.to_string(),
                    ip,
                    since: Instant::now(),
                    tls: tls_desc,
                },
            );
            return match r {
                Some(r) => Attempt::Done(rcpt_events(&r, &mta, dsn, false)),
                None => Attempt::Done(vec![
                    Event::Protocol("no transaction result".into());
                    out.recipients.len()
                ]),
            };
        };
        // A kept connection the server had closed in the meantime: nothing
        // was accepted on it (no reply even to MAIL), so try a new one.
        let stale = matches!(
            outcome,
            SessionOutcome::ConnectionLost {
                stage: Stage::Idle | Stage::Mail
            }
        );
        if reused && refusal.is_none() && (result.is_none() || stale) {
            return Attempt::TryNext(Event::Dropped(format!("{remote}: kept connection closed")));
        }
        info!(host = %remote, tls = %tls_desc, outcome = ?outcome, "SMTP session ended");
        if let Some(events) = refusal {
            return Attempt::Done(events);
        }
        if let Some(r) = result {
            return Attempt::Done(rcpt_events(&r, &mta, client.extensions().dsn, false));
        }
        Attempt::TryNext(match outcome {
            SessionOutcome::Refused { stage, reply } => {
                let e = reply_event(&reply, &mta);
                // A refusal of our greeting or EHLO: this host will not
                // talk to us; the next one may.
                if matches!(stage, Stage::Greeting | Stage::Hello) {
                    e
                } else {
                    return Attempt::Done(vec![e; out.recipients.len()]);
                }
            }
            SessionOutcome::TlsNotOffered => {
                Event::Tls(format!("{remote}: STARTTLS required but not offered"))
            }
            SessionOutcome::AuthUnavailable(why) => {
                Event::Protocol(format!("{remote}: cannot authenticate: {why}"))
            }
            SessionOutcome::ProtocolError { detail, .. } => {
                Event::Protocol(format!("{remote}: {detail}"))
            }
            SessionOutcome::ConnectionLost { stage } => {
                Event::Dropped(format!("{remote} during {stage:?}"))
            }
            SessionOutcome::Quit => {
                Event::Protocol(format!("{remote}: session ended without a transaction"))
            }
        })
    }
}

/// One event per recipient of a transaction; `final_delivery` for an LMTP
/// server.
pub(super) fn rcpt_events(
    r: &crate::proto::client::TransactionResult,
    remote: &str,
    dsn: bool,
    final_delivery: bool,
) -> Vec<Event> {
    r.rcpts
        .iter()
        .map(|o| match o {
            RcptOutcome::Accepted(rep) if (200..300).contains(&rep.code) => Event::Accepted {
                code: rep.code,
                text: reply_text(rep),
                remote: remote.to_string(),
                dsn,
                final_delivery,
            },
            RcptOutcome::Accepted(rep) | RcptOutcome::Rejected(rep) => reply_event(rep, remote),
        })
        .collect()
}

fn reply_text(r: &ServerReply) -> String {
    match r.enhanced {
        Some(e) => format!("{e} {}", r.text.replace('\n', " ")),
        None => r.text.replace('\n', " "),
    }
}

pub(super) fn reply_event(r: &ServerReply, remote: &str) -> Event {
    Event::Reply {
        code: r.code,
        enhanced: r.enhanced,
        text: r.text.replace('\n', " "),
        remote: remote.to_string(),
    }
}

impl super::Transport for RemoteTransport {
    fn deliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Vec<Event>> {
        Box::pin(self.run(job))
    }

    fn destination(&self, domain: &str) -> String {
        route::destination(&route::hop(&self.cfg().delivery, domain))
    }
}
