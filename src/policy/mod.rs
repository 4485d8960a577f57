//! Every accept/refuse decision about a client, a sender or a recipient, as
//! pure functions: facts in, `Ok(())` or the `Reply` to give out. The server
//! carries the verdicts out; nothing here does I/O. Untrusted (already
//! parsed) addresses reach these functions.
//!
//! The checks per command, in order, are documented in docs/policy.md.

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::User;
use crate::directory::{Directory, Unresolved};

use crate::config::{Cidr, Config};
use crate::proto::address::Domain;
use crate::proto::command::{MailFrom, RcptTo};
use crate::proto::reply::{self, Reply};

/// The parts of the configuration that decisions depend on.
#[derive(Debug, Clone)]
pub struct Policy {
    directory: Arc<Directory>,
    trusted: Vec<Cidr>,
    sender_login_match: bool,
    check_header_from: bool,
}

/// What is known about the client when a decision is made.
#[derive(Debug, Clone)]
pub struct Client {
    pub ip: IpAddr,
    /// In `relay.trusted_networks`.
    pub trusted: bool,
    /// The listener requires AUTH before MAIL (submission ports).
    pub auth_required: bool,
    /// The authenticated user, once AUTH succeeded.
    pub user: Option<Arc<User>>,
}

impl Policy {
    /// The decisions of `cfg`, with `directory` saying which local
    /// addresses exist.
    pub fn new(cfg: &Config, directory: Arc<Directory>) -> Policy {
        Policy {
            directory,
            trusted: cfg.relay.trusted_networks.clone(),
            sender_login_match: cfg.auth.sender_login_match,
            check_header_from: cfg.auth.check_header_from,
        }
    }

    /// Facts about a newly connected client.
    pub fn client(&self, ip: IpAddr, auth_required: bool) -> Client {
        Client {
            ip,
            trusted: self.is_trusted(ip),
            auth_required,
            user: None,
        }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    pub fn is_local_domain(&self, domain: &Domain) -> bool {
        match domain {
            Domain::Name(d) => self.directory.is_local_domain(d),
            // Address literals are never local: mail to [ip] is relaying.
            Domain::Literal(_) => false,
        }
    }

    /// MAIL FROM: may a transaction start now?
    pub fn check_mail(
        &self,
        client: &Client,
        mail: &MailFrom,
        spool_has_space: bool,
    ) -> Result<(), Reply> {
        if client.auth_required && client.user.is_none() {
            return Err(reply::AUTH_REQUIRED);
        }
        if let (Some(user), Some(sender)) = (&client.user, &mail.sender) {
            if self.sender_login_match && !user.may_send_as(&sender.address()) {
                return Err(reply::SENDER_NOT_OWNED);
            }
        }
        if !spool_has_space {
            return Err(reply::INSUFFICIENT_STORAGE);
        }
        Ok(())
    }

    /// End of DATA/BDAT: with `auth.check_header_from`, every address in
    /// the From: header of an authenticated user's message must be theirs.
    pub fn check_message(&self, client: &Client, from_header: Option<&str>) -> Result<(), Reply> {
        let (true, Some(user)) = (self.check_header_from, &client.user) else {
            return Ok(());
        };
        let addrs = header_addresses(from_header.unwrap_or(""));
        if addrs.is_empty() || !addrs.iter().all(|a| user.may_send_as(a)) {
            return Err(reply::FROM_HEADER_NOT_OWNED);
        }
        Ok(())
    }

    /// RCPT TO: a local recipient must exist (for every client: unknown
    /// users are refused now, never bounced later); any other domain needs
    /// a client that may relay.
    pub fn check_rcpt(&self, client: &Client, rcpt: &RcptTo) -> Result<(), Reply> {
        let may_relay = client.trusted || client.user.is_some();
        if !self.is_local_domain(&rcpt.rcpt.domain) {
            return if may_relay {
                Ok(())
            } else {
                Err(reply::RELAY_DENIED)
            };
        }
        // Sender-specified routing (user%host@local, host!user@local,
        // "user@host"@local) would let a later hop forward elsewhere: only
        // trusted clients may use it.
        let local = rcpt.rcpt.local_unquoted();
        if !may_relay && local.contains(['%', '!', '@']) {
            return Err(reply::RELAY_DENIED);
        }
        match self.directory.resolve(&rcpt.rcpt.address()) {
            Ok(_) => Ok(()),
            Err(Unresolved::Unknown) => Err(reply::USER_UNKNOWN),
            Err(_) => Err(reply::ALIAS_ERROR),
        }
    }

    /// The directory the decisions use.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }
}

/// The addresses in a From: header value: those in angle brackets, or
/// else the bare comma-separated ones, with (comments) removed.
fn header_addresses(value: &str) -> Vec<String> {
    let mut no_comments = String::with_capacity(value.len());
    let mut depth = 0u32;
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' if depth == 0 => {
                quoted = !quoted;
                no_comments.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth == 0 => no_comments.push(c),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut quoted = false;
    let mut current: Option<String> = None;
    for c in no_comments.chars() {
        match (c, current.as_mut()) {
            ('"', None) => quoted = !quoted,
            ('<', None) if !quoted => current = Some(String::new()),
            ('>', Some(a)) => {
                out.push(a.trim().to_string());
                current = None;
            }
            (c, Some(a)) => a.push(c),
            _ => {}
        }
    }
    if out.is_empty() {
        out = no_comments
            .split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| a.contains('@'))
            .collect();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::command::{parse_command, Command};

    /// example.org and mx.example.org are local; every address in them
    /// exists (a catch-all) but for nobody@example.org.
    pub(crate) fn catch_all(cfg: &mut Config) -> Arc<Directory> {
        use crate::config::{AliasTargets, UserConfig};
        cfg.auth.users.push(UserConfig {
            login: "box".into(),
            password: "$6$x$y".into(),
            addresses: vec!["box@example.org".into()],
            delivery: None,
            maildir: None,
        });
        for (k, t) in [
            ("@example.org", "box@example.org"),
            ("postmaster", "box@example.org"),
            ("abuse", "box@example.org"),
        ] {
            cfg.local
                .aliases
                .insert(k.into(), AliasTargets(vec![t.into()]));
        }
        let users = crate::auth::UserDb::load(&cfg.auth).unwrap();
        Arc::new(Directory::build(cfg, &users, Default::default()).unwrap())
    }

    fn policy() -> Policy {
        let mut cfg = Config::default();
        cfg.server.hostname = "mx.example.org".into();
        cfg.domains.local = vec!["example.org".into()];
        let d = catch_all(&mut cfg);
        Policy::new(&cfg, d)
    }

    #[test]
    fn unknown_local_recipient_refused_for_everyone() {
        let mut cfg = Config::default();
        cfg.server.hostname = "mx.example.org".into();
        cfg.domains.local = vec!["example.org".into()];
        let d = catch_all(&mut cfg);
        let p = Policy::new(&cfg, d);
        assert!(rcpt(&p, "192.0.2.1", "RCPT TO:<anyone@example.org>").is_ok());
        for ip in ["192.0.2.1", "127.0.0.1"] {
            assert_eq!(
                rcpt(&p, ip, "RCPT TO:<someone@mx.example.org>"),
                Err(reply::USER_UNKNOWN)
            );
        }
    }

    fn rcpt(p: &Policy, ip: &str, line: &str) -> Result<(), Reply> {
        let Ok(Command::Rcpt(r)) = parse_command(line.as_bytes()) else {
            return Err(Reply::new(501, "5.5.4", "syntax"));
        };
        p.check_rcpt(&p.client(ip.parse().unwrap(), false), &r)
    }

    #[test]
    fn local_accepted_remote_refused() {
        let p = policy();
        assert!(rcpt(&p, "192.0.2.1", "RCPT TO:<alice@example.org>").is_ok());
        assert!(rcpt(&p, "192.0.2.1", "RCPT TO:<alice@EXAMPLE.ORG>").is_ok());
        assert!(rcpt(&p, "192.0.2.1", "RCPT TO:<postmaster@mx.example.org>").is_ok());
        assert_eq!(
            rcpt(&p, "192.0.2.1", "RCPT TO:<bob@remote.test>"),
            Err(reply::RELAY_DENIED)
        );
        assert!(rcpt(&p, "127.0.0.1", "RCPT TO:<bob@remote.test>").is_ok());
        assert!(rcpt(&p, "::1", "RCPT TO:<bob@remote.test>").is_ok());
    }

    #[test]
    fn relay_tricks_refused_from_untrusted() {
        let p = policy();
        for trick in [
            "RCPT TO:<bob%remote.test@example.org>",
            "RCPT TO:<remote.test!bob@example.org>",
            "RCPT TO:<\"bob@remote.test\"@example.org>",
            "RCPT TO:<\"bob%remote.test\"@example.org>",
            "RCPT TO:<@example.org:bob@remote.test>",
            "RCPT TO:<bob@[192.0.2.1]>",
            "RCPT TO:<bob@[127.0.0.1]>",
            "RCPT TO:<bob@example.org.>",
            "RCPT TO:<bob@remote.test.>",
            "RCPT TO:<bob@example.org.remote.test>",
            "RCPT TO:<bob@remote.test@example.org>",
            "RCPT TO:bob@remote.test",
            "RCPT TO:<bob@remote.test> ",
            "RCPT TO:<bob@example.org,@remote.test>",
        ] {
            assert!(rcpt(&p, "198.51.100.7", trick).is_err(), "{trick} accepted");
        }
        // A source route to a local mailbox is ignored, as RFC 5321 says.
        assert!(rcpt(&p, "198.51.100.7", "RCPT TO:<@remote.test:bob@example.org>").is_ok());
    }
}

#[cfg(test)]
mod auth_tests {
    use super::*;
    use crate::config::UserConfig;
    use crate::proto::command::{parse_command, Command};

    fn setup(check_from: bool) -> (Policy, Client, Client) {
        let mut cfg = Config::default();
        cfg.domains.local = vec!["example.org".into()];
        cfg.relay.trusted_networks = vec![];
        cfg.auth.check_header_from = check_from;
        let d = super::tests::catch_all(&mut cfg);
        cfg.auth.users = vec![UserConfig {
            login: "alice".into(),
            password: crate::auth::hash_password("pw").unwrap(),
            addresses: vec!["alice@example.org".into(), "@alice.test".into()],
            delivery: None,
            maildir: None,
        }];
        let db = crate::auth::UserDb::load(&cfg.auth).unwrap();
        let p = Policy::new(&cfg, d);
        let anon = p.client("192.0.2.1".parse().unwrap(), true);
        let mut alice = p.client("192.0.2.1".parse().unwrap(), true);
        alice.user = db.get("alice");
        (p, anon, alice)
    }

    fn mail(line: &str) -> MailFrom {
        match parse_command(line.as_bytes()) {
            Ok(Command::Mail(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    fn rcpt(line: &str) -> RcptTo {
        match parse_command(line.as_bytes()) {
            Ok(Command::Rcpt(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn submission_rules() {
        let (p, anon, alice) = setup(false);
        assert_eq!(
            p.check_mail(&anon, &mail("MAIL FROM:<alice@example.org>"), true),
            Err(reply::AUTH_REQUIRED)
        );
        assert!(p
            .check_mail(&alice, &mail("MAIL FROM:<alice@example.org>"), true)
            .is_ok());
        assert!(p
            .check_mail(&alice, &mail("MAIL FROM:<ALICE@Example.org>"), true)
            .is_ok());
        assert!(p
            .check_mail(&alice, &mail("MAIL FROM:<x@alice.test>"), true)
            .is_ok());
        assert!(p.check_mail(&alice, &mail("MAIL FROM:<>"), true).is_ok());
        assert_eq!(
            p.check_mail(&alice, &mail("MAIL FROM:<bob@example.org>"), true),
            Err(reply::SENDER_NOT_OWNED)
        );
        assert!(p
            .check_rcpt(&alice, &rcpt("RCPT TO:<anyone@remote.test>"))
            .is_ok());
        assert_eq!(
            p.check_rcpt(&anon, &rcpt("RCPT TO:<anyone@remote.test>")),
            Err(reply::RELAY_DENIED)
        );
    }

    #[test]
    fn header_from_rule() {
        let (p, _, alice) = setup(true);
        assert!(p
            .check_message(&alice, Some("Alice <alice@example.org>"))
            .is_ok());
        assert!(p
            .check_message(&alice, Some("alice@example.org (Alice)"))
            .is_ok());
        assert!(p
            .check_message(&alice, Some("\"Bob <bob@x.test>\" <a@alice.test>"))
            .is_ok());
        assert_eq!(
            p.check_message(&alice, Some("Bob <bob@example.org>")),
            Err(reply::FROM_HEADER_NOT_OWNED)
        );
        assert_eq!(
            p.check_message(&alice, Some("alice@example.org, bob@example.org")),
            Err(reply::FROM_HEADER_NOT_OWNED)
        );
        assert_eq!(
            p.check_message(&alice, None),
            Err(reply::FROM_HEADER_NOT_OWNED)
        );
        let (p, _, alice) = setup(false);
        assert!(p
            .check_message(&alice, Some("Bob <bob@example.org>"))
            .is_ok());
    }
}
