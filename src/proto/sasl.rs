//! SASL PLAIN (RFC 4616) and LOGIN response decoding for SMTP AUTH
//! (RFC 4954). Base64 by the `base64` crate. Untrusted bytes reach every
//! function; nothing here logs, since responses carry passwords.

use base64::Engine;

/// Mechanisms we offer, in EHLO order.
pub const MECHANISMS: &str = "PLAIN LOGIN";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

impl Mechanism {
    pub fn parse(name: &str) -> Option<Mechanism> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }
}

/// Credentials a client presented. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Authorization identity (PLAIN only); empty when not given.
    pub authzid: String,
    pub login: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("login", &self.login)
            .finish_non_exhaustive()
    }
}

/// Decodes one base64 response line; "=" is the empty response (RFC 4954
/// §4). None when it is not base64.
pub fn decode(line: &[u8]) -> Option<Vec<u8>> {
    if line == b"=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(line).ok()
}

pub fn encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// PLAIN: `authzid NUL authcid NUL passwd`, all UTF-8.
pub fn parse_plain(msg: &[u8]) -> Result<Credentials, &'static str> {
    let mut parts = msg.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("PLAIN response must be authzid NUL login NUL password");
    };
    let s = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| "PLAIN response is not UTF-8");
    let c = Credentials {
        authzid: s(authz)?,
        login: s(authc)?,
        password: s(pass)?,
    };
    if c.login.is_empty() {
        return Err("empty login");
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain() {
        let c = parse_plain(b"\0alice\0secret").unwrap();
        assert_eq!(
            (c.authzid.as_str(), c.login.as_str(), c.password.as_str()),
            ("", "alice", "secret")
        );
        assert!(parse_plain(b"alice\0secret").is_err());
        assert!(parse_plain(b"\0\0secret").is_err());
        assert!(parse_plain(b"a\0b\0c\0d").is_err());
        assert_eq!(decode(b"AGFsaWNlAHNlY3JldA==").unwrap(), b"\0alice\0secret");
        assert!(decode(b"not base64!").is_none());
        assert_eq!(decode(b"=").unwrap(), b"");
        assert!(!format!("{c:?}").contains("secret"));
    }
}
