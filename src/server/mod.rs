//! The tokio shell around the sans-IO session: listeners, admission
//! (global and per-client-IP connection limits), the per-connection driver
//! with its deadlines, hand-off of message content to the queue, and
//! graceful shutdown. Never calls delivery. Untrusted bytes pass through
//! here to `proto`, which alone interprets them.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};
use tracing::{info, info_span, warn, Instrument};

use crate::checks::{Admission, FailureLimiter};
use crate::config::client_network;
use crate::config::{BareNewline, Config, ListenerConfig, ListenerMode};
use crate::live::{Live, Snapshot};
use crate::net::Stream;
use crate::policy::Client;
use crate::proto::reply::{self, Reply};
use crate::proto::{Action, AuthOutcome, Host, ServerSession, SessionConfig, Stage};
use crate::queue::{Queue, QueueId};
use crate::trace::clean;
use crate::trace::{self, Event, Listener};
use crate::users::{Busy, Verifier};
use incoming::{Incoming, Treatment, VerifyBudget};

mod decide;
mod incoming;
pub mod tls;
use tls::Tls;

/// Body bytes buffered in the session before they are handed to the queue
/// writer (which itself spills to disk past its own threshold).
const BODY_FLUSH: usize = 64 * 1024;

/// A pool of connection slots, resizable by a reload.
struct Pool {
    /// The number of permits `sem` was made with or resized to.
    max: AtomicUsize,
    sem: Arc<Semaphore>,
}

impl Pool {
    fn new(n: usize) -> Pool {
        Pool {
            max: AtomicUsize::new(n),
            sem: Arc::new(Semaphore::new(n)),
        }
    }

    fn resize(&self, want: usize) {
        let had = self.max.swap(want, Ordering::SeqCst);
        if want > had {
            self.sem.add_permits(want - had);
        } else if want < had {
            // Fewer permits: taken as connections close, then forgotten.
            let sem = self.sem.clone();
            let n = (had - want) as u32;
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many_owned(n).await {
                    p.forget();
                }
            });
        }
    }

    fn in_use(&self) -> usize {
        self.max
            .load(Ordering::SeqCst)
            .saturating_sub(self.sem.available_permits())
    }
}

/// Most refusals ("421 too many connections") being written at once;
/// past it, a refused connection is closed without a word.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Everything connections share.
struct Shared {
    /// Configuration, users, directory and policy; a connection keeps the
    /// snapshot it started with.
    live: Live,
    tls: Option<Tls>,
    auth_limiter: FailureLimiter,
    /// Password checks, on threads of their own.
    verifier: Verifier,
    queue: Queue,
    /// Slots for the smtp listeners and local submissions
    /// (`limits.max_connections`).
    smtp_pool: Pool,
    /// Slots for the submission listeners
    /// (`limits.max_submission_connections`).
    submission_pool: Pool,
    /// Open connections per client network (IPv6 by prefix).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Prefix length IPv6 clients are grouped by (fixed at start).
    ipv6_prefix: u8,
    refusals: Arc<Semaphore>,
    /// The resolver of the authentication checks (shared with delivery).
    dns: Arc<crate::dns::HickoryResolver>,
    /// Memory for copies of messages being verified.
    verify_budget: Arc<VerifyBudget>,
}

/// A started server.
pub struct Running {
    /// The bound addresses, in the order of the configured listeners.
    pub addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    shared: Arc<Shared>,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Applies what a new configuration changes in the server itself (the
    /// rest comes with the snapshot each new connection takes): re-reads
    /// the certificates (on error the old ones stay; the error is
    /// returned) and resizes the connection limit.
    pub fn reload(&self, cfg: &Config) -> Result<(), String> {
        self.shared.verify_budget.resize(cfg.inbound.verify_memory);
        self.shared.smtp_pool.resize(cfg.limits.max_connections);
        self.shared
            .submission_pool
            .resize(cfg.limits.max_submission_connections);
        match &self.shared.tls {
            Some(t) => match t.reload_from(cfg) {
                Ok(n) => {
                    info!(certificates = n, "TLS certificates reloaded");
                    Ok(())
                }
                Err(e) => Err(format!(
                    "TLS certificates not reloaded, keeping the current ones: {e}"
                )),
            },
            None => Ok(()),
        }
    }

    /// Connections currently open.
    pub fn connections(&self) -> usize {
        self.shared.smtp_pool.in_use() + self.shared.submission_pool.in_use()
    }

    /// Stops accepting, lets messages being received finish for up to
    /// `grace`, sends 421 to idle sessions, and returns when all are gone
    /// (or the grace period is over).
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        for t in std::mem::take(&mut self.accept_tasks) {
            let _ = t.await;
        }
        let deadline = Instant::now() + grace;
        let all_closed = async {
            for pool in [&self.shared.smtp_pool, &self.shared.submission_pool] {
                let max = pool.max.load(Ordering::SeqCst) as u32;
                let _ = pool.sem.acquire_many(max).await;
            }
        };
        if timeout_at(deadline, all_closed).await.is_err() {
            warn!(
                open = self.connections(),
                "grace period over, closing remaining connections"
            );
        }
    }
}

/// Session limits derived from the configuration, for one listener.
pub fn session_config(cfg: &Config, l: &ListenerConfig) -> SessionConfig {
    SessionConfig {
        starttls: cfg.tls.enabled() && l.mode != ListenerMode::Submissions,
        auth: l.auth_offered(),
        plaintext_auth: l.plaintext_auth,
        max_auth_failures: cfg.auth.max_failures_per_connection,
        hostname: cfg.server.hostname.clone(),
        max_command_line: cfg.limits.max_command_line,
        max_message_size: cfg.limits.max_message_size,
        max_recipients: cfg.limits.max_recipients,
        max_errors: cfg.limits.max_errors,
        max_received_headers: cfg.limits.max_received_headers,
        max_junk_commands: cfg.limits.max_junk_commands,
        reject_bare_newline: cfg.smtp.bare_newline == BareNewline::Reject,
    }
}

/// Binds every configured listener; an error names the address.
pub fn bind_all(cfg: &Config) -> io::Result<Vec<TcpListener>> {
    cfg.listeners.iter().map(bind_one).collect()
}

fn bind_one(l: &ListenerConfig) -> io::Result<TcpListener> {
    let bind = || -> io::Result<TcpListener> {
        let sock = if l.bind.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        sock.set_reuseaddr(true)?;
        sock.bind(l.bind)?;
        sock.listen(1024)
    };
    bind().map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {}: {e}", l.bind)))
}

/// Index of a listener kind in the metrics' per-listener counters.
fn kind_index(mode: ListenerMode) -> usize {
    match mode {
        ListenerMode::Smtp => 0,
        ListenerMode::Submission => 1,
        ListenerMode::Submissions => 2,
    }
}
const LOCAL_KIND: usize = 3;

/// Who is on the other end of a local submission.
#[derive(Debug, Clone)]
pub struct LocalUser {
    pub uid: u32,
    pub name: String,
}

/// Most local submissions at once: local programs cannot take all of
/// `limits.max_connections` from the network.
const MAX_LOCAL_CONNECTIONS: usize = 100;

async fn accept_local(
    shared: Arc<Shared>,
    listener: UnixListener,
    mut stop: watch::Receiver<bool>,
) {
    let local_slots = Arc::new(Semaphore::new(MAX_LOCAL_CONNECTIONS));
    info!(path = ?listener.local_addr().ok().and_then(|a| a.as_pathname().map(|p| p.display().to_string())), "listening for local submission");
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "local accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (Ok(permit), Ok(local_slot)) = (
            shared.smtp_pool.sem.clone().try_acquire_owned(),
            local_slots.clone().try_acquire_owned(),
        ) else {
            crate::ops::metrics::get()
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            info!("local submission refused: too many at once");
            continue;
        };
        let user = match stream.peer_cred() {
            Ok(c) => LocalUser {
                uid: c.uid(),
                name: crate::ops::system::user_name(c.uid())
                    .unwrap_or_else(|| format!("uid {}", c.uid())),
            },
            Err(e) => {
                warn!(error = %e, "no peer credentials on the local socket; refused");
                continue;
            }
        };
        let snap = shared.live.get();
        let mut scfg = session_config(
            &snap.cfg,
            &ListenerConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), ListenerMode::Smtp),
        );
        scfg.starttls = false;
        scfg.auth = false;
        let scfg = Arc::new(scfg);
        // Local programs may send anywhere, as with Postfix's sendmail.
        let mut client = snap.policy.client(IpAddr::V4(Ipv4Addr::LOCALHOST), false);
        client.trusted = true;
        client.local = Some(crate::policy::LocalUser {
            uid: user.uid,
            name: user.name.clone(),
        });
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let span =
                info_span!("conn", local_user = %user.name, uid = user.uid, listener = "local");
            connection(
                &shared,
                snap,
                Stream::Unix(stream),
                client,
                scfg,
                None,
                stop,
                permit,
                Some(user),
            )
            .instrument(span)
            .await;
            drop(local_slot);
        });
    }
}

/// Listening sockets for every configured listener: the ones the service
/// manager passed in (see [`crate::ops::system::inherited_listeners`]), or
/// bound here. An error names the address.
pub fn listen(
    cfg: &Config,
    inherited: Vec<Option<std::net::TcpListener>>,
) -> io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    let mut inherited = inherited.into_iter();
    for l in &cfg.listeners {
        match inherited.next().flatten() {
            Some(std_listener) => out.push(TcpListener::from_std(std_listener)?),
            None => out.push(bind_one(l)?),
        }
    }
    Ok(out)
}

/// The local submission socket (`pigeon sendmail`): a Unix socket every
/// local user may connect to (mode 0666). A socket left by an earlier run
/// is replaced; a missing parent directory is created (mode 0755).
pub fn bind_sendmail(path: &std::path::Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let wrap = |e: io::Error| io::Error::new(e.kind(), format!("sendmail socket {shown}: {e}"));
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::create_dir_all(parent).map_err(wrap)?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
                .map_err(wrap)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
            // Left by an earlier run, unless a daemon still answers on it.
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(wrap(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another pigeon is listening on it",
                )));
            }
            std::fs::remove_file(path).map_err(wrap)?
        }
        Ok(_) => {
            return Err(wrap(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a socket",
            )))
        }
        Err(_) => {}
    }
    // Created 0600, then opened to everyone without following a symbolic
    // link that may have replaced it in between.
    let l = crate::ops::system::bind_unix_private(path).map_err(wrap)?;
    crate::ops::system::chmod_nofollow(path, 0o666).map_err(wrap)?;
    l.set_nonblocking(true).map_err(wrap)?;
    UnixListener::from_std(l).map_err(wrap)
}

/// Starts serving on already bound listeners (one per listener of the
/// live configuration), and on the local submission socket if given.
/// Loads the TLS certificates first; an error names the file.
pub fn start(
    live: Live,
    queue: Queue,
    listeners: Vec<TcpListener>,
    sendmail: Option<UnixListener>,
) -> Result<Running, String> {
    let cfg = live.cfg();
    let dns = crate::dns::HickoryResolver::new(
        &cfg.dns.nameservers,
        Duration::from_secs(cfg.dns.timeout_secs),
        cfg.dns.attempts,
    )?;
    start_with(live, queue, listeners, sendmail, Arc::new(dns))
}

/// [`start`] with the resolver the rest of the daemon uses.
pub fn start_with(
    live: Live,
    queue: Queue,
    listeners: Vec<TcpListener>,
    sendmail: Option<UnixListener>,
    dns: Arc<crate::dns::HickoryResolver>,
) -> Result<Running, String> {
    let cfg = live.cfg();
    let tls = Tls::load(&cfg)?;
    let a = &cfg.auth;
    let auth_limiter = FailureLimiter::new(
        a.ip_max_failures,
        Duration::from_secs(a.ip_failure_window_secs),
        Duration::from_secs(a.ip_block_secs),
        a.exempt_loopback,
        cfg.limits.ipv6_prefix,
    );
    let verifier = Verifier::new(a.max_parallel_verifications)
        .map_err(|e| format!("cannot start the password-check threads: {e}"))?;
    let shared = Arc::new(Shared {
        tls,
        auth_limiter,
        verifier,
        queue,
        smtp_pool: Pool::new(cfg.limits.max_connections),
        submission_pool: Pool::new(cfg.limits.max_submission_connections),
        per_ip: Mutex::new(HashMap::new()),
        ipv6_prefix: cfg.limits.ipv6_prefix,
        refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
        dns,
        verify_budget: VerifyBudget::new(cfg.inbound.verify_memory),
        live,
    });
    let (tx, rx) = watch::channel(false);
    let mut addrs = Vec::new();
    let mut accept_tasks = Vec::new();
    for (index, (listener, lcfg)) in listeners.into_iter().zip(cfg.listeners.iter()).enumerate() {
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        addrs.push(addr);
        info!(addr = %addr, mode = lcfg.mode.as_str(), tls = shared.tls.is_some(), auth = lcfg.auth_offered(), "listening");
        accept_tasks.push(tokio::spawn(accept_loop(
            shared.clone(),
            listener,
            index,
            lcfg.clone(),
            rx.clone(),
        )));
    }
    if let Some(l) = sendmail {
        accept_tasks.push(tokio::spawn(accept_local(shared.clone(), l, rx.clone())));
    }
    // Free-space watch: MAIL is refused with 452 4.3.1 below the reserve.
    let q = shared.queue.clone();
    let mut stop = rx.clone();
    tokio::spawn(async move {
        loop {
            let q2 = q.clone();
            let _ = tokio::task::spawn_blocking(move || q2.refresh_space()).await;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    });
    Ok(Running {
        addrs,
        shutdown: tx,
        shared,
        accept_tasks,
    })
}

/// The listener's settings in a snapshot: the entry at the same index, if
/// it still has the same address and mode (a listener's address and mode
/// change only with a restart), else those it was started with.
fn listener_in(snap: &Snapshot, index: usize, started: &ListenerConfig) -> ListenerConfig {
    match snap.cfg.listeners.get(index) {
        Some(l) if l.bind == started.bind && l.mode == started.mode => l.clone(),
        _ => started.clone(),
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    index: usize,
    started: ListenerConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mode = started.mode;
    // Session settings, rebuilt only when the snapshot changes.
    let mut cached: Option<(Arc<Snapshot>, Arc<SessionConfig>, bool)> = None;
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let ip = canonical_ip(peer.ip());
        let pool = match mode {
            ListenerMode::Smtp => &shared.smtp_pool,
            ListenerMode::Submission | ListenerMode::Submissions => &shared.submission_pool,
        };
        let Ok(permit) = pool.sem.clone().try_acquire_owned() else {
            crate::ops::metrics::get()
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            info!(peer = %ip, "connection refused: connection limit of the listener's pool");
            refuse(&shared, stream, reply::TOO_MANY_CONNECTIONS, mode);
            continue;
        };
        let snap = shared.live.get();
        let (scfg, auth_required) = match &cached {
            Some((s, scfg, req)) if Arc::ptr_eq(s, &snap) => (scfg.clone(), *req),
            _ => {
                let lcfg = listener_in(&snap, index, &started);
                let mut scfg = session_config(&snap.cfg, &lcfg);
                // TLS turned on by a reload takes a restart.
                scfg.starttls &= shared.tls.is_some();
                let scfg = Arc::new(scfg);
                let req = lcfg.auth_required();
                cached = Some((snap.clone(), scfg.clone(), req));
                (scfg, req)
            }
        };
        let client = snap.policy.client(ip, auth_required);
        let slot = if client.trusted {
            None
        } else {
            match IpSlot::take(&shared, ip, snap.cfg.limits.max_connections_per_ip) {
                Some(s) => Some(s),
                None => {
                    crate::ops::metrics::get()
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    info!(peer = %ip, "connection refused: per-IP connection limit");
                    refuse(&shared, stream, reply::TOO_MANY_CONNECTIONS_FROM_IP, mode);
                    continue;
                }
            }
        };
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let span = info_span!("conn", peer = %ip, listener = mode.as_str());
            connection(
                &shared,
                snap,
                Stream::Tcp(stream),
                client,
                scfg,
                Some(mode),
                stop,
                permit,
                None,
            )
            .instrument(span)
            .await;
            drop(slot);
        });
    }
}

/// Answers a connection that has no slot with `r` and closes it, in a
/// task of its own; at most [`MAX_REFUSALS_IN_FLIGHT`] such tasks live at
/// once (each for at most 5 s), beyond that the connection is just closed.
/// On the implicit-TLS listener nothing is written: the client expects a
/// TLS handshake, not an SMTP reply.
fn refuse(shared: &Shared, mut stream: TcpStream, r: Reply, mode: ListenerMode) {
    if mode == ListenerMode::Submissions {
        return;
    }
    let Ok(permit) = shared.refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _ = timeout(Duration::from_secs(5), async {
            let _ = stream.write_all(&r.to_wire()).await;
            let _ = stream.shutdown().await;
        })
        .await;
        drop(permit);
    });
}

/// IPv4-mapped IPv6 peers are treated as the IPv4 address they are.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A held per-IP connection slot, released on drop.
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
    /// Counted in `per_ip` (a limit was in force when it was taken).
    counted: bool,
}

impl IpSlot {
    fn take(shared: &Arc<Shared>, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        if limit == 0 {
            return Some(IpSlot {
                shared: shared.clone(),
                ip,
                counted: false,
            });
        }
        let ip = client_network(ip, shared.ipv6_prefix);
        let mut map = shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            shared: shared.clone(),
            ip,
            counted: true,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// The session's view of the world.
struct ConnHost<'a> {
    shared: &'a Shared,
    snap: Arc<Snapshot>,
    client: Client,
    listener: Listener,
    last_id: Option<QueueId>,
    /// SPF of the current transaction, found at MAIL.
    spf: Option<crate::checks::authentication::SpfFacts>,
}

impl ConnHost<'_> {
    /// Mail this server originates: from an authenticated user, a
    /// trusted network or a local program. It is signed, never checked.
    fn originates(&self) -> bool {
        self.client.user.is_some() || self.client.trusted || self.client.local.is_some()
    }

    /// Incoming mail from the internet: an smtp listener, a client that
    /// is neither authenticated nor trusted.
    fn checks_inbound(&self) -> bool {
        self.listener == Listener::Smtp && !self.originates()
    }

    fn treatment(&self) -> Treatment {
        let cfg = &self.snap.cfg;
        let i = &cfg.inbound;
        Treatment {
            sign: cfg.dkim.sign && self.originates(),
            verify: self.checks_inbound() && (i.dkim || i.dmarc || i.arc),
        }
    }
}

impl Host for ConnHost<'_> {
    fn new_queue_id(&mut self) -> String {
        let id = self.shared.queue.new_id();
        self.last_id = Some(id);
        id.to_string()
    }

    fn now(&mut self) -> i64 {
        unix_now()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

async fn handshake(
    shared: &Shared,
    tcp: TcpStream,
    kind: usize,
) -> Result<(Stream, String), String> {
    let Some(tls) = &shared.tls else {
        return Err("TLS is not configured".into());
    };
    let m = crate::ops::metrics::get();
    match timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor.accept(tcp)).await {
        Err(_) => {
            m.tls_handshakes_failed[kind].fetch_add(1, Ordering::Relaxed);
            Err("TLS handshake timed out".into())
        }
        Ok(Err(e)) => {
            m.tls_handshakes_failed[kind].fetch_add(1, Ordering::Relaxed);
            Err(format!("TLS handshake failed: {e}"))
        }
        Ok(Ok(s)) => {
            m.tls_handshakes_ok[kind].fetch_add(1, Ordering::Relaxed);
            let desc = tls::describe(s.get_ref().1);
            let sni = s.get_ref().1.server_name().unwrap_or("").to_string();
            info!(tls = %desc, sni = %clean(&sni), "TLS established");
            Ok((Stream::TlsServer(Box::new(s)), desc))
        }
    }
}

/// Checks the credentials the session holds and tells it the outcome.
/// The attempt is counted against the client's network before the check
/// starts, and the check runs on the password-check pool, never on the
/// blocking pool that writes the queue.
async fn authenticate(shared: &Shared, s: &mut ServerSession, host: &mut ConnHost<'_>) {
    let Some(creds) = s.credentials().cloned() else {
        s.auth_result(AuthOutcome::Failure);
        return;
    };
    let ip = host.client.ip;
    let login = clean(&creds.login).into_owned();
    let admission = shared.auth_limiter.begin(ip, std::time::Instant::now());
    if admission == Admission::Blocked {
        warn!(login = %login, "authentication refused: address blocked after too many failures");
        s.auth_result(AuthOutcome::Blocked);
        return;
    }
    let snap = host.snap.clone();
    let delay = host.snap.cfg.auth.failure_delay_ms;
    let wait = Duration::from_millis(host.snap.cfg.auth.verification_wait_ms);
    let checked = shared
        .verifier
        .run(wait, move || {
            if !creds.authzid.is_empty() && creds.authzid != creds.login {
                return None;
            }
            snap.users.verify(&creds.login, &creds.password)
        })
        .await;
    let verified = match checked {
        Ok(v) => v,
        Err(busy) => {
            // Not the client's fault: the attempt is not held against it.
            shared
                .auth_limiter
                .finish(ip, admission, true, std::time::Instant::now());
            warn!(login = %login, reason = ?busy, "authentication deferred: every password-check slot is busy");
            s.auth_result(if busy == Busy::Closed {
                AuthOutcome::Failure
            } else {
                AuthOutcome::Busy
            });
            return;
        }
    };
    let now = std::time::Instant::now();
    match verified {
        Some(user) => {
            shared.auth_limiter.finish(ip, admission, true, now);
            crate::ops::metrics::get()
                .auth_ok
                .fetch_add(1, Ordering::Relaxed);
            info!(login = %clean(&user.login), "authenticated");
            let l = user.login.clone();
            host.client.user = Some(user);
            s.auth_result(AuthOutcome::Success(l));
        }
        None => {
            crate::ops::metrics::get()
                .auth_failed
                .fetch_add(1, Ordering::Relaxed);
            let blocked = shared.auth_limiter.finish(ip, admission, false, now);
            warn!(login = %login, blocked, "authentication failed");
            tokio::time::sleep(Duration::from_millis(delay)).await;
            s.auth_result(if blocked {
                AuthOutcome::Blocked
            } else {
                AuthOutcome::Failure
            });
        }
    }
}

/// Counts an open connection of one kind for as long as it lives.
struct OpenConn(usize);

impl OpenConn {
    fn new(kind: usize) -> OpenConn {
        let m = crate::ops::metrics::get();
        m.connections_total[kind].fetch_add(1, Ordering::Relaxed);
        m.connections_open[kind].fetch_add(1, Ordering::Relaxed);
        OpenConn(kind)
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        crate::ops::metrics::get().connections_open[self.0].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection, from greeting to close. `mode`: the TCP listener's
/// (None for the local submission socket, whose peer is `local`).
#[allow(clippy::too_many_arguments)]
async fn connection(
    shared: &Shared,
    snap: Arc<Snapshot>,
    stream: Stream,
    client: Client,
    scfg: Arc<SessionConfig>,
    mode: Option<ListenerMode>,
    mut stop: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
    local: Option<LocalUser>,
) {
    let kind = mode.map(kind_index).unwrap_or(LOCAL_KIND);
    let _open = OpenConn::new(kind);
    if let Stream::Tcp(tcp) = &stream {
        let _ = tcp.set_nodelay(true);
    }
    let started = Instant::now();
    let listener = match mode {
        None => Listener::Local,
        Some(ListenerMode::Smtp) => Listener::Smtp,
        Some(ListenerMode::Submission) => Listener::Submission,
        Some(ListenerMode::Submissions) => Listener::Submissions,
    };
    trace::emit(Event::Connected {
        client: client.ip,
        listener,
    });
    let limits = snap.cfg.limits.clone();
    let session_deadline = started + Duration::from_secs(limits.session_timeout_secs);
    let mut s = ServerSession::new(scfg, client.ip);
    if let Some(u) = &local {
        s.set_local_user(u.uid, &u.name);
    }
    let mut stream = match (mode, stream) {
        (Some(ListenerMode::Submissions), Stream::Tcp(tcp)) => {
            match handshake(shared, tcp, kind).await {
                Ok((st, desc)) => {
                    s.tls_started(desc);
                    st
                }
                Err(e) => {
                    info!(error = %e, "disconnect");
                    return;
                }
            }
        }
        (_, other) => other,
    };
    let mut host = ConnHost {
        shared,
        snap,
        client,
        listener,
        last_id: None,
        spf: None,
    };
    let signers = host.snap.dkim.clone();
    let mut incoming = Incoming::new(&signers, shared.verify_budget.clone());
    let mut buf: Vec<u8> = Vec::new();
    let mut stopping = *stop.borrow();
    let result: io::Result<&str> = async {
        // The Connect decision, before any byte is read: the greeting, or
        // the refusal that replaces it.
        if let (_, Action::Decide(_)) = s.feed(&[], &mut host) {
            let v = decide::decide(shared, &mut host, &s, None).await;
            s.decided(v);
        }
        loop {
            if !s.output().is_empty() {
                let out = std::mem::take(s.output());
                match timeout(
                    Duration::from_secs(limits.command_timeout_secs),
                    stream.send(&out),
                )
                .await
                {
                    Ok(r) => r?,
                    Err(_) => return Ok("write timeout"),
                }
                let mut out = out;
                out.clear();
                *s.output() = out;
            }
            if s.is_closed() {
                return Ok("closed");
            }
            if stopping && !s.has_open_message() {
                s.shutdown();
                continue;
            }
            let wait = if s.in_content() {
                limits.data_timeout_secs
            } else {
                limits.command_timeout_secs
            };
            let deadline = (Instant::now() + Duration::from_secs(wait)).min(session_deadline);
            let chunk = if s.in_content() { 64 * 1024 } else { 4096 };
            let n = tokio::select! {
                r = timeout_at(deadline, stream.read_into(&mut buf, chunk)) => match r {
                    Err(_) => { s.timeout(); continue; }
                    Ok(r) => r?,
                },
                _ = stop.changed(), if !stopping => { stopping = true; continue; }
            };
            if n == 0 {
                return Ok("client disconnected");
            }
            let mut start = 0;
            loop {
                let (n, action) = s.feed(&buf[start..], &mut host);
                start += n;
                match action {
                    Action::NeedInput => {
                        if s.body().len() >= BODY_FLUSH {
                            let how = host.treatment();
                            incoming.push(&mut s, &host, &shared.queue, how).await;
                        }
                        break;
                    }
                    Action::Commit => {
                        let how = host.treatment();
                        incoming.commit(&mut s, &host, &shared.queue, how).await
                    }
                    Action::Abort => {
                        if let Some(r) = s.take_refusal() {
                            trace::emit(Event::Refused {
                                client: host.client.ip,
                                listener: host.listener,
                                stage: Stage::Content,
                                reply: r,
                                what: None,
                                queue_id: host.last_id,
                            });
                        }
                        incoming.reset();
                        s.body().clear();
                    }
                    Action::Decide(stage) => {
                        if stage == Stage::Content {
                            // Everything received goes in before the checks.
                            let how = host.treatment();
                            incoming.push(&mut s, &host, &shared.queue, how).await;
                        }
                        let v = decide::decide(shared, &mut host, &s, incoming.received()).await;
                        s.decided(v);
                    }
                    Action::Authenticate => authenticate(shared, &mut s, &mut host).await,
                    Action::StartTls => {
                        let out = std::mem::take(s.output());
                        match timeout(
                            Duration::from_secs(limits.command_timeout_secs),
                            stream.send(&out),
                        )
                        .await
                        {
                            Ok(r) => r?,
                            Err(_) => return Ok("write timeout"),
                        }
                        // Anything the client sent after STARTTLS, before the
                        // handshake, is dropped unread (CVE-2011-0411 class).
                        if buf.len() > start {
                            warn!(
                                bytes = buf.len() - start,
                                "discarded plaintext sent after STARTTLS"
                            );
                        }
                        buf = Vec::new();
                        start = 0;
                        let Stream::Tcp(tcp) = stream else {
                            return Ok("STARTTLS inside TLS");
                        };
                        match handshake(shared, tcp, kind).await {
                            Ok((st, desc)) => {
                                stream = st;
                                // RFC 3207 §4.2: nothing learnt before TLS
                                // survives it, here or in the session.
                                incoming.reset();
                                host.spf = None;
                                host.client.user = None;
                                host.last_id = None;
                                s.tls_started(desc);
                            }
                            Err(e) => {
                                info!(error = %e, "TLS handshake failed after STARTTLS");
                                return Ok("TLS handshake failed");
                            }
                        }
                        break;
                    }
                    Action::Close => break,
                }
            }
            buf.drain(..start.min(buf.len()));
            if buf.is_empty() && !s.in_content() {
                // Idle connections hold no read buffer.
                buf = Vec::new();
            }
        }
    }
    .await;
    let queue_ids = incoming
        .accepted
        .iter()
        .map(|q| q.to_string())
        .collect::<Vec<_>>()
        .join(",");
    match result {
        Ok(why) => info!(
            reason = why,
            queue_ids = %queue_ids,
            messages = s.messages_accepted(),
            errors = s.errors(),
            secs = started.elapsed().as_secs_f64(),
            "disconnect"
        ),
        Err(e) => {
            info!(error = %e, queue_ids = %queue_ids, messages = s.messages_accepted(), errors = s.errors(), "disconnect on I/O error")
        }
    }
}
