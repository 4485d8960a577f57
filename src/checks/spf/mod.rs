//! SPF (RFC 7208): is the client allowed to send for the HELO name and the
//! MAIL FROM domain? The record grammar and macros are in [`record`]; the
//! evaluation (`check_host()`, RFC 7208 §4) here enforces both processing
//! limits of §4.6.4 (10 DNS-querying terms, 2 void lookups) and rejects a
//! domain with more than one SPF record (§4.5). Every lookup goes through
//! the one resolver and its cache; the caller puts the whole check under
//! a deadline. May use `dns` only.

pub mod record;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

pub use mail_auth::SpfResult;

use self::record::{MacroString, MacroValues, Mechanism, Qualifier, Record};

use crate::dns::{DnsError, HickoryResolver};

/// RFC 7208 §4.6.4: terms that cause DNS queries, per evaluation.
const MAX_LOOKUPS: u32 = 10;
/// RFC 7208 §4.6.4: lookups answering NXDOMAIN or no records.
const MAX_VOID_LOOKUPS: u32 = 2;
/// RFC 7208 §4.6.4: names looked up for one `mx` or `ptr` term.
const MAX_NAMES_PER_TERM: usize = 10;

/// What a check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpfOutcome {
    pub result: SpfResult,
    /// The domain whose record was checked (lowercase).
    pub domain: String,
    /// The identity checked (`local@domain`; `postmaster@helo` for the
    /// HELO identity and the null sender).
    pub identity: String,
    /// The domain's explanation of a `fail` (RFC 7208 §6.2), if it gave
    /// one.
    pub explanation: Option<String>,
    /// Why: the term that matched or the problem met, for the logs and
    /// the header.
    pub reason: String,
}

impl SpfOutcome {
    fn new(result: SpfResult, domain: &str, identity: &str, reason: impl Into<String>) -> Self {
        SpfOutcome {
            result,
            domain: domain.to_string(),
            identity: identity.to_string(),
            explanation: None,
            reason: reason.into(),
        }
    }

    /// The result's name as RFC 8601 and RFC 7208 §2.6 write it.
    pub fn result_name(&self) -> &'static str {
        name(self.result)
    }
}

/// The RFC 7208 §2.6 name of a result.
pub fn name(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

/// The check of the MAIL FROM identity (RFC 7208 §2.4); with the null
/// sender, `postmaster@<helo>`.
pub async fn check_mail_from(
    dns: &HickoryResolver,
    ip: IpAddr,
    helo: &str,
    mail_from: &str,
    receiver: &str,
) -> SpfOutcome {
    let identity = if mail_from.is_empty() {
        format!("postmaster@{helo}")
    } else if mail_from.starts_with('@') {
        format!("postmaster{mail_from}")
    } else {
        mail_from.to_string()
    };
    let domain = identity
        .rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_default();
    check_host(dns, ip, &domain, &identity, helo, receiver).await
}

/// The check of the HELO identity (RFC 7208 §2.3): `none` for an address
/// literal or a name that is not a domain.
pub async fn check_helo(
    dns: &HickoryResolver,
    ip: IpAddr,
    helo: &str,
    receiver: &str,
) -> SpfOutcome {
    let identity = format!("postmaster@{helo}");
    if helo.starts_with('[') {
        return SpfOutcome::new(
            SpfResult::None,
            helo,
            &identity,
            "HELO is an address literal",
        );
    }
    check_host(dns, ip, helo, &identity, helo, receiver).await
}

/// `check_host(ip, domain, sender)` of RFC 7208 §4.
pub async fn check_host(
    dns: &HickoryResolver,
    ip: IpAddr,
    domain: &str,
    sender: &str,
    helo: &str,
    receiver: &str,
) -> SpfOutcome {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    // An IPv4 client seen through an IPv6 socket is an IPv4 client.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    // §4.3: a malformed or single-label domain has no SPF policy.
    if !valid_domain(&domain) {
        return SpfOutcome::new(SpfResult::None, &domain, sender, "not a valid domain name");
    }
    let mut ev = Eval {
        dns,
        ip,
        sender: sender.to_string(),
        helo: helo.to_string(),
        receiver: receiver.to_string(),
        lookups: 0,
        voids: 0,
        validated: None,
    };
    let (result, reason, explanation) = match ev.check(domain.clone(), true).await {
        Ok(v) => (v.result, v.reason, v.explanation),
        Err(Stop::Temp(why)) => (SpfResult::TempError, why, None),
        Err(Stop::Perm(why)) => (SpfResult::PermError, why, None),
    };
    let mut out = SpfOutcome::new(result, &domain, sender, reason);
    out.explanation = explanation;
    out
}

/// §4.3: 1 to 63 byte labels, at most 253 bytes, at least two labels.
fn valid_domain(d: &str) -> bool {
    d.len() <= 253 && d.contains('.') && d.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

/// An evaluation that ends the whole check (§4.4, §4.6).
enum Stop {
    Temp(String),
    Perm(String),
}

/// A record's answer.
struct Found {
    result: SpfResult,
    reason: String,
    explanation: Option<String>,
}

type Step<'s> = Pin<Box<dyn Future<Output = Result<Found, Stop>> + Send + 's>>;

struct Eval<'a> {
    dns: &'a HickoryResolver,
    ip: IpAddr,
    sender: String,
    helo: String,
    receiver: String,
    lookups: u32,
    voids: u32,
    /// The `%{p}` value, once computed.
    validated: Option<String>,
}

/// A lookup's answer for the limits: records, or a void answer.
fn void_or<T>(r: Result<Vec<T>, DnsError>) -> Result<Option<Vec<T>>, Stop> {
    match r {
        Ok(v) if v.is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(DnsError::NotFound(_)) => Ok(None),
        Err(DnsError::Temporary(e)) => Err(Stop::Temp(e)),
    }
}

impl<'a> Eval<'a> {
    /// §4.6.4: one more DNS-querying term.
    fn count_lookup(&mut self) -> Result<(), Stop> {
        self.lookups += 1;
        if self.lookups > MAX_LOOKUPS {
            return Err(Stop::Perm(format!(
                "more than {MAX_LOOKUPS} DNS-querying terms"
            )));
        }
        Ok(())
    }

    /// §4.6.4: one more void lookup.
    fn count_void(&mut self) -> Result<(), Stop> {
        self.voids += 1;
        if self.voids > MAX_VOID_LOOKUPS {
            return Err(Stop::Perm(format!(
                "more than {MAX_VOID_LOOKUPS} void DNS lookups"
            )));
        }
        Ok(())
    }

    /// The domain's one SPF record (§4.5): `None` when it has none.
    async fn record(&mut self, domain: &str) -> Result<Option<Record>, Stop> {
        let txts = match self.dns.txt(domain).await {
            Ok(t) => t,
            Err(DnsError::NotFound(_)) => return Ok(None),
            Err(DnsError::Temporary(e)) => return Err(Stop::Temp(e)),
        };
        let spf: Vec<&Vec<u8>> = txts.iter().filter(|t| record::is_spf(t)).collect();
        let one = match spf.as_slice() {
            [] => return Ok(None),
            [one] => *one,
            _ => return Err(Stop::Perm(format!("{domain} has more than one SPF record"))),
        };
        record::parse(one)
            .map(Some)
            .map_err(|e| Stop::Perm(format!("{domain}: SPF record does not parse ({e})")))
    }

    fn expand(&self, m: &MacroString, domain: &str) -> String {
        m.expand(&MacroValues {
            sender: &self.sender,
            domain,
            ip: self.ip,
            validated: self.validated.as_deref().unwrap_or("unknown"),
            helo: &self.helo,
            receiver: &self.receiver,
            timestamp: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        })
    }

    /// Computes `%{p}` once, when a macro-string asks for it (§7.3).
    async fn ensure_validated(&mut self, m: &MacroString) {
        if m.needs_validated() && self.validated.is_none() {
            let names = self.validated_names().await;
            let p = names.into_iter().next().unwrap_or_else(|| "unknown".into());
            self.validated = Some(p);
        }
    }

    /// A domain-spec expanded (§7) into a name to query; over 253 bytes,
    /// leftmost labels are dropped (§7.3). `None` for an absent spec.
    async fn target(&mut self, m: Option<&MacroString>, domain: &str) -> Result<String, Stop> {
        let Some(m) = m else {
            return Ok(domain.to_string());
        };
        self.ensure_validated(m).await;
        let mut name = self.expand(m, domain).trim_end_matches('.').to_string();
        while name.len() > 253 {
            match name.split_once('.') {
                Some((_, rest)) => name = rest.to_string(),
                None => break,
            }
        }
        if name.is_empty()
            || name.len() > 253
            || name.split('.').any(|l| l.is_empty() || l.len() > 63)
        {
            return Err(Stop::Perm(format!(
                "invalid domain {name:?} after expansion"
            )));
        }
        Ok(name.to_ascii_lowercase())
    }

    /// §5.5: the client's names whose addresses include it.
    async fn validated_names(&mut self) -> Vec<String> {
        let Ok(names) = self.dns.ptr(self.ip).await else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for n in names.into_iter().take(MAX_NAMES_PER_TERM) {
            if let Ok(ips) = self.dns.ips(&n, self.ip.is_ipv6()).await {
                if ips.contains(&self.ip) {
                    out.push(n);
                }
            }
        }
        out
    }

    /// Evaluates `domain`'s record (§4.6, §4.7).
    fn check(&mut self, domain: String, top: bool) -> Step<'_> {
        Box::pin(async move {
            let Some(record) = self.record(&domain).await? else {
                return Ok(Found {
                    result: SpfResult::None,
                    reason: format!("{domain} has no SPF record"),
                    explanation: None,
                });
            };
            for d in record.directives.iter() {
                let mech = &d.mechanism;
                if mech.queries_dns() {
                    self.count_lookup()?;
                }
                let matched = match mech {
                    Mechanism::All => true,
                    Mechanism::Ip4 { addr, len } => in_net(self.ip, IpAddr::V4(*addr), *len, 128),
                    Mechanism::Ip6 { addr, len } => in_net(self.ip, IpAddr::V6(*addr), 32, *len),
                    Mechanism::A {
                        domain: spec,
                        v4,
                        v6,
                    } => {
                        let name = self.target(spec.as_ref(), &domain).await?;
                        match void_or(self.dns.ips(&name, self.ip.is_ipv6()).await)? {
                            None => {
                                self.count_void()?;
                                false
                            }
                            Some(ips) => ips.iter().any(|a| in_net(self.ip, *a, *v4, *v6)),
                        }
                    }
                    Mechanism::Mx {
                        domain: spec,
                        v4,
                        v6,
                    } => {
                        let name = self.target(spec.as_ref(), &domain).await?;
                        let mut m = false;
                        match void_or(self.dns.mx_exchanges(&name).await)? {
                            None => self.count_void()?,
                            Some(hosts) => {
                                if hosts.len() > MAX_NAMES_PER_TERM {
                                    return Err(Stop::Perm(format!(
                                        "{name} has more than {MAX_NAMES_PER_TERM} MX records"
                                    )));
                                }
                                for h in hosts.iter().filter(|h| !h.is_empty()) {
                                    let ips = match self.dns.ips(h, self.ip.is_ipv6()).await {
                                        Ok(ips) => ips,
                                        Err(DnsError::NotFound(_)) => Vec::new(),
                                        Err(DnsError::Temporary(e)) => return Err(Stop::Temp(e)),
                                    };
                                    if ips.iter().any(|a| in_net(self.ip, *a, *v4, *v6)) {
                                        m = true;
                                        break;
                                    }
                                }
                            }
                        }
                        m
                    }
                    Mechanism::Ptr(spec) => {
                        let target = self.target(spec.as_ref(), &domain).await?;
                        // §5.5: a DNS error here just means no match.
                        let names = match self.dns.ptr(self.ip).await {
                            Ok(n) if n.is_empty() => {
                                self.count_void()?;
                                Vec::new()
                            }
                            Err(DnsError::NotFound(_)) => {
                                self.count_void()?;
                                Vec::new()
                            }
                            Ok(_) | Err(_) => self.validated_names().await,
                        };
                        names
                            .iter()
                            .any(|n| n == &target || n.ends_with(&format!(".{target}")))
                    }
                    Mechanism::Exists(spec) => {
                        let name = self.target(Some(spec), &domain).await?;
                        // §5.7: always an A query, whatever the client's family.
                        match void_or(self.dns.ips(&name, false).await)? {
                            None => {
                                self.count_void()?;
                                false
                            }
                            Some(_) => true,
                        }
                    }
                    Mechanism::Include(spec) => {
                        let name = self.target(Some(spec), &domain).await?;
                        // §5.2: the included record's result decides a match.
                        let inner = self.check(name.clone(), false).await?;
                        match inner.result {
                            SpfResult::Pass => true,
                            SpfResult::Fail | SpfResult::SoftFail | SpfResult::Neutral => false,
                            SpfResult::None => {
                                return Err(Stop::Perm(format!("include:{name} has no SPF record")))
                            }
                            SpfResult::TempError => return Err(Stop::Temp(inner.reason)),
                            SpfResult::PermError => return Err(Stop::Perm(inner.reason)),
                        }
                    }
                };
                if matched {
                    let result = match d.qualifier {
                        Qualifier::Pass => SpfResult::Pass,
                        Qualifier::Fail => SpfResult::Fail,
                        Qualifier::SoftFail => SpfResult::SoftFail,
                        Qualifier::Neutral => SpfResult::Neutral,
                    };
                    let explanation = if result == SpfResult::Fail && top {
                        self.explanation(&record, &domain).await
                    } else {
                        None
                    };
                    return Ok(Found {
                        result,
                        reason: format!("{domain}: matched {}", d.text),
                        explanation,
                    });
                }
            }
            // §6.1: redirect applies only when no term matched.
            if let Some(m) = &record.redirect {
                self.count_lookup()?;
                let name = self.target(Some(m), &domain).await?;
                let inner = self.check(name.clone(), top).await?;
                if inner.result == SpfResult::None {
                    return Err(Stop::Perm(format!("redirect={name} has no SPF record")));
                }
                return Ok(inner);
            }
            Ok(Found {
                result: SpfResult::Neutral,
                reason: format!("{domain}: no term matched"),
                explanation: None,
            })
        })
    }

    /// §6.2: the `exp=` text, when it can be found and expanded; any
    /// problem just means no explanation.
    async fn explanation(&mut self, record: &Record, domain: &str) -> Option<String> {
        let m = record.exp.as_ref()?;
        let name = self.target(Some(m), domain).await.ok()?;
        let txts = self.dns.txt(&name).await.ok()?;
        let [one] = txts.as_slice() else {
            return None;
        };
        let text = std::str::from_utf8(one).ok()?;
        let text = record::macro_string(text, true).ok()?;
        self.ensure_validated(&text).await;
        let out = self.expand(&text, domain);
        out.is_ascii().then_some(out)
    }
}

/// Whether `client` is in the network of `addr` with the prefix lengths
/// of a term (§5.6 dual-cidr-length).
fn in_net(client: IpAddr, addr: IpAddr, v4: u8, v6: u8) -> bool {
    match (client, addr) {
        (IpAddr::V4(c), IpAddr::V4(a)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(v4)).unwrap_or(0);
            u32::from(c) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(c), IpAddr::V6(a)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(v6)).unwrap_or(0);
            u128::from(c) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}
