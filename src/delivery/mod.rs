//! Delivery: the manager that schedules queued messages (due times, a
//! global in-flight limit, per-destination limits, hold/flush/delete/bounce
//! requests) and, per message, turns each recipient's outcome into a new
//! status, a retry time or a DSN. Transports (remote SMTP for other
//! domains; local delivery, Maildir or LMTP, for the local domains) only
//! report events; [`classify`] alone decides what they mean.
//!
//! Owns no on-disk state: all of it goes through the queue (status after
//! every attempt, DSNs enqueued like any message, removal when done). Never
//! calls the server.

pub mod attempt;
pub mod classify;
pub mod control;
pub mod dsn;
pub mod local;
pub mod maildir;
pub mod remote;
pub mod retry;
pub mod route;
pub mod tls_policy;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn, Instrument};

use crate::config::{Config, DoubleBounce};
use crate::live::Live;
use crate::net::{Clock, SystemClock};
use crate::proto::envelope::{BodyType, Envelope, Notify, Recipient, Ret};
use crate::proto::reply::EnhancedCode;
use crate::queue::{DsnOwed, MessageStatus, Queue, QueueId, RcptState, StoredMessage};
use crate::trace::{self, Event as TraceEvent, Removal};
use classify::Event;
use dsn::{DsnAction, DsnRecipient};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Recipients of one message for one destination, handed to a transport.
#[derive(Debug, Clone)]
pub struct Job {
    pub msg: Arc<StoredMessage>,
    /// Lowercased recipient domain (all of `rcpts` share it); "" for the
    /// local transport, which gets all local recipients together.
    pub domain: String,
    /// Indexes into `msg.envelope.recipients`.
    pub rcpts: Vec<usize>,
}

/// A way to deliver: reports one event per recipient of the job, in order.
pub trait Transport: Send + Sync {
    fn deliver<'a>(&'a self, job: &'a Job) -> BoxFuture<'a, Vec<Event>>;
    /// The key under which per-destination limits apply for this domain
    /// (the relay host when one is used, else the domain).
    fn destination(&self, domain: &str) -> String {
        domain.to_string()
    }
    /// Most deliveries at once to one destination of this transport;
    /// None: `delivery.max_connections_per_destination`.
    fn destination_limit(&self) -> Option<usize> {
        None
    }
}

/// An administrator's request about queued messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Retry now: these ids, or every message when empty.
    Flush(Vec<QueueId>),
    Hold(Vec<QueueId>),
    Release(Vec<QueueId>),
    Delete(Vec<QueueId>),
    /// Return to the sender now with a DSN.
    Bounce(Vec<QueueId>),
}

/// Talks to a running manager.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<(Request, oneshot::Sender<String>)>,
    stats: mpsc::Sender<oneshot::Sender<crate::ops::metrics::QueueGauges>>,
}

impl Handle {
    /// Sends a request; the answer says what was done, one line per id.
    pub async fn request(&self, r: Request) -> String {
        let (tx, rx) = oneshot::channel();
        if self.tx.send((r, tx)).await.is_err() {
            return "delivery is not running".into();
        }
        rx.await.unwrap_or_else(|_| "delivery stopped".into())
    }

    /// How many messages are being delivered, waiting and on hold.
    pub async fn gauges(&self) -> Option<crate::ops::metrics::QueueGauges> {
        let (tx, rx) = oneshot::channel();
        self.stats.send(tx).await.ok()?;
        rx.await.ok()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Scheduling state of one queued message.
#[derive(Debug, Default)]
struct Entry {
    due: i64,
    hold: bool,
    running: bool,
    /// Requests that arrived while a delivery was running, applied after.
    deferred: Vec<(Request, Option<oneshot::Sender<String>>)>,
}

/// Shared by the manager and its message tasks.
struct Ctx {
    live: Live,
    queue: Queue,
    /// Other domains.
    remote: Arc<dyn Transport>,
    /// The local domains.
    local: Arc<dyn Transport>,
    /// Limits deliveries (connections out) over all destinations.
    global: Arc<Semaphore>,
    /// `delivery.max_in_flight` at start (the size of `global`).
    max_in_flight: usize,
    /// Per destination: the semaphore and the number of permits it was made with.
    per_destination: Mutex<HashMap<String, (Arc<Semaphore>, usize)>>,
    /// The time attempts are judged by.
    clock: Arc<dyn Clock>,
}

impl Ctx {
    fn cfg(&self) -> Arc<Config> {
        self.live.cfg()
    }

    fn destination_limit(&self, key: &str, max: usize) -> Arc<Semaphore> {
        let mut map = self
            .per_destination
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            // Forget idle destinations (no permit taken) to stay bounded.
            map.retain(|_, (s, n)| s.available_permits() < *n);
        }
        match map.get(key) {
            // A reload changed the limit: new deliveries use a new one.
            Some((s, n)) if *n == max => s.clone(),
            _ => {
                let s = Arc::new(Semaphore::new(max));
                map.insert(key.to_string(), (s.clone(), max));
                s
            }
        }
    }
}

/// The postmaster address of a configuration.
fn postmaster(cfg: &Config) -> String {
    if cfg.delivery.postmaster.is_empty() {
        format!("postmaster@{}", cfg.server.hostname)
    } else {
        cfg.delivery.postmaster.clone()
    }
}

/// What a message task tells the manager when it ends.
enum Next {
    /// Try again at this time.
    At(i64),
    /// On hold (seen in its status).
    Held,
    /// Gone from the queue (delivered, returned, or deleted).
    Done,
}

/// Starts the manager: loads the queue's schedule and delivers until
/// `stop` turns true (deliveries in progress may finish within `grace`).
pub fn start(
    live: Live,
    queue: Queue,
    remote: Arc<dyn Transport>,
    local: Arc<dyn Transport>,
    mut stop: watch::Receiver<bool>,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let (tx, mut requests) = mpsc::channel::<(Request, oneshot::Sender<String>)>(64);
    let (stats_tx, mut stats) =
        mpsc::channel::<oneshot::Sender<crate::ops::metrics::QueueGauges>>(8);
    let max_in_flight = live.cfg().delivery.max_in_flight.max(1);
    let ctx = Arc::new(Ctx {
        global: Arc::new(Semaphore::new(max_in_flight)),
        max_in_flight,
        per_destination: Mutex::new(HashMap::new()),
        clock: Arc::new(SystemClock),
        remote,
        local,
        queue,
        live,
    });
    let mut fresh = ctx.queue.subscribe();
    let task = tokio::spawn(async move {
        let mut entries: HashMap<QueueId, Entry> = HashMap::new();
        let mut heap: BinaryHeap<Reverse<(i64, QueueId)>> = BinaryHeap::new();
        // What is already queued: due times and hold flags from status files.
        let q = ctx.queue.clone();
        let known = tokio::task::spawn_blocking(move || {
            q.ids()
                .into_iter()
                .map(|id| match q.status(id) {
                    Ok(Some(st)) => (id, st.next_attempt, st.hold),
                    _ => (id, 0, false),
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        info!(messages = known.len(), "delivery started");
        for (id, due, hold) in known {
            entries.insert(
                id,
                Entry {
                    due,
                    hold,
                    ..Entry::default()
                },
            );
            if !hold {
                heap.push(Reverse((due, id)));
            }
        }
        let mut running: JoinSet<(QueueId, Next)> = JoinSet::new();
        let max_tasks = ctx.max_in_flight;
        loop {
            // Launch what is due, within the in-flight limit.
            let now = unix_now();
            while running.len() < max_tasks {
                let Some(Reverse((due, id))) = heap.peek().copied() else {
                    break;
                };
                if due > now {
                    break;
                }
                heap.pop();
                let Some(e) = entries.get_mut(&id) else {
                    continue;
                };
                if e.running || e.hold || e.due != due {
                    continue; // stale heap entry
                }
                e.running = true;
                let ctx = ctx.clone();
                let span = tracing::info_span!("msg", queue_id = %id);
                running
                    .spawn(async move { (id, deliver_message(&ctx, id).await) }.instrument(span));
            }
            let next_due = heap.peek().map(|Reverse((d, _))| *d);
            let sleep = match next_due {
                Some(d) if running.len() < max_tasks => {
                    Duration::from_secs((d - now).clamp(0, 3600) as u64)
                }
                _ => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                Some(id) = fresh.recv() => {
                    entries.entry(id).or_insert(Entry { due: 0, ..Entry::default() });
                    heap.push(Reverse((0, id)));
                }
                Some(done) = running.join_next(), if !running.is_empty() => {
                    let Ok((id, next)) = done else { continue };
                    let deferred = match entries.get_mut(&id) {
                        Some(e) => {
                            e.running = false;
                            std::mem::take(&mut e.deferred)
                        }
                        None => Vec::new(),
                    };
                    match next {
                        Next::Done => { entries.remove(&id); }
                        Next::Held => { if let Some(e) = entries.get_mut(&id) { e.hold = true; } }
                        Next::At(t) => {
                            if let Some(e) = entries.get_mut(&id) {
                                e.due = t;
                                heap.push(Reverse((t, id)));
                            }
                        }
                    }
                    for (r, reply) in deferred {
                        let text = apply(&ctx, &mut entries, &mut heap, &r).await;
                        if let Some(reply) = reply { let _ = reply.send(text); }
                    }
                }
                Some(reply) = stats.recv() => {
                    let mut g = crate::ops::metrics::QueueGauges::default();
                    for e in entries.values() {
                        if e.running {
                            g.active += 1;
                        } else if e.hold {
                            g.held += 1;
                        } else {
                            g.waiting += 1;
                        }
                    }
                    let _ = reply.send(g);
                }
                Some((r, reply)) = requests.recv() => {
                    // Messages announced but not yet taken in: a request
                    // may name one just accepted.
                    while let Ok(id) = fresh.try_recv() {
                        entries.entry(id).or_insert(Entry { due: 0, ..Entry::default() });
                        heap.push(Reverse((0, id)));
                    }
                    // Requests about running messages wait for them to end.
                    let ids = request_ids(&r);
                    let busy: Vec<QueueId> = ids.iter().copied().filter(|id| entries.get(id).is_some_and(|e| e.running)).collect();
                    if busy.is_empty() || matches!(r, Request::Flush(_)) {
                        let text = apply(&ctx, &mut entries, &mut heap, &r).await;
                        let _ = reply.send(text);
                    } else {
                        let idle: Vec<QueueId> = ids.iter().copied().filter(|id| !busy.contains(id)).collect();
                        let mut text = if idle.is_empty() { String::new() } else {
                            apply(&ctx, &mut entries, &mut heap, &with_ids(&r, idle)).await
                        };
                        for id in busy {
                            if let Some(e) = entries.get_mut(&id) {
                                e.deferred.push((with_ids(&r, vec![id]), None));
                            }
                            text.push_str(&format!("{id}: delivery in progress; done when it ends\n"));
                        }
                        let _ = reply.send(text);
                    }
                }
                _ = stop.changed() => {
                    info!(running = running.len(), "delivery stopping");
                    let grace = Duration::from_secs(ctx.cfg().limits.shutdown_grace_secs);
                    let _ = tokio::time::timeout(grace, async { while running.join_next().await.is_some() {} }).await;
                    running.abort_all();
                    return;
                }
            }
        }
    });
    (
        Handle {
            tx,
            stats: stats_tx,
        },
        task,
    )
}

fn request_ids(r: &Request) -> Vec<QueueId> {
    match r {
        Request::Flush(v)
        | Request::Hold(v)
        | Request::Release(v)
        | Request::Delete(v)
        | Request::Bounce(v) => v.clone(),
    }
}

fn with_ids(r: &Request, ids: Vec<QueueId>) -> Request {
    match r {
        Request::Flush(_) => Request::Flush(ids),
        Request::Hold(_) => Request::Hold(ids),
        Request::Release(_) => Request::Release(ids),
        Request::Delete(_) => Request::Delete(ids),
        Request::Bounce(_) => Request::Bounce(ids),
    }
}

/// Carries out a request on messages that are not being delivered.
async fn apply(
    ctx: &Arc<Ctx>,
    entries: &mut HashMap<QueueId, Entry>,
    heap: &mut BinaryHeap<Reverse<(i64, QueueId)>>,
    r: &Request,
) -> String {
    let mut out = String::new();
    let now = unix_now();
    let ids = match r {
        Request::Flush(v) if v.is_empty() => entries.keys().copied().collect(),
        _ => request_ids(r),
    };
    for id in ids {
        let Some(e) = entries.get_mut(&id) else {
            out.push_str(&format!("{id}: not in the queue\n"));
            continue;
        };
        let line = match r {
            Request::Flush(_) => {
                if e.hold {
                    format!("{id}: on hold, not flushed")
                } else if e.running {
                    format!("{id}: delivery in progress")
                } else {
                    e.due = now;
                    heap.push(Reverse((now, id)));
                    format!("{id}: scheduled now")
                }
            }
            Request::Hold(_) | Request::Release(_) => {
                let hold = matches!(r, Request::Hold(_));
                match set_hold(ctx, id, hold).await {
                    Ok(()) => {
                        e.hold = hold;
                        if !hold {
                            e.due = now;
                            heap.push(Reverse((now, id)));
                        }
                        format!("{id}: {}", if hold { "on hold" } else { "released" })
                    }
                    Err(err) => format!("{id}: failed: {err}"),
                }
            }
            Request::Delete(_) => {
                let q = ctx.queue.clone();
                match tokio::task::spawn_blocking(move || q.remove(id)).await {
                    Ok(Ok(())) => {
                        entries.remove(&id);
                        trace::emit(TraceEvent::Removed {
                            queue_id: id,
                            why: Removal::Deleted,
                        });
                        format!("{id}: deleted")
                    }
                    Ok(Err(err)) => format!("{id}: failed: {err}"),
                    Err(err) => format!("{id}: failed: {err}"),
                }
            }
            Request::Bounce(_) => match bounce_now(ctx, id).await {
                Ok(()) => {
                    entries.remove(&id);
                    trace::emit(TraceEvent::Removed {
                        queue_id: id,
                        why: Removal::Bounced,
                    });
                    format!("{id}: returned to sender")
                }
                Err(err) => {
                    // Its DSN is owed (or nothing changed): the next pass
                    // tries again, on hold or not.
                    e.hold = false;
                    e.due = now + attempt::DSN_RETRY_SECS;
                    heap.push(Reverse((e.due, id)));
                    format!("{id}: failed: {err}")
                }
            },
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

async fn read(ctx: &Ctx, id: QueueId) -> Result<StoredMessage, String> {
    if let Some(m) = ctx.queue.take_recent(id) {
        return Ok(m);
    }
    let q = ctx.queue.clone();
    tokio::task::spawn_blocking(move || q.read(id))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

enum Unreadable {
    /// The file failed verification.
    Corrupt(String),
    /// Gone, or an I/O error that may pass.
    Other(String),
}

async fn read_checked(ctx: &Ctx, id: QueueId) -> Result<StoredMessage, Unreadable> {
    if let Some(m) = ctx.queue.take_recent(id) {
        return Ok(m);
    }
    let q = ctx.queue.clone();
    match tokio::task::spawn_blocking(move || q.read(id)).await {
        Ok(Ok(m)) => Ok(m),
        Ok(Err(crate::queue::ReadError::Corrupt(why))) => Err(Unreadable::Corrupt(why)),
        Ok(Err(e)) => Err(Unreadable::Other(e.to_string())),
        Err(e) => Err(Unreadable::Other(e.to_string())),
    }
}

async fn write_status(ctx: &Ctx, id: QueueId, st: MessageStatus) -> Result<(), String> {
    let q = ctx.queue.clone();
    tokio::task::spawn_blocking(move || q.update_status(id, &st))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

async fn set_hold(ctx: &Ctx, id: QueueId, hold: bool) -> Result<(), String> {
    let mut st = read(ctx, id).await?.status;
    st.hold = hold;
    if !hold {
        st.next_attempt = 0;
    }
    write_status(ctx, id, st).await
}

/// `pigeon queue bounce`: every pending recipient fails now. The message
/// is removed only once its DSN is queued; until then it stays, with the
/// DSN owed, and the next pass tries the DSN again.
async fn bounce_now(ctx: &Arc<Ctx>, id: QueueId) -> Result<(), String> {
    let msg = read(ctx, id).await?;
    let now = unix_now();
    let mut st = msg.status.clone();
    let mut report = Vec::new();
    for (i, rs) in st.rcpts.iter_mut().enumerate() {
        if rs.state == RcptState::Pending {
            rs.state = RcptState::Failed;
            rs.last_reply = "5.0.0 returned to sender by the mail administrator".into();
            rs.status = Some(EnhancedCode::generic(5));
            rs.dsn_owed = Some(DsnOwed::Failed);
            report.push(attempt::dsn_rcpt(
                &msg.envelope.recipients[i],
                DsnAction::Failed,
                rs.status,
                None,
                Some(rs.last_reply.clone()),
                Some(now),
            ));
        }
    }
    warn!(queue_id = %id, recipients = report.len(), "returned to sender by the administrator");
    report.extend(attempt::owed_reports(&msg));
    st.next_attempt = now + attempt::DSN_RETRY_SECS;
    st.hold = false;
    write_status(ctx, id, st).await?;
    send_dsn(ctx, &msg, &report, false)
        .await
        .map_err(|e| format!("the DSN could not be queued ({e}); it will be retried"))?;
    let q = ctx.queue.clone();
    tokio::task::spawn_blocking(move || q.remove(id))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Builds and enqueues one DSN about `msg`. A message from the null
/// sender never causes a DSN to its sender: its failures go to the
/// postmaster (or nowhere), and never for a message to the postmaster.
/// An error means the DSN is not queued (and nothing of it is left).
async fn send_dsn(
    ctx: &Arc<Ctx>,
    msg: &StoredMessage,
    report: &[DsnRecipient],
    delay: bool,
) -> Result<(), String> {
    if report.is_empty() {
        return Ok(());
    }
    let env = &msg.envelope;
    let cfg = ctx.cfg();
    let postmaster = postmaster(&cfg);
    let to = if !env.sender.is_empty() {
        env.sender.clone()
    } else {
        let to_postmaster = report
            .iter()
            .all(|r| r.final_recipient.eq_ignore_ascii_case(&postmaster));
        if delay || cfg.delivery.double_bounce == DoubleBounce::Drop || to_postmaster {
            info!(queue_id = %msg.id, "no DSN: the message came from the null sender");
            return Ok(());
        }
        postmaster
    };
    let now = unix_now();
    let host = &cfg.server.hostname;
    let message_id = format!("<{}.{}@{}>", msg.id, now, host);
    let queue_id = msg.id.to_string();
    let input = dsn::DsnInput {
        reporting_mta: host,
        queue_id: &queue_id,
        arrival: msg.arrival,
        envid: env.envid.as_deref(),
        original_sender: &to,
        recipients: report,
        original: &msg.content(),
        ret: returned(env.ret, report),
        now,
        message_id: &message_id,
        max_original_bytes: cfg.delivery.bounce_size_limit,
    };
    let bytes = dsn::build_dsn(&input);
    let envelope = Envelope {
        sender: String::new(),
        recipients: vec![Recipient {
            address: to.clone(),
            orcpt: None,
            notify: Notify(Notify::NEVER),
        }],
        ret: None,
        envid: None,
        body_type: dsn_body_type(&bytes),
        smtputf8: !to.is_ascii(),
        client_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        helo: host.clone(),
        protocol: "LOCAL".into(),
        auth_user: None,
    };
    let id = ctx.queue.new_id();
    let mut w = ctx.queue.writer(id, now, envelope);
    // This server's own mail is DKIM-signed like its users' (for the
    // domain of its From:, MAILER-DAEMON@hostname, or a parent domain).
    if cfg.dkim.sign {
        let (signatures, errors) = ctx.live.get().dkim.sign_message(&bytes);
        for e in errors {
            warn!(queue_id = %msg.id, error = %e, "DKIM signing of a DSN failed; it is sent unsigned");
        }
        w.set_extras(signatures.as_bytes(), Some(message_id.clone()));
    }
    let result = match w.write(&bytes).await {
        Ok(()) => ctx.queue.commit(w).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(dsn_id) => {
            trace::emit(TraceEvent::DsnQueued {
                queue_id: msg.id,
                dsn_id,
                to,
                delay,
            });
            Ok(())
        }
        Err(e) => {
            warn!(queue_id = %msg.id, error = %e, "cannot queue DSN; the message stays queued until it can");
            Err(e.to_string())
        }
    }
}

/// What of the original a DSN returns: what the sender asked for (RFC
/// 3461 §4.3), except that a report on a mail loop (5.4.6) returns the
/// header section only, so a forged loop cannot reflect a body to a
/// forged sender.
fn returned(ret: Option<Ret>, report: &[DsnRecipient]) -> Option<Ret> {
    if report
        .iter()
        .any(|r| r.status == Some(EnhancedCode::new(5, 4, 6)))
    {
        Some(Ret::Hdrs)
    } else {
        ret
    }
}

/// The BODY type a DSN is queued with: 7BIT when every byte is ASCII (so a
/// next hop without 8BITMIME takes it), else 8BITMIME (RFC 6152; the rule
/// is stated in `dsn.rs`).
fn dsn_body_type(dsn: &[u8]) -> BodyType {
    if dsn.is_ascii() {
        BodyType::SevenBit
    } else {
        BodyType::EightBitMime
    }
}

/// One pass over one message: deliver every pending recipient that is
/// due, record the outcomes, send the DSNs they call for, and say when to
/// come back.
async fn deliver_message(ctx: &Arc<Ctx>, id: QueueId) -> Next {
    let msg = match read_checked(ctx, id).await {
        Ok(m) => Arc::new(m),
        Err(Unreadable::Corrupt(why)) => {
            // Found damaged while running: set aside like at start-up,
            // never retried forever.
            let q = ctx.queue.clone();
            let _ = tokio::task::spawn_blocking(move || q.quarantine(id, &why)).await;
            return Next::Done;
        }
        Err(Unreadable::Other(e)) => {
            // Gone (deleted) or unreadable: nothing to deliver now.
            warn!(error = %e, "cannot read queued message");
            return if ctx.queue.ids().contains(&id) {
                Next::At(unix_now() + 300)
            } else {
                Next::Done
            };
        }
    };
    if msg.status.hold {
        return Next::Held;
    }
    let snap = ctx.live.get();
    let d = &snap.cfg.delivery;
    let now = ctx.clock.now();
    let by_domain = attempt::due_by_domain(&msg, now, |dom| snap.directory.is_local_domain(dom));
    let mut outcomes: Vec<(usize, Event)> = Vec::new();
    let mut local_rcpt = vec![false; msg.envelope.recipients.len()];
    for (domain, idx) in by_domain {
        let is_local = domain.is_empty();
        let transport = if is_local { &ctx.local } else { &ctx.remote };
        for chunk in idx.chunks(d.max_recipients_per_transaction.max(1)) {
            let job = Job {
                msg: msg.clone(),
                domain: domain.clone(),
                rcpts: chunk.to_vec(),
            };
            let dest = transport.destination(&domain);
            let max = transport
                .destination_limit()
                .unwrap_or(d.max_connections_per_destination)
                .max(1);
            let limit = ctx.destination_limit(&dest, max);
            let (Ok(_g), Ok(_d)) = (
                ctx.global.clone().acquire_owned().await,
                limit.acquire_owned().await,
            ) else {
                return Next::At(now + 60);
            };
            let events = transport.deliver(&job).await;
            for (k, &i) in chunk.iter().enumerate() {
                let event = events
                    .get(k)
                    .cloned()
                    .unwrap_or_else(|| Event::Protocol("no outcome reported".into()));
                if let Some(l) = local_rcpt.get_mut(i) {
                    *l = is_local;
                }
                outcomes.push((i, event));
            }
        }
    }
    let plan = attempt::apply(&msg, &outcomes, ctx.clock.now(), d);
    record_results(&msg, &plan.results, &local_rcpt, ctx.clock.now_micros());
    // Status first (a crash after it never repeats a delivery recorded
    // there, and a DSN that cannot be queued stays owed), then DSNs.
    if plan.save_first() {
        if let Err(e) = write_status(ctx, id, plan.status.clone()).await {
            warn!(error = %e, "cannot save delivery status; will retry");
            return Next::At(now + 60);
        }
    }
    let report_queued = send_dsn(ctx, &msg, &plan.report, false).await.is_ok();
    let delay_queued = send_dsn(ctx, &msg, &plan.delay_report, true).await.is_ok();
    match plan.settle(report_queued, delay_queued) {
        attempt::Settled::Remove => {
            let q = ctx.queue.clone();
            match tokio::task::spawn_blocking(move || q.remove(id)).await {
                Ok(Ok(())) => trace::emit(TraceEvent::Removed {
                    queue_id: id,
                    why: Removal::Done,
                }),
                Ok(Err(e)) => warn!(error = %e, "cannot remove finished message"),
                Err(e) => warn!(error = %e, "cannot remove finished message"),
            }
            Next::Done
        }
        attempt::Settled::Keep {
            status,
            changed,
            next,
        } => {
            if changed {
                if let Err(e) = write_status(ctx, id, status).await {
                    warn!(error = %e, "cannot save delivery status; will retry");
                    return Next::At(now + 60);
                }
            }
            Next::At(next)
        }
    }
}

/// The trace events of what a pass did to each recipient.
fn record_results(
    msg: &StoredMessage,
    results: &[(usize, attempt::RcptResult)],
    local: &[bool],
    now_us: i64,
) {
    use attempt::RcptResult;
    for (i, r) in results {
        let Some(rcpt) = msg.envelope.recipients.get(*i) else {
            continue;
        };
        let recipient = rcpt.address.clone();
        let local = local.get(*i).copied().unwrap_or(false);
        let queue_id = msg.id;
        trace::emit(match r {
            RcptResult::Delivered { remote, reply, .. } => TraceEvent::Delivered {
                queue_id,
                recipient,
                remote: remote.clone(),
                reply: reply.clone(),
                local,
                // Queue ids are the arrival time in microseconds.
                latency_secs: now_us.saturating_sub(msg.id.0 as i64).max(0) as f64 / 1e6,
            },
            RcptResult::Deferred {
                status,
                reason,
                retry_at,
            } => TraceEvent::Deferred {
                queue_id,
                recipient,
                status: *status,
                reason: reason.clone(),
                retry_at: *retry_at,
                local,
            },
            RcptResult::Failed {
                status,
                reason,
                expired,
            } => TraceEvent::Failed {
                queue_id,
                recipient,
                status: *status,
                reason: reason.clone(),
                expired: *expired,
                local,
            },
        });
    }
}

#[cfg(test)]
mod dsn_body_type_tests {
    use super::attempt::dsn_rcpt;
    use super::*;

    #[test]
    fn an_ascii_dsn_is_queued_as_7bit() {
        assert_eq!(
            dsn_body_type(b"From: x\r\n\r\nplain\r\n"),
            BodyType::SevenBit
        );
        assert_eq!(
            dsn_body_type("Subject: caf\u{e9}\r\n".as_bytes()),
            BodyType::EightBitMime
        );
    }

    #[test]
    fn a_loop_report_returns_headers_only() {
        let rcpt = |status: &str| {
            dsn_rcpt(
                &Recipient {
                    address: "postmaster@example.org".into(),
                    orcpt: None,
                    notify: Notify::default(),
                },
                DsnAction::Failed,
                EnhancedCode::parse(status),
                None,
                None,
                None,
            )
        };
        let looped = [rcpt("5.1.1"), rcpt("5.4.6")];
        assert_eq!(returned(Some(Ret::Full), &looped), Some(Ret::Hdrs));
        assert_eq!(returned(None, &looped), Some(Ret::Hdrs));
        assert_eq!(returned(Some(Ret::Full), &looped[..1]), Some(Ret::Full));
        assert_eq!(returned(None, &looped[..1]), None);
    }

    #[test]
    fn a_built_dsn_about_an_ascii_message_is_7bit() {
        let r = dsn_rcpt(
            &Recipient {
                address: "bob@example.net".into(),
                orcpt: None,
                notify: Notify::default(),
            },
            DsnAction::Failed,
            EnhancedCode::parse("5.1.1"),
            None,
            Some("550 no such user".into()),
            Some(1_700_000_000),
        );
        let input = dsn::DsnInput {
            reporting_mta: "mx.example.org",
            queue_id: "0000000000001",
            arrival: 1_700_000_000,
            envid: None,
            original_sender: "alice@example.org",
            recipients: &[r],
            original: b"Subject: hi\r\n\r\nhello\r\n",
            ret: None,
            now: 1_700_000_100,
            message_id: "<1@mx.example.org>",
            max_original_bytes: 10 * 1024 * 1024,
        };
        assert_eq!(dsn_body_type(&dsn::build_dsn(&input)), BodyType::SevenBit);
    }
}
