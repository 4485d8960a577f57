//! The one loop that drives a sans-IO SMTP/LMTP client session
//! ([`ClientSession`]) over a stream: it writes what the session wants
//! sent, reads and feeds the replies, and hands over the content, each
//! write and read under the deadline the session's current step has (RFC
//! 5321 §4.5.3.2). It stops where the caller must decide something (TLS,
//! the next transaction, a result, the end). Remote delivery, LMTP and
//! `pigeon sendmail` all use it.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use crate::proto::client::{
    ClientEvent, ClientSession, OutMessage, Refusal, SessionOutcome, TransactionResult,
};

/// Where [`drive`] stops.
#[derive(Debug)]
pub enum Stop {
    /// The server said 220 to STARTTLS: discard unread input, run the
    /// handshake, call `tls_established` (or `connection_lost`).
    StartTls,
    /// Ready for a transaction, or to quit.
    Ready,
    /// A transaction is over: one outcome per recipient.
    TransactionDone(TransactionResult),
    /// The session is over.
    Closed(SessionOutcome),
}

/// Runs `client` over `stream` until it needs the caller. `buf` holds
/// bytes read and not yet consumed (keep it between calls; clear it at a
/// TLS start). `body` is the content of the transaction in progress, in
/// pieces sent one after another (header edits, then the message).
pub async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientSession,
    stream: &mut S,
    buf: &mut Vec<u8>,
    body: &[&[u8]],
) -> Stop {
    loop {
        match client.poll() {
            ClientEvent::Send(bytes) => {
                let t = std::time::Duration::from_secs(client.timeout_class().secs());
                let sent = timeout(t, async {
                    stream.write_all(&bytes).await?;
                    stream.flush().await
                })
                .await;
                if !matches!(sent, Ok(Ok(()))) {
                    client.connection_lost();
                }
            }
            ClientEvent::NeedInput => {
                let t = std::time::Duration::from_secs(client.timeout_class().secs());
                buf.reserve(8192);
                match timeout(t, stream.read_buf(buf)).await {
                    Ok(Ok(n)) if n > 0 => {
                        let used = client.feed(buf);
                        buf.drain(..used.min(buf.len()));
                    }
                    _ => client.connection_lost(),
                }
            }
            ClientEvent::NeedBody => match body.split_last() {
                None => client.body_chunk(&[], true),
                Some((last, rest)) => {
                    for piece in rest.iter().filter(|p| !p.is_empty()) {
                        client.body_chunk(piece, false);
                    }
                    client.body_chunk(last, true);
                }
            },
            ClientEvent::StartTls => return Stop::StartTls,
            ClientEvent::Ready => return Stop::Ready,
            ClientEvent::TransactionDone(r) => return Stop::TransactionDone(r),
            ClientEvent::Closed(o) => return Stop::Closed(o),
        }
    }
}

/// What [`send_one`] came to.
#[derive(Debug)]
pub struct OneResult {
    /// The message was refused before anything was sent (SIZE, SMTPUTF8,
    /// 8BITMIME the server lacks).
    pub refused: Option<Refusal>,
    /// The transaction's outcome, when it got that far.
    pub result: Option<TransactionResult>,
    /// How the session ended.
    pub outcome: SessionOutcome,
}

/// A whole session for one message: greeting, EHLO (or LHLO), the
/// transaction, QUIT. STARTTLS must be off in `client`'s configuration.
pub async fn send_one<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut ClientSession,
    stream: &mut S,
    message: &OutMessage,
    body: &[&[u8]],
) -> OneResult {
    let mut buf = Vec::new();
    let mut sent = false;
    let mut refused = None;
    let mut result = None;
    let outcome = loop {
        match drive(client, stream, &mut buf, body).await {
            // Never asked for with STARTTLS off.
            Stop::StartTls => client.connection_lost(),
            Stop::Ready if sent => client.quit(),
            Stop::Ready => {
                sent = true;
                if let Err(r) = client.send_message(message) {
                    refused = Some(r);
                    client.quit();
                }
            }
            Stop::TransactionDone(r) => result = Some(r),
            Stop::Closed(o) => break o,
        }
    };
    let _ = stream.shutdown().await;
    OneResult {
        refused,
        result,
        outcome,
    }
}
