//! The recipient directory: which addresses of the local domains exist and
//! where their mail goes. Built from the users (the same users as AUTH: a
//! user's `user@domain` addresses in local domains are the addresses of their
//! mailbox) and the aliases (inline `[local.aliases]` and the aliases file).
//!
//! Owns the alias and mailbox tables and the resolution rules: exact alias,
//! user address, the same two without the subaddress (`alice+tag@` →
//! `alice@`, the tag kept), a domain-less alias (`postmaster`, in every
//! local domain), then the domain's catch-all (`@example.org`). Alias
//! expansion follows chains up to a depth limit, detects loops (an alias
//! that lists itself among its targets means its own mailbox) and removes
//! duplicates.
//!
//! Resolution is pure; [`Directory::load`] reads only the aliases file.
//! Untrusted bytes: RCPT addresses (already parsed by `proto`) reach
//! [`Directory::resolve`]; a subaddress taken from them is never used as a
//! path unless it is a plain folder name (see [`safe_folder`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{check_alias, Config, LocalDelivery, UserDelivery};
use crate::users::UserDb;

/// Largest aliases file read.
const MAX_ALIASES_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// One user's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The user's login (for logs).
    pub login: String,
    /// The primary address, lowercase: what LMTP and `Delivered-To:` see.
    pub address: String,
    pub target: MailboxTarget,
}

/// Where a mailbox's mail is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxTarget {
    /// This Maildir (the directory holding `tmp/`, `new/` and `cur/`).
    Maildir(PathBuf),
    /// The LMTP server of `local.lmtp`.
    Lmtp,
}

/// One final destination of a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Mailbox {
        mailbox: Arc<Mailbox>,
        /// The subaddress (`tag` of `alice+tag@`), if there was one.
        detail: Option<String>,
        /// The address delivered to: the primary address, with the
        /// subaddress put back (`alice+tag@example.org`).
        address: String,
    },
    /// An address in another domain: delivered by the remote transport.
    Remote(String),
}

impl Destination {
    pub fn address(&self) -> &str {
        match self {
            Destination::Mailbox { address, .. } => address,
            Destination::Remote(a) => a,
        }
    }
}

/// Why an address of a local domain has no destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// No user, alias or catch-all has it.
    Unknown,
    /// Alias expansion came back to this address, which has no mailbox.
    Loop(String),
    /// Alias chain deeper than `local.max_alias_depth`.
    TooDeep(String),
    /// More than `local.max_alias_targets` destinations.
    TooMany,
    /// An address of the SRS domain that is not one this server made, or
    /// is too old.
    Srs(super::srs::SrsError),
}

impl std::fmt::Display for Unresolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unresolved::Unknown => f.write_str("no such user or alias"),
            Unresolved::Loop(a) => write!(f, "alias loop at {a}"),
            Unresolved::TooDeep(a) => write!(f, "alias chain too deep at {a}"),
            Unresolved::TooMany => f.write_str("alias expands to too many addresses"),
            Unresolved::Srs(e) => e.fmt(f),
        }
    }
}

/// The recipient directory. Built once per configuration (start and
/// SIGHUP), then shared read-only.
#[derive(Debug, Default)]
pub struct Directory {
    domains: HashSet<String>,
    /// Every address (lowercase) of every mailbox.
    mailboxes: HashMap<String, Arc<Mailbox>>,
    /// Keys: `local@domain`, `local`, `@domain` (lowercase).
    aliases: HashMap<String, Vec<String>>,
    delimiters: Vec<char>,
    max_depth: u32,
    max_targets: usize,
    /// Sender rewriting: addresses of its domain are rewritten senders.
    srs: Option<super::srs::Srs>,
}

/// What a lookup found for one address.
enum Hit<'a> {
    Alias(&'a [String]),
    Mailbox(&'a Arc<Mailbox>, Option<String>),
}

impl Directory {
    /// The sender rewriting rules, when `[srs]` has a secret.
    pub fn srs(&self) -> Option<&super::srs::Srs> {
        self.srs.as_ref()
    }

    /// Builds the directory from the configuration, the users and the
    /// aliases file named in the configuration. Every problem is reported,
    /// each naming the file, user or alias concerned.
    pub fn load(cfg: &Config, users: &UserDb) -> Result<Directory, Vec<String>> {
        let mut errors = Vec::new();
        let file = if cfg.local.aliases_file.as_os_str().is_empty() {
            BTreeMap::new()
        } else {
            match load_aliases_file(&cfg.local.aliases_file, &cfg.local_domains()) {
                Ok(m) => m,
                Err(e) => {
                    errors.extend(e);
                    BTreeMap::new()
                }
            }
        };
        match Directory::build(cfg, users, file) {
            Ok(d) if errors.is_empty() => Ok(d),
            Ok(_) => Err(errors),
            Err(e) => {
                errors.extend(e);
                Err(errors)
            }
        }
    }

    /// Builds the directory from the configuration (inline aliases), the
    /// users and already loaded file aliases, then checks it: every alias
    /// resolves, and `postmaster@` and `abuse@` of every local domain
    /// resolve (RFC 5321 §4.5.1, RFC 2142).
    pub fn build(
        cfg: &Config,
        users: &UserDb,
        file_aliases: BTreeMap<String, Vec<String>>,
    ) -> Result<Directory, Vec<String>> {
        let mut errors = Vec::new();
        let domains: HashSet<String> = cfg.local_domains().into_iter().collect();
        let mut d = Directory {
            domains,
            mailboxes: HashMap::new(),
            aliases: HashMap::new(),
            delimiters: cfg.local.recipient_delimiter.chars().collect(),
            max_depth: cfg.local.max_alias_depth,
            max_targets: cfg.local.max_alias_targets,
            srs: super::srs::Srs::new(
                &cfg.srs.secret,
                &cfg.srs.previous_secrets,
                if cfg.srs.domain.is_empty() {
                    &cfg.server.hostname
                } else {
                    &cfg.srs.domain
                },
                cfg.srs.max_age_days,
            ),
        };
        let mut users: Vec<_> = users.iter().collect();
        users.sort_by(|a, b| a.login.cmp(&b.login));
        for u in users {
            let delivery = match u.delivery {
                Some(UserDelivery::None) => continue,
                Some(UserDelivery::Lmtp) => LocalDelivery::Lmtp,
                Some(UserDelivery::Maildir) => LocalDelivery::Maildir,
                None => cfg.local.delivery,
            };
            let own: Vec<String> = u
                .addresses
                .iter()
                .filter(|a| !a.starts_with('@'))
                .map(|a| a.to_lowercase())
                .filter(|a| {
                    a.rsplit_once('@')
                        .is_some_and(|(_, dom)| d.domains.contains(dom))
                })
                .collect();
            let Some(primary) = own.first().cloned() else {
                continue;
            };
            let target = match delivery {
                LocalDelivery::Lmtp => MailboxTarget::Lmtp,
                LocalDelivery::Maildir => {
                    let template = u.maildir.as_deref().unwrap_or(&cfg.local.maildir);
                    match maildir_path(template, &primary, &u.login) {
                        Ok(p) => MailboxTarget::Maildir(p),
                        Err(why) => {
                            errors.push(format!("user `{}`: {why}", u.login));
                            continue;
                        }
                    }
                }
            };
            let mb = Arc::new(Mailbox {
                login: u.login.clone(),
                address: primary,
                target,
            });
            for a in own {
                if let Some(other) = d.mailboxes.get(&a) {
                    errors.push(format!(
                        "address {a} belongs to two users: `{}` and `{}`",
                        other.login, u.login
                    ));
                    continue;
                }
                d.mailboxes.insert(a, mb.clone());
            }
        }
        let local_domains = cfg.local_domains();
        for (key, targets) in &cfg.local.aliases {
            d.aliases.insert(key.clone(), targets.0.clone());
        }
        for (key, targets) in file_aliases {
            if d.aliases.contains_key(&key) {
                errors.push(format!(
                    "alias `{key}` is defined both in [local.aliases] and in {}",
                    cfg.local.aliases_file.display()
                ));
                continue;
            }
            d.aliases.insert(key, targets);
        }
        let mut keys: Vec<&String> = d.aliases.keys().collect();
        keys.sort();
        for key in keys {
            // A domain-less alias applies in every local domain.
            let samples: Vec<String> = if key.starts_with('@') || key.contains('@') {
                vec![key.clone()]
            } else {
                local_domains
                    .iter()
                    .map(|dom| format!("{key}@{dom}"))
                    .collect()
            };
            for sample in samples {
                let domain = sample.rsplit_once('@').map(|(_, x)| x).unwrap_or("");
                let mut out = Vec::new();
                let mut path = vec![sample.clone()];
                let r = d.expand_targets(&d.aliases[key], domain, 1, &mut path, &mut out);
                if let Err(e) = r {
                    let why = match e {
                        (Unresolved::Unknown, Some(t)) => {
                            format!("target {t} is not a user's address nor an alias")
                        }
                        (e, _) => e.to_string(),
                    };
                    errors.push(format!("alias `{key}`: {why}"));
                    break;
                }
            }
        }
        let mut domains: Vec<&String> = d.domains.iter().collect();
        domains.sort();
        for dom in domains {
            for role in ["postmaster", "abuse"] {
                let a = format!("{role}@{dom}");
                if let Err(e) = d.resolve(&a) {
                    errors.push(format!(
                        "{a} must reach someone (RFC 5321 section 4.5.1, RFC 2142) but {e}: \
                         add it to a user's addresses, or an alias such as \
                         [local.aliases] {role} = \"you@{dom}\""
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(d)
        } else {
            Err(errors)
        }
    }

    /// Is this (lowercase) domain delivered here?
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.contains(domain)
    }

    pub fn mailbox_count(&self) -> usize {
        self.mailboxes
            .values()
            .map(|m| Arc::as_ptr(m) as usize)
            .collect::<HashSet<_>>()
            .len()
    }

    pub fn alias_count(&self) -> usize {
        self.aliases.len()
    }

    /// Every destination of `address` (`local@domain`, the local part as
    /// on the wire, quoted or not). An address in another domain is its own
    /// single remote destination.
    pub fn resolve(&self, address: &str) -> Result<Vec<Destination>, Unresolved> {
        self.resolve_after(address, &[])
    }

    /// Like [`resolve`](Directory::resolve) for a message that has already
    /// been expanded through the aliases in `history` (its `Delivered-To:`
    /// fields): those addresses now mean their own mailbox, never their
    /// alias again, so a message re-queued by an expansion cannot loop.
    pub fn resolve_after(
        &self,
        address: &str,
        history: &[String],
    ) -> Result<Vec<Destination>, Unresolved> {
        let mut out = Vec::new();
        let mut path: Vec<String> = history
            .iter()
            .map(|h| {
                let (l, d) = split_address(h);
                format!("{l}@{d}")
            })
            .collect();
        self.expand(address, 0, &mut path, &mut out)
            .map_err(|(e, _)| e)?;
        Ok(out)
    }

    /// Expands one address into `out`. On failure, the error and (for an
    /// unknown alias target) the address that was unknown.
    fn expand(
        &self,
        address: &str,
        depth: u32,
        path: &mut Vec<String>,
        out: &mut Vec<Destination>,
    ) -> Result<(), (Unresolved, Option<String>)> {
        let (local, domain) = split_address(address);
        if !self.domains.contains(&domain) {
            push_unique(out, Destination::Remote(address.to_string()));
            return self.check_count(out);
        }
        if let Some(srs) = self.srs.as_ref().filter(|s| s.is_srs(address)) {
            // A bounce to a rewritten sender: back to the original one.
            let original = srs
                .reverse(address, super::srs::today())
                .map_err(|e| (Unresolved::Srs(e), None))?;
            if depth >= self.max_depth {
                return Err((Unresolved::TooDeep(original), None));
            }
            return self.expand(&original, depth + 1, path, out);
        }
        let full = format!("{local}@{domain}");
        if path.contains(&full) {
            // Listed among its own targets: its own mailbox, if it has one.
            return match self.mailbox_of(&local, &domain) {
                Some(dest) => {
                    push_unique(out, dest);
                    self.check_count(out)
                }
                None => Err((Unresolved::Loop(full), None)),
            };
        }
        match self.lookup(&local, &domain) {
            None => Err((Unresolved::Unknown, Some(full))),
            Some(Hit::Mailbox(mb, detail)) => {
                push_unique(out, self.mailbox_dest(mb, detail));
                self.check_count(out)
            }
            Some(Hit::Alias(targets)) => {
                if depth >= self.max_depth {
                    return Err((Unresolved::TooDeep(full), None));
                }
                path.push(full);
                let r = self.expand_targets(targets, &domain, depth + 1, path, out);
                path.pop();
                r
            }
        }
    }

    fn expand_targets(
        &self,
        targets: &[String],
        domain: &str,
        depth: u32,
        path: &mut Vec<String>,
        out: &mut Vec<Destination>,
    ) -> Result<(), (Unresolved, Option<String>)> {
        for t in targets {
            let t = if t.contains('@') {
                t.clone()
            } else {
                format!("{t}@{domain}")
            };
            self.expand(&t, depth, path, out)?;
        }
        Ok(())
    }

    fn check_count(&self, out: &[Destination]) -> Result<(), (Unresolved, Option<String>)> {
        if out.len() > self.max_targets {
            Err((Unresolved::TooMany, None))
        } else {
            Ok(())
        }
    }

    /// The local part without its subaddress, and the subaddress.
    fn split_detail<'a>(&self, local: &'a str) -> Option<(&'a str, &'a str)> {
        let i = local.find(|c| self.delimiters.contains(&c))?;
        let c = local[i..].chars().next()?;
        let (base, detail) = (&local[..i], &local[i + c.len_utf8()..]);
        (!base.is_empty()).then_some((base, detail))
    }

    fn lookup(&self, local: &str, domain: &str) -> Option<Hit<'_>> {
        let full = format!("{local}@{domain}");
        if let Some(t) = self.aliases.get(&full) {
            return Some(Hit::Alias(t));
        }
        if let Some(mb) = self.mailboxes.get(&full) {
            return Some(Hit::Mailbox(mb, None));
        }
        let split = self.split_detail(local);
        if let Some((base, detail)) = split {
            let base_full = format!("{base}@{domain}");
            if let Some(t) = self.aliases.get(&base_full) {
                return Some(Hit::Alias(t));
            }
            if let Some(mb) = self.mailboxes.get(&base_full) {
                return Some(Hit::Mailbox(mb, Some(detail.to_string())));
            }
        }
        if let Some(t) = self.aliases.get(local) {
            return Some(Hit::Alias(t));
        }
        if let Some(t) = split.and_then(|(base, _)| self.aliases.get(base)) {
            return Some(Hit::Alias(t));
        }
        self.aliases
            .get(&format!("@{domain}"))
            .map(|t| Hit::Alias(t))
    }

    /// The mailbox of an address, aliases aside.
    fn mailbox_of(&self, local: &str, domain: &str) -> Option<Destination> {
        if let Some(mb) = self.mailboxes.get(&format!("{local}@{domain}")) {
            return Some(self.mailbox_dest(mb, None));
        }
        let (base, detail) = self.split_detail(local)?;
        let mb = self.mailboxes.get(&format!("{base}@{domain}"))?;
        Some(self.mailbox_dest(mb, Some(detail.to_string())))
    }

    fn mailbox_dest(&self, mb: &Arc<Mailbox>, detail: Option<String>) -> Destination {
        let address = match (&detail, self.delimiters.first()) {
            (Some(tag), Some(delim)) => match mb.address.rsplit_once('@') {
                Some((l, dom)) => format!("{l}{delim}{tag}@{dom}"),
                None => mb.address.clone(),
            },
            _ => mb.address.clone(),
        };
        Destination::Mailbox {
            mailbox: mb.clone(),
            detail,
            address,
        }
    }
}

/// Most `Delivered-To:` fields read from one header section.
const MAX_HISTORY: usize = 100;

/// The addresses of the `Delivered-To:` fields (RFC 9228) in a header
/// section, lowercased, at most [`MAX_HISTORY`]: the aliases the message
/// says it has already been expanded through. Folded values are
/// unfolded; `<angle brackets>` are removed.
pub fn delivered_to(header: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let finish = |value: Option<Vec<u8>>, out: &mut Vec<String>| {
        let Some(v) = value else { return };
        let v = String::from_utf8_lossy(&v);
        let v = v
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim();
        if !v.is_empty() && out.len() < MAX_HISTORY {
            out.push(v.to_lowercase());
        }
    };
    for line in header.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            // RFC 5322 §2.2.3: a folded field continues on this line.
            if let Some(v) = current.as_mut() {
                v.push(b' ');
                v.extend_from_slice(line);
            }
            continue;
        }
        finish(current.take(), &mut out);
        current = line
            .get(..13)
            .filter(|h| h.eq_ignore_ascii_case(b"delivered-to:"))
            .map(|_| line[13..].to_vec());
    }
    finish(current.take(), &mut out);
    out
}

/// The alias history of a stored message, for
/// [`Directory::resolve_after`]: the `Delivered-To:` fields that alias
/// expansion put in front of it, then those of its header section as the
/// session read it when the message was received
/// ([`crate::message::header_section`], bounded the same way), so
/// that local delivery and the check at the end of DATA see the same
/// history.
pub fn message_history(message: &[u8]) -> Vec<String> {
    let mut own = Vec::new();
    let mut rest = message;
    while rest
        .get(..13)
        .is_some_and(|h| h.eq_ignore_ascii_case(b"delivered-to:"))
        && own.len() < MAX_HISTORY
    {
        let end = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
        own.extend(delivered_to(&rest[..end]));
        rest = &rest[end..];
    }
    let (section, _) = crate::message::header_section(rest);
    own.extend(delivered_to(&section));
    own
}

fn push_unique(out: &mut Vec<Destination>, d: Destination) {
    if !out
        .iter()
        .any(|o| o.address().eq_ignore_ascii_case(d.address()))
    {
        out.push(d);
    }
}

/// An envelope address as (local part unquoted and lowercased, domain
/// lowercased). No `@`: the whole is the local part.
pub fn split_address(address: &str) -> (String, String) {
    let (local, domain) = match address.rsplit_once('@') {
        Some((l, d)) => (l, d),
        None => (address, ""),
    };
    let local = if local.len() >= 2 && local.starts_with('"') && local.ends_with('"') {
        let mut s = String::with_capacity(local.len());
        let mut esc = false;
        for c in local[1..local.len() - 1].chars() {
            if esc || c != '\\' {
                s.push(c);
                esc = false;
            } else {
                esc = true;
            }
        }
        s
    } else {
        local.to_string()
    };
    (local.to_lowercase(), domain.to_ascii_lowercase())
}

/// The Maildir path of a user: the template with its placeholders filled.
/// Refuses values that would change the path's shape (a `/`, a leading `.`).
fn maildir_path(template: &str, primary: &str, login: &str) -> Result<PathBuf, String> {
    let (user, domain) = primary.rsplit_once('@').unwrap_or((primary, ""));
    let mut out = template.to_string();
    for (name, value) in [("{user}", user), ("{domain}", domain), ("{login}", login)] {
        if !out.contains(name) {
            continue;
        }
        if value.is_empty() || value.contains('/') || value.starts_with('.') || value.contains('\0')
        {
            return Err(format!(
                "`{value}` cannot be used as {name} in the Maildir path `{template}`"
            ));
        }
        out = out.replace(name, value);
    }
    Ok(PathBuf::from(out))
}

/// A subaddress usable as a Maildir++ folder name: letters, digits, `-`,
/// `_` and inner dots only, at most 64 characters.
pub fn safe_folder(detail: &str) -> bool {
    !detail.is_empty()
        && detail.len() <= 64
        && !detail.starts_with('.')
        && !detail.ends_with('.')
        && !detail.contains("..")
        && detail
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Reads an aliases file: top-level `"address" = "target"` or
/// `"address" = ["target", ...]` entries. Errors name the file, the line
/// and the alias.
pub fn load_aliases_file(
    path: &Path,
    local_domains: &[String],
) -> Result<BTreeMap<String, Vec<String>>, Vec<String>> {
    let shown = path.display();
    let (table, text): (BTreeMap<String, crate::config::AliasTargets>, _) =
        crate::config::read_toml_file(path, "aliases file", MAX_ALIASES_FILE_BYTES)
            .map_err(|e| vec![e])?;
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for (key, targets) in table {
        match check_alias(&key, &targets.0, local_domains) {
            Ok((k, t)) => {
                out.insert(k, t);
            }
            Err(why) => {
                let line = line_of_key(&text, &key)
                    .map(|l| format!("line {l}: "))
                    .unwrap_or_default();
                errors.push(format!("{shown}: {line}alias `{key}`: {why}"));
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The 1-based line on which a top-level key is written (quoted or bare).
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let quoted = format!("\"{key}\"");
    let single = format!("'{key}'");
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            [quoted.as_str(), single.as_str(), key].iter().any(|k| {
                l.strip_prefix(k)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
        })
        .map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AliasTargets, UserConfig};

    fn user(login: &str, addresses: &[&str]) -> UserConfig {
        UserConfig {
            login: login.into(),
            password: "$6$x$y".into(),
            addresses: addresses.iter().map(|s| s.to_string()).collect(),
            delivery: None,
            maildir: None,
        }
    }

    fn config(aliases: &[(&str, &[&str])]) -> Config {
        let mut cfg = Config::default();
        cfg.server.hostname = "mx.example.org".into();
        cfg.domains.local = vec!["example.org".into(), "example.net".into()];
        cfg.local.maildir = "/mail/{domain}/{user}/Maildir".into();
        cfg.auth.users = vec![
            user(
                "alice",
                &["alice@example.org", "a.smith@example.org", "@alice.test"],
            ),
            user("bob", &["bob@example.org"]),
            user("sender-only", &["app@example.org"]),
            user("carol", &["carol@example.net"]),
        ];
        cfg.auth.users[2].delivery = Some(UserDelivery::None);
        cfg.auth.users[3].delivery = Some(UserDelivery::Lmtp);
        let mut base: Vec<(&str, &[&str])> = vec![
            ("postmaster", &["alice@example.org"]),
            ("abuse", &["postmaster"]),
            ("postmaster@mx.example.org", &["alice@example.org"]),
        ];
        base.extend_from_slice(aliases);
        for (k, t) in base {
            cfg.local.aliases.insert(
                k.to_string(),
                AliasTargets(t.iter().map(|s| s.to_string()).collect()),
            );
        }
        cfg
    }

    fn dir(aliases: &[(&str, &[&str])]) -> Result<Directory, Vec<String>> {
        let cfg = config(aliases);
        let users = UserDb::load(&cfg.auth).unwrap();
        Directory::build(&cfg, &users, BTreeMap::new())
    }

    fn addrs(d: &Directory, a: &str) -> Vec<String> {
        d.resolve(a)
            .unwrap_or_else(|e| panic!("{a}: {e}"))
            .iter()
            .map(|x| x.address().to_string())
            .collect()
    }

    #[test]
    fn users_subaddresses_and_case() {
        let d = dir(&[]).unwrap();
        assert_eq!(addrs(&d, "alice@example.org"), ["alice@example.org"]);
        assert_eq!(addrs(&d, "A.Smith@EXAMPLE.org"), ["alice@example.org"]);
        assert_eq!(
            addrs(&d, "alice+lists@example.org"),
            ["alice+lists@example.org"]
        );
        assert_eq!(addrs(&d, "\"alice\"@example.org"), ["alice@example.org"]);
        match &d.resolve("a.smith+x@example.org").unwrap()[0] {
            Destination::Mailbox {
                mailbox, detail, ..
            } => {
                assert_eq!(mailbox.login, "alice");
                assert_eq!(detail.as_deref(), Some("x"));
                assert_eq!(
                    mailbox.target,
                    MailboxTarget::Maildir("/mail/example.org/alice/Maildir".into())
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            &d.resolve("carol@example.net").unwrap()[0],
            Destination::Mailbox { mailbox, .. } if mailbox.target == MailboxTarget::Lmtp
        ));
        assert_eq!(d.resolve("nobody@example.org"), Err(Unresolved::Unknown));
        assert_eq!(d.resolve("+x@example.org"), Err(Unresolved::Unknown));
        // A sender-only account has no mailbox.
        assert_eq!(d.resolve("app@example.org"), Err(Unresolved::Unknown));
        // Other domains are remote, whatever their case.
        assert_eq!(addrs(&d, "x@Remote.test"), ["x@Remote.test"]);
        assert_eq!(d.mailbox_count(), 3);
    }

    #[test]
    fn aliases_catch_all_and_domainless() {
        let d = dir(&[
            (
                "team@example.org",
                &["alice", "bob@example.org", "ext@remote.test"],
            ),
            ("@example.net", &["carol@example.net"]),
            ("list", &["team@example.org", "alice@example.org"]),
        ])
        .unwrap();
        assert_eq!(
            addrs(&d, "team@example.org"),
            ["alice@example.org", "bob@example.org", "ext@remote.test"]
        );
        // Duplicates are removed.
        assert_eq!(
            addrs(&d, "list@example.net"),
            ["alice@example.org", "bob@example.org", "ext@remote.test"]
        );
        assert_eq!(addrs(&d, "anything@example.net"), ["carol@example.net"]);
        assert_eq!(addrs(&d, "postmaster@example.net"), ["alice@example.org"]);
        assert_eq!(addrs(&d, "abuse@example.org"), ["alice@example.org"]);
        // The subaddress of an alias is dropped with the alias.
        assert_eq!(addrs(&d, "team+x@example.org").len(), 3);
        // An exact user address wins over the catch-all.
        assert_eq!(addrs(&d, "carol+y@example.net"), ["carol+y@example.net"]);
    }

    #[test]
    fn alias_to_itself_keeps_a_copy_and_loops_are_errors() {
        // An alias of a user's own address that lists it: a copy stays in
        // the mailbox, another goes on.
        let d = dir(&[("bob@example.org", &["bob@example.org", "copy@remote.test"])]).unwrap();
        assert_eq!(
            addrs(&d, "bob@example.org"),
            ["bob@example.org", "copy@remote.test"]
        );
        let d = dir(&[
            ("x@example.org", &["y@example.org"]),
            ("y@example.org", &["x@example.org"]),
        ]);
        let e = d.unwrap_err();
        assert!(e.iter().any(|m| m.contains("alias loop")), "{e:?}");
        // alice+copy keeps a copy in alice's own mailbox through the loop rule.
        let d = dir(&[(
            "alice+copy@example.org",
            &["alice+copy@example.org", "c@remote.test"],
        )])
        .unwrap();
        assert_eq!(
            addrs(&d, "alice+copy@example.org"),
            ["alice+copy@example.org", "c@remote.test"]
        );
    }

    #[test]
    fn history_means_mailbox() {
        let d = dir(&[
            ("bob@example.org", &["bob@example.org", "copy@remote.test"]),
            ("team@example.org", &["alice", "bob"]),
        ])
        .unwrap();
        let h = ["bob@example.org".to_string()];
        assert_eq!(addrs(&d, "bob@example.org").len(), 2);
        let once: Vec<_> = d.resolve_after("bob@example.org", &h).unwrap();
        assert_eq!(once.len(), 1);
        assert_eq!(once[0].address(), "bob@example.org");
        assert_eq!(
            d.resolve_after("team@example.org", &["Team@example.org".into()]),
            Err(Unresolved::Loop("team@example.org".into()))
        );
    }

    #[test]
    fn delivered_to_fields() {
        let h = b"Delivered-To: Team@Example.org\r\nX: y\r\ndelivered-to:  <a@b>\r\nDelivered-To:\r\n folded@x.test\r\n";
        assert_eq!(
            delivered_to(h),
            ["team@example.org", "a@b", "folded@x.test"]
        );
        assert!(delivered_to(b"Subject: x\r\n").is_empty());
        let many = "Delivered-To: x@y\r\n".repeat(150);
        assert_eq!(delivered_to(many.as_bytes()).len(), 100);
    }

    #[test]
    fn stored_history_is_the_session_view_plus_expansions() {
        let received = b"Received: by mx.test\r\n\tid X;\r\n\tdate\r\n".to_vec();
        let mut stored = received.clone();
        stored.extend_from_slice(
            b"Delivered-To: Team@example.org\r\nSubject: s\r\n\r\nDelivered-To: body@x\r\n",
        );
        assert_eq!(message_history(&stored), ["team@example.org"]);
        // Requeued by an expansion: its own field comes first.
        let mut requeued = b"Delivered-To: list@example.org\r\n".to_vec();
        requeued.extend_from_slice(&stored);
        assert_eq!(
            message_history(&requeued),
            ["list@example.org", "team@example.org"]
        );
        // A field past the header bound is seen by neither the session
        // nor delivery; one inside it by both, wherever an expansion put
        // its own field.
        let pad = format!(
            "X-Pad: {}\r\n",
            "p".repeat(crate::message::MAX_HEADER_SECTION - received.len() - 40)
        );
        let mut big = received.clone();
        big.extend_from_slice(pad.as_bytes());
        big.extend_from_slice(
            b"Delivered-To: in@example.org\r\nDelivered-To: out@example.org\r\n\r\nbody",
        );
        let (section, complete) = crate::message::header_section(&big);
        assert!(!complete);
        assert_eq!(delivered_to(&section), ["in@example.org"]);
        let mut big_requeued = b"Delivered-To: list@example.org\r\n".to_vec();
        big_requeued.extend_from_slice(&big);
        assert_eq!(
            message_history(&big_requeued),
            ["list@example.org", "in@example.org"]
        );
    }

    #[test]
    fn depth_and_count_limits() {
        let mut chain: Vec<(String, Vec<String>)> = Vec::new();
        for i in 0..30 {
            chain.push((
                format!("c{i}@example.org"),
                vec![format!("c{}@example.org", i + 1)],
            ));
        }
        chain.push(("c30@example.org".into(), vec!["alice@example.org".into()]));
        let refs: Vec<(&str, Vec<&str>)> = chain
            .iter()
            .map(|(k, v)| (k.as_str(), v.iter().map(|s| s.as_str()).collect()))
            .collect();
        let slices: Vec<(&str, &[&str])> = refs.iter().map(|(k, v)| (*k, v.as_slice())).collect();
        let e = dir(&slices).unwrap_err();
        assert!(e.iter().any(|m| m.contains("too deep")), "{e:?}");
        let mut cfg = config(&[]);
        cfg.local.max_alias_targets = 2;
        cfg.local.aliases.insert(
            "many@example.org".into(),
            AliasTargets(vec![
                "a@r.test".into(),
                "b@r.test".into(),
                "c@r.test".into(),
            ]),
        );
        let users = UserDb::load(&cfg.auth).unwrap();
        let e = Directory::build(&cfg, &users, BTreeMap::new()).unwrap_err();
        assert!(e.iter().any(|m| m.contains("too many")), "{e:?}");
    }

    #[test]
    fn postmaster_and_abuse_required() {
        let mut cfg = config(&[]);
        cfg.local.aliases.remove("abuse");
        let users = UserDb::load(&cfg.auth).unwrap();
        let e = Directory::build(&cfg, &users, BTreeMap::new()).unwrap_err();
        assert!(
            e.iter()
                .any(|m| m.starts_with("abuse@example.org must reach someone")),
            "{e:?}"
        );
        assert_eq!(e.len(), 3, "one per local domain: {e:?}");
        // Unknown alias targets are named.
        let e = dir(&[("x@example.org", &["ghost@example.org"])]).unwrap_err();
        assert!(e[0].contains("target ghost@example.org is not"), "{e:?}");
    }

    #[test]
    fn aliases_file_errors_name_file_line_and_alias() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("aliases.toml");
        std::fs::write(
            &p,
            "\"ok@example.org\" = \"alice\"\n\"x@remote.test\" = \"a\"\n",
        )
        .unwrap();
        let e = load_aliases_file(&p, &["example.org".into()]).unwrap_err();
        assert!(
            e[0].contains(
                "aliases.toml: line 2: alias `x@remote.test`: remote.test is not a local domain"
            ),
            "{e:?}"
        );
        std::fs::write(&p, "a = 3\n").unwrap();
        let e = load_aliases_file(&p, &["example.org".into()]).unwrap_err();
        assert!(e[0].contains("line 1"), "{e:?}");
        std::fs::write(&p, "\"Info@Example.ORG\" = [\"alice\", \"b@R.test\"]\n").unwrap();
        let m = load_aliases_file(&p, &["example.org".into()]).unwrap();
        assert_eq!(m["info@example.org"], ["alice", "b@r.test"]);
    }

    #[test]
    fn unsafe_path_parts_refused() {
        assert!(maildir_path("/m/{user}", "../x@example.org", "l").is_err());
        assert!(maildir_path("/m/{user}", "a/b@example.org", "l").is_err());
        assert!(maildir_path("/m/{login}", "a@example.org", "a/b").is_err());
        assert_eq!(
            maildir_path("/m/{domain}/{user}", "a@example.org", "l/x").unwrap(),
            PathBuf::from("/m/example.org/a")
        );
        assert!(safe_folder("lists"));
        assert!(safe_folder("a.b-c_d"));
        for bad in ["", ".x", "x.", "a..b", "a/b", "../x", "a b"] {
            assert!(!safe_folder(bad), "{bad}");
        }
    }
}
