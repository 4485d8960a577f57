//! The SPF record grammar (RFC 7208 §4.5, §12) and macro expansion
//! (§7). Parsing is strict: anything the ABNF does not allow is a syntax
//! error, which the evaluator turns into `permerror` (§4.6). Pure: no
//! lookups, no I/O; the text comes from DNS and is untrusted.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// §4.6.2: the qualifier of a directive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qualifier {
    Pass,
    Fail,
    SoftFail,
    Neutral,
}

/// §5: the mechanisms. Prefix lengths are bits (`32`/`128` when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mechanism {
    All,
    Include(MacroString),
    A {
        domain: Option<MacroString>,
        v4: u8,
        v6: u8,
    },
    Mx {
        domain: Option<MacroString>,
        v4: u8,
        v6: u8,
    },
    Ptr(Option<MacroString>),
    Ip4 {
        addr: Ipv4Addr,
        len: u8,
    },
    Ip6 {
        addr: Ipv6Addr,
        len: u8,
    },
    Exists(MacroString),
}

impl Mechanism {
    /// Whether evaluating it queries DNS (§4.6.4).
    pub fn queries_dns(&self) -> bool {
        !matches!(
            self,
            Mechanism::All | Mechanism::Ip4 { .. } | Mechanism::Ip6 { .. }
        )
    }

    /// The domain-spec, when it has one.
    pub fn domain_spec(&self) -> Option<&MacroString> {
        match self {
            Mechanism::Include(m) | Mechanism::Exists(m) => Some(m),
            Mechanism::A { domain, .. } | Mechanism::Mx { domain, .. } | Mechanism::Ptr(domain) => {
                domain.as_ref()
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    pub qualifier: Qualifier,
    pub mechanism: Mechanism,
    /// The term as written, for reasons in logs and headers.
    pub text: String,
}

/// A parsed record: its directives in order and the two modifiers §6
/// defines (unknown modifiers are checked for syntax and ignored).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub directives: Vec<Directive>,
    pub redirect: Option<MacroString>,
    pub exp: Option<MacroString>,
}

/// One part of a macro-string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Literal(String),
    /// `%{letter digits r delimiters}`; `upper` asks for URL escaping.
    Macro {
        letter: u8,
        upper: bool,
        digits: Option<u32>,
        reverse: bool,
        delimiters: Vec<u8>,
    },
}

/// A macro-string (§7.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MacroString(pub Vec<Piece>);

/// The values macros expand to (§7.3).
#[derive(Debug, Clone)]
pub struct MacroValues<'a> {
    /// `<sender>`: `local@domain` with `postmaster` for an empty local part.
    pub sender: &'a str,
    /// `<domain>`: the domain being checked.
    pub domain: &'a str,
    pub ip: IpAddr,
    /// `%{p}`: the validated name of the client, or `unknown`.
    pub validated: &'a str,
    pub helo: &'a str,
    /// `%{r}`: the checking host's name.
    pub receiver: &'a str,
    /// `%{t}`: seconds since the epoch.
    pub timestamp: u64,
}

/// A syntax error, described for the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError(pub String);

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, SyntaxError> {
    Err(SyntaxError(msg.into()))
}

/// §4.5: whether a TXT string is an SPF record: `v=spf1` (any case)
/// followed by a space or the end.
pub fn is_spf(txt: &[u8]) -> bool {
    txt.len() >= 6 && txt[..6].eq_ignore_ascii_case(b"v=spf1") && (txt.len() == 6 || txt[6] == b' ')
}

/// Parses a record selected by [`is_spf`].
pub fn parse(txt: &[u8]) -> Result<Record, SyntaxError> {
    let Ok(text) = std::str::from_utf8(txt) else {
        return err("record is not ASCII");
    };
    if !text.is_ascii() {
        return err("record is not ASCII");
    }
    if !is_spf(txt) {
        return err("not an SPF version 1 record");
    }
    let mut rec = Record::default();
    // terms = *( 1*SP ( directive / modifier ) ); only SP separates.
    for term in text[6..].split(' ').filter(|t| !t.is_empty()) {
        if term.bytes().any(|b| !(0x21..=0x7e).contains(&b)) {
            return err(format!("term {term:?} has a control character"));
        }
        if let Some((name, value)) = modifier_split(term) {
            let value_ms = || macro_string(value, false);
            match name.to_ascii_lowercase().as_str() {
                "redirect" => {
                    if rec.redirect.is_some() {
                        return err("two redirect modifiers");
                    }
                    rec.redirect = Some(domain_spec(value)?);
                }
                "exp" => {
                    if rec.exp.is_some() {
                        return err("two exp modifiers");
                    }
                    rec.exp = Some(domain_spec(value)?);
                }
                _ => {
                    value_ms()?;
                }
            }
            continue;
        }
        rec.directives.push(directive(term)?);
    }
    Ok(rec)
}

/// `name "=" ...` with `name = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )`.
fn modifier_split(term: &str) -> Option<(&str, &str)> {
    let (name, value) = term.split_once('=')?;
    let mut b = name.bytes();
    let first = b.next()?;
    (first.is_ascii_alphabetic()
        && b.all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
    .then_some((name, value))
}

fn directive(term: &str) -> Result<Directive, SyntaxError> {
    let (qualifier, rest) = match term.as_bytes().first() {
        Some(b'+') => (Qualifier::Pass, &term[1..]),
        Some(b'-') => (Qualifier::Fail, &term[1..]),
        Some(b'~') => (Qualifier::SoftFail, &term[1..]),
        Some(b'?') => (Qualifier::Neutral, &term[1..]),
        _ => (Qualifier::Pass, term),
    };
    let end = rest.find([':', '/']).unwrap_or(rest.len());
    let (name, args) = rest.split_at(end);
    let name = name.to_ascii_lowercase();
    let mechanism = match name.as_str() {
        "all" => {
            if !args.is_empty() {
                return err(format!("{term:?}: all takes no argument"));
            }
            Mechanism::All
        }
        "include" | "exists" => {
            let Some(spec) = args.strip_prefix(':') else {
                return err(format!("{term:?}: {name} needs a domain"));
            };
            let d = domain_spec(spec)?;
            if name == "include" {
                Mechanism::Include(d)
            } else {
                Mechanism::Exists(d)
            }
        }
        "a" | "mx" => {
            let (spec, v4, v6) = dual_cidr(args)?;
            let domain = match spec {
                "" => None,
                s => match s.strip_prefix(':') {
                    Some(s) => Some(domain_spec(s)?),
                    None => return err(format!("{term:?}: unexpected {s:?}")),
                },
            };
            if name == "a" {
                Mechanism::A { domain, v4, v6 }
            } else {
                Mechanism::Mx { domain, v4, v6 }
            }
        }
        "ptr" => {
            let domain = match args {
                "" => None,
                s => match s.strip_prefix(':') {
                    Some(s) => Some(domain_spec(s)?),
                    None => return err(format!("{term:?}: unexpected {s:?}")),
                },
            };
            Mechanism::Ptr(domain)
        }
        "ip4" => {
            let Some(net) = args.strip_prefix(':') else {
                return err(format!("{term:?}: ip4 needs an address"));
            };
            let (addr, len) = match net.split_once('/') {
                Some((a, l)) => (a, cidr(l, 32)?),
                None => (net, 32),
            };
            let Ok(addr) = addr.parse::<Ipv4Addr>() else {
                return err(format!("{term:?}: bad IPv4 address"));
            };
            Mechanism::Ip4 { addr, len }
        }
        "ip6" => {
            let Some(net) = args.strip_prefix(':') else {
                return err(format!("{term:?}: ip6 needs an address"));
            };
            let (addr, len) = match net.split_once('/') {
                Some((a, l)) => (a, cidr(l, 128)?),
                None => (net, 128),
            };
            let Ok(addr) = addr.parse::<Ipv6Addr>() else {
                return err(format!("{term:?}: bad IPv6 address"));
            };
            Mechanism::Ip6 { addr, len }
        }
        _ => return err(format!("unknown mechanism in {term:?}")),
    };
    Ok(Directive {
        qualifier,
        mechanism,
        text: term.to_string(),
    })
}

/// `"0" / %x31-39 *DIGIT` up to `max`.
fn cidr(s: &str, max: u8) -> Result<u8, SyntaxError> {
    let ok = !s.is_empty()
        && s.len() <= 3
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    match s.parse::<u8>() {
        Ok(n) if ok && n <= max => Ok(n),
        _ => err(format!("bad prefix length /{s}")),
    }
}

/// Splits `[":" domain-spec] [dual-cidr-length]` from the end: `//n`
/// then `/n` (the domain-spec may itself hold `/` in literals).
fn dual_cidr(args: &str) -> Result<(&str, u8, u8), SyntaxError> {
    let mut rest = args;
    let mut v6 = 128;
    let mut v4 = 32;
    if let Some(i) = rest.rfind("//") {
        let n = &rest[i + 2..];
        if n.bytes().all(|b| b.is_ascii_digit()) {
            v6 = cidr(n, 128)?;
            rest = &rest[..i];
        }
    }
    if let Some(i) = rest.rfind('/') {
        let n = &rest[i + 1..];
        if n.bytes().all(|b| b.is_ascii_digit()) {
            v4 = cidr(n, 32)?;
            rest = &rest[..i];
        }
    }
    if rest.ends_with('/') || rest.starts_with('/') {
        return err(format!("bad prefix length in {args:?}"));
    }
    Ok((rest, v4, v6))
}

/// `domain-spec = macro-string domain-end` (§7.1), with the letters a
/// domain-spec may use.
pub fn domain_spec(s: &str) -> Result<MacroString, SyntaxError> {
    let ms = macro_string(s, false)?;
    let ends_in_macro = matches!(ms.0.last(), Some(Piece::Macro { .. }));
    if !ends_in_macro {
        let lit = match ms.0.last() {
            Some(Piece::Literal(l)) => l.as_str(),
            _ => "",
        };
        let lit = lit.strip_suffix('.').unwrap_or(lit);
        let Some((_, top)) = lit.rsplit_once('.') else {
            return err(format!("{s:?} does not end in a domain"));
        };
        if !toplabel(top) {
            return err(format!("{s:?} does not end in a valid top label"));
        }
    }
    Ok(ms)
}

/// `toplabel = ( *alphanum ALPHA *alphanum ) /
///             ( 1*alphanum "-" *( alphanum / "-" ) alphanum )`
fn toplabel(t: &str) -> bool {
    let b = t.as_bytes();
    if b.is_empty() || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-') {
        return false;
    }
    if b.contains(&b'-') {
        b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric()
    } else {
        b.iter().any(|c| c.is_ascii_alphabetic())
    }
}

/// Parses a macro-string (§7.1); `explain` allows the letters only an
/// explanation may use (`c`, `r`, `t`) and spaces.
pub fn macro_string(s: &str, explain: bool) -> Result<MacroString, SyntaxError> {
    let b = s.as_bytes();
    let mut out: Vec<Piece> = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c != b'%' {
            let visible = (0x21..=0x7e).contains(&c);
            let space_ok = explain && c == b' ';
            if !(visible || space_ok) {
                return err(format!("character {c:#04x} not allowed in {s:?}"));
            }
            lit.push(c as char);
            i += 1;
            continue;
        }
        match b.get(i + 1) {
            Some(b'%') => lit.push('%'),
            Some(b'_') => lit.push(' '),
            Some(b'-') => lit.push_str("%20"),
            Some(b'{') => {
                let Some(close) = b[i + 2..].iter().position(|&x| x == b'}') else {
                    return err(format!("unterminated macro in {s:?}"));
                };
                let body = &b[i + 2..i + 2 + close];
                if !lit.is_empty() {
                    out.push(Piece::Literal(std::mem::take(&mut lit)));
                }
                out.push(macro_expand(body, explain, s)?);
                i += 3 + close;
                continue;
            }
            _ => return err(format!("bad '%' in {s:?}")),
        }
        i += 2;
    }
    if !lit.is_empty() {
        out.push(Piece::Literal(lit));
    }
    Ok(MacroString(out))
}

fn macro_expand(body: &[u8], explain: bool, whole: &str) -> Result<Piece, SyntaxError> {
    let Some((&letter, rest)) = body.split_first() else {
        return err(format!("empty macro in {whole:?}"));
    };
    let lower = letter.to_ascii_lowercase();
    let allowed: &[u8] = if explain { b"slodiphcrtv" } else { b"slodiphv" };
    if !allowed.contains(&lower) {
        return err(format!(
            "macro letter {:?} not allowed in {whole:?}",
            letter as char
        ));
    }
    let ndig = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    let digits = if ndig > 0 {
        let n = rest[..ndig].iter().fold(0u32, |a, &d| {
            a.saturating_mul(10).saturating_add(u32::from(d - b'0'))
        });
        if n == 0 {
            return err(format!("zero digit transformer in {whole:?}"));
        }
        Some(n)
    } else {
        None
    };
    let mut rest = &rest[ndig..];
    let reverse = matches!(rest.first(), Some(b'r' | b'R'));
    if reverse {
        rest = &rest[1..];
    }
    if rest.iter().any(|c| !b".-+,/_=".contains(c)) {
        return err(format!("bad delimiter in {whole:?}"));
    }
    Ok(Piece::Macro {
        letter: lower,
        upper: letter.is_ascii_uppercase(),
        digits,
        reverse,
        delimiters: rest.to_vec(),
    })
}

impl MacroString {
    /// Whether expanding it needs `%{p}` (a reverse lookup).
    pub fn needs_validated(&self) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, Piece::Macro { letter: b'p', .. }))
    }

    /// §7.3: the expansion.
    pub fn expand(&self, v: &MacroValues<'_>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Literal(l) => out.push_str(l),
                Piece::Macro {
                    letter,
                    upper,
                    digits,
                    reverse,
                    delimiters,
                } => {
                    let value = letter_value(*letter, v);
                    let value = transform(&value, *digits, *reverse, delimiters);
                    if *upper {
                        url_escape(&value, &mut out);
                    } else {
                        out.push_str(&value);
                    }
                }
            }
        }
        out
    }
}

fn letter_value(letter: u8, v: &MacroValues<'_>) -> String {
    let (local, sdomain) = v
        .sender
        .rsplit_once('@')
        .unwrap_or(("postmaster", v.sender));
    match letter {
        b's' => v.sender.to_string(),
        b'l' => local.to_string(),
        b'o' => sdomain.to_string(),
        b'd' => v.domain.to_string(),
        b'i' => match v.ip {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => {
                // §7.3: dot-separated nibbles.
                let mut s = String::with_capacity(63);
                for (n, byte) in a.octets().iter().enumerate() {
                    if n > 0 {
                        s.push('.');
                    }
                    let _ = write!(s, "{:x}.{:x}", byte >> 4, byte & 0xf);
                }
                s
            }
        },
        b'p' => v.validated.to_string(),
        b'v' => if v.ip.is_ipv4() { "in-addr" } else { "ip6" }.to_string(),
        b'h' => v.helo.to_string(),
        b'c' => v.ip.to_string(),
        b'r' => v.receiver.to_string(),
        b't' => v.timestamp.to_string(),
        _ => String::new(),
    }
}

/// Splits on the delimiters (`.` by default), reverses, keeps the
/// rightmost `digits` parts and joins with `.`.
fn transform(value: &str, digits: Option<u32>, reverse: bool, delimiters: &[u8]) -> String {
    if digits.is_none() && !reverse && delimiters.is_empty() {
        return value.to_string();
    }
    let delims: &[u8] = if delimiters.is_empty() {
        b"."
    } else {
        delimiters
    };
    let mut parts: Vec<&str> = value
        .split(|c: char| c.is_ascii() && delims.contains(&(c as u8)))
        .collect();
    if reverse {
        parts.reverse();
    }
    if let Some(n) = digits {
        let n = n as usize;
        if parts.len() > n {
            parts.drain(..parts.len() - n);
        }
    }
    parts.join(".")
}

/// RFC 3986 escaping of everything but the unreserved characters.
fn url_escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(ip: &str) -> MacroValues<'static> {
        MacroValues {
            sender: "strong-bad@email.example.com",
            domain: "email.example.com",
            ip: ip.parse().unwrap(),
            validated: "mx.example.org",
            helo: "mx.example.org",
            receiver: "receiver.example",
            timestamp: 1_700_000_000,
        }
    }

    fn exp(s: &str, ip: &str) -> String {
        domain_spec_or_text(s).expand(&vals(ip))
    }

    fn domain_spec_or_text(s: &str) -> MacroString {
        macro_string(s, true).unwrap()
    }

    #[test]
    fn rfc7208_section_7_4_examples() {
        let v4 = "192.0.2.3";
        assert_eq!(exp("%{s}", v4), "strong-bad@email.example.com");
        assert_eq!(exp("%{o}", v4), "email.example.com");
        assert_eq!(exp("%{d}", v4), "email.example.com");
        assert_eq!(exp("%{d4}", v4), "email.example.com");
        assert_eq!(exp("%{d3}", v4), "email.example.com");
        assert_eq!(exp("%{d2}", v4), "example.com");
        assert_eq!(exp("%{d1}", v4), "com");
        assert_eq!(exp("%{dr}", v4), "com.example.email");
        assert_eq!(exp("%{d2r}", v4), "example.email");
        assert_eq!(exp("%{l}", v4), "strong-bad");
        assert_eq!(exp("%{l-}", v4), "strong.bad");
        assert_eq!(exp("%{lr}", v4), "strong-bad");
        assert_eq!(exp("%{lr-}", v4), "bad.strong");
        assert_eq!(exp("%{l1r-}", v4), "strong");
        assert_eq!(
            exp("%{ir}.%{v}._spf.%{d2}", v4),
            "3.2.0.192.in-addr._spf.example.com"
        );
        assert_eq!(
            exp("%{lr-}.lp._spf.%{d2}", v4),
            "bad.strong.lp._spf.example.com"
        );
        assert_eq!(
            exp("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", v4),
            "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"
        );
        assert_eq!(
            exp("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", v4),
            "3.2.0.192.in-addr.strong.lp._spf.example.com"
        );
        assert_eq!(
            exp("%{d2}.trusted-domains.example.net", v4),
            "example.com.trusted-domains.example.net"
        );
        assert_eq!(
            exp("%{ir}.%{v}._spf.%{d2}", "2001:db8::cb01"),
            "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.example.com"
        );
        assert_eq!(exp("%{S}", v4), "strong-bad%40email.example.com");
        assert_eq!(exp("a%%b%_c%-d", v4), "a%b c%20d");
    }

    #[test]
    fn strict_grammar() {
        assert!(parse(b"v=spf1 -all").is_ok());
        assert!(parse(b"v=spf1   a mx/24 a:x.example//64 ip4:192.0.2.0/24 ~all  ").is_ok());
        let r = parse(b"v=spf1 a:x.example/24//64").unwrap();
        assert_eq!(
            r.directives[0].mechanism,
            Mechanism::A {
                domain: Some(macro_string("x.example", false).unwrap()),
                v4: 24,
                v6: 64
            }
        );
        for bad in [
            "v=spf1 ip4:192.0.2.0/33",
            "v=spf1 ip4:192.0.2.0/024",
            "v=spf1 ip4:1.2.3",
            "v=spf1 a/",
            "v=spf1 include:",
            "v=spf1 include:foo",
            "v=spf1 a:foo.example.123",
            "v=spf1 exists:%{x}.example",
            "v=spf1 exists:%{c}.example",
            "v=spf1 exists:%{d0}.example",
            "v=spf1 foo:bar",
            "v=spf1 all:x",
            "v=spf1 redirect=a.example redirect=b.example",
            "v=spf1 -all exp=a.example exp=b.example",
            "v=spf1 a:ex%ample.com",
            "v=spf1 9x=y",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad} parsed");
        }
        // Unknown modifiers with valid macro-strings are ignored; the
        // `9x=y` term above is neither a modifier nor a mechanism.
        assert!(parse(b"v=spf1 moo.cow-far_out=man:dog/cat ~all").is_ok());
        assert!(parse(b"v=spf1 a:%{d}").is_ok());
        assert!(parse(b"v=spf1 a:x.example.").is_ok());
        assert!(parse(b"v=spf1 a:x.1-2").is_ok());
        assert!(!is_spf(b"v=spf10"));
        assert!(is_spf(b"V=SPF1"));
    }
}
