//! Read-only access to a spool, for delivery and for the `pigeon queue`
//! commands. Safe while the daemon runs: message files are write-once and
//! status files are replaced atomically, so a reader sees whole files; a
//! file that vanishes mid-read (delivered and removed) is skipped.
//! Everything read here is untrusted and verified before use.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
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

/// Reads one whole message with its status, verifying both. `dir` is the
/// spool directory.
pub fn read_message(dir: &Path, id: QueueId) -> Result<StoredMessage, ReadError> {
    let queue_dir = dir.join("queue");
    let bytes = fs::read(queue_dir.join(id.to_string()))?;
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
    let file = File::open(queue_dir.join(id.to_string()))?;
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
