//! `pigeon serve`: the daemon's start-up order (bind, drop privileges,
//! recover the queue, serve), its signals (reload on SIGHUP, stop on
//! SIGTERM/SIGINT) and its shutdown.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{self, Config};
use crate::live::{Live, Snapshot};
use crate::ops::system;

/// Lets the daemon hold as many sockets as the hard limit allows.
fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

pub fn serve(path: &Path, cfg: Config) -> ExitCode {
    let log = crate::ops::telemetry::init(&cfg.log);
    crate::ops::metrics::install();
    raise_nofile_limit();
    let identity = match system::plan_identity(&cfg) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!(error = %e, "start-up failed");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(run(path, cfg, identity, log));
    system::notify_stopping();
    code
}

/// Start-up in this order: signal handlers; listening sockets (inherited
/// from the service manager or bound, as root if started as root); the
/// switch to `server.user`; then, unprivileged, users and aliases, the
/// queue (recovered), TLS, the server, delivery, the control socket and the
/// metrics endpoint; READY=1 last. Then wait for signals.
async fn run(
    path: &Path,
    cfg: Config,
    identity: system::Identity,
    log: crate::ops::telemetry::LogHandle,
) -> ExitCode {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        tracing::error!(error = %e, "{what}");
        ExitCode::FAILURE
    };
    // Signal handlers first, so a SIGTERM that comes while starting up
    // still means a clean stop.
    let mut signals = match Signals::new() {
        Ok(s) => s,
        Err(e) => return fail("cannot install signal handlers", &e),
    };
    let inherited = match system::inherited_listeners(&cfg.listeners) {
        Ok(v) => v,
        Err(e) => return fail("cannot take the sockets from the service manager", &e),
    };
    let listeners = match crate::server::listen(&cfg, inherited) {
        Ok(l) => l,
        Err(e) => return fail("start-up failed", &e),
    };
    let sendmail = if cfg.sendmail.socket.as_os_str().is_empty() {
        None
    } else {
        match crate::server::bind_sendmail(&cfg.sendmail.socket) {
            Ok(l) => Some(l),
            Err(e) => return fail("start-up failed", &e),
        }
    };
    if let system::Identity::Switch(account) = &identity {
        if let Err(e) = system::prepare_dir(&cfg.spool.dir, account) {
            return fail(
                &format!("cannot create the spool {}", cfg.spool.dir.display()),
                &e,
            );
        }
        if let Err(e) = system::switch_to(account) {
            return fail("cannot switch to server.user", &e);
        }
        tracing::info!(user = %account.name, uid = account.uid, gid = account.gid, "privileges dropped");
        if let Err(e) = std::fs::File::open(path) {
            tracing::warn!(
                config = %path.display(),
                error = %e,
                "the configuration is not readable by server.user: reloads (SIGHUP) will fail"
            );
        }
    }
    let snap = match Snapshot::load(cfg) {
        Ok(s) => s,
        Err(errs) => {
            for e in &errs {
                tracing::error!(error = %e, "configuration error");
            }
            return ExitCode::FAILURE;
        }
    };
    let cfg = snap.cfg.clone();
    tracing::info!(
        users = snap.users.len(),
        mailboxes = snap.directory.mailbox_count(),
        aliases = snap.directory.alias_count(),
        "users and aliases loaded"
    );
    let live = Live::new(snap);
    let reserve = cfg.spool.effective_reserve(&cfg.limits);
    let (q, rec) = match crate::queue::Queue::open(&cfg.spool.dir, reserve) {
        Ok(x) => x,
        Err(e) => {
            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                " (the spool must belong to the user pigeon runs as)"
            } else {
                ""
            };
            return fail(
                &format!("cannot open the queue in {}{hint}", cfg.spool.dir.display()),
                &e,
            );
        }
    };
    tracing::info!(
        loaded = rec.loaded,
        corrupt = rec.corrupt,
        tmp_removed = rec.tmp_removed,
        ms = rec.elapsed.as_millis() as u64,
        "queue recovered"
    );
    // One resolver (and one cache) for the checks of incoming mail and
    // for delivery.
    let resolver = match crate::dns::HickoryResolver::new(
        &cfg.dns.nameservers,
        Duration::from_secs(cfg.dns.timeout_secs),
        cfg.dns.attempts,
    ) {
        Ok(r) => Arc::new(r),
        Err(e) => return fail("cannot set up DNS resolution", &e),
    };
    let running = match crate::server::start_with(
        live.clone(),
        q.clone(),
        listeners,
        sendmail,
        resolver.clone(),
    ) {
        Ok(r) => r,
        Err(e) => return fail("start-up failed", &e),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut handle = None;
    if cfg.delivery.enabled {
        let remote = Arc::new(crate::delivery::remote::RemoteTransport::new(
            live.clone(),
            resolver.clone(),
        ));
        let local = Arc::new(crate::delivery::local::LocalTransport::new(
            live.clone(),
            q.clone(),
        ));
        let (h, task) =
            crate::delivery::start(live.clone(), q.clone(), remote, local, stop_rx.clone());
        let sock = crate::delivery::control::socket_path(&cfg.spool.dir);
        tasks.push(task);
        let control = tokio::spawn(crate::delivery::control::serve(
            sock,
            h.clone(),
            stop_rx.clone(),
        ));
        tasks.push(tokio::spawn(async move {
            if let Ok(Err(e)) = control.await {
                tracing::error!(error = %e, "control socket failed");
            }
        }));
        handle = Some(h);
    } else {
        q.keep_recent(false);
        tracing::info!("delivery disabled: accepted mail stays queued");
    }
    if let Ok(addr) = cfg.metrics.listen.parse::<std::net::SocketAddr>() {
        let h = handle.clone();
        let listener = crate::ops::metrics::serve(
            addr,
            move || {
                let h = h.clone();
                async move {
                    match h {
                        Some(h) => h.gauges().await,
                        None => None,
                    }
                }
            },
            stop_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = listener.await {
                tracing::error!(error = %e, "metrics endpoint failed");
            }
        }));
    }
    let watchdog = system::watchdog_interval().map(|every| {
        tracing::info!(interval_ms = every.as_millis() as u64, "watchdog enabled");
        tokio::spawn(system::watchdog(every))
    });
    tracing::info!(hostname = %cfg.server.hostname, "pigeon started");
    system::notify_ready(&ready_status(&running));
    loop {
        match signals.next().await {
            Signal::Stop => break,
            Signal::Reload => {
                system::notify_reloading();
                reload(path, &live, &running, &log);
                system::notify_ready(&ready_status(&running));
            }
        }
    }
    system::notify_stopping();
    tracing::info!(
        open = running.connections(),
        "stopping: no new connections, finishing messages in progress"
    );
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(live.cfg().limits.shutdown_grace_secs);
    running.shutdown(grace).await;
    // Delivery finishes the attempts in progress within its own grace
    // period and records them: a message delivered is never left looking
    // undelivered (which the next start would deliver again).
    for t in tasks {
        let _ = t.await;
    }
    if let Some(w) = watchdog {
        // The watchdog never ends by itself.
        w.abort();
    }
    tracing::info!("stopped");
    ExitCode::SUCCESS
}

fn ready_status(running: &crate::server::Running) -> String {
    format!("accepting mail on {} listeners", running.addrs.len())
}

/// SIGHUP: reads the configuration file again, with its users and aliases
/// and the certificates, and puts it in force for everything that starts
/// from now on (sessions and deliveries in progress finish with what they
/// began with). A file with errors changes nothing: every error is logged
/// with its key and line.
fn reload(
    path: &Path,
    live: &Live,
    running: &crate::server::Running,
    log: &crate::ops::telemetry::LogHandle,
) {
    tracing::info!(config = %path.display(), "SIGHUP: reloading the configuration");
    let new = match config::load(path) {
        Ok(c) => c,
        Err(errs) => return refuse_reload(&errs),
    };
    let old = live.cfg();
    let restart = restart_needed(&old, &new);
    let snap = match Snapshot::load(new) {
        Ok(s) => s,
        Err(errs) => return refuse_reload(&errs),
    };
    if let Err(e) = running.reload(&snap.cfg) {
        tracing::warn!(error = %e, "TLS");
    }
    log.set_level(&snap.cfg.log.level);
    for key in &restart {
        tracing::warn!(key = %key, "changed: takes effect only after a restart");
    }
    tracing::info!(
        users = snap.users.len(),
        mailboxes = snap.directory.mailbox_count(),
        aliases = snap.directory.alias_count(),
        "configuration reloaded"
    );
    live.set(snap);
}

fn refuse_reload(errs: &[impl std::fmt::Display]) {
    for e in errs {
        tracing::error!(error = %e, "configuration error");
    }
    tracing::error!(
        errors = errs.len(),
        "configuration NOT reloaded; the running one stays in force"
    );
}

/// The keys whose new values a running daemon cannot take up.
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    let mut check = |key: &str, changed: bool| {
        if changed {
            keys.push(key.to_string());
        }
    };
    let same_listener = |a: &config::ListenerConfig, b: &config::ListenerConfig| {
        a.bind == b.bind && a.mode == b.mode
    };
    check(
        "listener",
        old.listeners.len() != new.listeners.len()
            || old
                .listeners
                .iter()
                .zip(&new.listeners)
                .any(|(a, b)| !same_listener(a, b)),
    );
    check("spool.dir", old.spool.dir != new.spool.dir);
    check(
        "spool.reserve_bytes",
        old.spool.effective_reserve(&old.limits) != new.spool.effective_reserve(&new.limits),
    );
    check(
        "server.user",
        old.server.user != new.server.user
            || old.server.group != new.server.group
            || old.server.allow_root != new.server.allow_root,
    );
    check(
        "delivery.enabled",
        old.delivery.enabled != new.delivery.enabled,
    );
    check(
        "delivery.max_in_flight",
        old.delivery.max_in_flight != new.delivery.max_in_flight,
    );
    check(
        "dns",
        old.dns.nameservers != new.dns.nameservers
            || old.dns.timeout_secs != new.dns.timeout_secs
            || old.dns.attempts != new.dns.attempts,
    );
    check("tls", old.tls.enabled() != new.tls.enabled());
    check(
        "sendmail.socket",
        old.sendmail.socket != new.sendmail.socket,
    );
    check(
        "delivery.tls_ca_file",
        old.delivery.tls_ca_file != new.delivery.tls_ca_file,
    );
    check("metrics.listen", old.metrics.listen != new.metrics.listen);
    check("log.format", old.log.format != new.log.format);
    check(
        "auth.ip_max_failures",
        old.auth.ip_max_failures != new.auth.ip_max_failures
            || old.auth.ip_failure_window_secs != new.auth.ip_failure_window_secs
            || old.auth.ip_block_secs != new.auth.ip_block_secs
            || old.auth.exempt_loopback != new.auth.exempt_loopback,
    );
    keys
}

enum Signal {
    Stop,
    Reload,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// SIGTERM or SIGINT: stop; SIGHUP: reload.
    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
