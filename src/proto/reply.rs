//! SMTP replies as values: a code, an RFC 3463 enhanced status code and text.
//! Every reply the server sends is built here or from these constants, so the
//! wording and codes live in one place. No I/O.

use std::borrow::Cow;
use std::fmt;

/// An RFC 3463 enhanced status code, `class.subject.detail`, as a value:
/// status codes are compared and classified by their numbers, in both
/// directions (replies we give, replies we get, DSNs), never by text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct EnhancedCode {
    /// 2 success, 4 persistent transient failure, 5 permanent failure.
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> EnhancedCode {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }

    /// `x.0.0`, the code that says nothing more than the class.
    pub const fn generic(class: u8) -> EnhancedCode {
        EnhancedCode::new(class, 0, 0)
    }

    /// Parses `class.subject.detail` (RFC 3463 §2: class 2, 4 or 5;
    /// subject and detail of one to three digits). Usable in constants.
    pub const fn parse(s: &str) -> Option<EnhancedCode> {
        let b = s.as_bytes();
        let mut parts = [0u16; 3];
        let mut digits = [0usize; 3];
        let mut part = 0;
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c == b'.' {
                part += 1;
                if part > 2 {
                    return None;
                }
            } else if c.is_ascii_digit() {
                digits[part] += 1;
                if digits[part] > 3 {
                    return None;
                }
                parts[part] = parts[part] * 10 + (c - b'0') as u16;
            } else {
                return None;
            }
            i += 1;
        }
        if part != 2 || digits[0] != 1 || digits[1] == 0 || digits[2] == 0 {
            return None;
        }
        match parts[0] {
            2 | 4 | 5 => Some(EnhancedCode::new(parts[0] as u8, parts[1], parts[2])),
            _ => None,
        }
    }

    pub fn is_permanent(self) -> bool {
        self.class == 5
    }

    pub fn is_transient(self) -> bool {
        self.class == 4
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl std::str::FromStr for EnhancedCode {
    type Err = ();
    fn from_str(s: &str) -> Result<EnhancedCode, ()> {
        EnhancedCode::parse(s).ok_or(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// RFC 3463 enhanced status code; None where RFC 2034 leaves it out
    /// (the greeting, EHLO) or for intermediate replies (354).
    pub enhanced: Option<EnhancedCode>,
    /// Reply text; a '\n' separates the lines of a multi-line reply.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with the enhanced code written out ("5.1.1", or "" for
    /// none); a malformed code is left out (a unit test checks that every
    /// constant here has the one it means).
    pub const fn new(code: u16, enhanced: &'static str, text: &'static str) -> Reply {
        Reply {
            code,
            enhanced: EnhancedCode::parse(enhanced),
            text: Cow::Borrowed(text),
        }
    }

    pub fn owned(code: u16, enhanced: &'static str, text: String) -> Reply {
        Reply {
            code,
            enhanced: EnhancedCode::parse(enhanced),
            text: Cow::Owned(text),
        }
    }

    pub fn typed(code: u16, enhanced: Option<EnhancedCode>, text: String) -> Reply {
        Reply {
            code,
            enhanced,
            text: Cow::Owned(text),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// Appends the reply in wire form (CRLF-terminated lines) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { b'-' } else { b' ' };
            out.extend_from_slice(itoa3(self.code).as_slice());
            out.push(sep);
            if let Some(e) = self.enhanced {
                out.extend_from_slice(e.to_string().as_bytes());
                out.push(b' ');
            }
            // Reply text never carries CR or LF of its own into the stream.
            out.extend(line.bytes().map(|b| if b == b'\r' { b' ' } else { b }));
            out.extend_from_slice(b"\r\n");
        }
    }

    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64);
        self.write_to(&mut v);
        v
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.enhanced {
            None => write!(f, "{} {}", self.code, self.text.replace('\n', " / ")),
            Some(e) => write!(f, "{} {e} {}", self.code, self.text.replace('\n', " / ")),
        }
    }
}

fn itoa3(code: u16) -> [u8; 3] {
    let c = code.min(999);
    [
        b'0' + (c / 100) as u8,
        b'0' + (c / 10 % 10) as u8,
        b'0' + (c % 10) as u8,
    ]
}

// Named replies. Texts follow common MTA wording so admins recognise them.
pub const OK: Reply = Reply::new(250, "2.0.0", "Ok");
pub const SENDER_OK: Reply = Reply::new(250, "2.1.0", "Ok");
pub const RCPT_OK: Reply = Reply::new(250, "2.1.5", "Ok");
pub const BYE: Reply = Reply::new(221, "2.0.0", "Bye");
pub const START_DATA: Reply = Reply::new(354, "", "End data with <CR><LF>.<CR><LF>");
pub const VRFY_CANNOT: Reply = Reply::new(
    252,
    "2.5.0",
    "Cannot VRFY user, but will accept message and attempt delivery",
);
pub const HELP: Reply = Reply::new(
    214,
    "2.0.0",
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT\nSee RFC 5321",
);
pub const UNKNOWN_COMMAND: Reply = Reply::new(500, "5.5.2", "Error: command not recognized");
pub const LINE_TOO_LONG: Reply = Reply::new(500, "5.5.2", "Error: line too long");
pub const NOT_IMPLEMENTED: Reply = Reply::new(502, "5.5.1", "Error: command not implemented");
pub const BAD_SEQUENCE_HELO: Reply = Reply::new(503, "5.5.1", "Error: send HELO/EHLO first");
pub const REFUSED_AT_CONNECT: Reply = Reply::new(
    503,
    "5.5.1",
    "Error: this connection was refused; send QUIT",
);
pub const LOCAL_USER_NOT_ALLOWED: Reply =
    Reply::new(554, "5.7.1", "Error: this local user may not submit mail");
pub const LOCAL_SENDER_NOT_OWNED: Reply = Reply::new(
    553,
    "5.7.1",
    "Error: this local user may not use that sender address",
);
pub const BAD_SEQUENCE_NESTED_MAIL: Reply = Reply::new(503, "5.5.1", "Error: nested MAIL command");
pub const BAD_SEQUENCE_NEED_MAIL: Reply = Reply::new(503, "5.5.1", "Error: need MAIL command");
pub const BAD_SEQUENCE_NEED_RCPT: Reply = Reply::new(503, "5.5.1", "Error: need RCPT command");
pub const BAD_SEQUENCE_BDAT: Reply = Reply::new(
    503,
    "5.5.1",
    "Error: command not allowed while a BDAT transfer is in progress",
);
pub const NO_VALID_RCPTS: Reply = Reply::new(554, "5.5.1", "Error: no valid recipients");
pub const PARAM_UNKNOWN: Reply = Reply::new(
    555,
    "5.5.4",
    "Error: MAIL FROM/RCPT TO parameter not recognized",
);
pub const TOO_MANY_RCPTS: Reply = Reply::new(452, "4.5.3", "Error: too many recipients");
pub const MSG_TOO_BIG: Reply = Reply::new(552, "5.3.4", "Error: message size exceeds fixed limit");
pub const LOOP_DETECTED: Reply = Reply::new(
    554,
    "5.4.6",
    "Error: too many hops (Received: headers), mail loop detected",
);
pub const BARE_NEWLINE: Reply = Reply::new(
    550,
    "5.6.11",
    "Error: message contains a bare CR or LF; every line must end with CRLF",
);
pub const NEED_SMTPUTF8: Reply = Reply::new(
    553,
    "5.6.7",
    "Error: non-ASCII address requires the SMTPUTF8 parameter",
);
pub const TOO_MANY_ERRORS: Reply =
    Reply::new(421, "4.7.0", "Error: too many errors, closing connection");
pub const TIMEOUT: Reply = Reply::new(421, "4.4.2", "Error: timeout exceeded, closing connection");
pub const SHUTTING_DOWN: Reply =
    Reply::new(421, "4.3.2", "Service shutting down, closing connection");
pub const TOO_MANY_CONNECTIONS: Reply =
    Reply::new(421, "4.7.0", "Error: too many connections, try again later");
pub const TOO_MANY_CONNECTIONS_FROM_IP: Reply = Reply::new(
    421,
    "4.7.0",
    "Error: too many connections from your address, try again later",
);
pub const USER_UNKNOWN: Reply = Reply::new(
    550,
    "5.1.1",
    "Error: mailbox unavailable: no such user here",
);
pub const ALIAS_ERROR: Reply = Reply::new(
    550,
    "5.4.6",
    "Error: recipient address cannot be expanded (alias loop or limit)",
);
/// A Delivered-To: field of the message names an address that one of its
/// recipients expands through: delivering it would loop.
pub const DELIVERED_TO_LOOP: Reply = Reply::new(
    554,
    "5.4.6",
    "Error: mail loop: the message was already delivered through a recipient's alias (Delivered-To:)",
);
pub const AUTH_TEMPORARY_FAILURE: Reply = Reply::new(
    451,
    "4.4.3",
    "Temporary DNS failure checking the sender's authentication, try again later",
);
pub const SRS_INVALID: Reply = Reply::new(
    550,
    "5.1.1",
    "Error: invalid address: not a bounce to mail this server forwarded, or too old",
);
pub const AMBIGUOUS_AUTHOR: Reply = Reply::new(
    550,
    "5.7.1",
    "Error: the message needs exactly one From: field, with addresses of one domain",
);
pub const RELAY_DENIED: Reply = Reply::new(554, "5.7.1", "Error: relay access denied");
pub const INSUFFICIENT_STORAGE: Reply = Reply::new(
    452,
    "4.3.1",
    "Error: insufficient system storage, try again later",
);
pub const LOCAL_ERROR: Reply = Reply::new(
    451,
    "4.3.0",
    "Error: local error in processing, message not accepted; try again later",
);

pub const STARTTLS_READY: Reply = Reply::new(220, "2.0.0", "Ready to start TLS");
pub const TLS_ALREADY_ACTIVE: Reply = Reply::new(503, "5.5.1", "Error: TLS already active");
pub const STARTTLS_IN_TRANSACTION: Reply = Reply::new(
    503,
    "5.5.1",
    "Error: STARTTLS not allowed during a mail transaction",
);
pub const TOO_MANY_JUNK_COMMANDS: Reply = Reply::new(
    421,
    "4.7.0",
    "Error: too many commands without progress, closing connection",
);
pub const AUTH_BUSY: Reply = Reply::new(
    454,
    "4.7.0",
    "Error: temporary authentication failure, try again later",
);
pub const AUTH_OK: Reply = Reply::new(235, "2.7.0", "Authentication successful");
pub const AUTH_FAILED: Reply = Reply::new(535, "5.7.8", "Error: authentication failed");
pub const AUTH_NEEDS_TLS: Reply = Reply::new(
    538,
    "5.7.11",
    "Encryption required for requested authentication mechanism",
);
pub const AUTH_REQUIRED: Reply = Reply::new(530, "5.7.0", "Authentication required");
pub const AUTH_UNKNOWN_MECHANISM: Reply =
    Reply::new(504, "5.5.4", "Error: unrecognized authentication type");
pub const AUTH_BAD_BASE64: Reply =
    Reply::new(501, "5.5.2", "Error: cannot decode response (bad base64)");
pub const AUTH_CANCELLED: Reply = Reply::new(501, "5.7.0", "Error: authentication cancelled");
pub const AUTH_NOT_ENABLED: Reply = Reply::new(503, "5.5.1", "Error: authentication not enabled");
pub const AUTH_ALREADY: Reply = Reply::new(503, "5.5.1", "Error: already authenticated");
pub const AUTH_IN_TRANSACTION: Reply = Reply::new(
    503,
    "5.5.1",
    "Error: authentication not allowed during a mail transaction",
);
pub const AUTH_TOO_MANY_FAILURES: Reply = Reply::new(
    421,
    "4.7.0",
    "Error: too many failed authentications, closing connection",
);
pub const AUTH_IP_BLOCKED: Reply = Reply::new(
    421,
    "4.7.0",
    "Error: too many failed authentications from your address, try again later",
);
pub const SENDER_NOT_OWNED: Reply = Reply::new(
    553,
    "5.7.1",
    "Error: sender address not owned by the authenticated user",
);
pub const FROM_HEADER_NOT_OWNED: Reply = Reply::new(
    550,
    "5.7.1",
    "Error: From: header address not owned by the authenticated user",
);
pub const FROM_HEADER_MULTIPLE: Reply =
    Reply::new(550, "5.7.1", "Error: more than one From: header field");
pub const HEADER_TOO_LARGE_TO_CHECK: Reply = Reply::new(
    552,
    "5.3.4",
    "Error: header section too large to check the From: header",
);
pub const LOCAL_SENDER_NOT_ALLOWED: Reply = Reply::new(
    550,
    "5.7.1",
    "Error: sender address not allowed for this local user",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line() {
        assert_eq!(OK.to_wire(), b"250 2.0.0 Ok\r\n");
        let r = Reply::owned(250, "", "host\nPIPELINING\nDSN".into());
        assert_eq!(r.to_wire(), b"250-host\r\n250-PIPELINING\r\n250 DSN\r\n");
        assert_eq!(
            START_DATA.to_wire(),
            b"354 End data with <CR><LF>.<CR><LF>\r\n"
        );
    }

    #[test]
    fn enhanced_codes_parse_strictly() {
        assert_eq!(
            EnhancedCode::parse("5.1.1"),
            Some(EnhancedCode::new(5, 1, 1))
        );
        assert_eq!(
            EnhancedCode::parse("4.7.650"),
            Some(EnhancedCode::new(4, 7, 650))
        );
        for bad in [
            "", "5.1", "5.1.1.1", "3.1.1", "5..1", "5.1.1000", "55.1.1", "5.a.1", " 5.1.1",
        ] {
            assert_eq!(EnhancedCode::parse(bad), None, "{bad}");
        }
        assert_eq!(EnhancedCode::new(4, 4, 1).to_string(), "4.4.1");
    }

    /// Every reply written with an enhanced code in this crate's source
    /// has a valid one, of its reply code's class.
    #[test]
    fn every_written_code_is_valid() {
        let sources = [
            include_str!("reply.rs"),
            include_str!("session.rs"),
            include_str!("../policy/mod.rs"),
            include_str!("../server/mod.rs"),
        ];
        let mut n = 0;
        for src in sources {
            for call in src.split("Reply::").skip(1) {
                let Some(args) = call
                    .strip_prefix("new(")
                    .or_else(|| call.strip_prefix("owned("))
                else {
                    continue;
                };
                let mut it = args.splitn(3, ',');
                let (Some(code), Some(enh)) = (it.next(), it.next()) else {
                    continue;
                };
                let (Ok(code), Some(enh)) = (
                    code.trim().parse::<u16>(),
                    enh.trim()
                        .strip_prefix('"')
                        .and_then(|e| e.strip_suffix('"')),
                ) else {
                    continue;
                };
                if enh.is_empty() {
                    continue;
                }
                let e = EnhancedCode::parse(enh).unwrap_or_else(|| panic!("{code} {enh}"));
                assert_eq!(u16::from(e.class), code / 100, "{code} {enh}");
                n += 1;
            }
        }
        assert!(n > 50, "only {n} replies found");
    }
}
