//! `pigeon sendmail`: the sendmail-compatible command that programs on this
//! machine (cron, PHP's mail(), mail(1)) run to send a message. It reads
//! the message from standard input, works out the envelope (`-f`, `-t`,
//! recipients as arguments), adds the header fields a message must have
//! (From:, Date:, Message-ID:) and hands it to the running daemon over its
//! local submission socket (`sendmail.socket`), speaking SMTP through the
//! same sans-IO client the delivery code uses. The daemon knows the user
//! from the socket's peer credentials. Exit codes are sendmail's (sysexits).
//!
//! Reads the configuration (when readable) for the socket and host name;
//! touches nothing else. Untrusted bytes: the message on stdin (only
//! scanned for header fields and copied) and the daemon's replies (parsed
//! by the client state machine).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::message::header::{has_field, split_header, without_field};
use crate::proto::client::{
    ClientConfig, ClientSession, OutMessage, RcptOutcome, SessionOutcome, StartTls,
};
use crate::proto::envelope::{BodyType, Notify, Recipient, Ret};

/// sysexits(3) codes.
pub mod exit {
    pub const OK: u8 = 0;
    pub const USAGE: u8 = 64;
    pub const DATAERR: u8 = 65;
    pub const NOUSER: u8 = 67;
    pub const UNAVAILABLE: u8 = 69;
    pub const IOERR: u8 = 74;
    pub const TEMPFAIL: u8 = 75;
    pub const NOPERM: u8 = 77;
}

/// Where the daemon listens when the configuration cannot be read.
pub const DEFAULT_SOCKET: &str = "/run/pigeon/sendmail.sock";
/// Largest message read from stdin when the configuration gives no limit.
const DEFAULT_MAX_SIZE: u64 = 50 * 1024 * 1024;
/// Seconds to wait for the daemon at any step.
const TIMEOUT: Duration = Duration::from_secs(300);

/// What the command line asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Options {
    /// `-t`: recipients from To:, Cc: and Bcc: (added to those given).
    pub extract: bool,
    /// `-i`, `-oi`: a line with a single dot does not end the message.
    pub ignore_dots: bool,
    /// `-f`/`-r`: the envelope sender ("" for `<>`).
    pub sender: Option<String>,
    /// `-F`: the full name for a From: field we add.
    pub full_name: Option<String>,
    /// `-C`: the configuration file.
    pub config: Option<PathBuf>,
    /// `-N`: DSN NOTIFY (never, or success/failure/delay).
    pub notify: Option<Notify>,
    /// `-R`: DSN RET (full or hdrs).
    pub ret: Option<Ret>,
    /// `-V`: DSN ENVID.
    pub envid: Option<String>,
    pub verbose: bool,
    pub recipients: Vec<String>,
}

/// Parses sendmail's arguments (without the program name). Options that
/// only tune sendmail's own queueing or error reporting (`-oem`, `-odb`,
/// `-B8BITMIME`, `-bm`, `-m`, ...) are accepted and have no effect.
pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options::default();
    let mut i = 0;
    // The value of an option: the rest of this word, or the next word.
    let value = |i: &mut usize, rest: &str, flag: &str| -> Result<String, String> {
        if !rest.is_empty() {
            return Ok(rest.to_string());
        }
        *i += 1;
        args.get(*i)
            .cloned()
            .ok_or_else(|| format!("option -{flag} needs a value"))
    };
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            o.recipients.extend(args[i + 1..].iter().cloned());
            break;
        }
        let Some(flags) = a.strip_prefix('-').filter(|f| !f.is_empty()) else {
            o.recipients.push(a.clone());
            i += 1;
            continue;
        };
        let (flag, rest) = flags.split_at(flags.chars().next().map_or(0, char::len_utf8));
        match flag {
            "t" | "i" | "v" | "m" | "n" | "U" | "G" | "x"
                if rest.chars().all(|c| "tivmnUGx".contains(c)) =>
            {
                for c in flags.chars() {
                    match c {
                        't' => o.extract = true,
                        'i' => o.ignore_dots = true,
                        'v' => o.verbose = true,
                        _ => {}
                    }
                }
            }
            "f" | "r" => o.sender = Some(strip_brackets(&value(&mut i, rest, flag)?)),
            "F" => o.full_name = Some(value(&mut i, rest, flag)?),
            "C" => o.config = Some(PathBuf::from(value(&mut i, rest, flag)?)),
            "o" => {
                let opt = value(&mut i, rest, flag)?;
                // -oi is -i; -oem, -oee, -odb, -odi, -om, -oQ... change nothing here.
                if opt == "i" {
                    o.ignore_dots = true;
                }
            }
            "B" | "L" | "q" | "h" | "e" | "X" | "A" => {
                let _ = value(&mut i, rest, flag)?;
            }
            "b" => {
                match rest {
                    "m" | "" => {}
                    "s" => return Err(
                        "-bs (SMTP on standard input) is not supported; use SMTP on port 25 or 587"
                            .into(),
                    ),
                    "p" => return Err("-bp: use `pigeon queue list`".into()),
                    other => return Err(format!("-b{other} is not supported")),
                }
            }
            "N" => {
                let v = value(&mut i, rest, flag)?.to_ascii_lowercase();
                let mut n = 0;
                for w in v.split(',').map(str::trim) {
                    n |= match w {
                        "never" => Notify::NEVER,
                        "success" => Notify::SUCCESS,
                        "failure" => Notify::FAILURE,
                        "delay" => Notify::DELAY,
                        _ => {
                            return Err(format!("-N {v}: expected never or success,failure,delay"))
                        }
                    };
                }
                if n & Notify::NEVER != 0 && n != Notify::NEVER {
                    return Err("-N never cannot be combined".into());
                }
                o.notify = Some(Notify(n));
            }
            "R" => {
                o.ret = Some(
                    match value(&mut i, rest, flag)?.to_ascii_lowercase().as_str() {
                        "full" => Ret::Full,
                        "hdrs" => Ret::Hdrs,
                        v => return Err(format!("-R {v}: expected full or hdrs")),
                    },
                )
            }
            "V" => o.envid = Some(value(&mut i, rest, flag)?),
            _ => return Err(format!("unknown option {a}")),
        }
        i += 1;
    }
    Ok(o)
}

fn strip_brackets(s: &str) -> String {
    let t = s.trim();
    t.strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(t)
        .to_string()
}

/// The addresses of one recipient argument (which may hold several,
/// separated by commas; `Name <addr>` forms are reduced to the address);
/// a bare name gets `@domain`.
pub fn argument_addresses(arg: &str, domain: &str) -> Vec<String> {
    arg.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            let a = match (a.rfind('<'), a.rfind('>')) {
                (Some(s), Some(e)) if s < e => &a[s + 1..e],
                _ => a,
            };
            qualify(a.trim(), domain)
        })
        .filter(|a| !a.is_empty())
        .collect()
}

fn qualify(a: &str, domain: &str) -> String {
    if a.is_empty() || a.contains('@') {
        a.to_string()
    } else {
        format!("{a}@{domain}")
    }
}

/// The message read from stdin, with LF line ends (CRLF taken as LF),
/// ended by EOF, or (without `-i`) by a line holding a single dot.
/// Errors if it is longer than `max` bytes.
pub fn read_message(input: &mut dyn Read, ignore_dots: bool, max: u64) -> io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    input.take(max + 1).read_to_end(&mut raw)?;
    if raw.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("message larger than {max} bytes"),
        ));
    }
    let mut out = Vec::with_capacity(raw.len() + 1);
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        if !ignore_dots && body == b"." {
            break;
        }
        out.extend_from_slice(body);
        out.push(b'\n');
    }
    Ok(out)
}

/// The addresses in the To:, Cc: and Bcc: fields.
pub fn header_recipients(header: &[u8], domain: &str) -> Vec<String> {
    let mut h = header.to_vec();
    h.extend_from_slice(b"\n");
    let Some(m) = mail_parser::MessageParser::default().parse_headers(&h) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for list in m.all_to().chain(m.all_cc()).chain(m.all_bcc()) {
        for a in list.iter() {
            // A bare name ("To: root") comes back as a display name.
            let addr = a.address().or_else(|| {
                a.name()
                    .filter(|n| !n.trim().is_empty() && !n.trim().contains(char::is_whitespace))
            });
            if let Some(addr) = addr {
                let q = qualify(addr.trim(), domain);
                if !q.is_empty() && !out.contains(&q) {
                    out.push(q);
                }
            }
        }
    }
    out
}

/// What the message needs before it goes: From:, Date: and Message-ID:
/// when missing, Bcc: removed. Returns the new message (LF line ends).
pub fn complete_message(
    msg: &[u8],
    from: &str,
    full_name: Option<&str>,
    hostname: &str,
    now: SystemTime,
) -> Vec<u8> {
    let (header, body) = split_header(msg);
    let mut out = Vec::with_capacity(msg.len() + 256);
    if !has_field(header, "from") {
        let from = if from.is_empty() {
            format!("MAILER-DAEMON@{hostname}")
        } else {
            from.to_string()
        };
        match full_name.filter(|n| !n.trim().is_empty()) {
            Some(n) => {
                let n: String = n
                    .chars()
                    .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
                    .collect();
                out.extend_from_slice(format!("From: \"{n}\" <{from}>\n").as_bytes());
            }
            None => out.extend_from_slice(format!("From: {from}\n").as_bytes()),
        }
    }
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if !has_field(header, "date") {
        out.extend_from_slice(
            format!("Date: {}\n", crate::message::rfc5322_date(secs as i64)).as_bytes(),
        );
    }
    if !has_field(header, "message-id") {
        let micros = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_micros())
            .unwrap_or(0);
        out.extend_from_slice(
            format!(
                "Message-ID: <{secs}.{micros}.{}@{hostname}>\n",
                std::process::id()
            )
            .as_bytes(),
        );
    }
    out.extend_from_slice(&without_field(header, "bcc"));
    // The empty line between header and body, if the message had none.
    let blank = header.ends_with(b"\n\n") || header == b"\n";
    if !blank && !body.is_empty() {
        out.push(b'\n');
    }
    out.extend_from_slice(body);
    out
}

/// The outcome of a submission, for the exit code and messages.
#[derive(Debug)]
pub struct Outcome {
    pub queue_id: Option<String>,
    /// (address, reply) of every recipient refused.
    pub refused: Vec<(String, String, bool)>,
}

/// Hands the message to the daemon at `socket`, through the same client
/// driver the daemon's own deliveries use, on a runtime of its own.
pub fn submit(
    socket: &Path,
    sender: &str,
    rcpts: &[String],
    msg: &[u8],
    o: &Options,
) -> Result<Outcome, (u8, String)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (exit::IOERR, format!("cannot start: {e}")))?;
    rt.block_on(submit_async(socket, sender, rcpts, msg, o))
}

async fn submit_async(
    socket: &Path,
    sender: &str,
    rcpts: &[String],
    msg: &[u8],
    o: &Options,
) -> Result<Outcome, (u8, String)> {
    let connected = tokio::time::timeout(TIMEOUT, tokio::net::UnixStream::connect(socket)).await;
    let mut stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err((
                exit::TEMPFAIL,
                format!(
                    "cannot reach the mail server at {}: {e} (is pigeon running?)",
                    socket.display()
                ),
            ))
        }
        Err(_) => {
            return Err((
                exit::TEMPFAIL,
                format!("the mail server at {} does not answer", socket.display()),
            ))
        }
    };
    let mut cfg = ClientConfig::new("localhost");
    cfg.use_starttls = StartTls::Never;
    let mut client = ClientSession::new(cfg);
    let eight_bit = msg.iter().any(|&b| b >= 0x80);
    let out = OutMessage {
        sender: sender.to_string(),
        recipients: rcpts
            .iter()
            .map(|a| Recipient {
                address: a.clone(),
                orcpt: None,
                notify: o.notify.unwrap_or_default(),
            })
            .collect(),
        size: msg.len() as u64,
        body_type: if eight_bit {
            BodyType::EightBitMime
        } else {
            BodyType::SevenBit
        },
        smtputf8: !sender.is_ascii() || rcpts.iter().any(|r| !r.is_ascii()),
        ret: o.ret,
        envid: o.envid.clone(),
    };
    let one = crate::net::client_driver::send_one(&mut client, &mut stream, &out, &[msg]).await;
    let (refusal, result, outcome) = (one.refused, one.result, one.outcome);
    if let Some(r) = refusal {
        return Err((exit::DATAERR, r.text));
    }
    let Some(r) = result else {
        return Err(match outcome {
            // A permanent refusal of the session (this user may not
            // submit): sysexits' "permission denied".
            SessionOutcome::Refused { reply, .. } if reply.is_permanent() => (
                exit::NOPERM,
                format!("the mail server refused: {}", reply_text(&reply)),
            ),
            SessionOutcome::Refused { reply, .. } => (
                exit::TEMPFAIL,
                format!("the mail server refused: {}", reply_text(&reply)),
            ),
            other => (
                exit::TEMPFAIL,
                format!("the mail server ended the session: {other:?}"),
            ),
        });
    };
    if let Some(m) = &r.mail {
        let code = if m.is_permanent() {
            exit::DATAERR
        } else {
            exit::TEMPFAIL
        };
        return Err((code, format!("sender refused: {}", reply_text(m))));
    }
    let mut refused = Vec::new();
    let mut accepted = 0;
    for (addr, o) in rcpts.iter().zip(&r.rcpts) {
        match o {
            RcptOutcome::Accepted(rep) if rep.is_2xx() => accepted += 1,
            RcptOutcome::Accepted(rep) | RcptOutcome::Rejected(rep) => {
                refused.push((addr.clone(), reply_text(rep), rep.is_permanent()))
            }
        }
    }
    let queue_id = match &r.data {
        Some(d) if d.is_2xx() && accepted > 0 => d.text.rsplit(' ').next().map(str::to_string),
        Some(d) if accepted > 0 => {
            let code = if d.is_permanent() {
                exit::DATAERR
            } else {
                exit::TEMPFAIL
            };
            return Err((code, format!("message refused: {}", reply_text(d))));
        }
        _ => None,
    };
    Ok(Outcome { queue_id, refused })
}

fn reply_text(r: &crate::proto::client::ServerReply) -> String {
    match r.enhanced {
        Some(e) => format!("{} {e} {}", r.code, r.text.replace('\n', " ")),
        None => format!("{} {}", r.code, r.text.replace('\n', " ")),
    }
}

/// The mail name of this machine when the configuration cannot be read:
/// `/etc/mailname` (Debian's file for it), else the host name.
fn mail_domain() -> String {
    std::fs::read_to_string("/etc/mailname")
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace) && !s.contains('/'))
        .unwrap_or_else(|| crate::config::ServerConfig::default().hostname)
}

/// Text from the command line, the message or the daemon, with control
/// characters escaped, so it cannot forge lines on the terminal or in a
/// program's error log.
fn shown(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let e: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            e
        })
        .collect()
}

/// The whole command: returns the exit code, having printed any error.
pub fn run(args: &[String]) -> u8 {
    let fail = |code: u8, msg: &str| {
        eprintln!("sendmail: {}", shown(msg));
        code
    };
    let o = match parse_args(args) {
        Ok(o) => o,
        Err(e) => return fail(exit::USAGE, &e),
    };
    let config_path = o
        .config
        .clone()
        .or_else(|| std::env::var_os("PIGEON_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/etc/pigeon/pigeon.toml"));
    // The configuration may be unreadable to ordinary users (it can hold
    // the relay password): then the defaults apply.
    let cfg = match crate::config::load(&config_path) {
        Ok(c) => Some(c),
        Err(errs) if o.config.is_some() => {
            for e in &errs {
                eprintln!("sendmail: {}: {e}", config_path.display());
            }
            return exit::USAGE;
        }
        Err(_) => None,
    };
    let (socket, hostname, max) = match &cfg {
        Some(c) if c.sendmail.socket.as_os_str().is_empty() => {
            return fail(
                exit::UNAVAILABLE,
                "local submission is off (sendmail.socket = \"\")",
            )
        }
        Some(c) => (
            c.sendmail.socket.clone(),
            c.server.hostname.clone(),
            c.limits.max_message_size,
        ),
        None => (
            PathBuf::from(DEFAULT_SOCKET),
            mail_domain(),
            DEFAULT_MAX_SIZE,
        ),
    };
    let user = crate::ops::system::current_user().unwrap_or_else(|| "nobody".into());
    let sender = o
        .sender
        .clone()
        .unwrap_or_else(|| format!("{user}@{hostname}"));
    let sender = if sender.is_empty() {
        String::new()
    } else {
        qualify(&sender, &hostname)
    };
    let msg = match read_message(&mut io::stdin().lock(), o.ignore_dots, max) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return fail(exit::DATAERR, &e.to_string())
        }
        Err(e) => return fail(exit::IOERR, &format!("reading the message: {e}")),
    };
    let mut rcpts: Vec<String> = Vec::new();
    for a in &o.recipients {
        for r in argument_addresses(a, &hostname) {
            if !rcpts.contains(&r) {
                rcpts.push(r);
            }
        }
    }
    if o.extract {
        for r in header_recipients(split_header(&msg).0, &hostname) {
            if !rcpts.contains(&r) {
                rcpts.push(r);
            }
        }
    }
    if rcpts.is_empty() {
        return fail(
            exit::USAGE,
            if o.extract {
                "no recipient addresses found in the message header"
            } else {
                "no recipients given (name them as arguments, or use -t)"
            },
        );
    }
    let msg = complete_message(
        &msg,
        &sender,
        o.full_name.as_deref(),
        &hostname,
        SystemTime::now(),
    );
    match submit(&socket, &sender, &rcpts, &msg, &o) {
        Err((code, e)) => fail(code, &e),
        Ok(out) => {
            for (a, why, _) in &out.refused {
                eprintln!("sendmail: {}: {}", shown(a), shown(why));
            }
            if o.verbose {
                if let Some(id) = &out.queue_id {
                    eprintln!("sendmail: queued as {id}");
                }
            }
            if out.queue_id.is_none() {
                // Every recipient refused.
                let temp = out.refused.iter().any(|r| !r.2);
                return if temp { exit::TEMPFAIL } else { exit::NOUSER };
            }
            if out.refused.is_empty() {
                exit::OK
            } else if out.refused.iter().all(|r| r.2) {
                exit::NOUSER
            } else {
                exit::TEMPFAIL
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn shown_escapes_controls() {
        assert_eq!(shown("a\r\nb\u{1b}[1m \u{e9}"), "a\\r\\nb\\u{1b}[1m \u{e9}");
    }

    #[test]
    fn options_programs_use() {
        // cron
        let o = parse_args(&args(&["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"])).unwrap();
        assert_eq!(o.full_name.as_deref(), Some("CronDaemon"));
        assert!(o.ignore_dots && !o.extract);
        assert_eq!(o.recipients, ["root"]);
        // PHP mail(): sendmail -t -i, plus -f from sendmail_path
        let o = parse_args(&args(&["-t", "-i", "-f", "www@example.org"])).unwrap();
        assert!(o.extract && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some("www@example.org"));
        // mail(1): sendmail -oi -- rcpts
        let o = parse_args(&args(&["-oi", "--", "a@x.test", "-b@x.test"])).unwrap();
        assert!(o.ignore_dots);
        assert_eq!(o.recipients, ["a@x.test", "-b@x.test"]);
        let o = parse_args(&args(&[
            "-ti",
            "-f<>",
            "-bm",
            "-odi",
            "-Nsuccess,failure",
            "-R",
            "hdrs",
            "x",
        ]))
        .unwrap();
        assert!(o.extract && o.ignore_dots);
        assert_eq!(o.sender.as_deref(), Some(""));
        assert_eq!(o.notify, Some(Notify(Notify::SUCCESS | Notify::FAILURE)));
        assert_eq!(o.ret, Some(Ret::Hdrs));
        assert!(parse_args(&args(&["-bs"]))
            .unwrap_err()
            .contains("not supported"));
        assert!(parse_args(&args(&["-f"]))
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse_args(&args(&["-Z"]))
            .unwrap_err()
            .contains("unknown option"));
    }

    #[test]
    fn reading_stdin_dots_and_size() {
        let m = read_message(&mut &b"a\r\nb\n.\nc\n"[..], false, 100).unwrap();
        assert_eq!(m, b"a\nb\n");
        let m = read_message(&mut &b"a\n.\nc"[..], true, 100).unwrap();
        assert_eq!(m, b"a\n.\nc\n");
        assert!(read_message(&mut &[b'x'; 101][..], true, 100).is_err());
    }

    #[test]
    fn recipients_from_arguments_and_headers() {
        assert_eq!(
            argument_addresses("root, Bob <bob@x.test>,", "host.test"),
            ["root@host.test", "bob@x.test"]
        );
        let h = b"To: A <a@x.test>, b@x.test\nCc: \"C, Jr\" <c@x.test>\n (continued)\nBcc: hidden@x.test\nSubject: s\n";
        assert_eq!(
            header_recipients(h, "host.test"),
            ["a@x.test", "b@x.test", "c@x.test", "hidden@x.test"]
        );
        assert_eq!(
            header_recipients(b"To: root\n", "host.test"),
            ["root@host.test"]
        );
    }

    #[test]
    fn missing_fields_added_bcc_removed() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let m = complete_message(
            b"To: a@x.test\nBcc: h@x.test\n\tmore\nSubject: s\n\nbody\n",
            "u@host.test",
            Some("A \"U\""),
            "host.test",
            now,
        );
        let t = String::from_utf8(m).unwrap();
        assert!(t.starts_with("From: \"A U\" <u@host.test>\nDate: "), "{t}");
        assert!(t.contains("\nMessage-ID: <1700000000."), "{t}");
        assert!(!t.contains("Bcc") && !t.contains("more"), "{t}");
        assert!(t.ends_with("Subject: s\n\nbody\n"), "{t}");
        let m = complete_message(
            b"From: x@y\nDate: d\nMessage-ID: <i@d>\n\nb\n",
            "u@h",
            None,
            "h",
            now,
        );
        assert_eq!(m, b"From: x@y\nDate: d\nMessage-ID: <i@d>\n\nb\n");
        // No header at all: the body follows the added fields.
        let m = complete_message(b"just text\n", "u@h", None, "h", now);
        let t = String::from_utf8(m).unwrap();
        assert!(t.contains("\n\njust text\n"), "{t}");
    }
}
