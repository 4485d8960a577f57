//! The mail queue. OWNS ALL ON-DISK STATE of the daemon: everything under the
//! spool directory is created, written, renamed and removed only here.
//!
//! # What it promises
//! Nothing is acknowledged before it is durable. [`Queue::commit`] returns
//! `Ok` only once the message file (envelope + body) has been written to
//! `tmp/`, fsynced, renamed into `queue/` and the `queue/` directory itself
//! fsynced. Directory fsyncs are shared between concurrent commits (group
//! commit, see [`commit`](Queue::commit)); file fsyncs run in parallel on
//! tokio's blocking pool.
//!
//! # Layout of the spool directory
//! - `lock`: held with `flock(LOCK_EX)` by the one daemon using the spool.
//! - `tmp/`: files being written; emptied at start-up.
//! - `queue/<ID>`: one message, written once, never modified.
//! - `queue/<ID>.st`: per-recipient delivery status, replaced atomically.
//! - `corrupt/`: files that failed verification; kept for the operator.
//! - `free/`: files of delivered messages, reused (truncated) for new
//!   ones (see `store::Pool`); never read.
//!
//! The byte formats are in `codec.rs` and documented in `docs/queue.md`.
//!
//! # Trust
//! Nothing read from disk is trusted: every file is checked (magic, version,
//! CRC32, record grammar, id against file name) before use, and a file that
//! fails is moved to `corrupt/` with an error log line, never deleted and
//! never a panic. The envelope written here was validated by the SMTP parser.
//!
//! The queue never calls the delivery code; delivery reads messages with
//! [`read_message`], records progress with [`Queue::update_status`] and
//! removes finished messages with [`Queue::remove`].

mod codec;
mod id;
mod read;
mod store;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use codec::{encode_message, encode_status, Extras};
pub use id::{ParseQueueIdError, QueueId};
pub use read::{list, read_message, Summary, SummaryRcpt};
pub use writer::MessageWriter;

use crate::proto::reply::EnhancedCode;
use crate::proto::Envelope;

/// Body bytes kept in memory before the writer spills to `tmp/<ID>`.
pub const MEMORY_LIMIT: usize = 256 * 1024;

// ------------------------------------------------------------------ errors

/// Why a message could not be queued. The server answers `451 4.3.0` for
/// `Io` and `452 4.3.1` for `NoSpace`.
#[derive(Debug)]
pub enum QueueError {
    Io(io::Error),
    /// The spool file system is full (ENOSPC) or over quota (EDQUOT).
    NoSpace,
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueError::Io(e) => write!(f, "queue I/O error: {e}"),
            QueueError::NoSpace => f.write_str("no space left on the spool file system"),
        }
    }
}

impl std::error::Error for QueueError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            QueueError::Io(e) => Some(e),
            QueueError::NoSpace => None,
        }
    }
}

impl From<io::Error> for QueueError {
    fn from(e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => QueueError::NoSpace,
            _ => QueueError::Io(e),
        }
    }
}

/// Why a stored message could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// No such message (it may have just been delivered and removed).
    NotFound,
    /// The file exists but failed verification; the text says how.
    Corrupt(String),
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::NotFound => f.write_str("no such message"),
            ReadError::Corrupt(why) => write!(f, "corrupt queue file: {why}"),
            ReadError::Io(e) => write!(f, "queue I/O error: {e}"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::NotFound {
            ReadError::NotFound
        } else {
            ReadError::Io(e)
        }
    }
}

// ------------------------------------------------------------ status types

/// Delivery state of one recipient.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RcptState {
    Pending,
    Delivered,
    Failed,
}

/// Delivery progress of one recipient.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RcptStatus {
    pub state: RcptState,
    pub attempts: u32,
    /// Unix time (seconds) of the next attempt; 0 = as soon as possible.
    pub next_attempt: i64,
    /// The last reply or error text seen for this recipient.
    pub last_reply: String,
    /// The status code of the last outcome (RFC 3463), when known.
    pub status: Option<EnhancedCode>,
    /// A DSN about this recipient that is due but not queued yet (it could
    /// not be, the disk being full say): the message stays queued until it
    /// is.
    pub dsn_owed: Option<DsnOwed>,
}

/// The action of a DSN a recipient is owed (RFC 3464 §2.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DsnOwed {
    Failed,
    Delivered,
    Relayed,
    Expanded,
}

impl RcptStatus {
    /// The state of a recipient nobody has tried yet.
    pub fn pending() -> RcptStatus {
        RcptStatus {
            state: RcptState::Pending,
            attempts: 0,
            next_attempt: 0,
            last_reply: String::new(),
            status: None,
            dsn_owed: None,
        }
    }
}

/// Delivery progress of one message: one entry per envelope recipient, in
/// envelope order.
#[derive(Clone, Debug, PartialEq, Eq, Default, serde::Serialize)]
pub struct MessageStatus {
    pub rcpts: Vec<RcptStatus>,
    /// Unix time (seconds) of the next attempt for the message as a whole.
    pub next_attempt: i64,
    /// Put on hold by the administrator: not delivered until released.
    pub hold: bool,
    /// A delay warning (DSN with Action: delayed) has been sent.
    pub delay_warned: bool,
}

impl MessageStatus {
    /// The status of a message without a status file: all recipients pending.
    pub fn all_pending(n: usize) -> MessageStatus {
        MessageStatus {
            rcpts: vec![RcptStatus::pending(); n],
            next_attempt: 0,
            hold: false,
            delay_warned: false,
        }
    }
}

/// A whole message as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: QueueId,
    /// Unix time (seconds) at which the message was received.
    pub arrival: i64,
    pub envelope: Envelope,
    pub status: MessageStatus,
    /// The message as received (our Received: field first).
    pub body: Vec<u8>,
    /// Header fields decisions added at commit (whole field lines, CRLF),
    /// which go in front of `body`: see [`StoredMessage::content`].
    pub edits: Vec<u8>,
    /// The Message-ID found in the header section at receipt.
    pub message_id: Option<String>,
}

impl StoredMessage {
    /// The message as it is delivered and shown: the header edits, then
    /// the message as received.
    pub fn content(&self) -> std::borrow::Cow<'_, [u8]> {
        if self.edits.is_empty() {
            std::borrow::Cow::Borrowed(&self.body)
        } else {
            let mut v = Vec::with_capacity(self.edits.len() + self.body.len());
            v.extend_from_slice(&self.edits);
            v.extend_from_slice(&self.body);
            std::borrow::Cow::Owned(v)
        }
    }

    /// What the queue file records besides the envelope and body.
    pub fn extras(&self) -> Extras {
        Extras {
            edits: self.edits.clone(),
            message_id: self.message_id.clone(),
        }
    }
}

/// What [`Queue::open`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// Messages verified and now in the queue.
    pub loaded: usize,
    /// Messages (or stray files) moved to `corrupt/`.
    pub corrupt: usize,
    /// Leftovers removed from `tmp/`.
    pub tmp_removed: usize,
    pub elapsed: Duration,
}

/// Decodes a message file (as produced by [`encode_message`]), verifying
/// everything. The status is "all recipients pending".
pub fn decode_message(bytes: &[u8]) -> Result<StoredMessage, ReadError> {
    let d = codec::decode_message_bytes(bytes, true).map_err(ReadError::Corrupt)?;
    let status = MessageStatus::all_pending(d.envelope.recipients.len());
    Ok(StoredMessage {
        id: d.id,
        arrival: d.arrival,
        envelope: d.envelope,
        status,
        body: d.body.unwrap_or_default(),
        edits: d.extras.edits,
        message_id: d.extras.message_id,
    })
}

/// Decodes a status file (as produced by [`encode_status`]), verifying it.
pub fn decode_status(bytes: &[u8]) -> Result<MessageStatus, ReadError> {
    codec::decode_status_bytes(bytes).map_err(ReadError::Corrupt)
}

// ------------------------------------------------------------------- queue

/// A handle on the spool. Cheap to clone; all clones share one state and one
/// committer thread, which stops when the last clone is dropped.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    tmp_dir: PathBuf,
    queue_dir: PathBuf,
    reserve_bytes: u64,
    space_ok: AtomicBool,
    /// The last id handed out (or the largest found at open).
    last_id: AtomicU64,
    /// Names temporary status files.
    tmp_seq: AtomicU64,
    /// Ids of the messages in `queue/`. Shared with the committer thread,
    /// which adds a message only once it is durable.
    index: Arc<Mutex<BTreeSet<QueueId>>>,
    jobs: Mutex<mpsc::Sender<store::Job>>,
    /// Directory fsyncs done by the committer (for tests and stats).
    dir_syncs: Arc<AtomicU64>,
    /// Messages between the start of their file write and their hand-over
    /// to the committer; the committer waits briefly for them so that one
    /// directory fsync covers them too.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// Subscriber told of every newly durable message.
    notify: store::Notify,
    /// Messages just committed, kept in memory for their first delivery.
    recent: Mutex<Recent>,
    /// Whether to keep them (off when nothing delivers).
    keep_recent: AtomicBool,
    /// Emptied files of delivered messages, to be reused (`free/`).
    pool: Mutex<store::Pool>,
    /// Keeps the spool's `flock` for the life of the queue.
    _lock: File,
}

/// Bytes of message bodies kept in [`Recent`].
const RECENT_BYTES: usize = 32 * 1024 * 1024;

/// The messages committed last, as they were written, so that their first
/// delivery attempt need not read them back from disk. Bounded by
/// [`RECENT_BYTES`]; the oldest are forgotten first. An entry is taken
/// (removed) by the first [`Queue::take_recent`].
#[derive(Default)]
pub(crate) struct Recent {
    order: std::collections::VecDeque<QueueId>,
    messages: std::collections::HashMap<QueueId, StoredMessage>,
    bytes: usize,
}

impl Recent {
    fn insert(&mut self, m: StoredMessage) {
        if m.body.len() > RECENT_BYTES / 8 {
            return;
        }
        self.bytes += m.body.len();
        self.order.push_back(m.id);
        if let Some(old) = self.messages.insert(m.id, m) {
            self.bytes -= old.body.len();
        }
        while self.bytes > RECENT_BYTES || self.order.len() > 100_000 {
            let Some(id) = self.order.pop_front() else {
                break;
            };
            self.take(id);
        }
        if self.messages.is_empty() {
            self.order.clear();
        }
    }

    fn take(&mut self, id: QueueId) -> Option<StoredMessage> {
        let m = self.messages.remove(&id)?;
        self.bytes -= m.body.len();
        Some(m)
    }
}

fn lock_index(m: &Mutex<BTreeSet<QueueId>>) -> std::sync::MutexGuard<'_, BTreeSet<QueueId>> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Queue {
    /// Opens (creating if needed) the spool at `dir`: takes the spool lock,
    /// empties `tmp/`, verifies every message in `queue/` (CRC included) and
    /// moves whatever fails to `corrupt/`, then starts the committer thread.
    /// A plain blocking function: call it before or outside the runtime.
    ///
    /// Fails if another process holds the spool (`ErrorKind::WouldBlock`).
    pub fn open(dir: &Path, reserve_bytes: u64) -> io::Result<(Queue, Recovery)> {
        store::open(dir, reserve_bytes)
    }

    /// A new id, unique across restarts: the current Unix time in
    /// microseconds, bumped if needed to stay above every id issued or found.
    pub fn new_id(&self) -> QueueId {
        let now = now_micros();
        let mut last = self.inner.last_id.load(Ordering::Relaxed);
        loop {
            let next = now.max(last.saturating_add(1));
            match self.inner.last_id.compare_exchange_weak(
                last,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return QueueId(next),
                Err(seen) => last = seen,
            }
        }
    }

    /// A writer for one message. Does no I/O until the body grows past
    /// [`MEMORY_LIMIT`] or the message is committed.
    pub fn writer(&self, id: QueueId, arrival_unix: i64, env: Envelope) -> MessageWriter {
        MessageWriter::new(self.clone(), id, arrival_unix, env)
    }

    /// False when free space on the spool file system is below the reserve
    /// (as of the last [`refresh_space`](Queue::refresh_space)).
    pub fn space_ok(&self) -> bool {
        self.inner.space_ok.load(Ordering::Relaxed)
    }

    /// Re-reads the free space of the spool file system (`statvfs`,
    /// `f_bavail * f_frsize`). On failure the previous answer stands.
    pub fn refresh_space(&self) {
        match store::free_bytes(&self.inner.dir) {
            Ok(free) => {
                let ok = free >= self.inner.reserve_bytes;
                let was = self.inner.space_ok.swap(ok, Ordering::Relaxed);
                if was && !ok {
                    tracing::warn!(
                        free,
                        reserve = self.inner.reserve_bytes,
                        "spool below its free-space reserve; refusing new mail"
                    );
                } else if !was && ok {
                    tracing::info!(
                        free,
                        reserve = self.inner.reserve_bytes,
                        "spool free space back above the reserve"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.inner.dir.display(), "statvfs on the spool failed")
            }
        }
    }

    /// Makes the message durable and returns its id. When this returns `Ok`
    /// the file has been fsynced, renamed into `queue/`, and `queue/` has
    /// been fsynced; only then may the server answer 250. On error no file
    /// of this message is left in `tmp/` or `queue/`.
    ///
    /// Group commit: the file is written and fsynced on the blocking pool,
    /// then handed to the committer thread, which renames every file handed
    /// to it since its last round and fsyncs `queue/` once for all of them.
    ///
    /// If this future is dropped after the hand-over, the message may still
    /// be committed (and will then be delivered): a possible duplicate, never
    /// a loss.
    pub async fn commit(&self, w: MessageWriter) -> Result<QueueId, QueueError> {
        // The writer carries its own handle on the queue that created it.
        w.commit().await
    }

    /// Atomically replaces the status file of `id` (temporary file, fsync,
    /// rename, directory fsync shared with concurrent commits). Blocks:
    /// call it from `spawn_blocking` or a plain thread.
    pub fn update_status(&self, id: QueueId, st: &MessageStatus) -> io::Result<()> {
        if !lock_index(&self.inner.index).contains(&id) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("message {id} is not in the queue"),
            ));
        }
        store::write_status(self, id, st)
    }

    /// Removes a finished message: first its message file, then its status
    /// file (so a crash in between leaves an orphan status file, which the
    /// next start-up removes, never a message without its status). Removing
    /// a message that is already gone is not an error. Blocks.
    pub fn remove(&self, id: QueueId) -> io::Result<()> {
        let msg = self.inner.queue_dir.join(id.to_string());
        let st = self.inner.queue_dir.join(format!("{id}.st"));
        // The message file goes to the pool of reusable files (or away).
        store::Pool::forget_queued(self, id);
        match store::Pool::put(self, &msg) {
            Ok(true) => {}
            Ok(false) => store::remove_quietly(&msg)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        store::remove_quietly(&st)?;
        lock_index(&self.inner.index).remove(&id);
        self.forget_recent(id);
        Ok(())
    }

    /// Moves a message found corrupt while running (and its status file)
    /// to `corrupt/`, as start-up does, and forgets it; logged at error
    /// level. Blocks.
    pub fn quarantine(&self, id: QueueId, why: &str) {
        let corrupt = self.inner.dir.join("corrupt");
        store::Pool::forget_queued(self, id);
        store::quarantine(
            &self.inner.queue_dir,
            &corrupt,
            std::ffi::OsStr::new(&id.to_string()),
            why,
        );
        store::quarantine(
            &self.inner.queue_dir,
            &corrupt,
            std::ffi::OsStr::new(&format!("{id}.st")),
            "status of a corrupt message",
        );
        lock_index(&self.inner.index).remove(&id);
        self.forget_recent(id);
    }

    /// Number of messages in `queue/`.
    pub fn len(&self) -> usize {
        lock_index(&self.inner.index).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Ids of every queued message, in id (= arrival) order.
    pub fn ids(&self) -> Vec<QueueId> {
        lock_index(&self.inner.index).iter().copied().collect()
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    fn tmp_dir(&self) -> &Path {
        &self.inner.tmp_dir
    }

    fn queue_dir(&self) -> &Path {
        &self.inner.queue_dir
    }

    /// Hands a fsynced temporary file to the committer thread.
    fn submit(&self, job: store::Job) -> io::Result<()> {
        let tx = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(job)
            .map_err(|_| io::Error::other("queue committer thread has stopped"))
    }

    /// Every message made durable from now on is announced on the returned
    /// channel (one subscriber: a new call replaces the previous one).
    pub fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<QueueId> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.inner.notify.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// The status file of a message, if it has one (no status file: every
    /// recipient pending, due now, not on hold). Blocking.
    pub fn status(&self, id: QueueId) -> Result<Option<MessageStatus>, ReadError> {
        read::read_status(&self.inner.queue_dir, id)
    }

    /// Reads one message (verified) and its status. Blocking.
    pub fn read(&self, id: QueueId) -> Result<StoredMessage, ReadError> {
        if let Some(m) = self.take_recent(id) {
            return Ok(m);
        }
        match read_message(&self.inner.dir, id) {
            Err(ReadError::Corrupt(why)) => {
                // A damaged status file alone does not lose the message:
                // every recipient is pending again (duplicates, never
                // loss) and only the status file goes to corrupt/.
                let bytes = std::fs::read(self.inner.queue_dir.join(id.to_string()))?;
                let m = decode_message(&bytes)?;
                if m.id != id {
                    return Err(ReadError::Corrupt(why));
                }
                store::quarantine(
                    &self.inner.queue_dir,
                    &self.inner.dir.join("corrupt"),
                    std::ffi::OsStr::new(&format!("{id}.st")),
                    &format!("{why}; message kept with every recipient pending"),
                );
                Ok(m)
            }
            r => r,
        }
    }

    /// The message as committed, if it was committed recently by this
    /// process and not read since (its status is then "all pending": no
    /// attempt has been recorded). Does no I/O.
    pub fn take_recent(&self, id: QueueId) -> Option<StoredMessage> {
        let mut r = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        let m = r.take(id)?;
        // Still in the queue (not removed meanwhile)?
        lock_index(&self.inner.index).contains(&id).then_some(m)
    }

    /// Whether committed messages are kept in memory for their first
    /// delivery attempt (on by default; off when delivery is disabled, so
    /// that nothing holds memory for a reader that never comes).
    pub fn keep_recent(&self, on: bool) {
        self.inner.keep_recent.store(on, Ordering::Relaxed);
        if !on {
            *self.inner.recent.lock().unwrap_or_else(|p| p.into_inner()) = Recent::default();
        }
    }

    fn remember_recent(&self, m: StoredMessage) {
        if !self.inner.keep_recent.load(Ordering::Relaxed) {
            return;
        }
        let mut r = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.insert(m);
    }

    fn forget_recent(&self, id: QueueId) {
        let mut r = self.inner.recent.lock().unwrap_or_else(|p| p.into_inner());
        r.take(id);
    }

    /// Directory fsyncs done by the committer since open (a metric: with
    /// many concurrent commits this grows much slower than the message count).
    pub fn dir_fsyncs(&self) -> u64 {
        self.inner.dir_syncs.load(Ordering::Relaxed)
    }
}
