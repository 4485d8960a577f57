//! The `pigeon` command: parse the CLI, load the configuration, and either
//! run the daemon (bind, recover the queue, serve, stop on a signal) or
//! act on the spool directly (`queue list/show`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use pigeon::config::{self, Config};
use pigeon::live::{Live, Snapshot};
use pigeon::queue::{self, QueueId};
use pigeon::system;

const DEFAULT_CONFIG: &str = "/etc/pigeon/pigeon.toml";

#[derive(Parser)]
#[command(
    name = "pigeon",
    version,
    about = "pigeon: an SMTP mail transfer agent"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the mail server.
    Serve {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a configuration file; print every error with its key and line.
    CheckConfig {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Read a password (without echo, or from standard input when it is not
    /// a terminal) and print its argon2id hash for the users file.
    HashPassword,
    /// Send a message read from standard input, as sendmail does (-t, -i,
    /// -f, -F, recipients); also what runs when pigeon is called as
    /// `sendmail`. Configuration: -C PATH or $PIGEON_CONFIG.
    Sendmail {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Inspect the mail queue (reads the spool directly; safe while the server runs).
    Queue {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Spool directory to use instead of the one in the configuration.
        #[arg(long)]
        spool: Option<PathBuf>,
        #[command(subcommand)]
        cmd: QueueCmd,
    },
}

#[derive(Subcommand)]
enum QueueCmd {
    /// One line per message: id, age, size, sender, recipients and their state.
    List {
        #[arg(long)]
        json: bool,
        /// Only messages whose sender contains this text (case-insensitive).
        #[arg(long)]
        sender: Option<String>,
        /// Only messages with a recipient containing this text.
        #[arg(long)]
        recipient: Option<String>,
        /// Only messages with a recipient in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages in this state: pending, delivered, failed (any
        /// recipient in it) or held.
        #[arg(long)]
        state: Option<String>,
    },
    /// Retry now (the given messages, or all), through the running daemon.
    Flush { ids: Vec<String> },
    /// Delete messages without notice, through the running daemon.
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Keep messages from being delivered until released.
    Hold {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Let held messages be delivered again (at once).
    Release {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Return messages to their senders now, with a DSN.
    Bounce {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Envelope, per-recipient state and headers of one message.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
        /// Print the whole stored message (headers and body) instead.
        #[arg(long)]
        body: bool,
    },
}

fn main() -> ExitCode {
    // Installed as /usr/sbin/sendmail (a link to pigeon), or `pigeon sendmail`:
    // sendmail's own option syntax, parsed by hand.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let prog = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if prog == "sendmail" {
        return ExitCode::from(pigeon::sendmail::run(&args[1..]));
    }
    if args.get(1).map(String::as_str) == Some("sendmail") {
        return ExitCode::from(pigeon::sendmail::run(&args[2..]));
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::CheckConfig { config } => match load(&config).map(Snapshot::load) {
            Some(Ok(snap)) => {
                println!(
                    "{}: ok ({} users, {} mailboxes, {} aliases)",
                    config.display(),
                    snap.users.len(),
                    snap.directory.mailbox_count(),
                    snap.directory.alias_count()
                );
                ExitCode::SUCCESS
            }
            Some(Err(errs)) => {
                for e in &errs {
                    eprintln!("{}: {e}", config.display());
                }
                ExitCode::FAILURE
            }
            None => ExitCode::FAILURE,
        },
        Cmd::Serve { config } => match load(&config) {
            Some(cfg) => serve(&config, cfg),
            None => ExitCode::FAILURE,
        },
        Cmd::HashPassword => hash_password(),
        Cmd::Sendmail { args } => ExitCode::from(pigeon::sendmail::run(&args)),
        Cmd::Queue { config, spool, cmd } => {
            // Like other Unix tools, end quietly when the reader of our
            // output goes away (`pigeon queue list | head`).
            // SAFETY: restores the default action of one signal; no handler runs.
            unsafe {
                libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            }
            let dir = match spool {
                Some(d) => d,
                None => match load(&config) {
                    Some(cfg) => cfg.spool.dir.clone(),
                    None => return ExitCode::FAILURE,
                },
            };
            match cmd {
                QueueCmd::List {
                    json,
                    sender,
                    recipient,
                    domain,
                    state,
                } => {
                    let filter = ListFilter {
                        sender,
                        recipient,
                        domain,
                        state,
                    };
                    queue_list(&dir, json, &filter)
                }
                QueueCmd::Flush { ids } => queue_request(&dir, "flush", &ids),
                QueueCmd::Delete { ids } => queue_request(&dir, "delete", &ids),
                QueueCmd::Hold { ids } => queue_request(&dir, "hold", &ids),
                QueueCmd::Release { ids } => queue_request(&dir, "release", &ids),
                QueueCmd::Bounce { ids } => queue_request(&dir, "bounce", &ids),
                QueueCmd::Show { id, json, body } => queue_show(&dir, &id, json, body),
            }
        }
    }
}

fn load(path: &Path) -> Option<Config> {
    match config::load(path) {
        Ok(c) => Some(c),
        Err(errs) => {
            for e in &errs {
                eprintln!("{}: {e}", path.display());
            }
            None
        }
    }
}

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

fn serve(path: &Path, cfg: Config) -> ExitCode {
    let log = pigeon::telemetry::init(&cfg.log);
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
    log: pigeon::telemetry::LogHandle,
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
    let listeners = match pigeon::server::listen(&cfg, inherited) {
        Ok(l) => l,
        Err(e) => return fail("start-up failed", &e),
    };
    let sendmail = if cfg.sendmail.socket.as_os_str().is_empty() {
        None
    } else {
        match pigeon::server::bind_sendmail(&cfg.sendmail.socket) {
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
    let (q, rec) = match queue::Queue::open(&cfg.spool.dir, reserve) {
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
    let running = match pigeon::server::start(live.clone(), q.clone(), listeners, sendmail) {
        Ok(r) => r,
        Err(e) => return fail("start-up failed", &e),
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let mut handle = None;
    if cfg.delivery.enabled {
        let resolver = match pigeon::dns::HickoryResolver::new(
            &cfg.dns.nameservers,
            Duration::from_secs(cfg.dns.timeout_secs),
            cfg.dns.attempts,
        ) {
            Ok(r) => r,
            Err(e) => return fail("cannot set up DNS resolution", &e),
        };
        let remote = Arc::new(pigeon::delivery::remote::RemoteTransport::new(
            live.clone(),
            Arc::new(resolver),
        ));
        let local = Arc::new(pigeon::delivery::local::LocalTransport::new(
            live.clone(),
            q.clone(),
        ));
        let (h, task) =
            pigeon::delivery::start(live.clone(), q.clone(), remote, local, stop_rx.clone());
        let sock = pigeon::control::socket_path(&cfg.spool.dir);
        tasks.push(task);
        let control = tokio::spawn(pigeon::control::serve(sock, h.clone(), stop_rx.clone()));
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
        let listener = pigeon::metrics::serve(
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

fn ready_status(running: &pigeon::server::Running) -> String {
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
    running: &pigeon::server::Running,
    log: &pigeon::telemetry::LogHandle,
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

fn hash_password() -> ExitCode {
    let password = match read_password() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot read the password: {e}");
            return ExitCode::FAILURE;
        }
    };
    if password.is_empty() {
        eprintln!("empty password refused");
        return ExitCode::FAILURE;
    }
    match pigeon::auth::hash_password(&password) {
        Ok(h) => {
            println!("{h}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot hash: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One line from standard input; on a terminal, prompted and not echoed.
fn read_password() -> std::io::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut saved: Option<libc::termios> = None;
    if tty {
        eprint!("Password: ");
        let _ = std::io::stderr().flush();
        // SAFETY: tcgetattr/tcsetattr read and write the termios struct we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) == 0 {
                saved = Some(t);
                t.c_lflag &= !libc::ECHO;
                libc::tcsetattr(0, libc::TCSANOW, &t);
            }
        }
    }
    let mut line = String::new();
    let r = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: restores the settings read above.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &t);
        }
        eprintln!();
    }
    r?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn age(arrival: i64) -> String {
    let s = (now() - arrival).max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

struct ListFilter {
    sender: Option<String>,
    recipient: Option<String>,
    domain: Option<String>,
    state: Option<String>,
}

impl ListFilter {
    fn keep(&self, m: &queue::Summary) -> bool {
        let has = |hay: &str, needle: &str| hay.to_lowercase().contains(&needle.to_lowercase());
        if let Some(s) = &self.sender {
            if !has(&m.sender, s) {
                return false;
            }
        }
        if let Some(r) = &self.recipient {
            if !m.recipients.iter().any(|x| has(&x.address, r)) {
                return false;
            }
        }
        if let Some(d) = &self.domain {
            let d = d.trim_start_matches('@').to_lowercase();
            let in_domain = |a: &str| {
                a.rsplit_once('@')
                    .is_some_and(|(_, rd)| rd.to_lowercase() == d)
            };
            if !m.recipients.iter().any(|x| in_domain(&x.address)) {
                return false;
            }
        }
        if let Some(st) = &self.state {
            let st = st.to_lowercase();
            let ok = match st.as_str() {
                "held" | "hold" => m.hold,
                _ => m
                    .recipients
                    .iter()
                    .any(|x| state_name(x.status.state) == st),
            };
            if !ok {
                return false;
            }
        }
        true
    }
}

fn state_name(s: queue::RcptState) -> &'static str {
    match s {
        queue::RcptState::Pending => "pending",
        queue::RcptState::Delivered => "delivered",
        queue::RcptState::Failed => "failed",
    }
}

fn queue_request(dir: &Path, verb: &str, ids: &[String]) -> ExitCode {
    for id in ids {
        if id.parse::<QueueId>().is_err() {
            eprintln!("not a queue id: {id}");
            return ExitCode::FAILURE;
        }
    }
    let line = std::iter::once(verb.to_string())
        .chain(ids.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    match pigeon::control::request(dir, &line) {
        Ok(answer) => {
            print!("{answer}");
            if answer.starts_with("error:") {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn queue_list(dir: &Path, json: bool, filter: &ListFilter) -> ExitCode {
    let list = match queue::list(dir) {
        Ok(l) => l.into_iter().filter(|m| filter.keep(m)).collect::<Vec<_>>(),
        Err(e) => {
            eprintln!("cannot read the queue in {}: {e}", dir.display());
            return ExitCode::FAILURE;
        }
    };
    if json {
        match serde_json::to_string_pretty(&list) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        }
        return ExitCode::SUCCESS;
    }
    for m in &list {
        let sender = if m.sender.is_empty() { "<>" } else { &m.sender };
        let rcpts: Vec<String> = m
            .recipients
            .iter()
            .map(|r| {
                format!(
                    "{} ({})",
                    r.address,
                    serde_json::to_value(r.status.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                )
            })
            .collect();
        let held = if m.hold { "  [held]" } else { "" };
        println!(
            "{}  {:>4}  {:>8}  {}  {}{held}",
            m.id,
            age(m.arrival),
            m.size,
            sender,
            rcpts.join(", ")
        );
    }
    if list.is_empty() {
        println!("queue is empty");
    }
    ExitCode::SUCCESS
}

fn queue_show(dir: &Path, id: &str, json: bool, body: bool) -> ExitCode {
    let Ok(qid) = id.parse::<QueueId>() else {
        eprintln!("not a queue id: {id}");
        return ExitCode::FAILURE;
    };
    let msg = match queue::read_message(dir, qid) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{id}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let content = msg.content();
    if body {
        use std::io::Write;
        let _ = std::io::stdout().write_all(&content);
        return ExitCode::SUCCESS;
    }
    let header_end = content
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(content.len());
    let headers = String::from_utf8_lossy(&content[..header_end]).replace("\r\n", "\n");
    let env = &msg.envelope;
    if json {
        let rcpts: Vec<serde_json::Value> = env
            .recipients
            .iter()
            .zip(msg.status.rcpts.iter())
            .map(|(r, st)| {
                serde_json::json!({
                    "address": r.address, "orcpt": r.orcpt, "notify": r.notify.0,
                    "state": st.state, "attempts": st.attempts, "next_attempt": st.next_attempt, "last_reply": st.last_reply,
                })
            })
            .collect();
        let v = serde_json::json!({
            "id": msg.id.to_string(), "arrival": msg.arrival, "size": content.len(),
            "message_id": msg.message_id,
            "sender": env.sender, "ret": env.ret.map(|r| format!("{r:?}").to_uppercase()), "envid": env.envid,
            "body_type": format!("{:?}", env.body_type), "smtputf8": env.smtputf8,
            "client_ip": env.client_ip.to_string(), "helo": env.helo, "protocol": env.protocol,
            "recipients": rcpts, "headers": headers,
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    println!("id:         {}", msg.id);
    println!("arrival:    {} ({} ago)", msg.arrival, age(msg.arrival));
    println!("size:       {}", content.len());
    if let Some(mid) = &msg.message_id {
        println!("message-id: {mid}");
    }
    println!("sender:     <{}>", env.sender);
    println!(
        "client:     {} (helo {}), {}",
        env.client_ip, env.helo, env.protocol
    );
    println!(
        "body:       {:?}{}",
        env.body_type,
        if env.smtputf8 { ", SMTPUTF8" } else { "" }
    );
    if let Some(r) = env.ret {
        println!("ret:        {r:?}");
    }
    if let Some(e) = &env.envid {
        println!("envid:      {e}");
    }
    for (r, st) in env.recipients.iter().zip(msg.status.rcpts.iter()) {
        println!(
            "recipient:  <{}> {:?} attempts={} next={}{}{}",
            r.address,
            st.state,
            st.attempts,
            st.next_attempt,
            r.orcpt
                .as_ref()
                .map(|o| format!(" orcpt={o}"))
                .unwrap_or_default(),
            if st.last_reply.is_empty() {
                String::new()
            } else {
                format!(" last=\"{}\"", st.last_reply)
            }
        );
    }
    println!("\n{headers}");
    ExitCode::SUCCESS
}
