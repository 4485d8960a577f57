//! A scripted LMTP server (RFC 2033) for local-delivery tests, on a Unix
//! socket: LHLO, MAIL, RCPT, DATA, then one reply per accepted recipient.
//! Per recipient, a list of replies to give after the content on the
//! successive transactions that name it (then "250 2.0.0 Ok"); recipients
//! to refuse at RCPT. Records every transaction.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UnixListener};

#[derive(Debug, Clone)]
pub struct LmtpTxn {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The content after dot-unstuffing, CRLF line ends.
    pub data: Vec<u8>,
}

#[derive(Default)]
struct Script {
    after_data: HashMap<String, VecDeque<String>>,
    reject_rcpt: Vec<String>,
}

pub struct Lmtp {
    /// Where it listens, as `local.lmtp` wants it: a socket path or host:port.
    pub path: PathBuf,
    script: Arc<Mutex<Script>>,
    received: Arc<Mutex<Vec<LmtpTxn>>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Lmtp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Lmtp {
    /// On a Unix socket.
    pub async fn start() -> Lmtp {
        Lmtp::start_on(false).await
    }

    /// On 127.0.0.1:<free port>.
    pub async fn start_tcp() -> Lmtp {
        Lmtp::start_on(true).await
    }

    async fn start_on(tcp: bool) -> Lmtp {
        let dir = tempfile::tempdir().unwrap();
        let script = Arc::new(Mutex::new(Script::default()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (script.clone(), received.clone());
        let (path, task) = if tcp {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let task = tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(serve(conn, s.clone(), r.clone()));
                }
            });
            (PathBuf::from(addr.to_string()), task)
        } else {
            let path = dir.path().join("lmtp.sock");
            let listener = UnixListener::bind(&path).unwrap();
            let task = tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    tokio::spawn(serve(conn, s.clone(), r.clone()));
                }
            });
            (path, task)
        };
        Lmtp {
            path,
            script,
            received,
            task,
            _dir: dir,
        }
    }

    /// Replies after the content for `rcpt`, one per transaction naming it.
    pub fn after_data(&self, rcpt: &str, replies: &[&str]) {
        self.script.lock().unwrap().after_data.insert(
            rcpt.to_string(),
            replies.iter().map(|r| r.to_string()).collect(),
        );
    }

    pub fn reject_rcpt(&self, rcpt: &str) {
        self.script
            .lock()
            .unwrap()
            .reject_rcpt
            .push(rcpt.to_string());
    }

    pub fn transactions(&self) -> Vec<LmtpTxn> {
        self.received.lock().unwrap().clone()
    }

    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<LmtpTxn> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.transactions();
            if t.len() >= n {
                return t;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "LMTP server got {} of {n} transactions",
                t.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn path_of(line: &str) -> String {
    let start = line.find('<').map(|i| i + 1).unwrap_or(line.len());
    let end = line[start..]
        .find('>')
        .map(|i| i + start)
        .unwrap_or(line.len());
    line[start..end].to_string()
}

async fn serve<S: AsyncRead + AsyncWrite + Send + 'static>(
    conn: S,
    script: Arc<Mutex<Script>>,
    received: Arc<Mutex<Vec<LmtpTxn>>>,
) {
    let (r, mut w) = tokio::io::split(conn);
    let mut r = BufReader::new(r);
    if w.write_all(b"220 lmtp.test LMTP ready\r\n").await.is_err() {
        return;
    }
    let mut txn: Option<LmtpTxn> = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let upper = line.to_ascii_uppercase();
        let reply: String = if upper.starts_with("LHLO") {
            "250-lmtp.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            txn = Some(LmtpTxn {
                mail_from: path_of(&line),
                rcpts: Vec::new(),
                data: Vec::new(),
            });
            "250 2.1.0 Ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let a = path_of(&line);
            if script.lock().unwrap().reject_rcpt.contains(&a) {
                "550 5.1.1 no such user\r\n".into()
            } else {
                if let Some(t) = txn.as_mut() {
                    t.rcpts.push(a);
                }
                "250 2.1.5 Ok\r\n".into()
            }
        } else if upper.starts_with("DATA") {
            if w.write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if r.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                    return;
                }
                if l == b".\r\n" {
                    break;
                }
                if l.starts_with(b"..") {
                    l.remove(0);
                }
                data.extend_from_slice(&l);
            }
            let Some(mut t) = txn.take() else {
                return;
            };
            t.data = data;
            let mut out = String::new();
            {
                let mut s = script.lock().unwrap();
                for rc in &t.rcpts {
                    let r = s
                        .after_data
                        .get_mut(rc)
                        .and_then(|q| q.pop_front())
                        .unwrap_or_else(|| "250 2.0.0 Ok".into());
                    out.push_str(&r);
                    out.push_str("\r\n");
                }
            }
            received.lock().unwrap().push(t);
            out
        } else if upper.starts_with("RSET") {
            txn = None;
            "250 2.0.0 Ok\r\n".into()
        } else if upper.starts_with("QUIT") {
            let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            "500 5.5.2 what?\r\n".into()
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
