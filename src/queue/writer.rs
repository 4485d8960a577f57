//! Streaming writer of one message file. Holds the body in memory up to
//! `MEMORY_LIMIT`, then spills to `tmp/<ID>`. File I/O runs on tokio's
//! blocking pool so the reactor never waits on the disk. The bytes written
//! are exactly those of `codec::encode_message` for the same input.
//! Body bytes are untrusted but opaque: they are stored, never interpreted.

use std::fs::File;
use std::io::{self, Write};
use std::mem;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use super::codec::{self, CHUNK};
use super::id::QueueId;
use super::store::{self, remove_quietly};
use super::{Queue, QueueError, MEMORY_LIMIT};
use crate::proto::Envelope;

/// Longest envelope string accepted (far above anything the parser lets
/// through; keeps every record length well inside a u32).
const MAX_FIELD: usize = 64 * 1024 * 1024;

/// The open temporary file and the running CRC32 of everything written to it.
struct Spill {
    file: File,
    crc: crc32fast::Hasher,
}

impl Spill {
    /// Writes `data` as body records (`data.len()` must be a multiple of
    /// `CHUNK`, except for the very last call) followed by `tail`.
    fn write_chunks(&mut self, data: &[u8], tail: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(
            data.len() + (data.len() / CHUNK + 1) * codec::REC_HEADER_LEN + tail.len(),
        );
        codec::put_body_chunks(&mut out, data);
        out.extend_from_slice(tail);
        self.crc.update(&out);
        self.file.write_all(&out)
    }
}

/// A message being received. Created by [`Queue::writer`], fed with
/// [`write`](MessageWriter::write), finished by [`Queue::commit`].
/// Dropping it uncommitted removes its temporary file, if any.
pub struct MessageWriter {
    queue: Queue,
    id: QueueId,
    arrival: i64,
    env: Envelope,
    body_len: u64,
    /// Before spilling: the whole body so far. After: body bytes not yet
    /// written to the file (kept below `MEMORY_LIMIT + one write`).
    buf: Vec<u8>,
    spilled: bool,
    /// The temporary file, when spilled and not inside an I/O task.
    spill: Option<Spill>,
    /// `tmp/<ID>`, once this writer may have created it.
    tmp_path: Option<PathBuf>,
    /// Who removes `tmp_path` if the message is abandoned: see `TmpState`.
    tmp_state: Arc<AtomicU8>,
    /// An earlier operation failed or was cancelled midway: the writer can
    /// only be dropped.
    broken: bool,
    /// Recorded after the body at commit.
    extras: codec::Extras,
}

/// Life of the temporary file, shared between the writer and its I/O task
/// so that a file is removed exactly once even if the writer is dropped
/// while the task that creates the file is still running.
struct TmpState;

impl TmpState {
    /// Not created (yet).
    const NONE: u8 = 0;
    /// Created; the writer's Drop removes it.
    const CREATED: u8 = 1;
    /// The writer was dropped first; the task removes what it creates.
    const ABANDONED: u8 = 2;
}

/// Creates `path` for a writer (reusing a pooled file when there is one),
/// unless the writer has been dropped already.
fn create_for(q: &Queue, path: &std::path::Path, state: &AtomicU8) -> io::Result<File> {
    let file = store::Pool::take(q, path)?;
    if state
        .compare_exchange(
            TmpState::NONE,
            TmpState::CREATED,
            Ordering::SeqCst,
            Ordering::SeqCst,
        )
        .is_err()
    {
        drop(file);
        let _ = remove_quietly(path);
        return Err(io::Error::other(
            "message abandoned while its file was being created",
        ));
    }
    Ok(file)
}

fn join_error(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(format!("queue I/O task failed: {e}"))
}

fn broken_error() -> QueueError {
    QueueError::Io(io::Error::other(
        "message writer unusable after an earlier error",
    ))
}

fn check_envelope(env: &Envelope) -> io::Result<()> {
    let mut fields = vec![env.sender.len(), env.helo.len(), env.protocol.len()];
    fields.extend(env.envid.as_ref().map(String::len));
    fields.extend(env.auth_user.as_ref().map(String::len));
    for r in &env.recipients {
        fields.push(r.address.len() + r.orcpt.as_ref().map_or(0, String::len));
    }
    if fields.iter().any(|&n| n > MAX_FIELD) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "envelope field too long to queue",
        ));
    }
    Ok(())
}

impl MessageWriter {
    pub(crate) fn new(queue: Queue, id: QueueId, arrival: i64, env: Envelope) -> MessageWriter {
        MessageWriter {
            queue,
            id,
            arrival,
            env,
            body_len: 0,
            buf: Vec::new(),
            spilled: false,
            spill: None,
            tmp_path: None,
            tmp_state: Arc::new(AtomicU8::new(TmpState::NONE)),
            broken: false,
            extras: codec::Extras::default(),
        }
    }

    /// Header fields to prepend to the message (whole field lines, CRLF)
    /// and its Message-ID, recorded with it at commit.
    pub fn set_extras(&mut self, edits: &[u8], message_id: Option<String>) {
        self.extras = codec::Extras {
            edits: edits.to_vec(),
            message_id,
        };
    }

    /// Body bytes received so far.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Appends body bytes (any bytes; they are stored as given).
    pub async fn write(&mut self, data: &[u8]) -> Result<(), QueueError> {
        if self.broken {
            return Err(broken_error());
        }
        self.body_len += data.len() as u64;
        self.buf.extend_from_slice(data);
        if !self.spilled {
            if self.buf.len() > MEMORY_LIMIT {
                self.start_spill().await?;
            }
        } else if self.buf.len() >= MEMORY_LIMIT {
            self.flush_chunks().await?;
        }
        Ok(())
    }

    /// Splits off the whole `CHUNK`s at the front of `buf`, keeping the rest.
    fn take_whole_chunks(&mut self) -> Vec<u8> {
        let whole = self.buf.len() / CHUNK * CHUNK;
        let rest = self.buf.split_off(whole);
        mem::replace(&mut self.buf, rest)
    }

    /// Creates `tmp/<ID>` and writes the head and the buffered body to it.
    async fn start_spill(&mut self) -> Result<(), QueueError> {
        check_envelope(&self.env)?;
        let head = codec::encode_head(self.id, self.arrival, &self.env);
        let data = self.take_whole_chunks();
        let path = self.queue.tmp_dir().join(self.id.to_string());
        self.tmp_path = Some(path.clone());
        self.spilled = true;
        self.broken = true; // until the task reports success
        let state = Arc::clone(&self.tmp_state);
        let q = self.queue.clone();
        let task = tokio::task::spawn_blocking(move || -> io::Result<Spill> {
            let file = create_for(&q, &path, &state)?;
            let mut spill = Spill {
                file,
                crc: crc32fast::Hasher::new(),
            };
            spill.crc.update(&head);
            spill.file.write_all(&head)?;
            spill.write_chunks(&data, &[])?;
            Ok(spill)
        });
        let spill = task.await.map_err(join_error)??;
        self.spill = Some(spill);
        self.broken = false;
        Ok(())
    }

    /// Writes the whole chunks in `buf` to the temporary file.
    async fn flush_chunks(&mut self) -> Result<(), QueueError> {
        let Some(mut spill) = self.spill.take() else {
            self.broken = true;
            return Err(broken_error());
        };
        let data = self.take_whole_chunks();
        self.broken = true;
        let task = tokio::task::spawn_blocking(move || -> io::Result<Spill> {
            spill.write_chunks(&data, &[])?;
            Ok(spill)
        });
        let spill = task.await.map_err(join_error)??;
        self.spill = Some(spill);
        self.broken = false;
        Ok(())
    }

    /// Finishes the temporary file (remaining body, END record, fsync) and
    /// has the committer rename it into `queue/`. See [`Queue::commit`].
    pub(crate) async fn commit(mut self) -> Result<QueueId, QueueError> {
        let q = self.queue.clone();
        if self.broken {
            return Err(broken_error());
        }
        let id = self.id;
        let path = q.tmp_dir().join(id.to_string());
        let body = mem::take(&mut self.buf);
        self.broken = true;
        // Counted from here until the committer has the message.
        let _in_flight = InFlight::enter(&q.inner.in_flight);
        let task = if self.spilled {
            let Some(mut spill) = self.spill.take() else {
                return Err(broken_error());
            };
            let end = self.extras.tail(self.body_len);
            tokio::task::spawn_blocking(move || -> io::Result<u64> {
                spill.write_chunks(&body, &end)?;
                let crc = spill.crc.finalize();
                spill.file.write_all(&crc.to_le_bytes())?;
                spill.file.sync_all()?;
                Ok(spill.file.metadata()?.ino())
            })
        } else {
            check_envelope(&self.env)?;
            let bytes = codec::encode_message(id, self.arrival, &self.env, &body, &self.extras);
            // Kept for the first delivery attempt; forgotten if this fails.
            q.remember_recent(super::StoredMessage {
                id,
                arrival: self.arrival,
                status: super::MessageStatus::all_pending(self.env.recipients.len()),
                envelope: self.env.clone(),
                body,
                edits: mem::take(&mut self.extras.edits),
                message_id: self.extras.message_id.take(),
            });
            self.tmp_path = Some(path.clone());
            let state = Arc::clone(&self.tmp_state);
            let path = path.clone();
            let q2 = q.clone();
            tokio::task::spawn_blocking(move || -> io::Result<u64> {
                let mut file = create_for(&q2, &path, &state)?;
                file.write_all(&bytes)?;
                file.sync_all()?;
                Ok(file.metadata()?.ino())
            })
        };
        // On error the temporary file is removed by Drop.
        let ino = match task.await.map_err(join_error).and_then(|r| r) {
            Ok(ino) => ino,
            Err(e) => {
                q.forget_recent(id);
                return Err(e.into());
            }
        };
        // Known as a queued message's inode before it can be one, so that
        // no stale pool name is ever taken for it (see `store::Pool`).
        store::Pool::note_queued(&q, id, ino);

        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = store::Job {
            tmp: path,
            dst: q.queue_dir().join(id.to_string()),
            new_message: Some(id),
            done: Box::new(move |r| {
                let _ = tx.send(r);
            }),
        };
        if let Err(e) = q.submit(job) {
            q.forget_recent(id);
            store::Pool::forget_queued(&q, id);
            return Err(e.into());
        }
        drop(_in_flight);
        // From here on the committer owns the temporary file (it removes it
        // if the rename fails).
        self.tmp_path = None;
        let r = match rx.await {
            Ok(Ok(())) => Ok(id),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(QueueError::Io(io::Error::other(
                "queue committer thread has stopped",
            ))),
        };
        if r.is_err() {
            q.forget_recent(id);
            store::Pool::forget_queued(&q, id);
        }
        r
    }
}

/// Counts a message in the write stage while alive.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(n: &'a std::sync::atomic::AtomicUsize) -> InFlight<'a> {
        n.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        InFlight(n)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl Drop for MessageWriter {
    fn drop(&mut self) {
        let Some(path) = self.tmp_path.take() else {
            return;
        };
        if self.tmp_state.swap(TmpState::ABANDONED, Ordering::SeqCst) != TmpState::CREATED {
            // Never created, or an I/O task still running will remove it.
            return;
        }
        if let Err(e) = remove_quietly(&path) {
            tracing::warn!(id = %self.id, error = %e, tmp = %path.display(), "cannot remove temporary file of an abandoned message");
        }
    }
}
