//! The SMTP envelope of one accepted message: a plain data type shared by the
//! session (which fills it in) and the queue (which stores it).
//! Owns no I/O. Every string here has already been validated by the parser.

use std::net::IpAddr;

/// RET= parameter of MAIL (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Full,
    Hdrs,
}

/// BODY= parameter of MAIL (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    #[default]
    SevenBit,
    EightBitMime,
    BinaryMime,
}

/// NOTIFY= parameter of RCPT (RFC 3461 §4.1), as bit flags.
/// An empty set means the client gave no NOTIFY (default: FAILURE and DELAY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify(pub u8);

impl Notify {
    pub const NEVER: u8 = 1;
    pub const SUCCESS: u8 = 2;
    pub const FAILURE: u8 = 4;
    pub const DELAY: u8 = 8;

    pub fn has(self, flag: u8) -> bool {
        self.0 & flag != 0
    }
}

/// One accepted recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The forward path, `local@domain`, without angle brackets.
    pub address: String,
    /// ORCPT as `addr-type;address` with the xtext already decoded.
    pub orcpt: Option<String>,
    pub notify: Notify,
}

/// Everything the client told us about one message apart from its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Reverse path without angle brackets; empty for the null sender `<>`.
    pub sender: String,
    pub recipients: Vec<Recipient>,
    pub ret: Option<Ret>,
    /// ENVID with the xtext already decoded.
    pub envid: Option<String>,
    pub body_type: BodyType,
    pub smtputf8: bool,
    pub client_ip: IpAddr,
    /// The HELO/EHLO argument as given.
    pub helo: String,
    /// "SMTP", "ESMTP", "ESMTPS", "ESMTPA" or "ESMTPSA" (RFC 3848).
    pub protocol: String,
    pub auth_user: Option<String>,
}
