//! A scripted SMTP server for delivery tests: listens on a loopback
//! address, records every transaction it accepts, and misbehaves on
//! request (temporary failures for the first N attempts, a permanent
//! refusal of chosen recipients, a dropped connection mid-DATA, a slow
//! greeting, no DSN/PIPELINING/SMTPUTF8 extensions).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Answer 451 to MAIL on the first N transactions (over all connections).
    pub tempfail_first: usize,
    /// Refuse these recipients with 550 5.1.1.
    pub reject_rcpts: Vec<String>,
    /// Close the connection in the middle of the message data, on the first N transactions.
    pub drop_in_data_first: usize,
    /// Wait this long before the greeting.
    pub greeting_delay: Duration,
    /// Leave out these EHLO keywords (e.g. "SMTPUTF8", "DSN", "PIPELINING", "8BITMIME").
    pub without: Vec<String>,
    /// Advertise this SIZE limit (0 = none).
    pub size: u64,
    /// Close the connection right after each accepted message (as a server
    /// with a short idle timeout would).
    pub close_after_message: bool,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The MAIL and RCPT lines as sent.
    pub lines: Vec<String>,
    /// The content after dot-unstuffing, CRLF line ends.
    pub data: Vec<u8>,
    pub connection: usize,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<AtomicUsize>,
    transactions: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    pub async fn start(addr: SocketAddr, b: Behaviour) -> Sink {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let transactions = Arc::new(AtomicUsize::new(0));
        let (r, c, t) = (received.clone(), connections.clone(), transactions.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let n = c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(s, b.clone(), r.clone(), t.clone(), n));
            }
        });
        Sink {
            addr,
            received,
            connections,
            transactions,
            task,
        }
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until at least `n` transactions were received (or panics after `secs`).
    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<Received> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sink {} got {} of {n} messages",
                self.addr,
                m.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn serve(
    s: tokio::net::TcpStream,
    b: Behaviour,
    received: Arc<Mutex<Vec<Received>>>,
    tx_count: Arc<AtomicUsize>,
    conn: usize,
) {
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    tokio::time::sleep(b.greeting_delay).await;
    if w.write_all(b"220 sink.test ESMTP\r\n").await.is_err() {
        return;
    }
    let mut cur: Option<Received> = None;
    let mut fail_this = false;
    let mut drop_this = false;
    loop {
        let mut line = String::new();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let l = line.trim_end_matches(['\r', '\n']).to_string();
        let up = l.to_ascii_uppercase();
        let reply: String = if up.starts_with("EHLO") || up.starts_with("LHLO") {
            let mut kw = vec![
                "PIPELINING",
                "8BITMIME",
                "SMTPUTF8",
                "DSN",
                "ENHANCEDSTATUSCODES",
            ];
            kw.retain(|k| !b.without.iter().any(|x| x == k));
            let mut s = String::from("250-sink.test\r\n");
            if b.size > 0 {
                s.push_str(&format!("250-SIZE {}\r\n", b.size));
            }
            for k in kw {
                s.push_str(&format!("250-{k}\r\n"));
            }
            s.push_str("250 HELP\r\n");
            s
        } else if up.starts_with("HELO") {
            "250 sink.test\r\n".into()
        } else if up.starts_with("MAIL FROM:") {
            let n = tx_count.fetch_add(1, Ordering::SeqCst);
            fail_this = n < b.tempfail_first;
            drop_this = n < b.drop_in_data_first;
            if fail_this {
                "451 4.3.0 try again later\r\n".into()
            } else {
                let from = l[10..]
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .trim_matches(['<', '>'])
                    .to_string();
                cur = Some(Received {
                    mail_from: from,
                    rcpts: vec![],
                    lines: vec![l.clone()],
                    data: vec![],
                    connection: conn,
                });
                "250 2.1.0 ok\r\n".into()
            }
        } else if up.starts_with("RCPT TO:") {
            let to = l[8..]
                .split(' ')
                .next()
                .unwrap_or("")
                .trim_matches(['<', '>'])
                .to_string();
            match cur.as_mut() {
                None => "503 5.5.1 need MAIL\r\n".into(),
                Some(_) if b.reject_rcpts.iter().any(|x| x.eq_ignore_ascii_case(&to)) => {
                    "550 5.1.1 no such user here\r\n".into()
                }
                Some(c) => {
                    c.rcpts.push(to);
                    c.lines.push(l.clone());
                    "250 2.1.5 ok\r\n".into()
                }
            }
        } else if up == "DATA" {
            match cur.as_ref() {
                Some(c) if !c.rcpts.is_empty() => {
                    if w.write_all(b"354 go ahead\r\n").await.is_err() {
                        return;
                    }
                    let mut data = Vec::new();
                    loop {
                        let mut dl = Vec::new();
                        match r.read_until(b'\n', &mut dl).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if drop_this && data.len() > 10 {
                            return; // connection dropped mid-DATA
                        }
                        if dl == b".\r\n" {
                            break;
                        }
                        if dl.starts_with(b"..") {
                            dl.remove(0);
                        }
                        data.extend_from_slice(&dl);
                    }
                    let mut c = cur.take().unwrap();
                    c.data = data;
                    received.lock().unwrap().push(c);
                    if b.close_after_message {
                        let _ = w.write_all(b"250 2.0.0 queued\r\n").await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        return;
                    }
                    "250 2.0.0 queued\r\n".into()
                }
                Some(_) => "554 5.5.1 no valid recipients\r\n".into(),
                None => "503 5.5.1 need MAIL\r\n".into(),
            }
        } else if up.starts_with("BDAT") {
            // Not offered; read and refuse.
            let n: usize = up
                .split(' ')
                .nth(1)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            let mut sink = vec![0u8; n];
            let _ = r.read_exact(&mut sink).await;
            "502 5.5.1 BDAT not offered\r\n".into()
        } else if up == "RSET" {
            cur = None;
            "250 2.0.0 ok\r\n".into()
        } else if up == "QUIT" {
            let _ = w.write_all(b"221 2.0.0 bye\r\n").await;
            return;
        } else if up == "NOOP" {
            "250 2.0.0 ok\r\n".into()
        } else {
            "500 5.5.2 unknown\r\n".into()
        };
        let _ = fail_this;
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}
