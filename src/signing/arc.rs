//! ARC sealing (RFC 8617) of incoming mail this server forwards to
//! another domain: a set of ARC-Authentication-Results (the results this
//! server found), ARC-Message-Signature and ARC-Seal, so that the next
//! hop can trust those results even though forwarding breaks SPF. Sealed
//! with an RSA key of the server's own domain (RFC 8617 §4.1.3: the
//! algorithms of DKIM; rsa-sha256 is the one receivers support).

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, Done};
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults};

/// One RSA key ready to seal for its domain.
pub struct Sealer {
    pub domain: String,
    pub selector: String,
    inner: ArcSealer<RsaKey<Sha256>, Done>,
}

impl Sealer {
    pub fn new(domain: &str, selector: &str, key: RsaKey<Sha256>, headers: &[String]) -> Sealer {
        let inner = ArcSealer::from_key(key)
            .domain(domain)
            .selector(selector)
            .headers(headers.iter().map(String::as_str))
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Sealer {
            domain: domain.to_string(),
            selector: selector.to_string(),
            inner,
        }
    }

    /// The three fields of the new ARC set, CRLF-terminated, in the order
    /// they are prepended (ARC-Seal first).
    pub fn seal(
        &self,
        message: &AuthenticatedMessage<'_>,
        results: &AuthenticationResults<'_>,
        chain: &ArcOutput<'_>,
    ) -> Result<Vec<String>, String> {
        let set = self
            .inner
            .seal(message, results, chain)
            .map_err(|e| e.to_string())?;
        Ok(split_fields(&set.to_header()))
    }
}

/// Splits header text into its fields (a line starting with white space
/// continues the field before it).
pub fn split_fields(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.split_inclusive("\r\n") {
        match (line.starts_with([' ', '\t']), out.last_mut()) {
            (true, Some(last)) => last.push_str(line),
            _ => out.push(line.to_string()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_split_at_unfolded_lines() {
        let f = split_fields("A: 1\r\n\t2\r\nB: 3\r\nC: 4\r\n 5\r\n");
        assert_eq!(f, vec!["A: 1\r\n\t2\r\n", "B: 3\r\n", "C: 4\r\n 5\r\n"]);
    }
}
