//! Email authentication of incoming mail as facts: SPF of the HELO and
//! MAIL FROM identities (at MAIL), then DKIM (RFC 6376, RFC 8463), ARC
//! (RFC 8617) and DMARC (RFC 7489, with the DNS tree walk of its revision)
//! of the complete message (at the end of DATA), and the
//! `Authentication-Results:` field (RFC 8601) that records them. Nothing
//! here refuses: the policy reads [`AuthFacts`] and decides.
//!
//! SPF is pigeon's own ([`super::spf`]); DKIM, ARC and DMARC are the
//! `mail-auth` crate's, through the one resolver. Every check runs under
//! the `[inbound]` deadline; a check that runs out is a `temperror`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use mail_auth::dmarc::Policy as DmarcPolicy;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, SpfOutput,
    SpfResult,
};

use super::spf::{self, SpfOutcome};
use crate::config::InboundConfig;
use crate::dns::HickoryResolver;

/// SPF at MAIL: both identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfFacts {
    pub helo: SpfOutcome,
    pub mail_from: SpfOutcome,
    /// Whether MAIL FROM was the null sender (then `mail_from` is the
    /// check of `postmaster@<helo>`).
    pub null_sender: bool,
}

/// Runs both SPF checks under the deadline.
pub async fn check_spf(
    dns: &HickoryResolver,
    cfg: &InboundConfig,
    ip: IpAddr,
    helo: &str,
    mail_from: &str,
    receiver: &str,
) -> SpfFacts {
    let deadline = Duration::from_secs(cfg.timeout_secs);
    let helo_check = async {
        match tokio::time::timeout(deadline, spf::check_helo(dns, ip, helo, receiver)).await {
            Ok(o) => o,
            Err(_) => timed_out(helo, &format!("postmaster@{helo}")),
        }
    };
    let mail_check = async {
        match tokio::time::timeout(
            deadline,
            spf::check_mail_from(dns, ip, helo, mail_from, receiver),
        )
        .await
        {
            Ok(o) => o,
            Err(_) => {
                let d = mail_from.rsplit_once('@').map_or(helo, |(_, d)| d);
                timed_out(d, mail_from)
            }
        }
    };
    let (helo, mail_from_out) = tokio::join!(helo_check, mail_check);
    SpfFacts {
        helo,
        mail_from: mail_from_out,
        null_sender: mail_from.is_empty(),
    }
}

fn timed_out(domain: &str, identity: &str) -> SpfOutcome {
    SpfOutcome {
        result: SpfResult::TempError,
        domain: domain.to_ascii_lowercase(),
        identity: identity.to_string(),
        explanation: None,
        reason: "SPF check timed out".into(),
    }
}

/// One DKIM signature's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimFact {
    /// RFC 8601 §2.7.1 result name.
    pub result: &'static str,
    pub domain: String,
    pub selector: String,
    /// The first 8 characters of the signature's `b=` (RFC 6008).
    pub b: String,
    pub reason: String,
}

/// What DMARC asks for a failing message, after `pct=` sampling and the
/// testing flag (RFC 7489 §6.6.4: a message not sampled gets the next
/// weaker policy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    None,
    Quarantine,
    Reject,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmarcFact {
    /// RFC 8601 result name: pass, fail, none, temperror, permerror.
    pub result: &'static str,
    /// The RFC 5322.From domain.
    pub from_domain: String,
    /// The domain's policy for this message (p=, sp= or np=, after
    /// sampling).
    pub disposition: Disposition,
    /// The policy as published (p=, sp= or np=), before sampling.
    pub published: Disposition,
    /// A DMARC record was found (a temporary error may have hidden one).
    pub record_known: bool,
}

/// Everything found about a message at the end of DATA.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthFacts {
    pub spf: Option<SpfFacts>,
    pub dkim: Vec<DkimFact>,
    /// ARC chain result name, when checked.
    pub arc: Option<&'static str>,
    pub dmarc: Option<DmarcFact>,
    /// False when the message could not be checked whole (larger than
    /// `inbound.max_verify_size` or over the memory budget): DKIM and
    /// DMARC were not evaluated and nothing may be refused for them.
    pub verified: bool,
    /// The `Authentication-Results:` field, CRLF-terminated.
    pub header: String,
    /// The ARC set sealed for a forwarded message (ARC-Seal,
    /// ARC-Message-Signature, ARC-Authentication-Results), each field
    /// CRLF-terminated; empty when not sealed.
    pub arc_seal: Vec<String>,
    /// Why sealing failed, when it did.
    pub arc_seal_error: Option<String>,
    /// The message has more than one From: field, or From: addresses in
    /// more than one domain: DMARC cannot name one author domain (RFC 7489
    /// §6.6.1) and RFC 5322 §3.6 allows one field.
    pub ambiguous_author: bool,
}

/// Seals a forwarded message: the ARC fields to prepend, given the
/// message, the results found and the chain it arrived with.
pub type SealFn<'f> = &'f (dyn Fn(
    &AuthenticatedMessage<'_>,
    &AuthenticationResults<'_>,
    &ArcOutput<'_>,
) -> Result<Vec<String>, String>
         + Sync);

/// What sealing a forwarded message needs besides the message.
pub struct Sealing<'f> {
    pub seal: SealFn<'f>,
    pub ip: IpAddr,
    pub helo: &'f str,
}

impl AuthFacts {
    /// DMARC found the message failing, and how strongly its domain asks
    /// for that to matter.
    pub fn dmarc_failure(&self) -> Option<(&DmarcFact, Disposition)> {
        let d = self.dmarc.as_ref()?;
        (d.result == "fail").then_some((d, d.disposition))
    }

    /// Some check could not finish for a temporary reason that could
    /// change what is done with the message: the domain's policy is not
    /// `none`, or could not be fetched.
    pub fn temporary(&self) -> bool {
        self.dmarc.as_ref().is_some_and(|d| {
            d.result == "temperror" && (!d.record_known || d.published != Disposition::None)
        })
    }
}

/// The checks of a complete message. `message`: the bytes as received,
/// `None` when too large to keep; then only its header section `header`
/// is checked: no DKIM, and DMARC from SPF alone, a failure counting one
/// policy level weaker (a large spoof goes to Junk rather than the inbox,
/// a large message signed but not SPF-aligned is not refused unverified).
/// `spf` from MAIL when it was checked.
pub async fn check_message(
    dns: &HickoryResolver,
    cfg: &InboundConfig,
    authserv_id: &str,
    message: Option<&[u8]>,
    header: &[u8],
    spf: Option<SpfFacts>,
    sealing: Option<Sealing<'_>>,
) -> AuthFacts {
    let mut facts = AuthFacts {
        spf,
        verified: message.is_some(),
        ..AuthFacts::default()
    };
    let from_fields = crate::message::header::field_values(header, "from").count();
    let header_only;
    let raw = match message {
        Some(m) => m,
        None => {
            let mut h = header.to_vec();
            h.extend_from_slice(if h.ends_with(b"\r\n") {
                b"\r\n"
            } else {
                b"\r\n\r\n"
            });
            header_only = h;
            &header_only[..]
        }
    };
    let deadline = Duration::from_secs(cfg.timeout_secs);
    let work = evaluate(dns, cfg, authserv_id, raw, &mut facts, sealing.as_ref());
    if tokio::time::timeout(deadline, work).await.is_err() {
        // Out of time: what was not found is a temporary error.
        if cfg.dmarc && facts.dmarc.is_none() {
            facts.dmarc = Some(DmarcFact {
                result: "temperror",
                from_domain: String::new(),
                disposition: Disposition::None,
                published: Disposition::None,
                record_known: false,
            });
        }
    }
    facts.ambiguous_author |= from_fields > 1;
    facts.header = results_field(authserv_id, &facts);
    facts
}

async fn evaluate(
    dns: &HickoryResolver,
    cfg: &InboundConfig,
    authserv_id: &str,
    raw: &[u8],
    facts: &mut AuthFacts,
    sealing: Option<&Sealing<'_>>,
) {
    let Some(mut msg) = AuthenticatedMessage::parse(raw) else {
        return;
    };
    // Every signature costs lookups and hashing: at most the configured
    // number are verified (the first ones, nearest to this server).
    msg.dkim_headers.truncate(cfg.max_signatures);
    // Authors in several domains: DMARC has no one domain to ask.
    let mut author_domains: Vec<String> = msg
        .from
        .iter()
        .filter_map(|a| a.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()))
        .collect();
    author_domains.sort();
    author_domains.dedup();
    facts.ambiguous_author = author_domains.len() > 1;
    let whole = facts.verified;
    let auth = dns.authenticator();
    let dkim_out = if whole && (cfg.dkim || cfg.dmarc) {
        auth.verify_dkim(&msg).await
    } else {
        Vec::new()
    };
    if cfg.dkim {
        for o in &dkim_out {
            let (result, reason) = dkim_name(o.result());
            let (domain, selector, b) = o.signature().map_or_else(Default::default, |s| {
                let b = base64_prefix(&s.b);
                (s.d.to_ascii_lowercase(), s.s.clone(), b)
            });
            facts.dkim.push(DkimFact {
                result,
                domain,
                selector,
                b,
                reason,
            });
        }
    }
    let arc_out = if whole && (cfg.arc || sealing.is_some()) {
        Some(auth.verify_arc(&msg).await)
    } else {
        None
    };
    if let (true, Some(a)) = (cfg.arc, &arc_out) {
        facts.arc = Some(if msg.as_headers.is_empty() {
            "none"
        } else {
            dkim_name(a.result()).0
        });
    }
    let (spf_domain, spf_result, spf_identity) = match &facts.spf {
        Some(s) => (
            s.mail_from.domain.clone(),
            s.mail_from.result,
            if s.null_sender {
                String::new()
            } else {
                s.mail_from.identity.clone()
            },
        ),
        None => (String::new(), SpfResult::None, String::new()),
    };
    let spf_out = SpfOutput::new(spf_domain.clone()).with_result(spf_result);
    let mut dmarc_out = None;
    if cfg.dmarc {
        let out = auth
            .verify_dmarc(mail_auth::dmarc::verify::DmarcParameters::new(
                &msg,
                &dkim_out,
                &spf_domain,
                &spf_out,
            ))
            .await;
        let from_domain = out.domain().to_ascii_lowercase();
        let result = match out.result() {
            _ if from_domain.is_empty() => "none",
            DmarcResult::Pass => "pass",
            DmarcResult::Fail(_) => "fail",
            DmarcResult::TempError(_) => "temperror",
            DmarcResult::PermError(_) => "permerror",
            DmarcResult::None => "none",
        };
        let published = match out.policy() {
            _ if from_domain.is_empty() => Disposition::None,
            DmarcPolicy::Reject => Disposition::Reject,
            DmarcPolicy::Quarantine => Disposition::Quarantine,
            DmarcPolicy::None | DmarcPolicy::Unspecified => Disposition::None,
        };
        // (The crate's policy already counts the revision's t=y one
        // level weaker.)
        let mut disposition = published;
        if result == "fail" && published != Disposition::None {
            // RFC 7489 §6.6.4: pct= sampling; a pct= that cannot be read
            // for a temporary reason counts as not sampled (never a
            // harder outcome because of a DNS failure).
            let sampled_in = match percent(dns, &from_domain).await {
                Some(pct) => sampled(pct),
                None => false,
            };
            if !sampled_in || !whole {
                disposition = weaker(published);
            }
        }
        facts.dmarc = Some(DmarcFact {
            result,
            from_domain,
            disposition,
            published,
            record_known: out.dmarc_record().is_some(),
        });
        dmarc_out = Some(out);
    }
    // RFC 8617 §5.1: the forwarder's set carries the results it found.
    if let (Some(seal), Some(chain)) = (sealing, &arc_out) {
        let header_from = msg.from.first().map(String::as_str).unwrap_or("");
        let mut results =
            AuthenticationResults::new(authserv_id).with_dkim_results(&dkim_out, header_from);
        if facts.spf.is_some() {
            results = results.with_spf_mailfrom_result(&spf_out, seal.ip, &spf_identity, seal.helo);
        }
        results = results.with_arc_result(chain, seal.ip);
        if let Some(d) = &dmarc_out {
            results = results.with_dmarc_result(d);
        }
        match (seal.seal)(&msg, &results, chain) {
            Ok(fields) => facts.arc_seal = fields,
            Err(e) => facts.arc_seal_error = Some(e),
        }
    }
}

fn weaker(d: Disposition) -> Disposition {
    match d {
        Disposition::Reject => Disposition::Quarantine,
        _ => Disposition::None,
    }
}

/// Whether a message falls in the `pct` percent the policy applies to.
fn sampled(pct: u8) -> bool {
    if pct >= 100 {
        return true;
    }
    let mut b = [0u8; 2];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        return true;
    }
    (u16::from_le_bytes(b) % 100) < u16::from(pct)
}

/// The `pct=` of the DMARC record that applies to `domain` (RFC 7489
/// §6.3; 100 when absent): the domain's own record, else the nearest one
/// above it, as the tree walk finds it. `None` on a temporary DNS error.
async fn percent(dns: &HickoryResolver, domain: &str) -> Option<u8> {
    let labels: Vec<&str> = domain.split('.').filter(|l| !l.is_empty()).collect();
    for skip in 0..labels.len().saturating_sub(1).min(8) {
        let name = format!("_dmarc.{}", labels[skip..].join("."));
        let txts = match dns.txt(&name).await {
            Ok(t) => t,
            Err(crate::dns::DnsError::NotFound(_)) => continue,
            Err(crate::dns::DnsError::Temporary(_)) => return None,
        };
        for t in txts {
            let Ok(text) = std::str::from_utf8(&t) else {
                continue;
            };
            if !text.trim_start().starts_with("v=DMARC1") {
                continue;
            }
            return Some(parse_pct(text));
        }
    }
    Some(100)
}

/// The `pct` tag of a DMARC record (RFC 7489 §6.3), 100 when absent or
/// invalid.
pub fn parse_pct(record: &str) -> u8 {
    record
        .split(';')
        .filter_map(|t| t.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("pct"))
        .and_then(|(_, v)| v.trim().parse::<u8>().ok())
        .filter(|v| *v <= 100)
        .unwrap_or(100)
}

fn dkim_name(r: &DkimResult) -> (&'static str, String) {
    match r {
        // RFC 6376 §6.1.3: a body hash that does not verify is a failure
        // of the signature (the crate calls it neutral).
        DkimResult::Neutral(
            e @ mail_auth::Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch),
        ) => ("fail", e.to_string()),
        DkimResult::Pass => ("pass", String::new()),
        DkimResult::Neutral(e) => ("neutral", e.to_string()),
        DkimResult::Fail(e) => ("fail", e.to_string()),
        DkimResult::PermError(e) => ("permerror", e.to_string()),
        DkimResult::TempError(e) => ("temperror", e.to_string()),
        DkimResult::None => ("none", String::new()),
    }
}

fn base64_prefix(b: &[u8]) -> String {
    use base64::Engine as _;
    let s = base64::engine::general_purpose::STANDARD.encode(&b[..b.len().min(6)]);
    s.chars().take(8).collect()
}

/// A property value as RFC 8601 may carry it unquoted: a token of safe
/// characters, or `None` when the value has others.
fn pvalue(v: &str) -> Option<&str> {
    (!v.is_empty()
        && v.len() <= 255
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-_+@=/".contains(&c)))
    .then_some(v)
}

/// A comment's text with what could end or break it removed.
fn comment(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .filter(|c| !matches!(c, '(' | ')' | '\\'))
        .take(200)
        .collect()
}

/// The `Authentication-Results:` field (RFC 8601 §2.2), one result per
/// folded line.
pub fn results_field(authserv_id: &str, f: &AuthFacts) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(s) = &f.spf {
        let mut p = format!("spf={}", spf::name(s.mail_from.result));
        if !s.mail_from.reason.is_empty() {
            let _ = write!(p, " ({})", comment(&s.mail_from.reason));
        }
        let key = if s.null_sender {
            "smtp.helo"
        } else {
            "smtp.mailfrom"
        };
        let value = if s.null_sender {
            &s.helo.domain
        } else {
            &s.mail_from.identity
        };
        if let Some(v) = pvalue(value) {
            let _ = write!(p, " {key}={v}");
        }
        parts.push(p);
        if !s.null_sender {
            let mut h = format!("spf={}", spf::name(s.helo.result));
            if let Some(v) = pvalue(&s.helo.domain) {
                let _ = write!(h, " smtp.helo={v}");
            }
            parts.push(h);
        }
    }
    if !f.verified {
        parts.push("dkim=none (message too large to verify)".into());
    } else if f.dkim.is_empty() && f.dmarc.is_some() {
        parts.push("dkim=none".into());
    }
    for d in &f.dkim {
        let mut p = format!("dkim={}", d.result);
        if !d.reason.is_empty() {
            let _ = write!(p, " ({})", comment(&d.reason));
        }
        if let Some(v) = pvalue(&d.domain) {
            let _ = write!(p, " header.d={v}");
        }
        if let Some(v) = pvalue(&d.selector) {
            let _ = write!(p, " header.s={v}");
        }
        if let Some(v) = pvalue(&d.b) {
            let _ = write!(p, " header.b={v}");
        }
        parts.push(p);
    }
    if let Some(a) = f.arc {
        parts.push(format!("arc={a}"));
    }
    if let Some(d) = &f.dmarc {
        let mut p = format!("dmarc={}", d.result);
        if d.result == "fail" {
            let _ = write!(p, " (p={})", disposition_name(d.published));
        }
        if let Some(v) = pvalue(&d.from_domain) {
            let _ = write!(p, " header.from={v}");
        }
        parts.push(p);
    }
    let mut out = format!("Authentication-Results: {authserv_id}");
    if parts.is_empty() {
        out.push_str("; none");
    }
    for p in parts {
        out.push_str(";\r\n\t");
        out.push_str(&p);
    }
    out.push_str("\r\n");
    out
}

pub fn disposition_name(d: Disposition) -> &'static str {
    match d {
        Disposition::None => "none",
        Disposition::Quarantine => "quarantine",
        Disposition::Reject => "reject",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pct_tag() {
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=20"), 20);
        assert_eq!(parse_pct("v=DMARC1; p=reject; PCT = 0 ;"), 0);
        assert_eq!(parse_pct("v=DMARC1; p=reject"), 100);
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=101"), 100);
        assert_eq!(parse_pct("v=DMARC1; p=reject; pct=x"), 100);
    }

    #[test]
    fn sampling_bounds() {
        assert!(sampled(100));
        assert!((0..200).all(|_| !sampled(0)));
    }

    #[test]
    fn header_is_well_formed_and_hostile_values_are_left_out() {
        let f = AuthFacts {
            spf: None,
            dkim: vec![DkimFact {
                result: "fail",
                domain: "evil.test;\r\nX-Injected: 1".into(),
                selector: "s1".into(),
                b: "abcd1234".into(),
                reason: "body (hash) mismatch\r\n".into(),
            }],
            arc: Some("none"),
            dmarc: Some(DmarcFact {
                result: "fail",
                from_domain: "bank.test".into(),
                disposition: Disposition::Reject,
                published: Disposition::Reject,
                record_known: true,
            }),
            verified: true,
            header: String::new(),
            arc_seal: Vec::new(),
            arc_seal_error: None,
            ambiguous_author: false,
        };
        let h = results_field("mx.example.org", &f);
        assert!(h.starts_with("Authentication-Results: mx.example.org;\r\n\tdkim=fail (body hash mismatch) header.s=s1 header.b=abcd1234;"), "{h}");
        assert!(h.contains("dmarc=fail (p=reject) header.from=bank.test\r\n"));
        assert!(!h.contains("X-Injected"));
        assert_eq!(h.matches("\r\n").count(), 4);
    }
}
