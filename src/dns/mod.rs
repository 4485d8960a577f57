//! DNS for delivery: MX routing's view of the name system.
//!
//! Owns name resolution for outbound mail: "which hosts accept mail for this
//! domain?" ([`Resolver::mx`]) and "which addresses does this host have?"
//! ([`Resolver::addresses`]). Two implementations: [`HickoryResolver`] asks
//! real name servers, [`FakeResolver`] answers from a table for unit tests.
//!
//! Touches the network (UDP and TCP to the configured name servers) and reads
//! `/etc/resolv.conf`; nothing else. Never reads `/etc/hosts`: delivery is
//! routed by DNS alone.
//!
//! **Untrusted data reaches this module**: domain names come from envelopes,
//! and DNS answers come from whoever answers. Names are parsed and checked
//! before a query is made; host names in answers are lowercased, stripped of
//! the trailing dot and dropped when they are not plain host names.
//!
//! # Meaning of the answers
//! | DNS says | [`Resolver::mx`] returns |
//! |---|---|
//! | MX records | [`MxAnswer::Mx`], by preference, equal preferences shuffled |
//! | only `MX 0 .` (RFC 7505) | [`MxAnswer::NullMx`] (a `.` among other MX records is ignored) |
//! | no MX, but A or AAAA records (RFC 5321 §5.1) | [`MxAnswer::Implicit`] with the domain |
//! | no MX and no A/AAAA (the name exists) | [`DnsError::NotFound`]: the domain has no mail host |
//! | NXDOMAIN | [`DnsError::NotFound`] |
//! | SERVFAIL, REFUSED, other error codes, timeout, network errors | [`DnsError::Temporary`] |
//! | only malformed MX host names | [`DnsError::Temporary`] (a broken zone may be fixed) |
//!
//! CNAMEs are followed. For [`Resolver::addresses`], an answer with some
//! addresses wins over a failure of the other family; with none, a temporary
//! failure of either family makes the whole answer temporary.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::{DnsError as HickoryDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use mail_auth::MessageAuthenticator;

/// A boxed future, so that [`Resolver`] stays object-safe (`Arc<dyn Resolver>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One mail exchanger of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    pub preference: u16,
    /// Lowercased, without the trailing dot.
    pub host: String,
}

/// Where mail for a domain goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxAnswer {
    /// MX records, sorted by preference; hosts of equal preference in random
    /// order (a new order on each call). Never empty.
    Mx(Vec<MxHost>),
    /// No MX records but the domain has addresses: the implicit MX is the
    /// domain itself (RFC 5321 §5.1). Lowercased, without the trailing dot.
    Implicit(String),
    /// RFC 7505 null MX (`MX 0 .`): the domain accepts no mail.
    NullMx,
}

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// Permanent: the name does not exist (NXDOMAIN), is not a valid domain
    /// name, or has no records of the kind asked for (no mail host, no address).
    NotFound(String),
    /// Temporary: SERVFAIL, REFUSED, timeout, network trouble, a malformed answer.
    Temporary(String),
}

impl DnsError {
    /// True for [`DnsError::NotFound`].
    pub fn is_permanent(&self) -> bool {
        matches!(self, DnsError::NotFound(_))
    }
}

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DnsError::NotFound(m) => write!(f, "not found: {m}"),
            DnsError::Temporary(m) => write!(f, "temporary DNS failure: {m}"),
        }
    }
}

impl std::error::Error for DnsError {}

/// Which address families [`Resolver::addresses`] returns, and in which order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpPreference {
    Ipv4First,
    Ipv6First,
    Ipv4Only,
    Ipv6Only,
}

/// DNS as delivery needs it. Object-safe: hold it as `Arc<dyn Resolver>`.
pub trait Resolver: Send + Sync {
    /// Mail exchangers of `domain` (see the module docs for the meaning of
    /// each outcome). A trailing dot and letter case in `domain` are ignored.
    fn mx(&self, domain: &str) -> BoxFuture<'_, Result<MxAnswer, DnsError>>;

    /// A and AAAA records of `host` (CNAMEs followed), families ordered or
    /// filtered by `prefer`, without duplicates. Never `Ok` with an empty list:
    /// a host without addresses is [`DnsError::NotFound`].
    fn addresses(
        &self,
        host: &str,
        prefer: IpPreference,
    ) -> BoxFuture<'_, Result<Vec<IpAddr>, DnsError>>;
}

// ---------------------------------------------------------------------------
// Shared pure logic (used by both resolvers, so they agree).

/// Lowercases and strips one trailing dot; checks that what is left is a
/// plausible domain name (ASCII letters, digits, `-`, `_`, dots between
/// non-empty labels, at most 253 characters) unless it is non-ASCII (an
/// internationalized name, checked when converted).
fn normalize_domain(domain: &str) -> Result<String, DnsError> {
    let d = domain.strip_suffix('.').unwrap_or(domain).to_lowercase();
    if d.is_empty() {
        return Err(DnsError::NotFound("empty domain name".into()));
    }
    if d.is_ascii() && !is_host_name(&d) {
        return Err(DnsError::NotFound(format!(
            "invalid domain name {:?}",
            truncate(domain, 80)
        )));
    }
    Ok(d)
}

/// A lowercase ASCII host name: labels of `[a-z0-9_-]`, 1..=63 bytes, joined
/// by single dots, at most 253 bytes, no leading or trailing dot.
fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Turns raw MX records (preference, exchange as written in DNS, e.g.
/// `"MX1.Example.COM."` or `"."`) into an answer: null MX detection,
/// normalization, sorting, de-duplication and shuffling of equal preferences.
fn mx_answer(domain: &str, records: Vec<(u16, String)>, seed: u64) -> Result<MxAnswer, DnsError> {
    let mut hosts: Vec<MxHost> = Vec::with_capacity(records.len());
    let mut null_seen = false;
    let mut malformed = 0usize;
    for (preference, exchange) in records {
        let host = exchange
            .strip_suffix('.')
            .unwrap_or(&exchange)
            .to_ascii_lowercase();
        if host.is_empty() {
            null_seen = true;
        } else if is_host_name(&host) {
            hosts.push(MxHost { preference, host });
        } else {
            malformed += 1;
        }
    }
    if hosts.is_empty() {
        if null_seen && malformed == 0 {
            return Ok(MxAnswer::NullMx);
        }
        return Err(DnsError::Temporary(format!(
            "{domain}: MX records name no valid host"
        )));
    }
    hosts.sort_by_key(|h| h.preference);
    // A host listed twice keeps only its most preferred entry.
    let mut seen = HashSet::new();
    hosts.retain(|h| seen.insert(h.host.clone()));
    let mut rng = XorShift::new(seed);
    let mut start = 0;
    while start < hosts.len() {
        let pref = hosts[start].preference;
        let end = start
            + hosts[start..]
                .iter()
                .take_while(|h| h.preference == pref)
                .count();
        rng.shuffle(&mut hosts[start..end]);
        start = end;
    }
    Ok(MxAnswer::Mx(hosts))
}

/// Per-family outcome of an address lookup: `Ok(vec![])` means the name
/// exists but has no records of that family.
type FamilyResult = Result<Vec<IpAddr>, DnsError>;

/// Joins the preferred family's outcome with the other's (`None` when the
/// other family was not asked for).
fn combine_families(host: &str, first: FamilyResult, second: Option<FamilyResult>) -> FamilyResult {
    let mut out: Vec<IpAddr> = Vec::new();
    let mut temporary: Option<DnsError> = None;
    let mut not_found: Option<DnsError> = None;
    for r in std::iter::once(first).chain(second) {
        match r {
            Ok(ips) => {
                for ip in ips {
                    if !out.contains(&ip) {
                        out.push(ip);
                    }
                }
            }
            Err(e @ DnsError::Temporary(_)) => temporary = temporary.or(Some(e)),
            Err(e @ DnsError::NotFound(_)) => not_found = not_found.or(Some(e)),
        }
    }
    if !out.is_empty() {
        return Ok(out);
    }
    Err(temporary
        .or(not_found)
        .unwrap_or_else(|| DnsError::NotFound(format!("{host}: no address records"))))
}

/// A per-call seed: `RandomState` gives fresh keys each time, mixed with a counter.
fn fresh_seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// xorshift64*: plenty for shuffling a handful of MX hosts.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

// ---------------------------------------------------------------------------
// Real DNS through hickory.

/// Asks real name servers, through `hickory-resolver` (with its small
/// positive/negative cache, TTLs as the answers give them). The same
/// resolver serves delivery's lookups and the email authentication checks
/// ([`HickoryResolver::authenticator`]): one cache, one configuration.
#[derive(Clone)]
pub struct HickoryResolver {
    inner: TokioResolver,
    auth: MessageAuthenticator,
}

impl fmt::Debug for HickoryResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HickoryResolver")
    }
}

/// Outcome of one query of one type.
enum Answer {
    Records(Lookup),
    /// The name exists but has no record of this type.
    NoData,
}

impl HickoryResolver {
    /// System configuration (`/etc/resolv.conf`) when `nameservers` is empty;
    /// otherwise exactly these servers, each over UDP (TCP when an answer is
    /// truncated). `timeout` bounds each try; `attempts` is the number of
    /// tries of a query (at least 1) before it fails temporarily. Names are
    /// always queried as fully qualified (no search list); `/etc/hosts` is
    /// not read. May be called outside a tokio runtime; lookups need one.
    pub fn new(
        nameservers: &[SocketAddr],
        timeout: Duration,
        attempts: usize,
    ) -> Result<HickoryResolver, String> {
        let (config, mut opts) = if nameservers.is_empty() {
            hickory_resolver::system_conf::read_system_conf().map_err(|e| {
                format!("reading the system DNS configuration (/etc/resolv.conf): {e}")
            })?
        } else {
            let servers: Vec<NameServerConfig> = nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            (
                ResolverConfig::from_parts(None, Vec::new(), servers),
                ResolverOpts::default(),
            )
        };
        opts.timeout = timeout;
        // hickory counts retries after the first try.
        opts.attempts = attempts.max(1) - 1;
        opts.use_hosts_file = ResolveHosts::Never;
        // Larger UDP answers: many MX records fit without falling back to TCP.
        opts.edns0 = true;
        // Names are always asked as given (fully qualified).
        opts.ndots = 0;
        let auth = MessageAuthenticator::new(config, opts)
            .map_err(|e| format!("setting up the DNS resolver: {e}"))?;
        Ok(HickoryResolver {
            inner: auth.resolver().clone(),
            auth,
        })
    }

    /// The email authentication checks (SPF, DKIM, DMARC, ARC) on this
    /// resolver.
    pub fn authenticator(&self) -> &MessageAuthenticator {
        &self.auth
    }

    /// A name as the checks give it (it may carry characters host names do
    /// not, from SPF macros): relaxed parsing, always fully qualified.
    fn check_name(name: &str) -> Result<Name, DnsError> {
        let fq = if name.ends_with('.') {
            name.to_string()
        } else {
            format!("{name}.")
        };
        // Names built from untrusted text (SPF macros) may hold any
        // visible byte; DNS labels are octets (RFC 2181 §11), so what the
        // text parser refuses is tried as raw labels.
        Name::from_str_relaxed(&fq)
            .or_else(|e| {
                let labels: Vec<&[u8]> = name
                    .trim_end_matches('.')
                    .split('.')
                    .map(str::as_bytes)
                    .collect();
                let mut n = Name::from_labels(labels).map_err(|_| e)?;
                n.set_fqdn(true);
                Ok(n)
            })
            .map_err(|e: hickory_resolver::proto::ProtoError| {
                DnsError::NotFound(format!("invalid domain name {:?}: {e}", truncate(name, 80)))
            })
    }

    /// TXT records of `name`, each one's strings joined without spaces
    /// (RFC 7208 §3.3). `Ok(empty)`: the name exists without TXT (NODATA);
    /// `Err(NotFound)`: NXDOMAIN.
    pub async fn txt(&self, name: &str) -> Result<Vec<Vec<u8>>, DnsError> {
        let n = Self::check_name(name)?;
        match self.query(&n, RecordType::TXT).await? {
            Answer::NoData => Ok(Vec::new()),
            Answer::Records(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::TXT(t) => {
                        Some(t.txt_data.iter().flat_map(|p| p.iter().copied()).collect())
                    }
                    _ => None,
                })
                .collect()),
        }
    }

    /// A or AAAA records of `name`, with the meaning of [`Self::txt`].
    pub async fn ips(&self, name: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        let n = Self::check_name(name)?;
        self.family(&n, v6).await
    }

    /// The exchanges of the MX records of `name` (as given, lowercase,
    /// without the trailing dot; `""` for the root), with the meaning of
    /// [`Self::txt`].
    pub async fn mx_exchanges(&self, name: &str) -> Result<Vec<String>, DnsError> {
        let n = Self::check_name(name)?;
        match self.query(&n, RecordType::MX).await? {
            Answer::NoData => Ok(Vec::new()),
            Answer::Records(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some(plain_name(&mx.exchange)),
                    _ => None,
                })
                .collect()),
        }
    }

    /// The names of `ip`'s PTR records, with the meaning of [`Self::txt`].
    pub async fn ptr(&self, ip: IpAddr) -> Result<Vec<String>, DnsError> {
        let n = Name::from(ip);
        match self.query(&n, RecordType::PTR).await? {
            Answer::NoData => Ok(Vec::new()),
            Answer::Records(l) => Ok(l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(p) => Some(plain_name(&p.0)),
                    _ => None,
                })
                .collect()),
        }
    }

    /// One query; NXDOMAIN is `NotFound`, NODATA is `Ok(NoData)`.
    async fn query(&self, name: &Name, rtype: RecordType) -> Result<Answer, DnsError> {
        match self.inner.lookup(name.clone(), rtype).await {
            Ok(lookup) => Ok(Answer::Records(lookup)),
            Err(e) => classify(name, rtype, &e),
        }
    }

    async fn family(&self, name: &Name, v6: bool) -> FamilyResult {
        let rtype = if v6 { RecordType::AAAA } else { RecordType::A };
        match self.query(name, rtype).await? {
            Answer::NoData => Ok(Vec::new()),
            Answer::Records(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) if !v6 => Some(IpAddr::V4(a.0)),
                    RData::AAAA(a) if v6 => Some(IpAddr::V6(a.0)),
                    _ => None,
                })
                .collect()),
        }
    }

    async fn lookup_mx(&self, domain: String) -> Result<MxAnswer, DnsError> {
        let domain = normalize_domain(&domain)?;
        let name = to_fqdn(&domain)?;
        let records: Vec<(u16, String)> = match self.query(&name, RecordType::MX).await? {
            Answer::NoData => Vec::new(),
            // CNAME records ride along in the lookup; keep only the MX.
            Answer::Records(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                    _ => None,
                })
                .collect(),
        };
        if !records.is_empty() {
            return mx_answer(&domain, records, fresh_seed());
        }
        // RFC 5321 §5.1: no MX, so the domain itself, if it has addresses.
        let (v4, v6) = tokio::join!(self.family(&name, false), self.family(&name, true));
        match combine_families(&domain, v4, Some(v6)) {
            Ok(_) => Ok(MxAnswer::Implicit(domain)),
            Err(DnsError::NotFound(_)) => Err(DnsError::NotFound(format!(
                "{domain}: no MX and no address records (no mail host)"
            ))),
            Err(e) => Err(e),
        }
    }

    async fn lookup_addresses(&self, host: String, prefer: IpPreference) -> FamilyResult {
        let host = normalize_domain(&host)?;
        let name = to_fqdn(&host)?;
        match prefer {
            IpPreference::Ipv4Only => {
                combine_families(&host, self.family(&name, false).await, None)
            }
            IpPreference::Ipv6Only => combine_families(&host, self.family(&name, true).await, None),
            IpPreference::Ipv4First | IpPreference::Ipv6First => {
                let (v4, v6) = tokio::join!(self.family(&name, false), self.family(&name, true));
                if prefer == IpPreference::Ipv4First {
                    combine_families(&host, v4, Some(v6))
                } else {
                    combine_families(&host, v6, Some(v4))
                }
            }
        }
    }
}

impl Resolver for HickoryResolver {
    fn mx(&self, domain: &str) -> BoxFuture<'_, Result<MxAnswer, DnsError>> {
        Box::pin(self.lookup_mx(domain.to_owned()))
    }

    fn addresses(
        &self,
        host: &str,
        prefer: IpPreference,
    ) -> BoxFuture<'_, Result<Vec<IpAddr>, DnsError>> {
        Box::pin(self.lookup_addresses(host.to_owned(), prefer))
    }
}

/// A normalized domain as an absolute DNS name (so no search list applies);
/// internationalized names are converted to their A-label form.
fn to_fqdn(domain: &str) -> Result<Name, DnsError> {
    let fq = format!("{domain}.");
    let parsed = if domain.is_ascii() {
        Name::from_ascii(&fq)
    } else {
        Name::from_utf8(&fq)
    };
    let name = parsed.map_err(|e| {
        DnsError::NotFound(format!(
            "invalid domain name {:?}: {e}",
            truncate(domain, 80)
        ))
    })?;
    let ascii = name.to_ascii().to_ascii_lowercase();
    if !is_host_name(ascii.strip_suffix('.').unwrap_or(&ascii)) {
        return Err(DnsError::NotFound(format!(
            "invalid domain name {:?}",
            truncate(domain, 80)
        )));
    }
    Ok(name)
}

/// Maps a hickory failure: NXDOMAIN is permanent, NOERROR without records
/// is NODATA, every other response code and every transport error is temporary.
fn classify(name: &Name, rtype: RecordType, e: &NetError) -> Result<Answer, DnsError> {
    let shown = name.to_ascii();
    let shown = shown.strip_suffix('.').unwrap_or(&shown);
    if let NetError::Dns(HickoryDnsError::NoRecordsFound(no)) = e {
        {
            return match no.response_code {
                ResponseCode::NoError => Ok(Answer::NoData),
                ResponseCode::NXDomain => Err(DnsError::NotFound(format!(
                    "{shown}: no such domain (NXDOMAIN)"
                ))),
                code => {
                    tracing::debug!(name = %shown, ?rtype, %code, "DNS error response");
                    Err(DnsError::Temporary(format!(
                        "{shown} {rtype}: name server answered {code}"
                    )))
                }
            };
        }
    }
    tracing::debug!(name = %shown, ?rtype, error = %e, "DNS lookup failed");
    Err(DnsError::Temporary(format!("{shown} {rtype}: {e}")))
}

// ---------------------------------------------------------------------------
// A table of answers for unit tests.

/// Answers from a table, with the same meaning as [`HickoryResolver`]:
/// a name known only through [`with_mx`](Self::with_mx) has no addresses, a
/// name known only through [`with_host`](Self::with_host) gets an implicit MX
/// when it has addresses, and an unknown name is NXDOMAIN ([`DnsError::NotFound`]).
/// Names are matched without case and trailing dot.
#[derive(Debug, Clone, Default)]
pub struct FakeResolver {
    mx: HashMap<String, Vec<(u16, String)>>,
    hosts: HashMap<String, Vec<IpAddr>>,
    errors: HashMap<String, DnsError>,
}

fn fake_key(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_lowercase()
}

impl FakeResolver {
    pub fn new() -> FakeResolver {
        FakeResolver::default()
    }

    /// MX records of `domain`, as (preference, host); a host `"."` is a null MX.
    pub fn with_mx<S: AsRef<str>>(mut self, domain: &str, records: Vec<(u16, S)>) -> FakeResolver {
        let records = records
            .into_iter()
            .map(|(p, h)| (p, h.as_ref().to_owned()))
            .collect();
        self.mx.insert(fake_key(domain), records);
        self
    }

    /// The RFC 7505 null MX: `MX 0 .`.
    pub fn with_null_mx(self, domain: &str) -> FakeResolver {
        self.with_mx(domain, vec![(0, ".")])
    }

    /// A and AAAA records of `host` (an empty list: the name exists without addresses).
    pub fn with_host(mut self, host: &str, ips: Vec<IpAddr>) -> FakeResolver {
        self.hosts.insert(fake_key(host), ips);
        self
    }

    /// Every lookup of `name` (MX or addresses) fails with `error`.
    pub fn with_error(mut self, name: &str, error: DnsError) -> FakeResolver {
        self.errors.insert(fake_key(name), error);
        self
    }

    fn exists(&self, key: &str) -> bool {
        self.mx.contains_key(key) || self.hosts.contains_key(key)
    }

    fn family(&self, key: &str, v6: bool) -> FamilyResult {
        if !self.exists(key) {
            return Err(DnsError::NotFound(format!(
                "{key}: no such domain (NXDOMAIN)"
            )));
        }
        Ok(self
            .hosts
            .get(key)
            .map(|ips| {
                ips.iter()
                    .copied()
                    .filter(|ip| ip.is_ipv6() == v6)
                    .collect()
            })
            .unwrap_or_default())
    }

    fn lookup_mx(&self, domain: &str) -> Result<MxAnswer, DnsError> {
        let domain = normalize_domain(domain)?;
        if let Some(e) = self.errors.get(&domain) {
            return Err(e.clone());
        }
        match self.mx.get(&domain) {
            Some(records) if !records.is_empty() => {
                mx_answer(&domain, records.clone(), fresh_seed())
            }
            _ => {
                let v4 = self.family(&domain, false);
                let v6 = self.family(&domain, true);
                match combine_families(&domain, v4, Some(v6)) {
                    Ok(_) => Ok(MxAnswer::Implicit(domain)),
                    Err(DnsError::NotFound(m)) if !self.exists(&domain) => {
                        Err(DnsError::NotFound(m))
                    }
                    Err(DnsError::NotFound(_)) => Err(DnsError::NotFound(format!(
                        "{domain}: no MX and no address records (no mail host)"
                    ))),
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn lookup_addresses(&self, host: &str, prefer: IpPreference) -> FamilyResult {
        let host = normalize_domain(host)?;
        if let Some(e) = self.errors.get(&host) {
            return Err(e.clone());
        }
        let v4 = || self.family(&host, false);
        let v6 = || self.family(&host, true);
        match prefer {
            IpPreference::Ipv4Only => combine_families(&host, v4(), None),
            IpPreference::Ipv6Only => combine_families(&host, v6(), None),
            IpPreference::Ipv4First => combine_families(&host, v4(), Some(v6())),
            IpPreference::Ipv6First => combine_families(&host, v6(), Some(v4())),
        }
    }
}

impl Resolver for FakeResolver {
    fn mx(&self, domain: &str) -> BoxFuture<'_, Result<MxAnswer, DnsError>> {
        let answer = self.lookup_mx(domain);
        Box::pin(async move { answer })
    }

    fn addresses(
        &self,
        host: &str,
        prefer: IpPreference,
    ) -> BoxFuture<'_, Result<Vec<IpAddr>, DnsError>> {
        let answer = self.lookup_addresses(host, prefer);
        Box::pin(async move { answer })
    }
}

/// A name as its labels joined by dots, lowercase, without the trailing
/// dot and without the escapes of the zone-file form (so a name read
/// from an answer can be queried again as the same labels).
fn plain_name(n: &Name) -> String {
    let labels: Vec<String> = n
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    labels.join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, h)| (*p, h.to_string())).collect()
    }

    fn hosts(answer: MxAnswer) -> Vec<(u16, String)> {
        match answer {
            MxAnswer::Mx(h) => h.into_iter().map(|h| (h.preference, h.host)).collect(),
            other => panic!("expected MX list, got {other:?}"),
        }
    }

    #[test]
    fn mx_sorted_normalized_and_deduplicated() {
        let a = mx_answer(
            "d",
            recs(&[
                (20, "B.example."),
                (10, "A.Example.COM."),
                (30, "b.example"),
            ]),
            7,
        )
        .unwrap();
        assert_eq!(
            hosts(a),
            vec![
                (10, "a.example.com".to_string()),
                (20, "b.example".to_string())
            ]
        );
    }

    #[test]
    fn null_mx_alone_and_among_others() {
        assert_eq!(
            mx_answer("d", recs(&[(0, ".")]), 1).unwrap(),
            MxAnswer::NullMx
        );
        assert_eq!(
            mx_answer("d", recs(&[(0, "")]), 1).unwrap(),
            MxAnswer::NullMx
        );
        let a = mx_answer("d", recs(&[(0, "."), (10, "mx.d.")]), 1).unwrap();
        assert_eq!(hosts(a), vec![(10, "mx.d".to_string())]);
    }

    #[test]
    fn malformed_hosts_dropped_or_temporary() {
        let a = mx_answer("d", recs(&[(5, "bad host."), (10, "mx.d.")]), 1).unwrap();
        assert_eq!(hosts(a), vec![(10, "mx.d".to_string())]);
        let e = mx_answer("d", recs(&[(5, "b\\032d.")]), 1).unwrap_err();
        assert!(matches!(e, DnsError::Temporary(_)), "{e:?}");
    }

    #[test]
    fn equal_preferences_shuffled() {
        let input = recs(&[(10, "a."), (10, "b."), (10, "c."), (5, "z.")]);
        let mut orders = HashSet::new();
        for seed in 0..200 {
            let h = hosts(mx_answer("d", input.clone(), seed).unwrap());
            assert_eq!(h[0], (5, "z".to_string()));
            orders.insert(h[1..].iter().map(|x| x.1.clone()).collect::<Vec<_>>());
        }
        assert_eq!(orders.len(), 6, "all permutations of three hosts appear");
    }

    #[test]
    fn domain_normalization() {
        assert_eq!(normalize_domain("Example.COM.").unwrap(), "example.com");
        assert!(normalize_domain("").unwrap_err().is_permanent());
        assert!(normalize_domain(".").unwrap_err().is_permanent());
        assert!(normalize_domain("a..b").is_err());
        assert!(normalize_domain("a b.c").is_err());
        assert!(normalize_domain("a\\.b.c").is_err());
        assert!(normalize_domain(&"a".repeat(64)).is_err());
        assert_eq!(
            to_fqdn("bücher.example").unwrap().to_ascii(),
            "xn--bcher-kva.example."
        );
    }

    #[test]
    fn combine_prefers_addresses_over_failures() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let t = DnsError::Temporary("t".into());
        let n = DnsError::NotFound("n".into());
        assert_eq!(
            combine_families("h", Ok(vec![v6]), Some(Ok(vec![v4]))),
            Ok(vec![v6, v4])
        );
        assert_eq!(
            combine_families("h", Err(t.clone()), Some(Ok(vec![v4]))),
            Ok(vec![v4])
        );
        assert_eq!(
            combine_families("h", Err(n.clone()), Some(Err(t.clone()))),
            Err(t)
        );
        assert_eq!(
            combine_families("h", Err(n.clone()), Some(Ok(vec![]))),
            Err(n)
        );
        assert!(combine_families("h", Ok(vec![]), None)
            .unwrap_err()
            .is_permanent());
        assert_eq!(combine_families("h", Ok(vec![v4, v4]), None), Ok(vec![v4]));
    }
}
