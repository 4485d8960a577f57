//! Start-up recovery, the committer thread (group commit of renames and
//! directory fsyncs), status file replacement and free-space checks.
//! Touches only the spool directory. Files read here are untrusted: each is
//! verified with the codec and quarantined in `corrupt/` on failure.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use super::codec;
use super::id::{QueueId, ID_LEN};
use super::{lock_index, Inner, MessageStatus, Queue, Recovery};

/// Most renames the committer does before one directory fsync.
const MAX_BATCH: usize = 4096;
/// Longest the committer waits for messages still being written before it
/// fsyncs the directory for those it has.
const GATHER_MAX: std::time::Duration = std::time::Duration::from_micros(400);
const GATHER_STEP: std::time::Duration = std::time::Duration::from_micros(100);

/// Creates a new private file; fails if the name exists.
pub(crate) fn create_new_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Files of delivered messages kept for reuse, at most.
pub(crate) const POOL_MAX: usize = 4096;
/// Larger files are unlinked rather than kept: the pool holds at most
/// `POOL_MAX` x this many bytes until its files are reused.
const POOL_FILE_MAX: u64 = 64 * 1024;

/// Files of delivered messages, kept in `free/` to be written again: a new
/// message reuses an inode instead of allocating one, and a delivered one
/// frees none. On ext4 without a journal every inode freed in the last
/// minute is skipped by the allocator at a high CPU cost, so
/// unlink-and-create at thousands of messages per second costs more than
/// the writes themselves. Files in `free/` are never read.
///
/// The link count alone cannot prove that a pooled name is the file's only
/// name: `rename` does not change it, and after a crash on ext4 without a
/// journal (and without fsck) a stale `free/` or `tmp/` name can share its
/// inode with a `queue/` entry while the on-disk count still says 1. So
/// reuse and removal are decided by [`name_fate`] on the inode number: a
/// name whose inode is also that of a queued message (or of any other name
/// in the spool) is never truncated and never unlinked (unlinking it would
/// free the queued message's inode); it is moved to `corrupt/`, which keeps
/// every link the file system counts, and logged for the operator to run
/// `e2fsck`.
#[derive(Default)]
pub(crate) struct Pool {
    names: Vec<std::path::PathBuf>,
    next: u64,
    /// Inode of every queued message file (kept from open and commit to
    /// removal).
    queued: HashMap<QueueId, u64>,
    /// How many queued messages use each inode (one, on a sound file system).
    queued_inodes: HashMap<u64, usize>,
    /// Inodes found with more than one name at start-up: never pooled.
    pinned: HashSet<u64>,
}

impl Pool {
    fn shared(&self, ino: u64) -> bool {
        self.queued_inodes.contains_key(&ino) || self.pinned.contains(&ino)
    }
}

/// What may be done with a name in `free/` or `tmp/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NameFate {
    /// The file's only name: it may be reused (`free/`) or unlinked (`tmp/`).
    Reuse,
    /// Linked elsewhere too, outside what the queue knows (the link count
    /// says so): only this name is unlinked, which frees nothing.
    Unlink,
    /// Its inode is also a queued message's (or another spool name's):
    /// never truncated, never unlinked; moved to `corrupt/`.
    SetAside,
}

/// Decides a name's fate from its inode number, its link count and whether
/// that inode is known to carry another name in the spool. The inode test
/// comes first: after a crash without fsck the link count may be 1 while
/// two names share the inode.
pub(crate) fn name_fate(ino: u64, nlink: u64, shared: impl Fn(u64) -> bool) -> NameFate {
    if shared(ino) {
        NameFate::SetAside
    } else if nlink == 1 {
        NameFate::Reuse
    } else {
        NameFate::Unlink
    }
}

/// Inode number and link count of a plain file (not following symlinks).
fn file_ino(path: &Path) -> io::Result<Option<(u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::symlink_metadata(path)?;
    Ok(m.is_file().then(|| (m.ino(), m.nlink())))
}

impl Pool {
    /// Puts a name into the pool as it is (tests only).
    #[cfg(test)]
    pub(crate) fn plant(q: &Queue, name: PathBuf) {
        q.inner
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .names
            .push(name);
    }

    /// Notes the inode of a message file that is about to enter `queue/`.
    pub(crate) fn note_queued(q: &Queue, id: QueueId, ino: u64) {
        let mut p = q.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = p.queued.insert(id, ino) {
            p.forget_inode(old);
        }
        *p.queued_inodes.entry(ino).or_insert(0) += 1;
    }

    /// Forgets the inode of a message that is leaving `queue/`.
    pub(crate) fn forget_queued(q: &Queue, id: QueueId) {
        let mut p = q.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ino) = p.queued.remove(&id) {
            p.forget_inode(ino);
        }
    }

    fn forget_inode(&mut self, ino: u64) {
        if let Some(n) = self.queued_inodes.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                self.queued_inodes.remove(&ino);
            }
        }
    }

    /// Moves `from` (a delivered message's file, already forgotten with
    /// [`forget_queued`](Pool::forget_queued)) into `free/`; false when it
    /// is not kept (pool full, or a large file): the caller unlinks it.
    pub(crate) fn put(q: &Queue, from: &Path) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        let m = fs::symlink_metadata(from)?;
        if m.len() > POOL_FILE_MAX {
            return Ok(false);
        }
        let dst = {
            let mut p = q.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
            if p.shared(m.ino()) {
                drop(p);
                // Another name still points at this inode: unlinking would
                // free it under that name, and pooling would truncate it.
                set_aside(q.inner.dir.as_path(), from, "delivered");
                return Ok(true);
            }
            if p.names.len() >= POOL_MAX {
                return Ok(false);
            }
            p.next += 1;
            q.inner.dir.join("free").join(p.next.to_string())
        };
        fs::rename(from, &dst)?;
        q.inner
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .names
            .push(dst);
        Ok(true)
    }

    /// A private, empty file at `path` (which must not exist): a pooled
    /// one renamed there and truncated, or a new one.
    pub(crate) fn take(q: &Queue, path: &Path) -> io::Result<File> {
        loop {
            let pooled = {
                let mut p = q.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
                p.names.pop().map(|free| {
                    let fate = match file_ino(&free) {
                        Ok(Some((ino, nlink))) => name_fate(ino, nlink, |i| p.shared(i)),
                        // Gone, or not a plain file: only the name goes.
                        _ => NameFate::Unlink,
                    };
                    (free, fate)
                })
            };
            let Some((free, fate)) = pooled else {
                return create_new_file(path);
            };
            match fate {
                NameFate::Reuse => {}
                NameFate::Unlink => {
                    let _ = fs::remove_file(&free);
                    continue;
                }
                NameFate::SetAside => {
                    set_aside(q.inner.dir.as_path(), &free, "free");
                    continue;
                }
            }
            if rename_noreplace(&free, path).is_err() {
                return create_new_file(path);
            }
            match OpenOptions::new().write(true).truncate(true).open(path) {
                Ok(f) => return Ok(f),
                Err(_) => {
                    let _ = fs::remove_file(path);
                    return create_new_file(path);
                }
            }
        }
    }
}

/// Moves a name whose inode another spool name shares into `corrupt/` as
/// `<prefix>-<name>` (a rename keeps the link count the file system has;
/// an unlink could free the inode under the other name).
fn set_aside(spool: &Path, from: &Path, prefix: &str) {
    let Some(name) = from.file_name() else {
        return;
    };
    let mut base = std::ffi::OsString::from(format!("{prefix}-"));
    base.push(name);
    let corrupt = spool.join("corrupt");
    let mut to = corrupt.join(&base);
    let mut n = 1;
    while to.symlink_metadata().is_ok() {
        let mut alt = base.clone();
        alt.push(format!(".{n}"));
        to = corrupt.join(alt);
        n += 1;
    }
    match fs::rename(from, &to) {
        Ok(()) => tracing::error!(
            file = %from.display(),
            moved_to = %to.display(),
            "file shares its inode with another name in the spool (a crash on a file system without a journal); kept in corrupt/, never reused or unlinked; run e2fsck on the spool file system"
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::error!(
            file = %from.display(),
            error = %e,
            "file shares its inode with another name in the spool and cannot be moved to corrupt/; left in place"
        ),
    }
}

/// `rename` that fails if `to` exists (renameat2 with RENAME_NOREPLACE),
/// as `create_new` would.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: both are valid NUL-terminated paths that live across the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Files already in `free/` at start-up, for the pool. `shared` holds
/// the inodes that carry more than one name in the spool: such names are
/// set aside (see [`Pool`]). Other names that are not a plain file with one
/// link, and those beyond the pool's size, are removed; one that cannot be
/// is logged and left alone.
fn load_pool(spool: &Path, free_dir: &Path, shared: &HashSet<u64>) -> io::Result<Pool> {
    let mut pool = Pool::default();
    for entry in fs::read_dir(free_dir)? {
        let entry = entry?;
        let path = entry.path();
        let n = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            pool.next = pool.next.max(n);
        }
        let fate = match file_ino(&path) {
            Ok(Some((ino, nlink))) => name_fate(ino, nlink, |i| shared.contains(&i)),
            _ => NameFate::Unlink,
        };
        match (fate, n) {
            (NameFate::SetAside, _) => set_aside(spool, &path, "free"),
            (NameFate::Reuse, Some(_)) if pool.names.len() < POOL_MAX => pool.names.push(path),
            _ => {
                if let Err(e) = remove_quietly(&path) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove from free/");
                }
            }
        }
    }
    pool.pinned = shared.clone();
    Ok(pool)
}

/// Inode numbers that carry more than one name across `dirs` (names that
/// are not plain files are not counted).
fn shared_inodes(dirs: &[&Path]) -> io::Result<HashSet<u64>> {
    let mut count: HashMap<u64, u32> = HashMap::new();
    for dir in dirs {
        for entry in fs::read_dir(dir)? {
            if let Ok(Some((ino, _))) = file_ino(&entry?.path()) {
                *count.entry(ino).or_insert(0) += 1;
            }
        }
    }
    Ok(count
        .into_iter()
        .filter(|&(_, n)| n > 1)
        .map(|(ino, _)| ino)
        .collect())
}

/// Removes a file, treating "already gone" as success.
pub(crate) fn remove_quietly(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// Where the committer announces newly durable messages (the delivery
/// manager's wake-up), once someone subscribed.
pub(crate) type Notify = Arc<Mutex<Option<tokio::sync::mpsc::UnboundedSender<QueueId>>>>;

/// One fsynced temporary file waiting to be renamed into `queue/`.
pub(crate) struct Job {
    pub tmp: PathBuf,
    pub dst: PathBuf,
    /// For a new message: its id, added to the index once durable (and the
    /// destination unlinked again if the directory fsync fails).
    pub new_message: Option<QueueId>,
    /// Called with the outcome once the rename and the directory fsync are
    /// done (or failed).
    pub done: Box<dyn FnOnce(io::Result<()>) + Send>,
}

/// The committer loop: wait for a job, take every other job already
/// waiting, rename them all, fsync `queue/` once, report to each.
/// Exits when every sender (every `Queue` clone) is gone.
fn committer(
    rx: mpsc::Receiver<Job>,
    queue_dir: File,
    index: Arc<Mutex<BTreeSet<QueueId>>>,
    dir_syncs: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
    notify: Notify,
) {
    let mut batch: Vec<Job> = Vec::new();
    while let Ok(first) = rx.recv() {
        batch.push(first);
        // Take what is waiting; while other messages are still being
        // written (and will want the same fsync soon), wait for them a
        // little: one directory fsync then serves them all. A lone message
        // never waits.
        let deadline = Instant::now() + GATHER_MAX;
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => {
                    let now = Instant::now();
                    if in_flight.load(Ordering::Acquire) == 0 || now >= deadline {
                        break;
                    }
                    match rx.recv_timeout(GATHER_STEP.min(deadline - now)) {
                        Ok(j) => batch.push(j),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            }
        }
        let mut renamed = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            match fs::rename(&job.tmp, &job.dst) {
                Ok(()) => renamed.push(job),
                Err(e) => {
                    tracing::error!(error = %e, tmp = %job.tmp.display(), "rename into queue/ failed");
                    if let Err(e2) = remove_quietly(&job.tmp) {
                        tracing::warn!(error = %e2, tmp = %job.tmp.display(), "cannot remove temporary file");
                    }
                    (job.done)(Err(e));
                }
            }
        }
        if renamed.is_empty() {
            continue;
        }
        let synced = queue_dir.sync_all();
        dir_syncs.fetch_add(1, Ordering::Relaxed);
        match synced {
            Ok(()) => {
                {
                    let mut idx = lock_index(&index);
                    for job in &renamed {
                        if let Some(id) = job.new_message {
                            idx.insert(id);
                        }
                    }
                }
                {
                    let tx = notify.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(tx) = tx.as_ref() {
                        for id in renamed.iter().filter_map(|j| j.new_message) {
                            let _ = tx.send(id);
                        }
                    }
                }
                for job in renamed {
                    (job.done)(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, count = renamed.len(), "fsync of queue/ failed");
                for job in renamed {
                    // A new message that was not acknowledged must not stay:
                    // the client will be told to retry. A replaced status
                    // file cannot be un-replaced; it is left as it is.
                    if job.new_message.is_some() {
                        if let Err(e2) = remove_quietly(&job.dst) {
                            tracing::error!(error = %e2, file = %job.dst.display(), "cannot remove unacknowledged message");
                        }
                    }
                    (job.done)(Err(copy_error(&e)));
                }
            }
        }
    }
}

/// Writes a status file to `tmp/`, fsyncs it and has the committer rename
/// it over `queue/<ID>.st`. Blocks until the directory fsync is done.
pub(crate) fn write_status(q: &Queue, id: QueueId, st: &MessageStatus) -> io::Result<()> {
    let bytes = codec::encode_status(st);
    let seq = q.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
    let tmp = q.tmp_dir().join(format!("{id}.st.{seq}"));
    let written = create_new_file(&tmp).and_then(|mut f| {
        f.write_all(&bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        if let Err(e2) = remove_quietly(&tmp) {
            tracing::warn!(error = %e2, tmp = %tmp.display(), "cannot remove temporary status file");
        }
        return Err(e);
    }
    let (tx, rx) = mpsc::channel();
    let job = Job {
        tmp: tmp.clone(),
        dst: q.queue_dir().join(format!("{id}.st")),
        new_message: None,
        done: Box::new(move |r| {
            let _ = tx.send(r);
        }),
    };
    if let Err(e) = q.submit(job) {
        let _ = remove_quietly(&tmp);
        return Err(e);
    }
    rx.recv()
        .unwrap_or_else(|_| Err(io::Error::other("queue committer thread has stopped")))
}

/// Bytes available to unprivileged users on the file system holding `dir`.
#[allow(clippy::unnecessary_cast)]
pub(crate) fn free_bytes(dir: &Path) -> io::Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs is plain old data, valid when zeroed; the path is a
    // NUL-terminated string that outlives the call.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

fn make_dir(path: &Path) -> io::Result<()> {
    match DirBuilder::new().recursive(true).mode(0o700).create(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", path.display()),
        )),
    }
}

fn take_lock(dir: &Path) -> io::Result<File> {
    let path = dir.join("lock");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("spool {} is in use by another process", dir.display()),
            ));
        }
        return Err(e);
    }
    Ok(f)
}

/// Removes every file in `tmp/`; returns how many, and the largest id seen
/// in their names. A name whose inode is in `shared` (also a queued
/// message's, after a crash without fsck) is set aside instead: unlinking it
/// would free the inode of an acknowledged message.
fn clean_tmp(spool: &Path, tmp: &Path, shared: &HashSet<u64>) -> io::Result<(usize, u64)> {
    let mut removed = 0;
    let mut max_id = 0;
    for entry in fs::read_dir(tmp)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            tracing::warn!(path = %path.display(), "unexpected directory in tmp/; leaving it");
            continue;
        }
        if let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.get(..ID_LEN))
            .and_then(QueueId::from_file_name)
        {
            max_id = max_id.max(id.0);
        }
        let fate = match file_ino(&path) {
            Ok(Some((ino, nlink))) => name_fate(ino, nlink, |i| shared.contains(&i)),
            _ => NameFate::Unlink,
        };
        if fate == NameFate::SetAside {
            set_aside(spool, &path, "tmp");
        } else {
            remove_quietly(&path)?;
        }
        removed += 1;
    }
    Ok((removed, max_id))
}

/// Moves `queue/<name>` to `corrupt/`, choosing a free name there.
pub(crate) fn quarantine(queue_dir: &Path, corrupt_dir: &Path, name: &OsStr, why: &str) {
    let from = queue_dir.join(name);
    let mut to = corrupt_dir.join(name);
    let mut n = 1;
    while to.symlink_metadata().is_ok() {
        let mut alt = name.to_os_string();
        alt.push(format!(".{n}"));
        to = corrupt_dir.join(alt);
        n += 1;
    }
    match fs::rename(&from, &to) {
        Ok(()) => {
            tracing::error!(file = %from.display(), moved_to = %to.display(), reason = why, "corrupt queue file quarantined")
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::error!(file = %from.display(), reason = why, error = %e, "corrupt queue file could not be moved to corrupt/")
        }
    }
}

enum Verdict {
    Good,
    /// The message is sound, its status file is not: the message stays
    /// with every recipient pending (duplicates, never loss), the status
    /// file goes to `corrupt/`.
    BadStatus(String),
    Vanished,
    Corrupt(String),
}

/// Reads `path` fully into `buf`; `None` if the file does not exist.
fn read_into(path: &Path, buf: &mut Vec<u8>) -> io::Result<Option<()>> {
    buf.clear();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(buf)?;
            Ok(Some(()))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Verifies one message and its status file, if any.
fn verify(queue_dir: &Path, id: QueueId, has_status: bool, buf: &mut Vec<u8>) -> Verdict {
    let name = id.to_string();
    match read_into(&queue_dir.join(&name), buf) {
        Ok(Some(())) => {}
        Ok(None) => return Verdict::Vanished,
        Err(e) => return Verdict::Corrupt(format!("unreadable: {e}")),
    }
    let d = match codec::decode_message_bytes(buf, false) {
        Ok(d) => d,
        Err(why) => return Verdict::Corrupt(why),
    };
    if d.id != id {
        return Verdict::Corrupt(format!("file holds message {} under the name {name}", d.id));
    }
    if has_status {
        match read_into(&queue_dir.join(format!("{name}.st")), buf) {
            Ok(Some(())) => match codec::decode_status_bytes(buf) {
                Ok(st) if st.rcpts.len() == d.envelope.recipients.len() => {}
                Ok(st) => {
                    return Verdict::BadStatus(format!(
                        "status file has {} recipients, envelope has {}",
                        st.rcpts.len(),
                        d.envelope.recipients.len()
                    ))
                }
                Err(why) => return Verdict::BadStatus(format!("status file: {why}")),
            },
            Ok(None) => {}
            Err(e) => return Verdict::BadStatus(format!("status file unreadable: {e}")),
        }
    }
    Verdict::Good
}

/// Verifies every message, on a few threads (reads are I/O bound on a cold
/// cache and CRC bound on a warm one).
fn verify_all(
    queue_dir: &Path,
    ids: &[QueueId],
    with_status: &HashSet<QueueId>,
) -> Vec<(QueueId, Verdict)> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    if ids.len() < 64 || threads == 1 {
        let mut buf = Vec::new();
        return ids
            .iter()
            .map(|&id| {
                (
                    id,
                    verify(queue_dir, id, with_status.contains(&id), &mut buf),
                )
            })
            .collect();
    }
    let per = ids.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .chunks(per)
            .map(|part| {
                s.spawn(move || {
                    let mut buf = Vec::with_capacity(8192);
                    part.iter()
                        .map(|&id| {
                            (
                                id,
                                verify(queue_dir, id, with_status.contains(&id), &mut buf),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut out = Vec::with_capacity(ids.len());
        for (h, part) in handles.into_iter().zip(ids.chunks(per)) {
            match h.join() {
                Ok(v) => out.extend(v),
                // A verifier thread cannot panic on bad input; should it
                // anyway, its messages are kept for the operator to see.
                Err(_) => out.extend(
                    part.iter()
                        .map(|&id| (id, Verdict::Corrupt("verifier thread failed".into()))),
                ),
            }
        }
        out
    })
}

pub(crate) fn open(dir: &Path, reserve_bytes: u64) -> io::Result<(Queue, Recovery)> {
    let started = Instant::now();
    let tmp_dir = dir.join("tmp");
    let queue_dir = dir.join("queue");
    let corrupt_dir = dir.join("corrupt");
    let free_dir = dir.join("free");
    for d in [dir, &tmp_dir, &queue_dir, &corrupt_dir, &free_dir] {
        make_dir(d)?;
    }
    let lock = take_lock(dir)?;
    // Inodes with two names in the spool: only a crash on a file system
    // whose link counts cannot be trusted leaves them (see `Pool`).
    let shared = shared_inodes(&[&queue_dir, &tmp_dir, &free_dir, &corrupt_dir])?;
    let mut pool = load_pool(dir, &free_dir, &shared)?;
    let (tmp_removed, mut max_id) = clean_tmp(dir, &tmp_dir, &shared)?;

    let mut messages = Vec::new();
    let mut statuses = HashSet::new();
    let mut strays = Vec::new();
    for entry in fs::read_dir(&queue_dir)? {
        let entry = entry?;
        let os_name = entry.file_name();
        let Some(name) = os_name.to_str() else {
            strays.push(os_name);
            continue;
        };
        if let Some(id) = QueueId::from_file_name(name) {
            messages.push(id);
            max_id = max_id.max(id.0);
        } else if let Some(id) = name.strip_suffix(".st").and_then(QueueId::from_file_name) {
            statuses.insert(id);
            max_id = max_id.max(id.0);
        } else {
            strays.push(os_name.clone());
        }
    }
    messages.sort_unstable();

    let mut corrupt = 0;
    for name in &strays {
        quarantine(
            &queue_dir,
            &corrupt_dir,
            name,
            "unexpected file name in queue/",
        );
        corrupt += 1;
    }

    let mut index = BTreeSet::new();
    for (id, verdict) in verify_all(&queue_dir, &messages, &statuses) {
        match verdict {
            Verdict::Good => {
                index.insert(id);
                if let Ok(Some((ino, _))) = file_ino(&queue_dir.join(id.to_string())) {
                    pool.queued.insert(id, ino);
                    *pool.queued_inodes.entry(ino).or_insert(0) += 1;
                }
            }
            Verdict::BadStatus(why) => {
                quarantine(
                    &queue_dir,
                    &corrupt_dir,
                    OsStr::new(&format!("{id}.st")),
                    &format!("{why}; message kept with every recipient pending"),
                );
                statuses.remove(&id);
                index.insert(id);
                if let Ok(Some((ino, _))) = file_ino(&queue_dir.join(id.to_string())) {
                    pool.queued.insert(id, ino);
                    *pool.queued_inodes.entry(ino).or_insert(0) += 1;
                }
            }
            Verdict::Vanished => {}
            Verdict::Corrupt(why) => {
                quarantine(&queue_dir, &corrupt_dir, OsStr::new(&id.to_string()), &why);
                if statuses.contains(&id) {
                    quarantine(
                        &queue_dir,
                        &corrupt_dir,
                        OsStr::new(&format!("{id}.st")),
                        "status of a corrupt message",
                    );
                }
                corrupt += 1;
            }
        }
    }
    // A status file without its message is what a crash inside remove()
    // leaves behind: the message was delivered and removed.
    for id in statuses
        .iter()
        .filter(|id| messages.binary_search(id).is_err())
    {
        let path = queue_dir.join(format!("{id}.st"));
        match remove_quietly(&path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "removed status file of a message no longer queued")
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot remove orphan status file")
            }
        }
    }

    let dir_file = File::open(&queue_dir)?;
    // Quarantines and removals above change queue/; make them durable
    // before new work starts (not needed for safety, but keeps the disk
    // state in step with what was logged).
    dir_file.sync_all()?;

    let index = Arc::new(Mutex::new(index));
    let dir_syncs = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let notify: Notify = Arc::new(Mutex::new(None));
    let (tx, rx) = mpsc::channel();
    {
        let index = Arc::clone(&index);
        let dir_syncs = Arc::clone(&dir_syncs);
        let in_flight = Arc::clone(&in_flight);
        let notify = Arc::clone(&notify);
        std::thread::Builder::new()
            .name("queue-commit".into())
            .spawn(move || committer(rx, dir_file, index, dir_syncs, in_flight, notify))?;
    }
    let loaded = lock_index(&index).len();
    let q = Queue {
        inner: Arc::new(Inner {
            dir: dir.to_path_buf(),
            tmp_dir,
            queue_dir,
            reserve_bytes,
            space_ok: AtomicBool::new(true),
            last_id: AtomicU64::new(max_id),
            tmp_seq: AtomicU64::new(0),
            index,
            jobs: Mutex::new(tx),
            dir_syncs,
            in_flight,
            notify,
            recent: Mutex::new(super::Recent::default()),
            keep_recent: AtomicBool::new(true),
            pool: Mutex::new(pool),
            _lock: lock,
        }),
    };
    q.refresh_space();
    let recovery = Recovery {
        loaded,
        corrupt,
        tmp_removed,
        elapsed: started.elapsed(),
    };
    tracing::debug!(
        loaded = recovery.loaded,
        corrupt = recovery.corrupt,
        tmp_removed = recovery.tmp_removed,
        elapsed_ms = recovery.elapsed.as_millis() as u64,
        "queue opened"
    );
    Ok((q, recovery))
}
