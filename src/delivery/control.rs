//! The control socket: how `pigeon queue flush|hold|release|delete|bounce`
//! reach the running daemon. A Unix socket in the spool directory, mode
//! 0600, so only root and the daemon's user can use it. One request line
//! ("VERB id id ..."), one multi-line answer, then the connection closes.
//! Untrusted bytes: only local users who can open the socket, still
//! size-capped and parsed strictly.

use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::delivery::{Handle, Request};
use crate::queue::QueueId;

/// Longest request line.
const MAX_REQUEST: u64 = 1024 * 1024;

/// The socket's path for a spool directory.
pub fn socket_path(spool: &Path) -> PathBuf {
    spool.join("control.sock")
}

/// Parses "VERB id ..." into a request.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let mut words = line.split_ascii_whitespace();
    let verb = words.next().ok_or("empty request")?;
    let ids = words
        .map(|w| {
            w.parse::<QueueId>()
                .map_err(|_| format!("not a queue id: {w}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if ids.is_empty() && verb != "flush" {
        return Err(format!("{verb} needs at least one queue id"));
    }
    Ok(match verb {
        "flush" => Request::Flush(ids),
        "hold" => Request::Hold(ids),
        "release" => Request::Release(ids),
        "delete" => Request::Delete(ids),
        "bounce" => Request::Bounce(ids),
        _ => return Err(format!("unknown request: {verb}")),
    })
}

/// Serves the control socket until `stop` turns true.
pub async fn serve(
    path: PathBuf,
    handle: Handle,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    // A socket left by an earlier run is stale: the spool lock guarantees
    // no other daemon uses this spool.
    let _ = std::fs::remove_file(&path);
    // 0600 from its creation: never reachable by others, whatever the umask.
    let std_listener = crate::ops::system::bind_unix_private(&path)?;
    std_listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(std_listener)?;
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => {
                let _ = std::fs::remove_file(&path);
                return Ok(());
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(r.take(MAX_REQUEST));
            let answer = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                r.read_line(&mut line),
            )
            .await
            {
                Ok(Ok(_)) => match parse_request(line.trim()) {
                    Ok(req) => {
                        info!(request = %line.trim(), "control request");
                        handle.request(req).await
                    }
                    Err(e) => format!("error: {e}\n"),
                },
                _ => "error: no request\n".to_string(),
            };
            let _ = w.write_all(answer.as_bytes()).await;
            let _ = w.shutdown().await;
        });
    }
}

/// Client side: sends one request to the daemon and returns its answer.
pub fn request(spool: &Path, line: &str) -> io::Result<String> {
    let path = socket_path(spool);
    let mut s = std::os::unix::net::UnixStream::connect(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot reach the pigeon daemon at {}: {e} (is it running?)",
                path.display()
            ),
        )
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    let mut out = String::new();
    BufReader::new(s.take(16 * 1024 * 1024)).read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        assert_eq!(parse_request("flush"), Ok(Request::Flush(vec![])));
        let id: QueueId = "001K0YQZ47KFE".parse().unwrap();
        assert_eq!(
            parse_request("hold 001K0YQZ47KFE"),
            Ok(Request::Hold(vec![id]))
        );
        assert!(parse_request("hold").is_err());
        assert!(parse_request("delete nonsense!").is_err());
        assert!(parse_request("explode 001K0YQZ47KFE").is_err());
    }
}
