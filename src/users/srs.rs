//! The Sender Rewriting Scheme for mail an alias forwards to another
//! domain: the envelope sender `alice@sender.example` becomes
//! `SRS0=HHHHHH=TT=sender.example=alice@<srs.domain>`, so the destination's
//! SPF check sees a domain this server may send for, and a bounce comes
//! back here, where the address is checked (the hash proves this server
//! made it, the timestamp that it is recent) and turned back into the
//! original sender.
//!
//! `HHHHHH`: the first 6 base32 characters of HMAC-SHA256 (keyed with the
//! `srs.secret`) over the timestamp, the domain and the local part, all
//! lowercased; `TT`: the day (days since 1970, modulo 1024) in two base32
//! characters. Both are compared case-insensitively, since other servers
//! may change the case of an address. Pure (no I/O); addresses reaching
//! [`Srs::reverse`] are untrusted.

use ring::hmac;

/// RFC 5321 §4.5.3.1.1: a local part is at most 64 octets; a longer
/// rewritten sender is not made (the mail keeps its sender).
const MAX_LOCAL_PART: usize = 64;

const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Why an SRS address was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SrsError {
    /// Not in the SRS0 format.
    Malformed,
    /// The hash does not match: not made by this server.
    BadHash,
    /// Older than `srs.max_age_days` (or from the future).
    Expired,
}

impl std::fmt::Display for SrsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SrsError::Malformed => "malformed SRS address",
            SrsError::BadHash => "forged SRS address (hash mismatch)",
            SrsError::Expired => "expired SRS address",
        })
    }
}

/// The rewriting rules of one configuration.
#[derive(Clone)]
pub struct Srs {
    /// The current secret first, then earlier ones still accepted.
    keys: Vec<hmac::Key>,
    domain: String,
    max_age_days: u32,
}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Srs")
            .field("domain", &self.domain)
            .field("secrets", &self.keys.len())
            .finish()
    }
}

impl Srs {
    /// `secret` empty: no rewriting (`None`).
    pub fn new(secret: &str, previous: &[String], domain: &str, max_age_days: u32) -> Option<Srs> {
        if secret.is_empty() {
            return None;
        }
        let keys = std::iter::once(secret)
            .chain(previous.iter().map(String::as_str))
            .map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()))
            .collect();
        Some(Srs {
            keys,
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            max_age_days,
        })
    }

    /// The domain of rewritten addresses.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The rewritten form of `sender` on day `day` (days since 1970);
    /// `None` when it is not rewritten: the null sender, an address of
    /// the SRS domain itself, a quoted or non-ASCII address, or one too
    /// long to rewrite.
    pub fn forward(&self, sender: &str, day: u64) -> Option<String> {
        let (local, domain) = sender.rsplit_once('@')?;
        if local.is_empty() || domain.is_empty() {
            return None;
        }
        let domain = domain.to_ascii_lowercase();
        // Only what reads back unambiguously as a plain address: a
        // dot-atom local part (RFC 5322 §3.2.3) and a host name.
        let atext = |c: u8| c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&c);
        if domain == self.domain
            || !local.bytes().all(atext)
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return None;
        }
        let tt = timestamp(day);
        let hash = self.hash(0, &tt, &domain, local);
        let out_local = format!("SRS0={hash}={tt}={domain}={local}");
        (out_local.len() <= MAX_LOCAL_PART).then(|| format!("{out_local}@{}", self.domain))
    }

    /// Whether `address` is in this server's SRS domain and looks like a
    /// rewritten address (so it is [`Self::reverse`]d rather than looked
    /// up as a user).
    pub fn is_srs(&self, address: &str) -> bool {
        match address.rsplit_once('@') {
            Some((local, domain)) => {
                domain
                    .trim_end_matches('.')
                    .eq_ignore_ascii_case(&self.domain)
                    && local.len() > 5
                    && local.as_bytes()[..5].eq_ignore_ascii_case(b"SRS0=")
            }
            None => false,
        }
    }

    /// The original sender of a rewritten `address`, checked on day `day`.
    pub fn reverse(&self, address: &str, day: u64) -> Result<String, SrsError> {
        let (local, _) = address.rsplit_once('@').ok_or(SrsError::Malformed)?;
        let rest = local
            .get(..5)
            .filter(|p| p.eq_ignore_ascii_case("SRS0="))
            .and_then(|_| local.get(5..))
            .ok_or(SrsError::Malformed)?;
        let mut parts = rest.splitn(4, '=');
        let (Some(hash), Some(tt), Some(domain), Some(orig_local)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SrsError::Malformed);
        };
        let domain = domain.to_ascii_lowercase();
        if hash.len() != 6
            || tt.len() != 2
            || orig_local.is_empty()
            || domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(SrsError::Malformed);
        }
        let tt = tt.to_ascii_lowercase();
        let then = untimestamp(&tt).ok_or(SrsError::Malformed)?;
        let ok = (0..self.keys.len()).any(|k| {
            let want = self.hash(k, &tt, &domain, orig_local);
            // Compared in constant time: the hash is derived from the secret.
            let got = hash.to_ascii_lowercase();
            want.len() == got.len()
                && want
                    .bytes()
                    .zip(got.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !ok {
            return Err(SrsError::BadHash);
        }
        let age = (day % 1024 + 1024 - then) % 1024;
        if age > u64::from(self.max_age_days) {
            return Err(SrsError::Expired);
        }
        Ok(format!("{orig_local}@{domain}"))
    }

    fn hash(&self, key: usize, tt: &str, domain: &str, local: &str) -> String {
        let mut input = Vec::with_capacity(tt.len() + domain.len() + local.len() + 2);
        input.extend_from_slice(tt.as_bytes());
        input.push(b'=');
        input.extend_from_slice(domain.as_bytes());
        input.push(b'=');
        input.extend_from_slice(local.to_ascii_lowercase().as_bytes());
        let tag = hmac::sign(&self.keys[key], &input);
        base32(tag.as_ref(), 6)
    }
}

/// Today, in days since 1970.
pub fn today() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86400)
        .unwrap_or(0)
}

fn timestamp(day: u64) -> String {
    let d = (day % 1024) as usize;
    let mut s = String::with_capacity(2);
    s.push(BASE32[d >> 5] as char);
    s.push(BASE32[d & 31] as char);
    s
}

fn untimestamp(tt: &str) -> Option<u64> {
    let v = |c: u8| BASE32.iter().position(|&b| b == c).map(|p| p as u64);
    let b = tt.as_bytes();
    Some(v(b[0])? * 32 + v(b[1])?)
}

/// The first `n` base32 characters of `bytes`.
fn base32(bytes: &[u8], n: usize) -> String {
    let mut out = String::with_capacity(n);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 && out.len() < n {
            bits -= 5;
            out.push(BASE32[((acc >> bits) & 31) as usize] as char);
        }
        if out.len() >= n {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn srs() -> Srs {
        Srs::new(
            "a secret of sixteen+",
            &["the older secret!!".into()],
            "MX.test.",
            21,
        )
        .unwrap()
    }

    #[test]
    fn round_trip_and_case() {
        let s = srs();
        let day = 20_000;
        let f = s.forward("Alice.B@Sender.Example", day).unwrap();
        assert!(f.starts_with("SRS0="), "{f}");
        assert!(f.ends_with("=sender.example=Alice.B@mx.test"), "{f}");
        assert!(s.is_srs(&f));
        assert_eq!(s.reverse(&f, day).unwrap(), "Alice.B@sender.example");
        // Another server lowercased (or uppercased) it.
        assert_eq!(
            s.reverse(&f.to_ascii_uppercase(), day + 3).unwrap(),
            "ALICE.B@sender.example"
        );
        // Local parts with '=' survive.
        let g = s.forward("a=b@x.test", day).unwrap();
        assert_eq!(s.reverse(&g, day).unwrap(), "a=b@x.test");
    }

    #[test]
    fn forged_expired_and_malformed_are_refused() {
        let s = srs();
        let day = 20_000;
        let f = s.forward("alice@sender.example", day).unwrap();
        let forged = f.replace("alice@", "mallory@");
        assert_eq!(s.reverse(&forged, day), Err(SrsError::BadHash));
        assert_eq!(s.reverse(&f, day + 22), Err(SrsError::Expired));
        assert_eq!(s.reverse(&f, day + 21).unwrap(), "alice@sender.example");
        // The day counter wraps every 1024 days.
        let w = s.forward("alice@sender.example", 1023).unwrap();
        assert_eq!(s.reverse(&w, 1024 + 5).unwrap(), "alice@sender.example");
        for bad in [
            "SRS0=@mx.test",
            "SRS0=abc=de=x.test=a@mx.test",
            "SRS0=abcdef=d=x.test=a@mx.test",
            "SRS0=abcdef=de=x.test@mx.test",
            "nobody@mx.test",
            "SRS0=abcdef=d!=x.test=a@mx.test",
        ] {
            assert_eq!(s.reverse(bad, day), Err(SrsError::Malformed), "{bad}");
        }
        // A key made with an earlier secret still reverses.
        let old = Srs::new("the older secret!!", &[], "mx.test", 21).unwrap();
        let o = old.forward("bob@y.test", day).unwrap();
        assert_eq!(s.reverse(&o, day).unwrap(), "bob@y.test");
        // One made with another secret does not.
        let other = Srs::new("somebody else's key", &[], "mx.test", 21).unwrap();
        let x = other.forward("bob@y.test", day).unwrap();
        assert_eq!(s.reverse(&x, day), Err(SrsError::BadHash));
    }

    #[test]
    fn not_rewritten() {
        let s = srs();
        assert_eq!(s.forward("", 1), None);
        assert_eq!(s.forward("someone@mx.test", 1), None);
        let long = format!("{}@x.test", "a".repeat(60));
        assert_eq!(s.forward(&long, 1), None);
        assert_eq!(s.forward("\"a b\"@x.test", 1), None);
        assert_eq!(s.forward("x@d=e.test", 1), None);
    }
}
