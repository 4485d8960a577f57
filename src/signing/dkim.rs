//! DKIM signing (RFC 6376; Ed25519 per RFC 8463) of mail this server
//! originates. The signature is computed once, while the message streams
//! into the queue: the header section is held until it is complete (to
//! find the `From:` domain and so the keys), then every body byte is
//! hashed as it passes, and the signature fields are stored with the
//! message as header edits, so retries never sign again.

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, DkimSigningStream, Done};

use super::keys::{self, Key};
use crate::config::DkimConfig;
use crate::message::{header, HeaderEdits};

/// One key ready to sign for its domain.
pub struct Signer {
    pub domain: String,
    pub selector: String,
    kind: SignerKind,
}

enum SignerKind {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// Every configured key, and the rule for choosing among them.
#[derive(Default)]
pub struct Signers {
    signers: Vec<Signer>,
    sign_subdomains: bool,
    /// ARC sealers: one per RSA key, in the order of the keys.
    sealers: Vec<super::arc::Sealer>,
}

impl Signers {
    /// Loads every key `cfg` names; each problem names its file.
    pub fn load(cfg: &DkimConfig) -> Result<Signers, Vec<String>> {
        let mut errors = Vec::new();
        let mut signers = Vec::new();
        let mut sealers = Vec::new();
        for (i, k) in cfg.keys.iter().enumerate() {
            match keys::load(&k.file, k.algorithm) {
                Ok(key) => signers.push(Signer::new(cfg, &k.domain, &k.selector, key)),
                Err(e) => errors.push(format!("dkim.key[{i}]: {e}")),
            }
            // The key read once more for sealing: a key signs one way only.
            if k.algorithm == crate::config::DkimAlgorithm::RsaSha256 {
                if let Ok(Key::Rsa(rsa)) = keys::load(&k.file, k.algorithm) {
                    sealers.push(super::arc::Sealer::new(
                        &k.domain,
                        &k.selector,
                        rsa,
                        &cfg.headers,
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Signers {
            signers,
            sign_subdomains: cfg.sign_subdomains,
            sealers,
        })
    }

    /// Signers of keys given directly (tests, tools).
    pub fn from_keys(cfg: &DkimConfig, keys: Vec<(String, String, Key)>) -> Signers {
        Signers {
            signers: keys
                .into_iter()
                .map(|(d, s, k)| Signer::new(cfg, &d, &s, k))
                .collect(),
            sign_subdomains: cfg.sign_subdomains,
            sealers: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    pub fn all(&self) -> &[Signer] {
        &self.signers
    }

    /// The keys that sign mail from `domain`: its own, or with
    /// `sign_subdomains` those of its closest parent that has keys.
    pub fn for_domain(&self, domain: &str) -> Vec<&Signer> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut d = domain.as_str();
        loop {
            let found: Vec<&Signer> = self.signers.iter().filter(|s| s.domain == d).collect();
            if !found.is_empty() || !self.sign_subdomains {
                return found;
            }
            match d.split_once('.') {
                Some((_, parent)) if parent.contains('.') => d = parent,
                _ => return Vec::new(),
            }
        }
    }

    /// The sealer for mail this server forwards: an RSA key of `domain`
    /// (the server's host name) or of its nearest parent that has one.
    pub fn sealer_for(&self, domain: &str) -> Option<&super::arc::Sealer> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut d = domain.as_str();
        loop {
            if let Some(s) = self.sealers.iter().find(|s| s.domain == d) {
                return Some(s);
            }
            match d.split_once('.') {
                Some((_, parent)) if parent.contains('.') => d = parent,
                _ => return None,
            }
        }
    }

    /// Streams that sign a message whose header section (complete, or
    /// as much as is kept) is `section`; none when no key matches its
    /// `From:` domain. Feed them the whole message from its first byte.
    pub fn start<'k>(&'k self, section: &[u8]) -> Vec<SignStream<'k>> {
        let Some(domain) = header::from_domain(section) else {
            return Vec::new();
        };
        self.for_domain(&domain)
            .into_iter()
            .map(|s| SignStream {
                domain: &s.domain,
                selector: &s.selector,
                inner: match &s.kind {
                    SignerKind::Rsa(k) => StreamKind::Rsa(k.sign_streaming()),
                    SignerKind::Ed25519(k) => StreamKind::Ed25519(k.sign_streaming()),
                },
            })
            .collect()
    }

    /// The signature fields for a whole message (this server's own
    /// reports and DSNs), as edits to prepend. Failures are returned by
    /// name with the edits that did succeed.
    pub fn sign_message(&self, message: &[u8]) -> (HeaderEdits, Vec<String>) {
        let (section, _) = header::header_section(message);
        let mut streams = self.start(&section);
        for s in &mut streams {
            s.write(message);
        }
        finish_all(streams)
    }
}

/// Finishes every stream: the fields of those that signed, in order, and
/// the errors of those that did not.
pub fn finish_all(streams: Vec<SignStream<'_>>) -> (HeaderEdits, Vec<String>) {
    let mut edits = HeaderEdits::new();
    let mut errors = Vec::new();
    for s in streams {
        let what = format!("{}/{}", s.domain, s.selector);
        match s.finish() {
            Ok(field) => {
                if !edits.add_raw(field.as_bytes()) {
                    errors.push(format!("{what}: signature field not storable"));
                }
            }
            Err(e) => errors.push(format!("{what}: {e}")),
        }
    }
    (edits, errors)
}

impl Signer {
    fn new(cfg: &DkimConfig, domain: &str, selector: &str, key: Key) -> Signer {
        // `From` twice: the copy that no field matches is signed as absent,
        // so a second From cannot be added (RFC 6376 §8.15).
        let mut headers: Vec<String> = cfg.headers.clone();
        headers.push("From".into());
        macro_rules! build {
            ($k:expr) => {{
                let s = DkimSigner::from_key($k)
                    .domain(domain)
                    .selector(selector)
                    .headers(headers)
                    .header_canonicalization(Canonicalization::Relaxed)
                    .body_canonicalization(Canonicalization::Relaxed);
                if cfg.expire_secs > 0 {
                    s.expiration(cfg.expire_secs)
                } else {
                    s
                }
            }};
        }
        let kind = match key {
            Key::Rsa(k) => SignerKind::Rsa(build!(k)),
            Key::Ed25519(k) => SignerKind::Ed25519(build!(k)),
        };
        Signer {
            domain: domain.to_string(),
            selector: selector.to_string(),
            kind,
        }
    }

    pub fn algorithm(&self) -> &'static str {
        match self.kind {
            SignerKind::Rsa(_) => "rsa-sha256",
            SignerKind::Ed25519(_) => "ed25519-sha256",
        }
    }
}

/// One signature being computed over a message as it streams in.
pub struct SignStream<'k> {
    domain: &'k str,
    selector: &'k str,
    inner: StreamKind<'k>,
}

enum StreamKind<'k> {
    Rsa(DkimSigningStream<'k, RsaKey<Sha256>>),
    Ed25519(DkimSigningStream<'k, Ed25519Key>),
}

impl SignStream<'_> {
    pub fn write(&mut self, chunk: &[u8]) {
        match &mut self.inner {
            StreamKind::Rsa(s) => s.write(chunk),
            StreamKind::Ed25519(s) => s.write(chunk),
        }
    }

    /// The `DKIM-Signature:` field, folded, CRLF-terminated.
    pub fn finish(self) -> Result<String, String> {
        let sig = match self.inner {
            StreamKind::Rsa(s) => s.finish(),
            StreamKind::Ed25519(s) => s.finish(),
        };
        sig.map(|s| s.to_header()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DkimAlgorithm;

    fn signers() -> Signers {
        let cfg = DkimConfig::default();
        let ed = |d: &str, s: &str| {
            let pem = keys::generate(DkimAlgorithm::Ed25519Sha256).unwrap();
            (
                d.to_string(),
                s.to_string(),
                keys::parse(&pem, DkimAlgorithm::Ed25519Sha256).unwrap(),
            )
        };
        Signers::from_keys(
            &cfg,
            vec![
                ed("example.org", "a"),
                ed("example.org", "b"),
                ed("other.test", "x"),
            ],
        )
    }

    #[test]
    fn keys_are_chosen_by_author_domain() {
        let s = signers();
        assert_eq!(s.for_domain("Example.org.").len(), 2);
        assert_eq!(s.for_domain("news.example.org").len(), 2);
        assert_eq!(s.for_domain("org").len(), 0);
        assert_eq!(s.for_domain("nope.test").len(), 0);
        let mut strict = signers();
        strict.sign_subdomains = false;
        assert_eq!(strict.for_domain("news.example.org").len(), 0);
    }

    #[test]
    fn streamed_signature_equals_whole_message_signature_shape() {
        let s = signers();
        let msg = b"From: a@example.org\r\nTo: b@x.test\r\nSubject: hi\r\n\r\nbody  \r\n\r\n\r\n";
        let (section, _) = header::header_section(msg);
        let mut streams = s.start(&section);
        assert_eq!(streams.len(), 2);
        for chunk in msg.chunks(7) {
            for st in &mut streams {
                st.write(chunk);
            }
        }
        let (edits, errors) = finish_all(streams);
        assert!(errors.is_empty(), "{errors:?}");
        let text = String::from_utf8(edits.as_bytes().to_vec()).unwrap();
        assert_eq!(text.matches("DKIM-Signature:").count(), 2);
        assert!(text.contains("d=example.org"));
        assert!(text.contains("s=a") && text.contains("s=b"));
        assert!(text.contains("c=relaxed/relaxed"));
        // From is oversigned; absent fields are signed as absent.
        let unfolded: String = text.split("\r\n").map(|l| l.trim_start()).collect();
        let h = unfolded
            .split("h=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        assert_eq!(
            h.split(':')
                .filter(|f| f.eq_ignore_ascii_case("from"))
                .count(),
            2,
            "{h}"
        );
        assert!(h.to_ascii_lowercase().contains("reply-to"));
        let (_, none) = s.sign_message(b"From: a@unknown.test\r\n\r\nx\r\n");
        assert!(none.is_empty());
    }
}
