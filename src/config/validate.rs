//! Value checks run after a configuration has been deserialized.
//!
//! Normalizes names (lowercase, no trailing dot) and checks every value
//! against its allowed range, collecting all problems rather than stopping at
//! the first. Untrusted (operator) strings reach this code; it only inspects
//! them.

use super::{Config, ConfigError, DmarcAction, TlsPolicy};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// Longest command line that may be configured, in bytes.
const MAX_COMMAND_LINE_CEILING: usize = 1024 * 1024;
/// Most simultaneous connections that may be configured.
const MAX_CONNECTIONS_CEILING: usize = 1_000_000;
/// Longest timeout that may be configured, in seconds (one week).
const TIMEOUT_CEILING_SECS: u64 = 7 * 24 * 3600;
/// Log levels, least verbose first.
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Normalizes `config` in place and returns every problem found (with no line
/// numbers: the caller adds them).
pub(super) fn normalize_and_validate(config: &mut Config) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut err = |key: String, message: String| errors.push(ConfigError::new(key, message));

    match normalize_domain(&config.server.hostname) {
        Ok(name) => config.server.hostname = name,
        Err(why) => err("server.hostname".into(), why),
    }

    check_listeners(&config.listeners, &mut err);

    for (key, v) in [
        ("server.user", &config.server.user),
        ("server.group", &config.server.group),
    ] {
        if v.len() > 64
            || v.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ':')
        {
            err(key.into(), format!("`{v}` is not a user or group name"));
        }
    }
    if !config.server.group.is_empty() && config.server.user.is_empty() {
        err("server.group".into(), "needs server.user".into());
    }
    if !config.metrics.listen.is_empty() {
        match config.metrics.listen.parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => {}
            Ok(a) => err(
                "metrics.listen".into(),
                format!(
                    "`{a}` is not a loopback address; the metrics endpoint has no access control"
                ),
            ),
            Err(_) => err(
                "metrics.listen".into(),
                format!(
                    "`{}` is not an address and port such as \"127.0.0.1:9587\"",
                    config.metrics.listen
                ),
            ),
        }
    }

    for (i, domain) in config.domains.local.iter_mut().enumerate() {
        match normalize_domain(domain) {
            Ok(name) => *domain = name,
            Err(why) => err(format!("domains.local[{i}]"), why),
        }
    }

    if config.spool.dir.as_os_str().is_empty() {
        err("spool.dir".into(), "must not be empty".into());
    }

    let l = &config.limits;
    let mut at_least = |key: &str, value: u64, min: u64, note: &str| {
        if value < min {
            err(
                format!("limits.{key}"),
                format!("is {value}; must be at least {min}{note}"),
            );
        }
    };
    at_least(
        "max_command_line",
        l.max_command_line as u64,
        512,
        " (RFC 5321 section 4.5.3.1.4)",
    );
    at_least("max_message_size", l.max_message_size, 1024, "");
    at_least(
        "max_recipients",
        l.max_recipients as u64,
        100,
        " (RFC 5321 section 4.5.3.1.8)",
    );
    at_least("max_errors", u64::from(l.max_errors), 1, "");
    at_least(
        "max_received_headers",
        u64::from(l.max_received_headers),
        1,
        "",
    );
    at_least("max_connections", l.max_connections as u64, 1, "");
    at_least(
        "max_submission_connections",
        l.max_submission_connections as u64,
        1,
        "",
    );
    at_least("ipv6_prefix", u64::from(l.ipv6_prefix), 32, "");
    at_least("command_timeout_secs", l.command_timeout_secs, 1, "");
    at_least("data_timeout_secs", l.data_timeout_secs, 1, "");
    at_least("session_timeout_secs", l.session_timeout_secs, 1, "");
    let mut at_most = |key: &str, value: u64, max: u64, note: &str| {
        if value > max {
            err(
                format!("limits.{key}"),
                format!("is {value}; must be at most {max}{note}"),
            );
        }
    };
    at_most(
        "max_command_line",
        l.max_command_line as u64,
        MAX_COMMAND_LINE_CEILING as u64,
        "",
    );
    at_most(
        "max_connections",
        l.max_connections as u64,
        MAX_CONNECTIONS_CEILING as u64,
        "",
    );
    at_most(
        "max_submission_connections",
        l.max_submission_connections as u64,
        MAX_CONNECTIONS_CEILING as u64,
        "",
    );
    at_most("ipv6_prefix", u64::from(l.ipv6_prefix), 128, "");
    for (key, value) in [
        ("command_timeout_secs", l.command_timeout_secs),
        ("data_timeout_secs", l.data_timeout_secs),
        ("session_timeout_secs", l.session_timeout_secs),
        ("shutdown_grace_secs", l.shutdown_grace_secs),
    ] {
        at_most(key, value, TIMEOUT_CEILING_SECS, " (one week)");
    }

    check_tls_auth(config, &mut err);
    check_delivery(config, &mut err);
    check_local(config, &mut err);
    check_authentication(config, &mut err);

    let level = config.log.level.to_ascii_lowercase();
    if LOG_LEVELS.contains(&level.as_str()) {
        config.log.level = level;
    } else {
        err(
            "log.level".into(),
            format!(
                "`{}` is not a log level; expected one of error, warn, info, debug, trace",
                config.log.level
            ),
        );
    }

    errors
}

/// Delivery limits are at least 1; relay host and routes parse; route
/// domains are valid names.
fn check_delivery(config: &mut Config, err: &mut impl FnMut(String, String)) {
    let d = &mut config.delivery;
    for (key, v) in [
        ("max_in_flight", d.max_in_flight as u64),
        (
            "max_connections_per_destination",
            d.max_connections_per_destination as u64,
        ),
        (
            "max_recipients_per_transaction",
            d.max_recipients_per_transaction as u64,
        ),
        ("first_retry_secs", d.first_retry_secs),
        ("max_retry_interval_secs", d.max_retry_interval_secs),
        ("max_queue_lifetime_secs", d.max_queue_lifetime_secs),
        ("connect_timeout_secs", d.connect_timeout_secs),
        ("remote_port", u64::from(d.remote_port)),
    ] {
        if v == 0 {
            err(format!("delivery.{key}"), "must be at least 1".into());
        }
    }
    if d.max_in_flight > 100_000 {
        err(
            "delivery.max_in_flight".into(),
            format!("is {}; must be at most 100000", d.max_in_flight),
        );
    }
    if !d.relay_host.is_empty() && !hop_ok(&d.relay_host) {
        err(
            "delivery.relay_host".into(),
            format!(
                "`{}` is not \"[host]:port\", \"host:port\" or \"host\"",
                d.relay_host
            ),
        );
    }
    if d.relay_login.is_empty() != d.relay_password.is_empty() {
        err(
            "delivery.relay_login".into(),
            "relay_login and relay_password go together".into(),
        );
    }
    // The relay password must never reach a server whose certificate was
    // not verified: opportunistic TLS accepts any certificate, so a man in
    // the middle would be handed the credentials.
    if !d.relay_login.is_empty() && d.relay_tls() != TlsPolicy::Required {
        err(
            "delivery.relay_tls".into(),
            format!(
                "is \"{}\" but relay_login is set: the password would be sent over TLS whose \
                 certificate is not verified; use relay_tls = \"required\" (the default when \
                 relay_login is set)",
                match d.relay_tls() {
                    TlsPolicy::None => "none",
                    TlsPolicy::Opportunistic => "opportunistic",
                    TlsPolicy::Required => "required",
                }
            ),
        );
    }
    let routes = std::mem::take(&mut d.routes);
    for (domain, hop) in routes {
        let key = format!("delivery.routes.{domain}");
        let domain = match normalize_domain(&domain) {
            Ok(n) => n,
            Err(why) => {
                err(key, why);
                continue;
            }
        };
        if !hop_ok(&hop) {
            err(
                key,
                format!("`{hop}` is not \"[host]:port\", \"host:port\" or \"host\""),
            );
            continue;
        }
        d.routes.insert(domain, hop);
    }
    if config.dns.timeout_secs == 0 || config.dns.timeout_secs > 300 {
        err("dns.timeout_secs".into(), "must be 1 to 300".into());
    }
    if config.dns.attempts == 0 || config.dns.attempts > 10 {
        err("dns.attempts".into(), "must be 1 to 10".into());
    }
}

/// `[local]`: the Maildir template, the LMTP address, the delimiter, the
/// limits and the inline aliases.
fn check_local(config: &mut Config, err: &mut impl FnMut(String, String)) {
    let local_domains = config.local_domains();
    let l = &mut config.local;
    if let Err(why) = check_maildir_template(&l.maildir) {
        err("local.maildir".into(), why);
    }
    if !l.lmtp.starts_with('/') && !hop_ok(&l.lmtp) {
        err(
            "local.lmtp".into(),
            format!(
                "`{}` is neither a Unix socket path (starting with /) nor \"host:port\"",
                l.lmtp
            ),
        );
    }
    if l.recipient_delimiter
        .chars()
        .any(|c| c == '@' || c == '"' || c.is_whitespace() || c.is_control())
    {
        err(
            "local.recipient_delimiter".into(),
            "must not contain @, quotes, spaces or control characters".into(),
        );
    }
    if l.max_alias_depth == 0 || l.max_alias_depth > 1000 {
        err("local.max_alias_depth".into(), "must be 1 to 1000".into());
    }
    if l.max_alias_targets == 0 || l.max_alias_targets > 100_000 {
        err(
            "local.max_alias_targets".into(),
            "must be 1 to 100000".into(),
        );
    }
    if l.max_deliveries == 0 || l.max_deliveries > 10_000 {
        err("local.max_deliveries".into(), "must be 1 to 10000".into());
    }
    let aliases = std::mem::take(&mut l.aliases);
    for (key, targets) in aliases {
        match check_alias(&key, &targets.0, &local_domains) {
            Ok((k, t)) => {
                l.aliases.insert(k, super::AliasTargets(t));
            }
            Err(why) => err(format!("local.aliases.{key}"), why),
        }
    }
}

/// A Maildir template: not empty, and only the known placeholders.
pub fn check_maildir_template(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Err(format!("`{t}`: a `{{` is not closed"));
        };
        let name = &after[..close];
        if !matches!(name, "user" | "domain" | "login") {
            return Err(format!(
                "`{t}`: unknown placeholder {{{name}}}; use {{user}}, {{domain}} or {{login}}"
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Checks one alias and returns it normalized: the key lowercased, target
/// domains lowercased. Keys are `local@domain` or `@domain` with a local
/// domain, or a bare `local` (every local domain); targets are addresses
/// or bare local parts (the domain of the address being expanded).
pub fn check_alias(
    key: &str,
    targets: &[String],
    local_domains: &[String],
) -> Result<(String, Vec<String>), String> {
    let k = key.trim().to_lowercase();
    if k.is_empty() || k.len() > 512 || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("an alias must be 1 to 512 characters without spaces".into());
    }
    if let Some((local, domain)) = k.rsplit_once('@') {
        if local.contains('@') {
            return Err("has more than one @".into());
        }
        let d = normalize_domain(domain)?;
        if !local_domains.contains(&d) {
            return Err(format!(
                "{d} is not a local domain (domains.local), so this alias would never be used"
            ));
        }
    }
    if targets.is_empty() {
        return Err("has no target".into());
    }
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let t = t.trim();
        if t.is_empty()
            || t.len() > 512
            || t.starts_with('@')
            || t.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
        {
            return Err(format!("target `{t}` is not an address"));
        }
        match t.rsplit_once('@') {
            Some((local, domain)) if !local.is_empty() && !local.contains('@') => {
                out.push(format!("{local}@{}", normalize_domain(domain)?));
            }
            Some(_) => return Err(format!("target `{t}` is not an address")),
            None => out.push(t.to_string()),
        }
    }
    Ok((k, out))
}

/// "[host]:port", "[host]", "host:port" or "host" with a valid port.
pub(crate) fn hop_ok(s: &str) -> bool {
    let s = s.trim();
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => match p.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None => return false,
            },
            None => return false,
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    !host.is_empty() && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// TLS must exist where a listener needs it; AUTH settings must make sense;
/// users must be well formed.
fn check_tls_auth(config: &mut Config, err: &mut impl FnMut(String, String)) {
    let tls = config.tls.enabled();
    for (i, l) in config.listeners.iter().enumerate() {
        use super::ListenerMode::*;
        if l.mode == Submissions && !tls {
            err(
                format!("listener[{i}].mode"),
                "`submissions` needs TLS: add [[tls.certificates]] or set tls.self_signed = true"
                    .into(),
            );
        }
        if l.mode == Submission && !tls && !l.plaintext_auth {
            err(
                format!("listener[{i}].mode"),
                "`submission` needs TLS for AUTH: add [[tls.certificates]], set tls.self_signed = true, or (loopback only) plaintext_auth = true".into(),
            );
        }
        if l.mode != Smtp && l.auth == Some(false) {
            err(
                format!("listener[{i}].auth"),
                format!("`{}` listeners always require AUTH", l.mode),
            );
        }
        if l.plaintext_auth && !l.bind.ip().is_loopback() {
            err(
                format!("listener[{i}].plaintext_auth"),
                format!(
                    "AUTH without TLS is allowed only on a loopback address, not `{}`",
                    l.bind.ip()
                ),
            );
        }
    }
    for (i, c) in config.tls.certificates.iter().enumerate() {
        if c.cert.as_os_str().is_empty() {
            err(
                format!("tls.certificates[{i}].cert"),
                "must not be empty".into(),
            );
        }
        if c.key.as_os_str().is_empty() {
            err(
                format!("tls.certificates[{i}].key"),
                "must not be empty".into(),
            );
        }
    }
    let a = &mut config.auth;
    if a.max_failures_per_connection == 0 {
        err(
            "auth.max_failures_per_connection".into(),
            "must be at least 1".into(),
        );
    }
    if a.failure_delay_ms > 60_000 {
        err(
            "auth.failure_delay_ms".into(),
            format!("is {}; must be at most 60000", a.failure_delay_ms),
        );
    }
    for (key, v) in [
        ("ip_failure_window_secs", a.ip_failure_window_secs),
        ("ip_block_secs", a.ip_block_secs),
    ] {
        if v > TIMEOUT_CEILING_SECS {
            err(
                format!("auth.{key}"),
                format!("is {v}; must be at most {TIMEOUT_CEILING_SECS} (one week)"),
            );
        }
    }
    for (i, u) in a.users.iter_mut().enumerate() {
        for m in check_user(u) {
            err(format!("auth.user[{i}].{}", m.0), m.1);
        }
    }
}

/// Problems with one user entry, as (key, message); normalises addresses
/// (domain part lowercased) in place. Also used for the users file.
pub fn check_user(u: &mut super::UserConfig) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if let Some(t) = &u.maildir {
        if let Err(why) = check_maildir_template(t) {
            out.push(("maildir", why));
        }
    }
    if u.login.is_empty() || u.login.len() > 256 || u.login.chars().any(|c| c.is_control()) {
        out.push((
            "login",
            "must be 1 to 256 characters without control characters".to_string(),
        ));
    }
    let known = [
        "$argon2id$",
        "$argon2i$",
        "$argon2d$",
        "$6$",
        "$2y$",
        "$2b$",
        "$2a$",
    ];
    if !known.iter().any(|p| u.password.starts_with(p)) {
        out.push((
            "password",
            "must be a password hash: $argon2id$ (pigeon hash-password), $6$ (sha512-crypt) or $2y$ (bcrypt)".to_string(),
        ));
    }
    for a in u.addresses.iter_mut() {
        let (local, domain) = match a.rsplit_once('@') {
            Some(x) => x,
            None => {
                out.push((
                    "addresses",
                    format!("`{a}` is neither user@domain nor @domain"),
                ));
                continue;
            }
        };
        match normalize_domain(domain) {
            Ok(d) => *a = format!("{local}@{d}"),
            Err(why) => out.push(("addresses", format!("`{a}`: {why}"))),
        }
    }
    out
}

/// At least one listener; no two listeners on the same address and port,
/// nor a specific address on a port that a wildcard listener of the same
/// family already holds. Port 0 (any free port) never conflicts.
fn check_listeners(listeners: &[super::ListenerConfig], err: &mut impl FnMut(String, String)) {
    if listeners.is_empty() {
        err(
            "listener".into(),
            "at least one [[listener]] is required".into(),
        );
        return;
    }
    // First listener seen for each exact address, and for each
    // (family, port): the first wildcard and the first specific address.
    let mut exact: HashMap<SocketAddr, usize> = HashMap::new();
    let mut wildcard: HashMap<(bool, u16), usize> = HashMap::new();
    let mut specific: HashMap<(bool, u16), usize> = HashMap::new();
    for (i, l) in listeners.iter().enumerate() {
        let bind = l.bind;
        if bind.port() == 0 {
            continue;
        }
        let family_port = (bind.is_ipv6(), bind.port());
        let is_wildcard = bind.ip().is_unspecified();
        let clash = if let Some(&j) = exact.get(&bind) {
            Some((j, "is the same address as"))
        } else if is_wildcard {
            specific
                .get(&family_port)
                .map(|&j| (j, "is a wildcard address covering"))
        } else {
            wildcard
                .get(&family_port)
                .map(|&j| (j, "is already covered by the wildcard address of"))
        };
        if let Some((j, why)) = clash {
            let other = listeners
                .get(j)
                .map(|o| o.bind.to_string())
                .unwrap_or_default();
            err(
                format!("listener[{i}].bind"),
                format!("`{bind}` {why} listener[{j}] (`{other}`)"),
            );
        }
        exact.entry(bind).or_insert(i);
        let first = if is_wildcard {
            &mut wildcard
        } else {
            &mut specific
        };
        first.entry(family_port).or_insert(i);
    }
}

/// `[dkim]`, `[inbound]` and `[srs]`: names are valid and
/// normalised, defaults that depend on the hostname are filled in, bounds
/// hold. Key files are read when the configuration is put in force, not
/// here.
fn check_authentication(config: &mut Config, err: &mut impl FnMut(String, String)) {
    let hostname = config.server.hostname.clone();
    let local_domains = config.local_domains();
    let d = &mut config.dkim;
    let mut seen = std::collections::BTreeSet::new();
    for (i, k) in d.keys.iter_mut().enumerate() {
        match normalize_domain(&k.domain) {
            Ok(n) => k.domain = n,
            Err(why) => err(format!("dkim.key[{i}].domain"), why),
        }
        let sel_ok = !k.selector.is_empty()
            && k.selector.len() <= 63
            && k.selector.split('.').all(|l| {
                !l.is_empty()
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !sel_ok {
            err(
                format!("dkim.key[{i}].selector"),
                format!(
                    "`{}` is not a selector: letters, digits, hyphens, underscores in dot-separated labels",
                    k.selector
                ),
            );
        }
        k.selector = k.selector.to_ascii_lowercase();
        if k.file.as_os_str().is_empty() {
            err(format!("dkim.key[{i}].file"), "is required".into());
        }
        if !seen.insert((k.domain.clone(), k.selector.clone())) {
            err(
                format!("dkim.key[{i}]"),
                format!(
                    "selector `{}` of `{}` is configured twice",
                    k.selector, k.domain
                ),
            );
        }
    }
    let mut headers: Vec<String> = Vec::new();
    for h in &d.headers {
        let ok = !h.is_empty() && h.bytes().all(|b| (33..=126).contains(&b) && b != b':');
        if !ok {
            err(
                "dkim.headers".into(),
                format!("`{h}` is not a header field name"),
            );
        } else if !headers.iter().any(|x| x.eq_ignore_ascii_case(h)) {
            headers.push(h.clone());
        }
    }
    if !headers.iter().any(|h| h.eq_ignore_ascii_case("from")) {
        headers.insert(0, "From".into());
    }
    d.headers = headers;
    if d.expire_secs > 0 && d.expire_secs < 3600 {
        err(
            "dkim.expire_secs".into(),
            "must be 0 (no expiry) or at least 3600: mail can wait in queues for hours".into(),
        );
    }

    let ib = &mut config.inbound;
    if ib.authserv_id.is_empty() {
        ib.authserv_id = hostname.clone();
    } else {
        match normalize_domain(&ib.authserv_id) {
            Ok(n) => ib.authserv_id = n,
            Err(why) => err("inbound.authserv_id".into(), why),
        }
    }
    if ib.dmarc && !(ib.spf && ib.dkim) {
        err(
            "inbound.dmarc".into(),
            "needs inbound.spf and inbound.dkim (DMARC is decided from their results)".into(),
        );
    }
    if ib.max_signatures == 0 || ib.max_signatures > 50 {
        err("inbound.max_signatures".into(), "must be 1 to 50".into());
    }
    if ib.timeout_secs == 0 || ib.timeout_secs > 300 {
        err("inbound.timeout_secs".into(), "must be 1 to 300".into());
    }
    if ib.dmarc_quarantine == DmarcAction::Reject {
        err(
            "inbound.dmarc_quarantine".into(),
            "must be `quarantine` or `none`: a domain asking for quarantine is not refused".into(),
        );
    }
    let jf = &ib.junk_folder;
    if !jf.starts_with('.') || jf.len() < 2 || jf.contains('/') || jf == ".." {
        err(
            "inbound.junk_folder".into(),
            format!("`{jf}` is not a Maildir++ folder name such as \".Junk\""),
        );
    }
    if ib.max_verify_size == 0 || ib.verify_memory < ib.max_verify_size {
        err(
            "inbound.verify_memory".into(),
            "must be at least inbound.max_verify_size, which must not be 0".into(),
        );
    }

    let srs = &mut config.srs;
    if srs.domain.is_empty() {
        srs.domain = hostname.clone();
    } else {
        match normalize_domain(&srs.domain) {
            Ok(n) => srs.domain = n,
            Err(why) => err("srs.domain".into(), why),
        }
    }
    if !srs.secret.is_empty() || !srs.previous_secrets.is_empty() {
        for s in std::iter::once(&srs.secret).chain(&srs.previous_secrets) {
            if s.len() < 16 {
                err(
                    "srs.secret".into(),
                    "secrets must be at least 16 characters".into(),
                );
                break;
            }
        }
        if !local_domains.contains(&srs.domain) {
            err(
                "srs.domain".into(),
                format!(
                    "`{}` is not a local domain: bounces to rewritten senders must come back here",
                    srs.domain
                ),
            );
        }
    }
    if srs.max_age_days == 0 || srs.max_age_days > 365 {
        err("srs.max_age_days".into(), "must be 1 to 365".into());
    }
}

/// Checks that `name` is a domain name (letters, digits and hyphens in
/// dot-separated labels of 1 to 63 characters, 253 in all, not ending in an
/// all-numeric label) and returns it lowercase without a trailing dot.
pub(super) fn normalize_domain(name: &str) -> Result<String, String> {
    let bad = |why: &str| Err(format!("`{name}` is not a valid domain name: {why}"));
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    // RFC 5890 §2.3.2.1: a domain given in U-labels is stored as its
    // lowercase A-labels, the form the SMTP parser gives for mail to it.
    let a_label;
    let trimmed = if trimmed.is_ascii() {
        trimmed
    } else {
        match idna::domain_to_ascii_strict(trimmed) {
            Ok(a) => {
                a_label = a;
                a_label.as_str()
            }
            Err(_) => return bad("it is not a valid internationalized domain name"),
        }
    };
    if trimmed.is_empty() {
        return bad("it is empty");
    }
    if trimmed.len() > 253 {
        return bad("longer than 253 characters");
    }
    if trimmed.parse::<IpAddr>().is_ok() || trimmed.starts_with('[') {
        return bad("it is an IP address");
    }
    let mut last = "";
    for label in trimmed.split('.') {
        if label.is_empty() {
            return bad("it has an empty label");
        }
        if label.len() > 63 {
            return bad("a label is longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return bad("only letters, digits, hyphens and dots are allowed");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with a hyphen");
        }
        last = label;
    }
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return bad("the last label is all digits");
    }
    Ok(trimmed.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::normalize_domain;

    #[test]
    fn domains() {
        assert_eq!(
            normalize_domain("Mail.Example.ORG.").unwrap(),
            "mail.example.org"
        );
        assert_eq!(normalize_domain("localhost").unwrap(), "localhost");
        assert_eq!(
            normalize_domain("xn--bcher-kva.example").unwrap(),
            "xn--bcher-kva.example"
        );
        assert_eq!(normalize_domain("a-1.b2").unwrap(), "a-1.b2");
        assert_eq!(
            normalize_domain("B\u{fc}cher.example").unwrap(),
            "xn--bcher-kva.example"
        );
        let long_label = "a".repeat(64);
        let long_name = vec!["a".repeat(63); 4].join(".");
        for bad in [
            "",
            ".",
            "a..b",
            ".a",
            "-a.b",
            "a-.b",
            "a_b.c",
            "a b",
            "1.2.3.4",
            "[1.2.3.4]",
            "::1",
            "example.123",
            long_label.as_str(),
            long_name.as_str(),
            "ex\u{e4}mple..org",
        ] {
            assert!(normalize_domain(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
