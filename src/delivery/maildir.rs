//! Writing one message into a Maildir (the format of
//! <https://cr.yp.to/proto/maildir.html>, with Dovecot's `,S=` size).
//!
//! The file gets a name no other delivery can have (time, microseconds,
//! process id, a per-process counter and the host name), is written under
//! `tmp/` with mode 0600, fsynced, renamed into `new/` and `new/` is
//! fsynced: only when [`deliver`] returns `Ok` is the message durable in the
//! mailbox. Concurrent deliveries into one Maildir share their directory
//! fsyncs (group commit: a delivery waits for a directory fsync that began
//! after its rename). Missing Maildirs are created with mode 0700 when
//! allowed. Blocking: run it on the blocking pool.
//!
//! Touches only the Maildir it is given. The message content is untrusted
//! but only copied; the one name taken from mail (a subaddress folder) is
//! used only if [`crate::users::directory::safe_folder`] accepts it and the folder
//! already exists.

use std::collections::HashMap;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a delivery into a Maildir failed.
#[derive(Debug)]
pub enum MaildirError {
    /// The Maildir does not exist and may not be created.
    Missing(PathBuf),
    /// Over quota (EDQUOT).
    Quota(io::Error),
    /// The file system is full (ENOSPC).
    NoSpace(io::Error),
    /// Anything else (permissions, I/O errors, not a directory).
    Io(io::Error),
}

impl std::fmt::Display for MaildirError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaildirError::Missing(p) => write!(f, "mailbox {} does not exist", p.display()),
            MaildirError::Quota(e) => write!(f, "mailbox over quota: {e}"),
            MaildirError::NoSpace(e) => write!(f, "no space left for the mailbox: {e}"),
            MaildirError::Io(e) => write!(f, "cannot write to the mailbox: {e}"),
        }
    }
}

impl From<io::Error> for MaildirError {
    fn from(e: io::Error) -> MaildirError {
        match e.raw_os_error() {
            Some(libc::EDQUOT) => MaildirError::Quota(e),
            Some(libc::ENOSPC) => MaildirError::NoSpace(e),
            _ => MaildirError::Io(e),
        }
    }
}

/// One delivery.
pub struct Delivery<'a> {
    /// The Maildir (holding `tmp/`, `new/`, `cur/`).
    pub maildir: &'a Path,
    /// A Maildir++ folder (`.name` inside the Maildir) to use if it exists.
    pub folder: Option<&'a str>,
    /// Create the Maildir if it is missing.
    pub create: bool,
    /// Our host name, for the unique file name.
    pub hostname: &'a str,
    /// The envelope sender ("" for `<>`), for `Return-Path:`.
    pub sender: &'a str,
    /// The recipient, for `Delivered-To:`.
    pub recipient: &'a str,
    /// The stored message (CRLF line ends).
    pub message: &'a [u8],
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

static DIR_SYNC: DirSync = DirSync::new();

/// Directory fsyncs shared between concurrent callers.
struct DirSync {
    state: Mutex<SyncState>,
    done: Condvar,
}

struct SyncState {
    /// The last ticket handed out, over all directories: tickets only grow,
    /// so an entry made anew for a directory never confuses an old waiter.
    last_ticket: u64,
    rounds: Option<HashMap<PathBuf, Round>>,
}

/// Group-commit rounds of one directory (kept for the life of the
/// process: one small entry per Maildir delivered to).
struct Round {
    /// The last ticket handed out for this directory.
    requested: u64,
    /// Every ticket of this directory up to this one is durable.
    synced: u64,
    /// Tickets up to this one were covered by a fsync that failed (and by
    /// no later one that succeeded).
    failed: u64,
    /// A fsync is in progress.
    running: bool,
}

impl DirSync {
    const fn new() -> DirSync {
        DirSync {
            state: Mutex::new(SyncState {
                last_ticket: 0,
                rounds: None,
            }),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns once `dir` has been fsynced after this call began, or the
    /// error of the fsync that was to cover this call.
    fn sync(&self, dir: &Path) -> io::Result<()> {
        let mut guard = self.lock();
        guard.last_ticket += 1;
        let ticket = guard.last_ticket;
        guard
            .rounds
            .get_or_insert_with(HashMap::new)
            .entry(dir.to_path_buf())
            .or_insert(Round {
                requested: 0,
                synced: 0,
                failed: 0,
                running: false,
            })
            .requested = ticket;
        loop {
            let Some(round) = guard.rounds.as_mut().and_then(|m| m.get_mut(dir)) else {
                return Err(io::Error::other("directory sync state lost"));
            };
            if round.synced >= ticket {
                return Ok(());
            }
            if round.failed >= ticket {
                return Err(io::Error::other(format!(
                    "fsync of {} failed",
                    dir.display()
                )));
            }
            if !round.running {
                round.running = true;
                let target = round.requested;
                drop(guard);
                let result = sync_dir(dir);
                guard = self.lock();
                if let Some(round) = guard.rounds.as_mut().and_then(|m| m.get_mut(dir)) {
                    round.running = false;
                    match &result {
                        Ok(()) => round.synced = round.synced.max(target),
                        Err(_) => round.failed = round.failed.max(target),
                    }
                }
                self.done.notify_all();
                result?;
                continue;
            }
            guard = self.done.wait(guard).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Delivers one message and returns the path of the new file.
pub fn deliver(d: &Delivery<'_>) -> Result<PathBuf, MaildirError> {
    let mut base = d.maildir.to_path_buf();
    if let Some(folder) = d.folder.filter(|f| crate::users::directory::safe_folder(f)) {
        let sub = base.join(format!(".{folder}"));
        if sub.join("new").is_dir() {
            base = sub;
        }
    }
    let content = file_content(d.sender, d.recipient, d.message);
    let tmp_dir = base.join("tmp");
    let new_dir = base.join("new");
    for _ in 0..10 {
        let name = unique_name(d.hostname, content.len());
        let tmp = tmp_dir.join(&name);
        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
        };
        let file = match open() {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            // No tmp/: the Maildir is missing (checked only now, so that a
            // delivery to an existing one costs no extra lookup).
            // Another delivery may be creating the same Maildir right now:
            // creating it again is harmless, and is waited for here.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !d.create || base != d.maildir {
                    if base.join("new").is_dir() {
                        return Err(e.into());
                    }
                    return Err(MaildirError::Missing(d.maildir.to_path_buf()));
                }
                create_maildir(&base)?;
                open()?
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(e) = write_synced(file, &content) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        // The name is unique (time, pid, counter; tmp/ refused an existing
        // one), so a rename cannot replace another message: one system
        // call where link and unlink would be two.
        let dest = new_dir.join(&name);
        if let Err(e) = std::fs::rename(&tmp, &dest) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e.into());
        }
        DIR_SYNC.sync(&new_dir)?;
        return Ok(dest);
    }
    Err(MaildirError::Io(io::Error::other(
        "could not find a free file name in tmp/",
    )))
}

fn write_synced(mut file: File, content: &[u8]) -> io::Result<()> {
    file.write_all(content)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates the Maildir and any missing parents (mode 0700), and makes the
/// new directories durable.
fn create_maildir(base: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut p = base;
    while !p.exists() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => break,
        }
    }
    DirBuilder::new().recursive(true).mode(0o700).create(base)?;
    // tmp/ last: whoever can write into tmp/ can also rename into new/.
    for sub in ["new", "cur", "tmp"] {
        match DirBuilder::new().mode(0o700).create(base.join(sub)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    sync_dir(base)?;
    // Each created directory's entry lives in its parent.
    for dir in missing {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// `secs.MusecPpidQn.host,S=size`; `/` and `:` in the host name escaped
/// as the Maildir specification says.
fn unique_name(hostname: &str, size: usize) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let host = hostname.replace('/', "\\057").replace(':', "\\072");
    format!(
        "{}.M{}P{}Q{}.{},S={}",
        now.as_secs(),
        now.subsec_micros(),
        pid(),
        n,
        host,
        size
    )
}

/// `Return-Path:` and `Delivered-To:`, then the message with Unix line
/// ends, as mail readers of Maildirs expect.
fn file_content(sender: &str, recipient: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + sender.len() + recipient.len() + 40);
    out.extend_from_slice(b"Return-Path: <");
    out.extend_from_slice(sender.as_bytes());
    out.extend_from_slice(b">\nDelivered-To: ");
    out.extend_from_slice(recipient.as_bytes());
    out.push(b'\n');
    let mut rest = message;
    while let Some(i) = memchr::memmem::find(rest, b"\r\n") {
        out.extend_from_slice(&rest[..i]);
        out.push(b'\n');
        rest = &rest[i + 2..];
    }
    out.extend_from_slice(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn delivery<'a>(dir: &'a Path, msg: &'a [u8]) -> Delivery<'a> {
        Delivery {
            maildir: dir,
            folder: None,
            create: true,
            hostname: "mx.example/a:b",
            sender: "bob@remote.test",
            recipient: "alice@example.org",
            message: msg,
        }
    }

    #[test]
    fn creates_writes_and_names() {
        let t = tempfile::tempdir().unwrap();
        let md = t.path().join("example.org/alice/Maildir");
        let msg = b"Subject: hi\r\n\r\nline 1\r\n.dot\r\n";
        let p = deliver(&delivery(&md, msg)).unwrap();
        assert_eq!(p.parent().unwrap(), md.join("new"));
        let got = std::fs::read(&p).unwrap();
        assert_eq!(
            got,
            b"Return-Path: <bob@remote.test>\nDelivered-To: alice@example.org\nSubject: hi\n\nline 1\n.dot\n"
        );
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.ends_with(&format!(",S={}", got.len())), "{name}");
        assert!(name.contains(".mx.example\\057a\\072b,"), "{name}");
        for sub in ["", "tmp", "new", "cur"] {
            let mode = std::fs::metadata(md.join(sub))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{sub}");
        }
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(md.join("tmp")).unwrap().count(), 0);
        let p2 = deliver(&delivery(&md, msg)).unwrap();
        assert_ne!(p, p2);
    }

    #[test]
    fn missing_without_create_and_folders() {
        let t = tempfile::tempdir().unwrap();
        let md = t.path().join("Maildir");
        let mut d = delivery(&md, b"x\r\n");
        d.create = false;
        assert!(matches!(deliver(&d), Err(MaildirError::Missing(_))));
        d.create = true;
        deliver(&d).unwrap();
        // A folder is used only if it exists and its name is plain.
        for f in ["lists", "../../evil"] {
            d.folder = Some(f);
            let p = deliver(&d).unwrap();
            assert_eq!(p.parent().unwrap(), md.join("new"));
        }
        // tmp/ last: whoever can write into tmp/ can also rename into new/.
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(md.join(".lists").join(sub)).unwrap();
        }
        d.folder = Some("lists");
        let p = deliver(&d).unwrap();
        assert_eq!(p.parent().unwrap(), md.join(".lists/new"));
    }

    #[test]
    fn errors_are_classified() {
        assert!(matches!(
            MaildirError::from(io::Error::from_raw_os_error(libc::ENOSPC)),
            MaildirError::NoSpace(_)
        ));
        assert!(matches!(
            MaildirError::from(io::Error::from_raw_os_error(libc::EDQUOT)),
            MaildirError::Quota(_)
        ));
        // A file where the Maildir should be.
        let t = tempfile::tempdir().unwrap();
        let md = t.path().join("Maildir");
        std::fs::write(&md, b"").unwrap();
        assert!(matches!(
            deliver(&delivery(&md, b"x\r\n")),
            Err(MaildirError::Io(_))
        ));
    }

    #[test]
    fn concurrent_deliveries_share_directory_syncs_and_all_return() {
        let t = tempfile::tempdir().unwrap();
        let md = t.path().join("Maildir");
        deliver(&delivery(&md, b"first\r\n")).unwrap();
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let md = md.clone();
                std::thread::spawn(move || {
                    for j in 0..25 {
                        let body = format!("message {i} {j}\r\n");
                        deliver(&delivery(&md, body.as_bytes())).unwrap();
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(
            std::fs::read_dir(md.join("new")).unwrap().count(),
            1 + 16 * 25
        );
        let g = DIR_SYNC.lock();
        let r = &g.rounds.as_ref().unwrap()[&md.join("new")];
        assert!(!r.running && r.synced == r.requested && r.failed == 0);
    }
}
