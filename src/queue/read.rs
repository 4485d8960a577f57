//! Read-only access to a spool, for delivery and for the `pigeon queue`
//! commands. Safe while the daemon runs: a message file is never changed
//! while it is in `queue/` and status files are replaced atomically. A
//! removed message file may be reused for a new message (the `free/`
//! pool), so a reader that opened `queue/<ID>` checks, after reading, that
//! the name still points at the file it read: then the file was in
//! `queue/`, unchanged, the whole time. A file that vanished or was reused
//! mid-read is skipped as gone, never shown with another message's data.
//! Everything read here is untrusted and verified before use.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use super::codec::{self, rec, HeadParse};
use super::id::QueueId;
use super::{decode_message, MessageStatus, RcptStatus, ReadError, StoredMessage};

/// One line of `pigeon queue list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub id: String,
    /// Unix time (seconds) of arrival.
    pub arrival: i64,
    /// Body size in bytes.
    pub size: u64,
    pub sender: String,
    pub recipients: Vec<SummaryRcpt>,
    /// Put on hold by the administrator.
    pub hold: bool,
}

/// One recipient of a [`Summary`], with its delivery status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SummaryRcpt {
    pub address: String,
    #[serde(flatten)]
    pub status: RcptStatus,
}

/// Reads the status file of `id`, if any. `Ok(None)` when there is none.
pub(crate) fn read_status(
    queue_dir: &Path,
    id: QueueId,
) -> Result<Option<MessageStatus>, ReadError> {
    match fs::read(queue_dir.join(format!("{id}.st"))) {
        Ok(b) => codec::decode_status_bytes(&b)
            .map(Some)
            .map_err(|why| ReadError::Corrupt(format!("status file of {id}: {why}"))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ReadError::Io(e)),
    }
}

/// Checks that `path` still names `file` (same inode) after it was read:
/// a message file left `queue/` (and may have been reused) otherwise.
fn still_queued(path: &Path, file: &File) -> Result<(), ReadError> {
    let held = file.metadata()?;
    match fs::metadata(path) {
        Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => Ok(()),
        Ok(_) => Err(ReadError::NotFound),
        Err(e) => Err(e.into()),
    }
}

/// The bytes of a message file, read whole and checked to have stayed in
/// `queue/` while being read.
fn read_queued(path: &Path) -> Result<Vec<u8>, ReadError> {
    let mut file = File::open(path)?;
    let mut bytes = Vec::with_capacity(file.metadata()?.len().min(64 << 20) as usize);
    file.read_to_end(&mut bytes)?;
    still_queued(path, &file)?;
    Ok(bytes)
}

/// Reads one whole message with its status, verifying both. `dir` is the
/// spool directory.
pub fn read_message(dir: &Path, id: QueueId) -> Result<StoredMessage, ReadError> {
    let queue_dir = dir.join("queue");
    let bytes = read_queued(&queue_dir.join(id.to_string()))?;
    let mut msg = decode_message(&bytes)?;
    if msg.id != id {
        return Err(ReadError::Corrupt(format!(
            "file {id} holds message {}",
            msg.id
        )));
    }
    if let Some(st) = read_status(&queue_dir, id)? {
        if st.rcpts.len() != msg.envelope.recipients.len() {
            return Err(ReadError::Corrupt(format!(
                "status file of {id} has {} recipients, envelope has {}",
                st.rcpts.len(),
                msg.envelope.recipients.len()
            )));
        }
        msg.status = st;
    }
    Ok(msg)
}

fn corrupt(why: impl Into<String>) -> ReadError {
    ReadError::Corrupt(why.into())
}

/// A short read means a truncated file; anything else is an I/O error.
fn short(what: &'static str) -> impl Fn(io::Error) -> ReadError {
    move |e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            corrupt(what)
        } else {
            ReadError::Io(e)
        }
    }
}

/// How much of a message file `list` reads first; most envelopes fit.
const HEAD_WINDOW: u64 = 8 * 1024;

/// Reads the envelope records of a message file (stopping at the first body
/// or END record) and the body size from the END record at the tail. The
/// CRC is not checked here: that needs the whole file. `buf` is scratch
/// space reused between files.
fn summarize(
    queue_dir: &Path,
    id: QueueId,
    has_status: bool,
    buf: &mut Vec<u8>,
) -> Result<Summary, ReadError> {
    let path = queue_dir.join(id.to_string());
    let file = File::open(&path)?;
    let file_len = file.metadata()?.len();
    buf.clear();
    let mut want = file_len.min(HEAD_WINDOW);
    let (file_id, arrival, env) = loop {
        let have = buf.len();
        // `want` never exceeds the file length, which fits in memory.
        buf.resize(want as usize, 0);
        file.read_exact_at(&mut buf[have..], have as u64)
            .map_err(short("file shrank while being read"))?;
        match codec::parse_head(buf).map_err(ReadError::Corrupt)? {
            HeadParse::Done {
                id,
                arrival,
                envelope,
            } => break (id, arrival, envelope),
            HeadParse::NeedMore(n) if (n as u64) <= file_len && buf.len() < n => {
                want = file_len.min((n as u64).max(want.saturating_mul(2)));
            }
            HeadParse::NeedMore(_) => {
                return Err(corrupt("envelope runs past the end of the file"))
            }
        }
    };
    if file_id != id {
        return Err(corrupt(format!("file {id} holds message {file_id}")));
    }
    let end_at = file_len
        .checked_sub(codec::MSG_END_LEN as u64)
        .ok_or_else(|| corrupt("file too short"))?;
    let mut end = [0u8; codec::MSG_END_LEN];
    match buf.get(end_at as usize..) {
        Some(tail) if buf.len() as u64 == file_len => end.copy_from_slice(tail),
        _ => file
            .read_exact_at(&mut end, end_at)
            .map_err(short("file too short"))?,
    }
    if end[0] != rec::END || end[1..5] != 12u32.to_le_bytes() {
        return Err(corrupt("missing END record"));
    }
    let mut size = [0u8; 8];
    size.copy_from_slice(&end[5..13]);
    let size = u64::from_le_bytes(size);
    // Everything above came from one file that stayed in queue/.
    still_queued(&path, &file)?;

    let status = match if has_status {
        read_status(queue_dir, id)
    } else {
        Ok(None)
    } {
        Ok(Some(st)) if st.rcpts.len() == env.recipients.len() => st,
        Ok(Some(_)) => {
            tracing::warn!(%id, "status file does not match the envelope; showing all recipients pending");
            MessageStatus::all_pending(env.recipients.len())
        }
        Ok(None) => MessageStatus::all_pending(env.recipients.len()),
        Err(e) => {
            tracing::warn!(%id, error = %e, "unreadable status file; showing all recipients pending");
            MessageStatus::all_pending(env.recipients.len())
        }
    };
    let hold = status.hold;
    let recipients = env
        .recipients
        .into_iter()
        .zip(status.rcpts)
        .map(|(r, status)| SummaryRcpt {
            address: r.address,
            status,
        })
        .collect();
    Ok(Summary {
        id: id.to_string(),
        arrival,
        size,
        sender: env.sender,
        recipients,
        hold,
    })
}

/// Summaries of every message in the spool at `dir`, sorted by id. Reads
/// only the envelope part of each message file plus its status file.
/// Messages that vanish while being read are skipped; unreadable ones are
/// skipped with a warning (the daemon quarantines them at its next start).
pub fn list(dir: &Path) -> io::Result<Vec<Summary>> {
    let queue_dir = dir.join("queue");
    let mut ids = Vec::new();
    let mut statuses = HashSet::new();
    for entry in fs::read_dir(&queue_dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = QueueId::from_file_name(name) {
            ids.push(id);
        } else if let Some(id) = name.strip_suffix(".st").and_then(QueueId::from_file_name) {
            statuses.insert(id);
        }
    }
    ids.sort_unstable();
    let mut out = Vec::with_capacity(ids.len());
    let mut buf = Vec::with_capacity(HEAD_WINDOW as usize);
    for id in ids {
        match summarize(&queue_dir, id, statuses.contains(&id), &mut buf) {
            Ok(s) => out.push(s),
            Err(ReadError::NotFound) => {}
            Err(ReadError::Io(e)) => return Err(e),
            Err(ReadError::Corrupt(why)) => {
                tracing::warn!(%id, reason = %why, "skipping unreadable queue file")
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_that_left_queue_while_read_counts_as_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0000000000001");
        std::fs::write(&path, b"first").unwrap();
        let file = File::open(&path).unwrap();
        assert!(still_queued(&path, &file).is_ok());
        // Removed to the pool and the name taken by another file.
        std::fs::rename(&path, dir.path().join("elsewhere")).unwrap();
        assert!(matches!(
            still_queued(&path, &file),
            Err(ReadError::NotFound)
        ));
        std::fs::write(&path, b"second").unwrap();
        assert!(matches!(
            still_queued(&path, &file),
            Err(ReadError::NotFound)
        ));
    }
}
