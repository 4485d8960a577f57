//! The remote SMTP transport: finds where a domain's mail goes (relay
//! host, per-domain route, or MX records, with implicit and null MX), tries
//! the hosts in order, and drives the sans-IO client over TCP, with
//! STARTTLS (opportunistic or required, certificate verification logged),
//! until each recipient has an outcome. Reports events; never decides
//! retries or bounces. Untrusted bytes (remote replies, DNS answers) reach
//! the client state machine only.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{info, warn};

use super::classify::Event;
use super::{BoxFuture, Job};
use crate::config::{Config, IpPreference as CfgIpPreference, TlsPolicy};
use crate::dns::{DnsError, IpPreference, MxAnswer, Resolver};
use crate::live::Live;
use crate::proto::client::{
    ClientConfig, ClientEvent, ClientSession, OutMessage, RcptOutcome, ServerReply, SessionOutcome,
    Stage, StartTls,
};
use crate::proto::sasl::Credentials;

/// How long a TLS failure with a host makes later attempts go without TLS
/// (when the policy allows falling back).
const TLS_FALLBACK_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// Where mail for a domain goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hop {
    /// A named host (or IP literal), no MX lookup: "[host]:port".
    Direct { host: String, port: u16 },
    /// The MX hosts of a domain (or of a relay host given without brackets).
    Mx { domain: String, port: u16 },
}

/// Parses "[host]:port", "[host]", "host:port" or "host".
fn parse_hop(s: &str, default_port: u16) -> Option<Hop> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        if host.is_empty() {
            return None;
        }
        return Some(Hop::Direct {
            host: host.to_ascii_lowercase(),
            port,
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (s, default_port),
    };
    if host.is_empty() {
        return None;
    }
    Some(Hop::Mx {
        domain: host.to_ascii_lowercase(),
        port,
    })
}

/// Opportunistic TLS: accept any certificate, but record whether it would
/// have verified against the system's roots, for the log.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    seen: Mutex<HashMap<String, bool>>,
    require: bool,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = match &self.inner {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Err(rustls::Error::General("no trusted roots".into())),
        };
        let ok = verified.is_ok();
        if let Ok(mut m) = self.seen.lock() {
            if m.len() > 10_000 {
                m.clear();
            }
            m.insert(server_name.to_str().to_string(), ok);
        }
        if self.require {
            verified
        } else {
            Ok(ServerCertVerified::assertion())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The certificates of a PEM file of trust anchors (`delivery.tls_ca_file`).
pub fn load_ca_file(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let meta = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    if meta.len() > 16 << 20 {
        return Err(format!("{path}: larger than 16 MiB"));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate in it"));
    }
    let mut store = rustls::RootCertStore::empty();
    for c in &certs {
        store
            .add(c.clone())
            .map_err(|e| format!("{path}: not a usable trust anchor: {e}"))?;
    }
    Ok(certs)
}

/// The TLS client set-up for one policy: the system's roots (which honour
/// `SSL_CERT_FILE`) plus `extra` trust anchors.
fn connector(
    require: bool,
    extra: &[CertificateDer<'static>],
) -> (tokio_rustls::TlsConnector, Arc<RecordingVerifier>) {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs.into_iter().chain(extra.iter().cloned()) {
        let _ = roots.add(c);
    }
    let inner = if roots.is_empty() {
        None
    } else {
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(provider()),
        )
        .build()
        .ok()
    };
    let verifier = Arc::new(RecordingVerifier {
        inner,
        seen: Mutex::new(HashMap::new()),
        require,
    });
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth()
        });
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "TLS client setup failed; using defaults");
            rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(verifier.clone())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .dangerous()
                        .with_custom_certificate_verifier(verifier.clone())
                        .with_no_client_auth()
                })
        }
    };
    (tokio_rustls::TlsConnector::from(Arc::new(cfg)), verifier)
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    async fn write_all(&mut self, b: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(b).await,
            Stream::Tls(s) => {
                s.write_all(b).await?;
                s.flush().await
            }
        }
    }

    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        buf.reserve(8192);
        match self {
            Stream::Plain(s) => s.read_buf(buf).await,
            Stream::Tls(s) => s.read_buf(buf).await,
        }
    }
}

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
    opportunistic: (tokio_rustls::TlsConnector, Arc<RecordingVerifier>),
    required: (tokio_rustls::TlsConnector, Arc<RecordingVerifier>),
    /// Our listening addresses (fixed until a restart): mail routed to
    /// them, or to our host name, loops.
    own_addrs: Vec<SocketAddr>,
    /// Hosts whose TLS handshake failed, and when.
    tls_failed: Mutex<HashMap<String, Instant>>,
    /// Open connections waiting for the next message, by destination.
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl RemoteTransport {
    pub fn new(live: Live, resolver: Arc<dyn Resolver>) -> RemoteTransport {
        let cfg = live.cfg();
        let own_addrs = cfg.listeners.iter().map(|l| l.bind).collect();
        // Checked when the configuration was loaded; a file that has gone
        // bad since leaves only the system's roots.
        let extra = match cfg.delivery.tls_ca_file.as_str() {
            "" => Vec::new(),
            path => load_ca_file(path).unwrap_or_else(|e| {
                warn!(error = %e, "delivery.tls_ca_file not used");
                Vec::new()
            }),
        };
        RemoteTransport {
            opportunistic: connector(false, &extra),
            required: connector(true, &extra),
            own_addrs,
            tls_failed: Mutex::new(HashMap::new()),
            idle: Mutex::new(HashMap::new()),
            resolver,
            live,
        }
    }

    fn cfg(&self) -> Arc<Config> {
        self.live.cfg()
    }

    fn hop(&self, domain: &str) -> Hop {
        let cfg = self.cfg();
        let d = &cfg.delivery;
        if let Some(route) = d.routes.get(domain) {
            if let Some(h) = parse_hop(route, d.remote_port) {
                return h;
            }
        }
        if !d.relay_host.is_empty() {
            if let Some(h) = parse_hop(&d.relay_host, d.remote_port) {
                return h;
            }
        }
        Hop::Mx {
            domain: domain.to_string(),
            port: d.remote_port,
        }
    }

    fn via_relay(&self, domain: &str) -> bool {
        let cfg = self.cfg();
        !cfg.delivery.routes.contains_key(domain) && !cfg.delivery.relay_host.is_empty()
    }

    fn is_us(&self, ip: IpAddr, port: u16) -> bool {
        self.own_addrs.iter().any(|a| {
            a.port() == port
                && (a.ip() == ip
                    || (a.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
        })
    }

    fn tls_recently_failed(&self, host: &str) -> bool {
        let m = self.tls_failed.lock().unwrap_or_else(|p| p.into_inner());
        m.get(host)
            .is_some_and(|t| t.elapsed() < TLS_FALLBACK_MEMORY)
    }

    fn remember_tls_failure(&self, host: &str) {
        let mut m = self.tls_failed.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.retain(|_, t| t.elapsed() < TLS_FALLBACK_MEMORY);
        }
        m.insert(host.to_string(), Instant::now());
    }

    /// The hosts to try, in order, or the event that ends the attempt.
    async fn hosts(&self, domain: &str) -> Result<(Vec<String>, u16), Event> {
        match self.hop(domain) {
            Hop::Direct { host, port } => Ok((vec![host], port)),
            Hop::Mx {
                domain: target,
                port,
            } => match self.resolver.mx(&target).await {
                Ok(MxAnswer::Mx(list)) => Ok((list.into_iter().map(|m| m.host).collect(), port)),
                Ok(MxAnswer::Implicit(d)) => Ok((vec![d], port)),
                Ok(MxAnswer::NullMx) => Err(Event::NullMx),
                Err(e) => Err(Event::Dns(e)),
            },
        }
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
        while let Some(mut c) = v.pop() {
            // A plain connection the server has closed shows EOF at once.
            if let Stream::Plain(s) = &mut c.stream {
                let mut probe = [0u8; 1];
                match s.try_read(&mut probe) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    _ => continue,
                }
            }
            return Some(c);
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
        let (hosts, port) = match self.hosts(&job.domain).await {
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
        let relay = self.via_relay(&job.domain);
        let policy = if relay { d.relay_tls() } else { d.starttls };
        let mut ccfg = ClientConfig::new(cfg.server.hostname.clone());
        ccfg.use_starttls = match policy {
            TlsPolicy::None => StartTls::Never,
            TlsPolicy::Required => StartTls::Required,
            TlsPolicy::Opportunistic
                if d.tls_fallback_plaintext && self.tls_recently_failed(host) =>
            {
                StartTls::Never
            }
            TlsPolicy::Opportunistic => StartTls::Opportunistic,
        };
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
        let content = msg.content();
        let out = OutMessage {
            sender: env.sender.clone(),
            recipients: job
                .rcpts
                .iter()
                .map(|&i| env.recipients[i].clone())
                .collect(),
            size: content.len() as u64,
            body_type: env.body_type,
            smtputf8: env.smtputf8,
            ret: env.ret,
            envid: env.envid.clone(),
        };
        let reused = matches!(conn, Conn::Reused(_));
        let (mut client, mut stream, mut tls_desc) = match conn {
            Conn::Fresh(tcp) => (
                ClientSession::new(ccfg),
                Stream::Plain(tcp),
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
            match client.poll() {
                ClientEvent::Send(bytes) => {
                    let t = Duration::from_secs(client.timeout_class().secs());
                    if !matches!(timeout(t, stream.write_all(&bytes)).await, Ok(Ok(()))) {
                        client.connection_lost();
                    }
                }
                ClientEvent::NeedInput => {
                    let t = Duration::from_secs(client.timeout_class().secs());
                    match timeout(t, stream.read_buf(&mut buf)).await {
                        Ok(Ok(n)) if n > 0 => {
                            let used = client.feed(&buf);
                            buf.drain(..used.min(buf.len()));
                        }
                        _ => client.connection_lost(),
                    }
                }
                ClientEvent::StartTls => {
                    buf.clear();
                    let Stream::Plain(tcp) = stream else {
                        return Attempt::TryNext(Event::Protocol("STARTTLS inside TLS".into()));
                    };
                    let name = match ServerName::try_from(host.to_string()) {
                        Ok(n) => n,
                        Err(_) => ServerName::IpAddress(ip.into()),
                    };
                    let (conn, verifier) = if policy == TlsPolicy::Required {
                        &self.required
                    } else {
                        &self.opportunistic
                    };
                    match timeout(Duration::from_secs(60), conn.connect(name.clone(), tcp)).await {
                        Ok(Ok(s)) => {
                            let c = s.get_ref().1;
                            let verified = verifier
                                .seen
                                .lock()
                                .ok()
                                .and_then(|m| m.get(name.to_str().as_ref()).copied())
                                .unwrap_or(false);
                            tls_desc = format!(
                                "{:?} {:?} certificate {}",
                                c.protocol_version()
                                    .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
                                c.negotiated_cipher_suite()
                                    .map(|s| s.suite())
                                    .unwrap_or(rustls::CipherSuite::Unknown(0)),
                                if verified { "verified" } else { "not verified" }
                            );
                            stream = Stream::Tls(Box::new(s));
                            client.tls_established();
                        }
                        Ok(Err(e)) => {
                            self.remember_tls_failure(host);
                            warn!(host = %remote, error = %e, "TLS handshake failed");
                            return Attempt::TryNext(Event::Tls(format!("{remote}: {e}")));
                        }
                        Err(_) => {
                            self.remember_tls_failure(host);
                            return Attempt::TryNext(Event::Tls(format!(
                                "{remote}: handshake timed out"
                            )));
                        }
                    }
                }
                ClientEvent::NeedBody => client.body_chunk(&content, true),
                ClientEvent::Ready => {
                    if sent && keep_open && result.is_some() {
                        break None;
                    } else if sent {
                        client.quit();
                    } else {
                        sent = true;
                        if let Err(r) = client.send_message(&out) {
                            let e = match r.enhanced {
                                (5, 3, 4) => Event::TooBig(mta.clone()),
                                (5, 6, 7) => Event::NeedsSmtputf8(mta.clone()),
                                (5, 6, 3) => Event::Needs8bit(mta.clone()),
                                (c, s, dd) => Event::Reply {
                                    code: if r.permanent { 554 } else { 451 },
                                    enhanced: Some(format!("{c}.{s}.{dd}")),
                                    text: r.text.clone(),
                                    remote: mta.clone(),
                                },
                            };
                            refusal = Some(vec![e; out.recipients.len()]);
                            client.quit();
                        }
                    }
                }
                ClientEvent::TransactionDone(r) => result = Some(r),
                ClientEvent::Closed(o) => break Some(o),
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
                Some(r) => Attempt::Done(self.events(&r, &mta, dsn)),
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
            return Attempt::Done(self.events(&r, &mta, client.extensions().dsn));
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

impl RemoteTransport {
    /// One event per recipient. `remote` names the server as a DSN's
    /// Remote-MTA wants it (host name, or [ip]); `dsn`: it offered DSN.
    fn events(
        &self,
        r: &crate::proto::client::TransactionResult,
        remote: &str,
        dsn: bool,
    ) -> Vec<Event> {
        rcpt_events(r, remote, dsn, false)
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
        Some((c, s, d)) => format!("{c}.{s}.{d} {}", r.text.replace('\n', " ")),
        None => r.text.replace('\n', " "),
    }
}

pub(super) fn reply_event(r: &ServerReply, remote: &str) -> Event {
    Event::Reply {
        code: r.code,
        enhanced: r.enhanced.map(|(c, s, d)| format!("{c}.{s}.{d}")),
        text: r.text.replace('\n', " "),
        remote: remote.to_string(),
    }
}

impl super::Transport for RemoteTransport {
    fn deliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Vec<Event>> {
        Box::pin(self.run(job))
    }

    fn destination(&self, domain: &str) -> String {
        match self.hop(domain) {
            Hop::Direct { host, port } => format!("[{host}]:{port}"),
            Hop::Mx { domain, port } => format!("{domain}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops() {
        assert_eq!(
            parse_hop("[smtp.isp.test]:587", 25),
            Some(Hop::Direct {
                host: "smtp.isp.test".into(),
                port: 587
            })
        );
        assert_eq!(
            parse_hop("[127.0.0.1]", 25),
            Some(Hop::Direct {
                host: "127.0.0.1".into(),
                port: 25
            })
        );
        assert_eq!(
            parse_hop("relay.test:2525", 25),
            Some(Hop::Mx {
                domain: "relay.test".into(),
                port: 2525
            })
        );
        assert_eq!(
            parse_hop("Relay.test", 25),
            Some(Hop::Mx {
                domain: "relay.test".into(),
                port: 25
            })
        );
        assert_eq!(parse_hop("[]:25", 25), None);
        assert_eq!(parse_hop("[x]junk", 25), None);
        assert_eq!(parse_hop("x:notaport", 25), None);
    }
}
