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

mod auth;
mod authentication;
mod cidr;
mod delivery;
mod dns;
mod limits;
mod local;
mod locate;
mod log;
mod sendmail;
mod server;
mod tls;
pub(crate) mod validate;

#[cfg(test)]
mod tests;

pub use auth::*;
pub use authentication::*;
pub use cidr::{client_network, Cidr, ParseCidrError};
pub use delivery::*;
pub use dns::*;
pub use limits::*;
pub use local::*;
pub use log::*;
pub use sendmail::*;
pub use server::*;
pub use tls::*;
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
    /// `[dkim]`: DKIM signing of mail this server originates.
    pub dkim: DkimConfig,
    /// `[inbound]`: SPF, DKIM, DMARC and ARC checks of arriving mail.
    pub inbound: InboundConfig,
    /// `[srs]`: sender rewriting for forwarded mail.
    pub srs: SrsConfig,
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
            dkim: DkimConfig::default(),
            inbound: InboundConfig::default(),
            srs: SrsConfig::default(),
        }
    }
}

impl Config {
    /// The name this server signs its `Authentication-Results:` fields
    /// with (`inbound.authserv_id`, else the hostname).
    pub fn authserv_id(&self) -> &str {
        if self.inbound.authserv_id.is_empty() {
            &self.server.hostname
        } else {
            &self.inbound.authserv_id
        }
    }

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
