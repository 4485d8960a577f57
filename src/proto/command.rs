//! SMTP command-line parser: one line (CRLF already removed) in, a typed
//! `Command` or a parse error out. Parameters of MAIL and RCPT (SIZE, BODY,
//! SMTPUTF8, RET, ENVID, AUTH, NOTIFY, ORCPT) are validated here; policy
//! (limits, relay) is not. Untrusted bytes reach every function.

use super::address::{decode_xtext, parse_path, Mailbox};
use super::envelope::{BodyType, Notify, Ret};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    Bdat { size: u64, last: bool },
    Rset,
    Noop,
    Vrfy,
    Expn,
    Help,
    Quit,
    StartTls,
    Auth(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailFrom {
    /// None is the null reverse path `<>`.
    pub sender: Option<Mailbox>,
    pub size: Option<u64>,
    pub body: BodyType,
    pub smtputf8: bool,
    pub ret: Option<Ret>,
    pub envid: Option<String>,
    /// AUTH= parameter (RFC 4954 §5), xtext decoded; `<>` is kept as is.
    pub auth: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    pub rcpt: Mailbox,
    /// `<Postmaster>` without a domain (RFC 5321 §4.1.1.3).
    pub bare_postmaster: bool,
    pub notify: Notify,
    pub orcpt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not a command we know: 500 5.5.2.
    Unknown,
    /// Known command, bad arguments: 501 5.5.4 with the reason.
    Syntax(&'static str),
    /// A MAIL/RCPT parameter we do not support: 555 5.5.4.
    UnknownParam,
}

/// Parses one command line without its line ending.
pub fn parse_command(line: &[u8]) -> Result<Command, ParseError> {
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let verb = &line[..verb_end];
    if verb.len() > 8 || verb.is_empty() {
        return Err(ParseError::Unknown);
    }
    let mut up = [0u8; 8];
    for (d, s) in up.iter_mut().zip(verb) {
        *d = s.to_ascii_uppercase();
    }
    let verb = &up[..verb.len()];
    let args = std::str::from_utf8(line.get(verb_end + 1..).unwrap_or(b""))
        .map_err(|_| ParseError::Syntax("invalid UTF-8 in command"))?;
    if args.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ParseError::Syntax("control character in command"));
    }
    let no_args = |c: Command| {
        if args.trim().is_empty() {
            Ok(c)
        } else {
            Err(ParseError::Syntax("no parameters allowed"))
        }
    };
    match verb {
        b"EHLO" => Ok(Command::Ehlo(helo_arg(args)?)),
        b"HELO" => Ok(Command::Helo(helo_arg(args)?)),
        b"MAIL" => parse_mail(args).map(Command::Mail),
        b"RCPT" => parse_rcpt(args).map(Command::Rcpt),
        b"DATA" => no_args(Command::Data),
        b"BDAT" => parse_bdat(args),
        b"RSET" => no_args(Command::Rset),
        b"NOOP" => Ok(Command::Noop),
        b"QUIT" => no_args(Command::Quit),
        b"HELP" => Ok(Command::Help),
        b"VRFY" => {
            if args.trim().is_empty() {
                Err(ParseError::Syntax("VRFY needs an argument"))
            } else {
                Ok(Command::Vrfy)
            }
        }
        b"EXPN" => Ok(Command::Expn),
        b"STARTTLS" => no_args(Command::StartTls),
        b"AUTH" => Ok(Command::Auth(args.to_string())),
        _ => Err(ParseError::Unknown),
    }
}

fn helo_arg(args: &str) -> Result<String, ParseError> {
    let a = args.trim();
    if a.is_empty() {
        return Err(ParseError::Syntax(
            "HELO/EHLO needs a domain or address literal",
        ));
    }
    if a.contains(' ') {
        return Err(ParseError::Syntax("HELO/EHLO takes one argument"));
    }
    // RFC 5321 §4.1.1.1: a domain or an address literal; no TAB or other
    // control character (it would be copied into Received:).
    if a.chars().any(char::is_control) {
        return Err(ParseError::Syntax(
            "control character in HELO/EHLO argument",
        ));
    }
    if a.len() > 255 {
        return Err(ParseError::Syntax("HELO/EHLO argument too long"));
    }
    Ok(a.to_string())
}

/// "FROM:" / "TO:" prefix, case-insensitive; one space after the colon is
/// tolerated because widely used clients send it.
fn strip_prefix_ci<'a>(args: &'a str, prefix: &str) -> Option<&'a str> {
    let head = args.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        let rest = &args[prefix.len()..];
        Some(rest.strip_prefix(' ').unwrap_or(rest))
    } else {
        None
    }
}

fn params(rest: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    rest.split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        })
}

fn parse_mail(args: &str) -> Result<MailFrom, ParseError> {
    let rest = strip_prefix_ci(args, "FROM:")
        .ok_or(ParseError::Syntax("syntax is MAIL FROM:<address>"))?;
    let (sender, rest) = parse_path(rest, true).map_err(ParseError::Syntax)?;
    let mut m = MailFrom {
        sender,
        ..MailFrom::default()
    };
    let mut seen_body = false;
    for (k, v) in params(rest) {
        let dup = |seen: bool| {
            if seen {
                Err(ParseError::Syntax("duplicate parameter"))
            } else {
                Ok(())
            }
        };
        if k.eq_ignore_ascii_case("SIZE") {
            dup(m.size.is_some())?;
            let v = v.ok_or(ParseError::Syntax("SIZE needs a value"))?;
            if v.is_empty() || v.len() > 20 || !v.bytes().all(|c| c.is_ascii_digit()) {
                return Err(ParseError::Syntax("bad SIZE value"));
            }
            m.size = Some(v.parse().unwrap_or(u64::MAX));
        } else if k.eq_ignore_ascii_case("BODY") {
            dup(seen_body)?;
            seen_body = true;
            m.body = match v.map(|v| v.to_ascii_uppercase()).as_deref() {
                Some("7BIT") => BodyType::SevenBit,
                Some("8BITMIME") => BodyType::EightBitMime,
                Some("BINARYMIME") => BodyType::BinaryMime,
                _ => {
                    return Err(ParseError::Syntax(
                        "BODY must be 7BIT, 8BITMIME or BINARYMIME",
                    ))
                }
            };
        } else if k.eq_ignore_ascii_case("SMTPUTF8") {
            dup(m.smtputf8)?;
            if v.is_some() {
                return Err(ParseError::Syntax("SMTPUTF8 takes no value"));
            }
            m.smtputf8 = true;
        } else if k.eq_ignore_ascii_case("RET") {
            dup(m.ret.is_some())?;
            m.ret = Some(match v.map(|v| v.to_ascii_uppercase()).as_deref() {
                Some("FULL") => Ret::Full,
                Some("HDRS") => Ret::Hdrs,
                _ => return Err(ParseError::Syntax("RET must be FULL or HDRS")),
            });
        } else if k.eq_ignore_ascii_case("ENVID") {
            dup(m.envid.is_some())?;
            let v = v.ok_or(ParseError::Syntax("ENVID needs a value"))?;
            if v.is_empty() || v.len() > 100 {
                return Err(ParseError::Syntax("ENVID must be 1 to 100 characters"));
            }
            m.envid = Some(decode_xtext(v).map_err(ParseError::Syntax)?);
        } else if k.eq_ignore_ascii_case("AUTH") {
            dup(m.auth.is_some())?;
            let v = v.ok_or(ParseError::Syntax("AUTH needs a value"))?;
            m.auth = Some(if v == "<>" {
                v.to_string()
            } else {
                decode_xtext(v).map_err(ParseError::Syntax)?
            });
        } else {
            return Err(ParseError::UnknownParam);
        }
    }
    Ok(m)
}

fn parse_rcpt(args: &str) -> Result<RcptTo, ParseError> {
    let rest =
        strip_prefix_ci(args, "TO:").ok_or(ParseError::Syntax("syntax is RCPT TO:<address>"))?;
    // RFC 5321 §4.1.1.3: "<Postmaster>" without a domain must be accepted.
    let (rcpt, bare_postmaster, rest) = match rest.get(..12) {
        Some(p)
            if p.eq_ignore_ascii_case("<postmaster>")
                && (rest.len() == 12 || rest.as_bytes()[12] == b' ') =>
        {
            let m = Mailbox {
                local: "postmaster".into(),
                domain: super::address::Domain::Name(String::new()),
                quoted: false,
                utf8: false,
            };
            (m, true, rest[12..].trim_start_matches(' '))
        }
        _ => {
            let (m, rest) = parse_path(rest, false).map_err(ParseError::Syntax)?;
            (
                m.ok_or(ParseError::Syntax("empty forward path"))?,
                false,
                rest,
            )
        }
    };
    let mut r = RcptTo {
        rcpt,
        bare_postmaster,
        notify: Notify::default(),
        orcpt: None,
    };
    for (k, v) in params(rest) {
        if k.eq_ignore_ascii_case("NOTIFY") {
            if r.notify.0 != 0 {
                return Err(ParseError::Syntax("duplicate parameter"));
            }
            let v = v.ok_or(ParseError::Syntax("NOTIFY needs a value"))?;
            let mut bits = 0u8;
            for item in v.split(',') {
                let bit = match item.to_ascii_uppercase().as_str() {
                    "NEVER" => Notify::NEVER,
                    "SUCCESS" => Notify::SUCCESS,
                    "FAILURE" => Notify::FAILURE,
                    "DELAY" => Notify::DELAY,
                    _ => {
                        return Err(ParseError::Syntax(
                            "NOTIFY must be NEVER or SUCCESS,FAILURE,DELAY",
                        ))
                    }
                };
                bits |= bit;
            }
            if bits & Notify::NEVER != 0 && bits != Notify::NEVER {
                return Err(ParseError::Syntax("NOTIFY=NEVER cannot be combined"));
            }
            r.notify = Notify(bits);
        } else if k.eq_ignore_ascii_case("ORCPT") {
            if r.orcpt.is_some() {
                return Err(ParseError::Syntax("duplicate parameter"));
            }
            let v = v.ok_or(ParseError::Syntax("ORCPT needs a value"))?;
            let (atype, addr) = v
                .split_once(';')
                .ok_or(ParseError::Syntax("ORCPT must be addr-type;xtext"))?;
            let atype_ok = !atype.is_empty()
                && atype
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && atype.as_bytes()[0].is_ascii_alphanumeric();
            if !atype_ok || addr.is_empty() || v.len() > 500 {
                return Err(ParseError::Syntax("bad ORCPT value"));
            }
            let decoded = decode_xtext(addr).map_err(ParseError::Syntax)?;
            r.orcpt = Some(format!("{atype};{decoded}"));
        } else {
            return Err(ParseError::UnknownParam);
        }
    }
    Ok(r)
}

fn parse_bdat(args: &str) -> Result<Command, ParseError> {
    let mut it = args.split(' ').filter(|s| !s.is_empty());
    let size = it
        .next()
        .ok_or(ParseError::Syntax("BDAT needs a chunk size"))?;
    if size.len() > 20 || !size.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ParseError::Syntax("bad BDAT chunk size"));
    }
    let size: u64 = size
        .parse()
        .map_err(|_| ParseError::Syntax("bad BDAT chunk size"))?;
    let last = match it.next() {
        None => false,
        Some(l) if l.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(ParseError::Syntax("syntax is BDAT size [LAST]")),
    };
    if it.next().is_some() {
        return Err(ParseError::Syntax("syntax is BDAT size [LAST]"));
    }
    Ok(Command::Bdat { size, last })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, ParseError> {
        parse_command(s.as_bytes())
    }

    #[test]
    fn verbs() {
        assert_eq!(
            p("ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(p("QUIT"), Ok(Command::Quit));
        assert_eq!(p("NOOP anything"), Ok(Command::Noop));
        assert_eq!(p("FOO"), Err(ParseError::Unknown));
        assert_eq!(p(""), Err(ParseError::Unknown));
        assert!(matches!(p("EHLO"), Err(ParseError::Syntax(_))));
        assert!(matches!(p("DATA x"), Err(ParseError::Syntax(_))));
        assert_eq!(
            p("BDAT 10 LAST"),
            Ok(Command::Bdat {
                size: 10,
                last: true
            })
        );
        assert_eq!(
            p("BDAT 0"),
            Ok(Command::Bdat {
                size: 0,
                last: false
            })
        );
        assert!(matches!(p("BDAT -1"), Err(ParseError::Syntax(_))));
        assert!(matches!(p("BDAT 1 LAST x"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn mail_params() {
        let Ok(Command::Mail(m)) =
            p("MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=x+2By AUTH=<>")
        else {
            panic!()
        };
        assert_eq!(m.size, Some(1000));
        assert_eq!(m.body, BodyType::EightBitMime);
        assert!(m.smtputf8);
        assert_eq!(m.ret, Some(Ret::Hdrs));
        assert_eq!(m.envid.as_deref(), Some("x+y"));
        assert!(matches!(
            p("MAIL FROM:<a@b.c> FOO=1"),
            Err(ParseError::UnknownParam)
        ));
        assert!(matches!(
            p("MAIL FROM:<a@b.c> SIZE=1 SIZE=2"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<a@b.c> RET=ALL"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            p("MAIL FROM:<a@b.c> ENVID=a=b"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(p("MAIL TO:<a@b.c>"), Err(ParseError::Syntax(_))));
        let Ok(Command::Mail(m)) = p("mail from: <>") else {
            panic!()
        };
        assert!(m.sender.is_none());
    }

    #[test]
    fn rcpt_params() {
        let Ok(Command::Rcpt(r)) = p("RCPT TO:<a@b.c> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b")
        else {
            panic!()
        };
        assert_eq!(r.notify, Notify(Notify::SUCCESS | Notify::FAILURE));
        assert_eq!(r.orcpt.as_deref(), Some("rfc822;a@b"));
        assert!(matches!(
            p("RCPT TO:<a@b.c> NOTIFY=NEVER,SUCCESS"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            p("RCPT TO:<a@b.c> ORCPT=nosemicolon"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(p("RCPT TO:<>"), Err(ParseError::Syntax(_))));
        let Ok(Command::Rcpt(r)) = p("RCPT TO:<Postmaster>") else {
            panic!()
        };
        assert!(r.bare_postmaster);
    }
}
