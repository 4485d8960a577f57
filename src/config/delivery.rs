//! `[delivery]`: sending mail on, retries, DSNs, routes and TLS towards
//! next hops.

use super::*;

/// `[delivery]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Deliver queued mail. Off: mail is accepted and stays queued. Default: true.
    pub enabled: bool,
    /// Most deliveries (connections out) in progress at once. Default: 100.
    pub max_in_flight: usize,
    /// Most simultaneous connections to one destination (domain or relay
    /// host). Default: 20.
    pub max_connections_per_destination: usize,
    /// Most recipients in one SMTP transaction; more are sent in further
    /// transactions. Default: 50.
    pub max_recipients_per_transaction: usize,
    /// Seconds before the first retry after a temporary failure; each
    /// later wait doubles up to `max_retry_interval_secs`. Default: 300.
    pub first_retry_secs: u64,
    /// Default: 3600.
    pub max_retry_interval_secs: u64,
    /// A message still undelivered this long after arrival is returned to
    /// its sender. Default: 432000 (5 days).
    pub max_queue_lifetime_secs: u64,
    /// Send a delay warning (once) when a message is still queued this long
    /// after arrival; 0 = never. Default: 14400 (4 hours).
    pub delay_warning_secs: u64,
    /// Send all mail for other domains through this host: "[host]:port"
    /// (no MX lookup) or "host:port"/"host" (MX lookup). "" = MX routing.
    /// Default: "".
    pub relay_host: String,
    /// Login and password for AUTH at the relay host; "" = no AUTH.
    /// The password is in clear: keep this file readable by root and pigeon only.
    pub relay_login: String,
    pub relay_password: String,
    /// TLS towards the relay host: "opportunistic", "required" (a verified
    /// certificate), "none", or "auto": "required" when `relay_login` is
    /// set (a password never goes over unverified TLS), else
    /// "opportunistic". Default: "auto".
    pub relay_tls: RelayTls,
    /// A PEM file of extra trust anchors for verifying the certificates of
    /// next hops (besides the system's roots, which honour
    /// `SSL_CERT_FILE`). "" = none. Default: "".
    pub tls_ca_file: String,
    /// TLS towards MX hosts: "opportunistic" (use it when offered),
    /// "required" or "none". Default: "opportunistic".
    pub starttls: TlsPolicy,
    /// After a failed TLS handshake with a host, try it without TLS on the
    /// next attempt (opportunistic only). Default: true.
    pub tls_fallback_plaintext: bool,
    /// Per-domain next hops, "domain" = "[host]:port" or "host". Default: none.
    pub routes: std::collections::BTreeMap<String, String>,
    /// Port of remote SMTP servers. Default: 25.
    pub remote_port: u16,
    /// Address family order: "ipv4_first", "ipv6_first", "ipv4_only", "ipv6_only". Default: "ipv4_first".
    pub ip_preference: IpPreference,
    /// Seconds to wait for a TCP connection. Default: 30.
    pub connect_timeout_secs: u64,
    /// Seconds an idle connection is kept for the next message to the same
    /// destination; 0 = no reuse. Default: 5.
    pub connection_reuse_secs: u64,
    /// Where a bounce that cannot be delivered goes: "postmaster" or "drop".
    /// Default: "postmaster".
    pub double_bounce: DoubleBounce,
    /// The postmaster address for double bounces and DSN From:. "" =
    /// postmaster@<server.hostname>. Default: "".
    pub postmaster: String,
    /// Most bytes of the original message a DSN returns: a larger one is
    /// returned as its header section only, whatever RET asked for (as
    /// Postfix's `bounce_size_limit`). Default: 50000.
    pub bounce_size_limit: usize,
}

impl DeliveryConfig {
    /// The TLS policy towards the relay host: as configured, else
    /// "required" when it gets a password, else "opportunistic".
    pub fn relay_tls(&self) -> TlsPolicy {
        match self.relay_tls {
            RelayTls::None => TlsPolicy::None,
            RelayTls::Opportunistic => TlsPolicy::Opportunistic,
            RelayTls::Required => TlsPolicy::Required,
            RelayTls::Auto if !self.relay_login.is_empty() => TlsPolicy::Required,
            RelayTls::Auto => TlsPolicy::Opportunistic,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> DeliveryConfig {
        DeliveryConfig {
            enabled: true,
            max_in_flight: 100,
            max_connections_per_destination: 20,
            max_recipients_per_transaction: 50,
            first_retry_secs: 300,
            max_retry_interval_secs: 3600,
            max_queue_lifetime_secs: 432_000,
            delay_warning_secs: 14_400,
            relay_host: String::new(),
            relay_login: String::new(),
            relay_password: String::new(),
            relay_tls: RelayTls::Auto,
            tls_ca_file: String::new(),
            starttls: TlsPolicy::Opportunistic,
            tls_fallback_plaintext: true,
            routes: Default::default(),
            remote_port: 25,
            ip_preference: IpPreference::Ipv4First,
            connect_timeout_secs: 30,
            connection_reuse_secs: 5,
            double_bounce: DoubleBounce::Postmaster,
            postmaster: String::new(),
            bounce_size_limit: 50_000,
        }
    }
}

/// `delivery.relay_tls`: a [`TlsPolicy`], or `auto` (see
/// [`DeliveryConfig::relay_tls`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayTls {
    #[default]
    Auto,
    None,
    Opportunistic,
    Required,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    None,
    #[default]
    Opportunistic,
    Required,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpPreference {
    #[default]
    Ipv4First,
    Ipv6First,
    Ipv4Only,
    Ipv6Only,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DoubleBounce {
    #[default]
    Postmaster,
    Drop,
}
