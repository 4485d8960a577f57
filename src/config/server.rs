//! `[server]`, `[[listener]]`, `[domains]`, `[relay]`, `[spool]` and
//! `[smtp]`: who the server is, where it listens, what is local, who may
//! relay, where mail is kept, how SMTP is read.

use super::*;

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
