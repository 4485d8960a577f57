//! RFC 5321 path and mailbox parsing (with RFC 6531 UTF-8 extensions), and
//! RFC 3461 xtext decoding. Strict: anything outside the grammar is refused
//! with a reason, never passed on raw. Untrusted bytes reach every function.

use std::net::{Ipv4Addr, Ipv6Addr};

const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 256;

/// The domain part of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Domain {
    /// A host name, ASCII letters lowercased.
    Name(String),
    /// An address literal including the brackets, e.g. `[192.0.2.1]`.
    Literal(String),
}

impl Domain {
    pub fn as_str(&self) -> &str {
        match self {
            Domain::Name(s) | Domain::Literal(s) => s,
        }
    }
}

/// A parsed mailbox `local@domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The local part exactly as it appears on the wire (quotes kept).
    pub local: String,
    pub domain: Domain,
    /// True when the local part was a quoted string.
    pub quoted: bool,
    /// True when any part contains non-ASCII characters (needs SMTPUTF8).
    pub utf8: bool,
}

impl Mailbox {
    /// `local@domain`, the form stored in the envelope.
    pub fn address(&self) -> String {
        let mut s = String::with_capacity(self.local.len() + 1 + self.domain.as_str().len());
        s.push_str(&self.local);
        s.push('@');
        s.push_str(self.domain.as_str());
        s
    }

    /// The local part with quoting removed (for routing decisions).
    pub fn local_unquoted(&self) -> String {
        if !self.quoted {
            return self.local.clone();
        }
        let inner = &self.local[1..self.local.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut esc = false;
        for c in inner.chars() {
            if esc {
                out.push(c);
                esc = false;
            } else if c == '\\' {
                esc = true;
            } else {
                out.push(c);
            }
        }
        out
    }
}

/// Parses `<path>` at the start of `s` and returns it with the rest of the
/// line (the parameters). `Ok(None)` is the null path `<>`, allowed only
/// when `allow_null`. A source route (`<@a,@b:user@c>`) is accepted and ignored.
pub fn parse_path(s: &str, allow_null: bool) -> Result<(Option<Mailbox>, &str), &'static str> {
    let b = s.as_bytes();
    if b.first() != Some(&b'<') {
        return Err("address must be enclosed in <>");
    }
    let mut i = 1;
    if allow_null && b.get(1) == Some(&b'>') {
        return Ok((None, rest_after(s, 2)?));
    }
    // A-d-l: "@" domain *( "," "@" domain ) ":"
    if b.get(i) == Some(&b'@') {
        loop {
            i += 1; // skip '@'
            let (_, n) = parse_domain(&s[i..])?;
            i += n;
            match b.get(i) {
                Some(b',') if b.get(i + 1) == Some(&b'@') => i += 1,
                Some(b':') => {
                    i += 1;
                    break;
                }
                _ => return Err("malformed source route"),
            }
        }
    }
    let (mbox, n) = parse_mailbox(&s[i..])?;
    i += n;
    if b.get(i) != Some(&b'>') {
        return Err("address must end with >");
    }
    if i + 1 > MAX_PATH {
        return Err("address too long");
    }
    Ok((Some(mbox), rest_after(s, i + 1)?))
}

fn rest_after(s: &str, at: usize) -> Result<&str, &'static str> {
    let rest = &s[at..];
    if rest.is_empty() || rest.starts_with(' ') {
        Ok(rest.trim_start_matches(' '))
    } else {
        Err("garbage after address")
    }
}

/// Parses `local@domain` at the start of `s`; returns it and the bytes used.
pub fn parse_mailbox(s: &str) -> Result<(Mailbox, usize), &'static str> {
    let b = s.as_bytes();
    let (local_len, quoted) = if b.first() == Some(&b'"') {
        (quoted_string_len(s)?, true)
    } else {
        (dot_string_len(s)?, false)
    };
    let local = &s[..local_len];
    if local.len() > MAX_LOCAL_PART {
        return Err("local part too long");
    }
    if b.get(local_len) != Some(&b'@') {
        return Err("address must be local-part@domain");
    }
    let rest = &s[local_len + 1..];
    let (domain, dlen) = if rest.starts_with('[') {
        let (lit, n) = parse_address_literal(rest)?;
        (Domain::Literal(lit), n)
    } else {
        let (name, n) = parse_domain(rest)?;
        (Domain::Name(name), n)
    };
    // Needs SMTPUTF8 on the wire when written in UTF-8, even though it is
    // kept as A-labels.
    let utf8 = !local.is_ascii() || !domain.as_str().is_ascii();
    let domain = match domain {
        // RFC 6531 §3.2, RFC 5890 §2.3.2.1: a U-label domain is the same
        // domain as its lowercase A-label form, which is what routing and
        // the local-domain tables compare.
        Domain::Name(name) if !name.is_ascii() => Domain::Name(
            idna::domain_to_ascii_strict(&name)
                .map_err(|_| "invalid internationalized domain name")?,
        ),
        d => d,
    };
    Ok((
        Mailbox {
            local: local.to_string(),
            domain,
            quoted,
            utf8,
        },
        local_len + 1 + dlen,
    ))
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

fn dot_string_len(s: &str) -> Result<usize, &'static str> {
    let mut len = 0;
    let mut atom_len = 0;
    for c in s.chars() {
        if is_atext(c) {
            atom_len += 1;
        } else if c == '.' {
            if atom_len == 0 {
                return Err("empty atom in local part");
            }
            atom_len = 0;
        } else {
            break;
        }
        len += c.len_utf8();
    }
    if len == 0 {
        return Err("empty local part");
    }
    if atom_len == 0 {
        return Err("local part ends with a dot");
    }
    Ok(len)
}

fn quoted_string_len(s: &str) -> Result<usize, &'static str> {
    let mut it = s.char_indices().skip(1);
    while let Some((i, c)) = it.next() {
        match c {
            '"' => {
                if i == 1 {
                    return Err("empty quoted local part");
                }
                return Ok(i + 1);
            }
            '\\' => match it.next() {
                Some((_, e)) if (' '..='~').contains(&e) => {}
                _ => return Err("bad escape in quoted local part"),
            },
            c if (' '..='~').contains(&c) => {}
            c if !c.is_ascii() && !c.is_control() => {}
            _ => return Err("invalid character in quoted local part"),
        }
    }
    Err("unterminated quoted local part")
}

/// Parses a host name: labels of letters, digits and hyphens (or UTF-8),
/// not starting or ending with a hyphen, 63 octets at most, 255 in all.
/// A trailing dot is refused. Returns the lowercased name and bytes used.
pub fn parse_domain(s: &str) -> Result<(String, usize), &'static str> {
    let mut len = 0;
    let mut label_len = 0;
    let mut prev = '.';
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || (!c.is_ascii() && c.is_alphanumeric()) {
            label_len += c.len_utf8();
        } else if c == '-' {
            if label_len == 0 {
                return Err("domain label starts with a hyphen");
            }
            label_len += 1;
        } else if c == '.' {
            if label_len == 0 {
                return Err("empty domain label");
            }
            if prev == '-' {
                return Err("domain label ends with a hyphen");
            }
            label_len = 0;
        } else {
            break;
        }
        if label_len > 63 {
            return Err("domain label too long");
        }
        prev = c;
        len += c.len_utf8();
    }
    if len == 0 {
        return Err("missing domain");
    }
    if prev == '.' {
        return Err("domain ends with a dot");
    }
    if prev == '-' {
        return Err("domain label ends with a hyphen");
    }
    if len > MAX_DOMAIN {
        return Err("domain too long");
    }
    Ok((s[..len].to_ascii_lowercase(), len))
}

fn parse_address_literal(s: &str) -> Result<(String, usize), &'static str> {
    let end = s.find(']').ok_or("unterminated address literal")?;
    let inner = &s[1..end];
    if let Some(v6) = inner
        .strip_prefix("IPv6:")
        .or_else(|| inner.strip_prefix("ipv6:"))
    {
        v6.parse::<Ipv6Addr>()
            .map_err(|_| "invalid IPv6 address literal")?;
    } else if inner.parse::<Ipv4Addr>().is_err() {
        // General-address-literal: Standardized-tag ":" 1*dcontent
        let (tag, content) = inner.split_once(':').ok_or("invalid address literal")?;
        let tag_ok = !tag.is_empty()
            && tag.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
            && !tag.ends_with('-');
        let content_ok = !content.is_empty()
            && content
                .bytes()
                .all(|c| (33..=90).contains(&c) || (94..=126).contains(&c));
        if !tag_ok || !content_ok {
            return Err("invalid address literal");
        }
    }
    Ok((s[..=end].to_string(), end + 1))
}

/// Decodes RFC 3461 xtext: printable ASCII except '+' and '=', with `+HH`
/// hex escapes (uppercase hex, as the RFC requires).
pub fn decode_xtext(s: &str) -> Result<String, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let h = b.get(i + 1..i + 3).ok_or("truncated xtext escape")?;
                let hex = |c: u8| match c {
                    b'0'..=b'9' => Some(c - b'0'),
                    b'A'..=b'F' => Some(c - b'A' + 10),
                    _ => None,
                };
                match (hex(h[0]), hex(h[1])) {
                    (Some(x), Some(y)) => out.push(x * 16 + y),
                    _ => return Err("invalid xtext escape"),
                }
                i += 3;
            }
            b'=' => return Err("invalid character in xtext"),
            c if (33..=126).contains(&c) || c >= 0x80 => {
                // Non-ASCII is UTF-8 (the input is a str): RFC 6533 allows
                // it in utf-8-addr-xtext.
                out.push(c);
                i += 1;
            }
            _ => return Err("invalid character in xtext"),
        }
    }
    let s = String::from_utf8(out).map_err(|_| "xtext is not valid UTF-8")?;
    // Decoded values end up in DSN header fields: no control characters
    // (CR, LF, NUL...) may come out of an escape.
    if s.chars().any(|c| c.is_control()) {
        return Err("xtext decodes to a control character");
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        parse_path(s, true)
            .map(|(m, _)| m.map(|m| m.address()).unwrap_or_default())
            .unwrap()
    }

    #[test]
    fn valid_paths() {
        assert_eq!(ok("<a@b.example>"), "a@b.example");
        assert_eq!(ok("<>"), "");
        assert_eq!(ok("<A.B@EXAMPLE.org>"), "A.B@example.org");
        assert_eq!(ok("<\"john doe\"@example.org>"), "\"john doe\"@example.org");
        assert_eq!(ok("<\"a\\\"b\"@example.org>"), "\"a\\\"b\"@example.org");
        assert_eq!(
            ok("<@relay.example,@r2.example:user@example.org>"),
            "user@example.org"
        );
        assert_eq!(ok("<u@[192.0.2.1]>"), "u@[192.0.2.1]");
        assert_eq!(ok("<u@[IPv6:2001:db8::1]>"), "u@[IPv6:2001:db8::1]");
        assert_eq!(
            ok("<δοκιμή@παράδειγμα.δοκιμή>"),
            "δοκιμή@xn--hxajbheg2az3al.xn--jxalpdlp"
        );
        assert_eq!(ok("<user@Bücher.example>"), "user@xn--bcher-kva.example");
        let (m, _) = parse_path("<user@bücher.example>", true).unwrap();
        assert!(m.unwrap().utf8);
        let (m, rest) = parse_path("<a@b.c> SIZE=10 BODY=8BITMIME", true).unwrap();
        assert!(m.is_some());
        assert_eq!(rest, "SIZE=10 BODY=8BITMIME");
    }

    #[test]
    fn invalid_paths() {
        for bad in [
            "a@b.c",
            "<a@b.c",
            "<a@b.c.>",
            "<a@>",
            "<@b.c>",
            "<a..b@c.d>",
            "<.a@c.d>",
            "<a.@c.d>",
            "<a@-b.c>",
            "<a@b-.c>",
            "<a@b..c>",
            "<a b@c.d>",
            "<a@[1.2.3]>",
            "<a@[IPv6:zz::1]>",
            "<\"unterminated@c.d>",
            "<a@b.c>garbage",
            "<a@b.c>>",
            "<a\0@b.c>",
            "<a@b.c\r>",
        ] {
            assert!(parse_path(bad, true).is_err(), "{bad:?} should fail");
        }
        assert!(parse_path("<>", false).is_err());
        let long_local = format!("<{}@b.c>", "a".repeat(65));
        assert!(parse_path(&long_local, true).is_err());
        let long_label = format!("<a@{}.c>", "b".repeat(64));
        assert!(parse_path(&long_label, true).is_err());
    }

    #[test]
    fn unquote() {
        let (m, _) = parse_path("<\"a@b\\\\c\"@example.org>", true).unwrap();
        assert_eq!(m.unwrap().local_unquoted(), "a@b\\c");
    }

    #[test]
    fn xtext() {
        assert_eq!(decode_xtext("rfc822;a+2Bb@c.d").unwrap(), "rfc822;a+b@c.d");
        assert!(decode_xtext("a+2").is_err());
        assert!(decode_xtext("a+zz").is_err());
        assert!(decode_xtext("a=b").is_err());
        assert!(decode_xtext("a b").is_err());
        assert!(decode_xtext("x+0D+0ABcc:+20evil").is_err());
        assert!(decode_xtext("u+00").is_err());
        assert!(decode_xtext("u+7F").is_err());
        assert_eq!(decode_xtext("sp+20ace").unwrap(), "sp ace");
    }
}
