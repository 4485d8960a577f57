//! Configuration: the typed form of `pigeon.toml`, parsed once and validated.
//!
//! This module owns the configuration structs, their defaults, and the rules
//! that decide whether a file is acceptable. [`load`] reads one file;
//! [`parse`] turns text into a [`Config`] or into a list of [`ConfigError`]s,
//! each naming the key (`listener[1].bind`) and the line it is on. Unknown keys
//! are errors. Syntax and type errors stop parsing at the first one; the value
//! checks that follow report every problem at once.
//!
//! Untrusted bytes reach this module: the configuration file is operator
//! input and is treated as such (size-capped, never trusted to be well
//! formed). Apart from reading the file it is given and `/etc/hostname` (for
//! the default hostname), it touches nothing. It is a leaf: it imports nothing
//! from the rest of the crate.

mod cidr;
mod locate;
pub(crate) mod validate;

#[cfg(test)]
mod tests;

pub use cidr::{client_network, Cidr, ParseCidrError};
pub use validate::{check_alias, check_user};

use serde::Deserialize;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use locate::{line_of_offset, Locator};

/// Configuration files larger than this are refused.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1024 * 1024;

/// The whole configuration. Every section is optional in the file; a missing
/// section or key takes its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[server]`: identity of this host.
    pub server: ServerConfig,
    /// `[[listener]]`: the addresses to accept connections on.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// `[domains]`: the domains this server receives mail for.
    pub domains: DomainsConfig,
    /// `[relay]`: who may send mail through this server to other domains.
    pub relay: RelayConfig,
    /// `[spool]`: where the queue lives on disk.
    pub spool: SpoolConfig,
    /// `[limits]`: sizes, counts and timeouts.
    pub limits: Limits,
    /// `[smtp]`: protocol behaviour.
    pub smtp: SmtpConfig,
    /// `[log]`: logging.
    pub log: LogConfig,
    /// `[tls]`: certificates for STARTTLS and implicit TLS.
    pub tls: TlsConfig,
    /// `[auth]`: SMTP AUTH users and the rules around them.
    pub auth: AuthConfig,
    /// `[delivery]`: sending queued mail on.
    pub delivery: DeliveryConfig,
    /// `[dns]`: name resolution for delivery.
    pub dns: DnsConfig,
    /// `[local]`: delivery to mailboxes on this machine, and aliases.
    pub local: LocalConfig,
    /// `[sendmail]`: mail from programs on this machine.
    pub sendmail: SendmailConfig,
    /// `[metrics]`: the Prometheus endpoint.
    pub metrics: MetricsConfig,
}

/// `[sendmail]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendmailConfig {
    /// The Unix socket `pigeon sendmail` hands messages to (mode 0666:
    /// every local user may connect). "" = off. Default:
    /// `/run/pigeon/sendmail.sock`.
    pub socket: PathBuf,
    /// Local users (names) who may submit mail; empty = every user.
    /// Default: empty.
    pub allowed_users: Vec<String>,
    /// Local users who may use any envelope sender (`-f`) without a
    /// warning. Default: `["root"]`.
    pub trusted_users: Vec<String>,
    /// Refuse (553 5.7.1) a sender that is not the user's own
    /// (`user@server.hostname`), not `<>` and not listed for them in
    /// `senders`; when false such mail goes out with an
    /// `X-Authentication-Warning:` field. Default: false.
    pub restrict_senders: bool,
    /// Further senders each local user may use: user name = list of
    /// addresses or `@domain`. Default: none.
    pub senders: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for SendmailConfig {
    fn default() -> SendmailConfig {
        SendmailConfig {
            socket: PathBuf::from("/run/pigeon/sendmail.sock"),
            allowed_users: Vec::new(),
            trusted_users: vec!["root".into()],
            restrict_senders: false,
            senders: Default::default(),
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Loopback address and port of the Prometheus text endpoint
    /// (`/metrics`), e.g. "127.0.0.1:9587"; "" = off. Default: "".
    pub listen: String,
}

impl Default for Config {
    /// A valid configuration: one SMTP listener on `0.0.0.0:25`, every other
    /// key at its default.
    fn default() -> Config {
        Config {
            server: ServerConfig::default(),
            listeners: vec![ListenerConfig {
                bind: SocketAddr::from(([0, 0, 0, 0], 25)),
                mode: ListenerMode::Smtp,
                auth: None,
                plaintext_auth: false,
            }],
            domains: DomainsConfig::default(),
            relay: RelayConfig::default(),
            spool: SpoolConfig::default(),
            limits: Limits::default(),
            smtp: SmtpConfig::default(),
            log: LogConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            delivery: DeliveryConfig::default(),
            dns: DnsConfig::default(),
            local: LocalConfig::default(),
            sendmail: SendmailConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// The name this server gives in its greeting, in EHLO replies and in
    /// `Received:` headers. A domain name, stored lowercase without a
    /// trailing dot. Default: the contents of `/etc/hostname`, or
    /// `localhost` if that file is missing or does not hold a valid name.
    pub hostname: String,
    /// Started as root: the user to switch to once the ports are bound
    /// (before any network input is read). "" = none. Default: "".
    pub user: String,
    /// The group to switch to; "" = the user's primary group. Default: "".
    pub group: String,
    /// Allow running as root (no `user`, or `user` is root). Default: false.
    pub allow_root: bool,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            hostname: system_hostname(),
            user: String::new(),
            group: String::new(),
            allow_root: false,
        }
    }
}

/// The machine's hostname from `/etc/hostname`, or `localhost`.
fn system_hostname() -> String {
    let mut text = String::new();
    let read =
        std::fs::File::open("/etc/hostname").and_then(|f| f.take(1024).read_to_string(&mut text));
    if read.is_ok() {
        if let Ok(name) = validate::normalize_domain(text.trim()) {
            return name;
        }
    }
    "localhost".to_string()
}

/// One `[[listener]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// The address and port to listen on, such as `0.0.0.0:25` or `[::]:25`.
    /// Required.
    #[serde(deserialize_with = "deserialize_bind")]
    pub bind: SocketAddr,
    /// What the port is for. Default: `smtp`.
    #[serde(default)]
    pub mode: ListenerMode,
    /// Offer SMTP AUTH. `submission` and `submissions` listeners always
    /// offer and require it; on an `smtp` listener it is off unless set to
    /// true (then offered, not required). Default: by mode.
    #[serde(default)]
    pub auth: Option<bool>,
    /// Offer AUTH on a connection without TLS. Allowed only on a loopback
    /// address. Default: false.
    #[serde(default)]
    pub plaintext_auth: bool,
}

impl ListenerConfig {
    /// A listener with the defaults of its mode.
    pub fn new(bind: SocketAddr, mode: ListenerMode) -> ListenerConfig {
        ListenerConfig {
            bind,
            mode,
            auth: None,
            plaintext_auth: false,
        }
    }

    /// AUTH is offered on this listener (under TLS unless `plaintext_auth`).
    pub fn auth_offered(&self) -> bool {
        match self.mode {
            ListenerMode::Smtp => self.auth.unwrap_or(false),
            ListenerMode::Submission | ListenerMode::Submissions => true,
        }
    }

    /// MAIL is refused until the client has authenticated.
    pub fn auth_required(&self) -> bool {
        self.mode != ListenerMode::Smtp
    }
}

/// What a listening port is for.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Mail from other servers (port 25).
    #[default]
    Smtp,
    /// Mail from users' clients, with STARTTLS (port 587, RFC 6409).
    Submission,
    /// Mail from users' clients over implicit TLS (port 465, RFC 8314).
    Submissions,
}

impl ListenerMode {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerMode::Smtp => "smtp",
            ListenerMode::Submission => "submission",
            ListenerMode::Submissions => "submissions",
        }
    }
}

impl fmt::Display for ListenerMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[domains]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DomainsConfig {
    /// The domains whose mail is delivered on this machine. Stored
    /// lowercase, without a trailing dot. Default: none.
    pub local: Vec<String>,
    /// `server.hostname` is a local domain too (as Postfix's `$myhostname`
    /// in `mydestination`). Default: true.
    pub include_hostname: bool,
}

impl Default for DomainsConfig {
    fn default() -> DomainsConfig {
        DomainsConfig {
            local: Vec::new(),
            include_hostname: true,
        }
    }
}

impl Config {
    /// Every local domain: `domains.local`, plus `server.hostname` when
    /// `domains.include_hostname` is set. Lowercase, no duplicates.
    pub fn local_domains(&self) -> Vec<String> {
        let mut v: Vec<String> = self.domains.local.clone();
        if self.domains.include_hostname && !v.contains(&self.server.hostname) {
            v.push(self.server.hostname.clone());
        }
        v
    }
}

/// `[relay]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// Clients in these networks may relay mail to any domain and are
    /// exempt from `limits.max_connections_per_ip`.
    /// Default: `127.0.0.0/8` and `::1/128`.
    pub trusted_networks: Vec<Cidr>,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            trusted_networks: vec![
                Cidr {
                    addr: std::net::IpAddr::from([127, 0, 0, 0]),
                    prefix: 8,
                },
                Cidr {
                    addr: std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                    prefix: 128,
                },
            ],
        }
    }
}

/// `[spool]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// The queue directory. A relative path is taken relative to the
    /// current working directory. Default: `/var/spool/pigeon`.
    pub dir: PathBuf,
    /// Free disk space, in bytes, below which new mail is refused with a
    /// temporary error. 0 (the default) means 1.5 × `limits.max_message_size`;
    /// see [`SpoolConfig::effective_reserve`].
    pub reserve_bytes: u64,
}

impl Default for SpoolConfig {
    fn default() -> SpoolConfig {
        SpoolConfig {
            dir: PathBuf::from("/var/spool/pigeon"),
            reserve_bytes: 0,
        }
    }
}

impl SpoolConfig {
    /// The free-space reserve in bytes: `reserve_bytes`, or when that is 0,
    /// 1.5 × `limits.max_message_size` (saturating).
    pub fn effective_reserve(&self, limits: &Limits) -> u64 {
        if self.reserve_bytes != 0 {
            return self.reserve_bytes;
        }
        let size = limits.max_message_size;
        size.saturating_add(size / 2)
    }
}

/// `[limits]`: every resource a client can consume has a bound here.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest command line accepted, in bytes including CRLF.
    /// Default 512, the RFC 5321 §4.5.3.1.4 minimum; 512 to 1048576.
    pub max_command_line: usize,
    /// Largest message accepted, in bytes; advertised in the EHLO `SIZE`
    /// keyword. Default 52428800 (50 MiB); at least 1024.
    pub max_message_size: u64,
    /// Most recipients accepted in one transaction. Default 1000; at least
    /// 100 (RFC 5321 §4.5.3.1.8).
    pub max_recipients: usize,
    /// Error replies (4xx and 5xx) tolerated in one session; one more and
    /// the server answers 421 and closes the connection. Default 10; at
    /// least 1.
    pub max_errors: u32,
    /// A message carrying more `Received:` headers than this is refused
    /// with 554 5.4.6 (mail loop). Default 50; at least 1.
    pub max_received_headers: u32,
    /// Most simultaneous connections on the `smtp` listeners (and local
    /// submissions). Default 5000; 1 to 1000000.
    pub max_connections: usize,
    /// Most simultaneous connections on the `submission` and `submissions`
    /// listeners: a pool of their own, so that a flood on port 25 cannot
    /// lock users out. Default 1000; 1 to 1000000.
    pub max_submission_connections: usize,
    /// Most simultaneous connections from one client network (an IPv4
    /// address, or an IPv6 network of `ipv6_prefix` bits); 0 means no
    /// limit. Clients in `relay.trusted_networks` are exempt. Default 50.
    pub max_connections_per_ip: usize,
    /// IPv6 clients are counted together per network of this many bits
    /// (one site usually has a whole /64), for the per-client connection
    /// limit and the failed-AUTH limit. Default 64; 32 to 128.
    pub ipv6_prefix: u8,
    /// NOOP, RSET, VRFY and HELP commands tolerated in a row without an
    /// accepted message before the server answers 421 and closes (as
    /// Postfix's smtpd_junk_command_limit); 0 means no limit. Default 100.
    pub max_junk_commands: u32,
    /// Seconds to wait for the next command. Default 300, the RFC 5321
    /// §4.5.3.2.7 minimum; lower values are accepted. Timeouts range from 1
    /// to 604800 (one week).
    pub command_timeout_secs: u64,
    /// Seconds to wait for the next block of message data during DATA or
    /// BDAT. Default 600; at least 1.
    pub data_timeout_secs: u64,
    /// Longest a single connection may last, in seconds. Default 3600; at
    /// least 1.
    pub session_timeout_secs: u64,
    /// On SIGTERM, seconds that transactions in progress may continue
    /// before connections are closed. Default 30; 0 closes at once.
    pub shutdown_grace_secs: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_command_line: 512,
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_errors: 10,
            max_received_headers: 50,
            max_connections: 5000,
            max_submission_connections: 1000,
            max_connections_per_ip: 50,
            ipv6_prefix: 64,
            max_junk_commands: 100,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            session_timeout_secs: 3600,
            shutdown_grace_secs: 30,
        }
    }
}

/// `[smtp]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpConfig {
    /// What to do with a CR or LF not part of a CRLF pair in message data.
    /// Default: `normalize`.
    pub bare_newline: BareNewline,
}

/// Handling of bare CR and bare LF in message data.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BareNewline {
    /// Accept the message and rewrite each bare CR or LF as CRLF.
    #[default]
    Normalize,
    /// Refuse the message (protection against SMTP smuggling).
    Reject,
}

impl BareNewline {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            BareNewline::Normalize => "normalize",
            BareNewline::Reject => "reject",
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Least severe level written: `error`, `warn`, `info`, `debug` or
    /// `trace`. Written in any case, stored lowercase. Default: `info`.
    pub level: String,
    /// Output format. Default: `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `[tls]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chains and keys (PEM files). The first is the default;
    /// the others are chosen by the name the client asks for (SNI) when it
    /// matches a name in the certificate. Default: none.
    pub certificates: Vec<CertificateConfig>,
    /// When no certificate is configured, make a self-signed one for
    /// `server.hostname` on first start and keep it in `<spool>/tls/`.
    /// Meant for testing; clients will warn about it. Default: false.
    pub self_signed: bool,
}

impl TlsConfig {
    /// TLS is available (STARTTLS offered, implicit TLS possible).
    pub fn enabled(&self) -> bool {
        !self.certificates.is_empty() || self.self_signed
    }
}

/// One `[[tls.certificates]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// DER file with an OCSP response for the certificate, stapled to
    /// handshakes (re-read on reload). Default: none.
    #[serde(default)]
    pub ocsp: PathBuf,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A TOML file of `[[user]]` entries (same keys as `[[auth.user]]`),
    /// read at start. Empty: none. Default: empty.
    pub users_file: PathBuf,
    /// Users given inline. Default: none.
    #[serde(rename = "user")]
    pub users: Vec<UserConfig>,
    /// An authenticated user may use only their own addresses in MAIL FROM
    /// (553 5.7.1 otherwise). Default: true.
    pub sender_login_match: bool,
    /// Apply the same rule to the addresses in the From: header. Default: false.
    pub check_header_from: bool,
    /// Milliseconds to wait before answering a failed authentication.
    /// Default: 1000.
    pub failure_delay_ms: u64,
    /// Failed authentications allowed on one connection before it is closed
    /// with 421. Default: 3.
    pub max_failures_per_connection: u32,
    /// Failed authentications from one IP address, within
    /// `ip_failure_window_secs`, after which that address may not try again
    /// for `ip_block_secs`. 0 disables the per-address limit. Default: 10.
    pub ip_max_failures: u32,
    /// Default: 600.
    pub ip_failure_window_secs: u64,
    /// Default: 900.
    pub ip_block_secs: u64,
    /// Exempt loopback clients from the per-address limit. Default: false.
    pub exempt_loopback: bool,
    /// Password checks run at once (each argon2id check takes about 19 MiB
    /// and a core for a moment); 0 means one per CPU. An attempt that
    /// finds them all busy waits up to `verification_wait_ms`, then gets
    /// 454 4.7.0. Default: 0.
    pub max_parallel_verifications: usize,
    /// Default: 2000.
    pub verification_wait_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            users_file: PathBuf::new(),
            users: Vec::new(),
            sender_login_match: true,
            check_header_from: false,
            failure_delay_ms: 1000,
            max_failures_per_connection: 3,
            ip_max_failures: 10,
            ip_failure_window_secs: 600,
            ip_block_secs: 900,
            exempt_loopback: false,
            max_parallel_verifications: 0,
            verification_wait_ms: 2000,
        }
    }
}

/// One user, in `[[auth.user]]` or in the users file's `[[user]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The name given to AUTH.
    pub login: String,
    /// Password hash: argon2id (`$argon2id$...`, made by
    /// `pigeon hash-password`), sha512-crypt (`$6$...`) or bcrypt (`$2y$...`).
    pub password: String,
    /// Addresses the user may send as: `user@domain`, or `@domain` for any
    /// address in that domain. Those of them (`user@domain` only) in a local
    /// domain also receive mail into the user's mailbox; the first of those
    /// is the mailbox's primary address.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Where the user's mail goes: `maildir`, `lmtp` or `none` (no mailbox:
    /// an account for sending only). Default: `local.delivery`.
    #[serde(default)]
    pub delivery: Option<UserDelivery>,
    /// This user's Maildir, instead of the `local.maildir` template (the
    /// same `{user}`, `{domain}` and `{login}` placeholders). Default: none.
    #[serde(default)]
    pub maildir: Option<String>,
}

/// A user's delivery target, in `[[auth.user]]`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserDelivery {
    Maildir,
    Lmtp,
    /// No mailbox: the user's addresses receive no mail.
    None,
}

/// How local mail is delivered.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalDelivery {
    /// Written into the user's Maildir by pigeon.
    #[default]
    Maildir,
    /// Handed to an LMTP server (Dovecot) at `local.lmtp`.
    Lmtp,
}

/// `[local]`: mailboxes on this machine and aliases.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// How users' mail is delivered unless their entry says otherwise.
    /// Default: `maildir`.
    pub delivery: LocalDelivery,
    /// Maildir path template: `{user}` is the local part of the user's
    /// primary address, `{domain}` its domain, `{login}` the login. A
    /// relative path is taken relative to the working directory.
    /// Default: `/var/mail/{domain}/{user}/Maildir`.
    pub maildir: String,
    /// Create a missing Maildir (mode 0700). Off: mail for a user whose
    /// Maildir does not exist is returned to the sender. Default: true.
    pub create_maildir: bool,
    /// The LMTP server: a Unix socket path (starting with `/`), or
    /// `host:port` / `[host]:port` over TCP. Default: `/run/dovecot/lmtp`.
    pub lmtp: String,
    /// Characters that start a subaddress (`alice+tag@` is delivered to
    /// `alice@`); empty = no subaddressing. Default: `+`.
    pub recipient_delimiter: String,
    /// Deliver `alice+tag@` into the Maildir++ folder `.tag` of Alice's
    /// Maildir when that folder exists (it is never created). Default: false.
    pub subaddress_folders: bool,
    /// A TOML file of aliases (`"address" = "target"` or `= ["t1", "t2"]`),
    /// read at start and on SIGHUP; "" for none. Default: "".
    pub aliases_file: PathBuf,
    /// Aliases given inline, in the same form as the aliases file. Keys:
    /// `local@domain`, `local` (in every local domain) or `@domain`
    /// (catch-all). Targets: addresses, or a bare local part (same domain).
    pub aliases: std::collections::BTreeMap<String, AliasTargets>,
    /// Deepest alias chain followed; deeper is an error. Default: 20.
    pub max_alias_depth: u32,
    /// Most addresses one recipient may expand to. Default: 1000.
    pub max_alias_targets: usize,
    /// Most local deliveries (Maildir writes, LMTP sessions) at once.
    /// Default: 50.
    pub max_deliveries: usize,
}

impl Default for LocalConfig {
    fn default() -> LocalConfig {
        LocalConfig {
            delivery: LocalDelivery::Maildir,
            maildir: "/var/mail/{domain}/{user}/Maildir".to_string(),
            create_maildir: true,
            lmtp: "/run/dovecot/lmtp".to_string(),
            recipient_delimiter: "+".to_string(),
            subaddress_folders: false,
            aliases_file: PathBuf::new(),
            aliases: Default::default(),
            max_alias_depth: 20,
            max_alias_targets: 1000,
            max_deliveries: 50,
        }
    }
}

/// One alias's targets: a single address or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasTargets(pub Vec<String>);

impl<'de> Deserialize<'de> for AliasTargets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AliasTargets, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AliasTargets;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address, or a list of addresses")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AliasTargets, E> {
                Ok(AliasTargets(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AliasTargets, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(AliasTargets(out))
            }
        }
        d.deserialize_any(V)
    }
}

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

/// `[dns]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsConfig {
    /// Name servers as "ip:port"; empty = the system's (/etc/resolv.conf). Default: [].
    pub nameservers: Vec<SocketAddr>,
    /// Seconds per query attempt. Default: 5.
    pub timeout_secs: u64,
    /// Attempts per query. Default: 2.
    pub attempts: usize,
}

impl Default for DnsConfig {
    fn default() -> DnsConfig {
        DnsConfig {
            nameservers: Vec::new(),
            timeout_secs: 5,
            attempts: 2,
        }
    }
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key the problem is about (`limits.max_recipients`,
    /// `listener[1].bind`); empty when it concerns the file as a whole
    /// (unreadable file, TOML syntax error).
    pub key: String,
    /// The 1-based line of the key, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            key: key.into(),
            line: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    /// `line 12: key `limits.max_recipients`: must be at least 100`; the
    /// line and key parts are left out when unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "key `{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Reads and parses the configuration file at `path`.
///
/// A file that cannot be read (missing, unreadable, larger than
/// [`MAX_CONFIG_FILE_BYTES`], not UTF-8) gives one error naming the file.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let shown = path.display();
    let cannot_read =
        |why: String| vec![ConfigError::new("", format!("cannot read {shown}: {why}"))];
    let file = std::fs::File::open(path).map_err(|e| cannot_read(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| cannot_read(e.to_string()))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(cannot_read(format!(
            "file is larger than {MAX_CONFIG_FILE_BYTES} bytes"
        )));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        cannot_read(format!(
            "file is not valid UTF-8 (at byte {})",
            e.utf8_error().valid_up_to()
        ))
    })?;
    parse(&text)
}

/// Parses configuration text, then checks every value.
///
/// On failure, returns every problem found, in the order of the lines they
/// are on (problems with no known line last). A syntax error, a value of the
/// wrong type or an unknown key is reported alone, since parsing stops there.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let mut config: Config = toml::from_str(text).map_err(|e| vec![from_toml_error(text, &e)])?;
    let mut errors = validate::normalize_and_validate(&mut config);
    if errors.is_empty() {
        return Ok(config);
    }
    if let Some(locator) = Locator::new(text) {
        for e in &mut errors {
            e.line = locator.line_of_path(&e.key);
        }
    }
    errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    Err(errors)
}

/// Reads a TOML file other than the configuration itself (the users file,
/// the aliases file): at most `max` bytes, deserialized into `T`. The error
/// names the file (`what` says which kind) and, for bad TOML, the line.
pub fn read_toml_file<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    max: u64,
) -> Result<(T, String), String> {
    let shown = path.display();
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max + 1).read_to_string(&mut text))
        .map_err(|e| format!("cannot read {what} {shown}: {e}"))?;
    if text.len() as u64 > max {
        return Err(format!(
            "cannot read {what} {shown}: larger than {max} bytes"
        ));
    }
    match toml::from_str(&text) {
        Ok(v) => Ok((v, text)),
        Err(e) => {
            let line = e
                .span()
                .map(|s| line_of_offset(&text, s.start.min(text.len())));
            Err(match line {
                Some(l) => format!("{shown}: line {l}: {}", e.message().trim()),
                None => format!("{shown}: {}", e.message().trim()),
            })
        }
    }
}

/// Deserializes `bind` with an error message that says what is expected.
fn deserialize_bind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    struct BindVisitor;
    impl serde::de::Visitor<'_> for BindVisitor {
        type Value = SocketAddr;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an address and port such as \"0.0.0.0:25\" or \"[::]:25\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SocketAddr, E> {
            v.parse().map_err(|_| {
                E::custom(format!(
                    "`{v}` is not an address and port: expected IP:PORT such as \"0.0.0.0:25\" or \"[::]:25\""
                ))
            })
        }
    }
    d.deserialize_str(BindVisitor)
}

/// Turns a `toml` error into a [`ConfigError`] naming the key and line.
fn from_toml_error(text: &str, err: &toml::de::Error) -> ConfigError {
    let span = err.span();
    let line = span.as_ref().map(|s| line_of_offset(text, s.start));
    let message = one_line(err.message());
    let Some(locator) = Locator::new(text) else {
        // The text is not valid TOML: a syntax error, about no single key.
        let column = span.as_ref().map(|s| {
            let start = s.start.min(text.len());
            let line_start = text.as_bytes()[..start]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            start - line_start + 1
        });
        let message = match column {
            Some(c) => format!("invalid TOML at column {c}: {message}"),
            None => format!("invalid TOML: {message}"),
        };
        return ConfigError {
            key: String::new(),
            line,
            message,
        };
    };
    if let Some((name, rest)) = backquoted_after(&message, "unknown field `") {
        let key = span
            .as_ref()
            .and_then(|s| locator.path_of_key_at(name, s.start))
            .map(str::to_string)
            .unwrap_or_else(|| {
                let table = span.as_ref().map_or("", |s| locator.table_at(s.start));
                join_key(table, name)
            });
        let rest = rest.trim_start_matches([',', ' ']);
        let message = if rest.is_empty() {
            "unknown key".to_string()
        } else {
            format!("unknown key; {rest}")
        };
        return ConfigError { key, line, message };
    }
    if let Some((name, _)) = backquoted_after(&message, "missing field `") {
        let table = span
            .as_ref()
            .and_then(|s| locator.path_covering(s))
            .unwrap_or("");
        return ConfigError {
            key: join_key(table, name),
            line,
            message: "required key is missing".to_string(),
        };
    }
    let key = span
        .as_ref()
        .and_then(|s| locator.path_covering(s))
        .unwrap_or("")
        .to_string();
    ConfigError {
        key,
        line,
        message: plain_words(&message),
    }
}

/// Rewrites the Rust type names and serde terms in a deserializer message
/// into the vocabulary of the configuration file.
fn plain_words(message: &str) -> String {
    const INTEGER_TYPES: [(&str, &str); 3] = [
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number of at least 0"),
        ("expected usize", "expected a whole number of at least 0"),
    ];
    for (rust, plain) in INTEGER_TYPES {
        if let Some(head) = message.strip_suffix(rust) {
            return format!("{head}{plain}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        return format!("unknown value {rest}");
    }
    message.to_string()
}

/// If `message` starts with `prefix` (which ends in a backquote), the
/// backquoted name and the text after its closing backquote.
fn backquoted_after<'a>(message: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = message.strip_prefix(prefix)?;
    let end = rest.find('`')?;
    Some((&rest[..end], &rest[end + 1..]))
}

fn join_key(table: &str, name: &str) -> String {
    if table.is_empty() {
        name.to_string()
    } else {
        format!("{table}.{name}")
    }
}

/// Joins the lines of a multi-line message with "; ".
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
