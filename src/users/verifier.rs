//! The password-check pool: a few threads of its own, apart from the
//! blocking pool that does queue writes and fsyncs, so that a flood of
//! AUTH attempts (each argon2id check costs about 19 MiB and a core for a
//! moment) can neither exhaust memory nor delay the commit of mail.
//!
//! At most `threads` checks run or wait for a thread at once; an attempt
//! that finds them all taken waits up to a deadline for a turn and is
//! otherwise told to come back later (454 4.7.0 in the session).
//! Owns its threads and nothing else.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, Semaphore};

type Job = Box<dyn FnOnce() + Send>;

/// Why a check did not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// Every thread was taken for longer than the wait allowed.
    Overloaded,
    /// The pool is gone (the server is stopping).
    Closed,
}

#[derive(Clone)]
pub struct Verifier {
    slots: Arc<Semaphore>,
    jobs: mpsc::SyncSender<Job>,
    threads: usize,
}

impl Verifier {
    /// A pool of `threads` threads (0: one per CPU).
    pub fn new(threads: usize) -> std::io::Result<Verifier> {
        let threads = if threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            threads
        };
        let (tx, rx) = mpsc::sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("pigeon-auth-{i}"))
                .spawn(move || {
                    lower_priority();
                    loop {
                        let job = {
                            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                            guard.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })?;
        }
        Ok(Verifier {
            slots: Arc::new(Semaphore::new(threads)),
            jobs: tx,
            threads,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `check` on the pool, waiting at most `wait` for a turn.
    pub async fn run<T: Send + 'static>(
        &self,
        wait: Duration,
        check: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Busy> {
        let permit = match tokio::time::timeout(wait, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(Busy::Closed),
            Err(_) => return Err(Busy::Overloaded),
        };
        let (tx, rx) = oneshot::channel();
        // The permit goes with the job: it is released when the check is
        // over, even if the caller has gone away meanwhile.
        let job: Job = Box::new(move || {
            let _ = tx.send(check());
            drop(permit);
        });
        // Never blocks: there are as many queue places as permits.
        if self.jobs.try_send(job).is_err() {
            return Err(Busy::Closed);
        }
        rx.await.map_err(|_| Busy::Closed)
    }
}

/// Password checks are bulk work: this thread yields the CPU to the
/// threads that serve sessions and commit mail (nice 10 on Linux, where
/// the nice value is per thread), so a flood of AUTH attempts slows other
/// logins rather than the mail. Failing to lower it changes nothing else.
fn lower_priority() {
    // SAFETY: setpriority only reads its arguments; `who` 0 is this thread.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 10);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn at_most_threads_checks_at_once_and_excess_is_refused() {
        let v = Verifier::new(2).unwrap();
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (v, running, peak) = (v.clone(), running.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                v.run(Duration::from_millis(50), move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(300));
                    running.fetch_sub(1, Ordering::SeqCst);
                    std::thread::current().name().map(|n| n.to_string())
                })
                .await
            }));
        }
        let mut ok = 0;
        let mut busy = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(name) => {
                    ok += 1;
                    assert!(name.unwrap().starts_with("pigeon-auth-"));
                }
                Err(Busy::Overloaded) => busy += 1,
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(ok, 2);
        assert_eq!(busy, 6);
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        // Free again afterwards.
        assert_eq!(v.run(Duration::from_millis(50), || 7).await, Ok(7));
    }
}
