//! Every accept/refuse decision about a client, a sender, a recipient or a
//! message, as pure functions: the stage the session stopped at, the facts
//! gathered for it ([`crate::checks::Facts`]) and what is known of the
//! client in, a [`Verdict`] out. This is the only code that refuses; the
//! server carries the verdicts out. Nothing here does I/O (no DNS, no
//! state tables, no queue). Untrusted (already parsed) addresses and
//! header sections reach these functions.
//!
//! The checks per stage, in order, are documented in docs/policy.md.

use std::net::IpAddr;
use std::sync::Arc;

use crate::users::directory::{Directory, Unresolved};
use crate::users::User;

use crate::checks::authentication::{disposition_name, AuthFacts, Disposition};
use crate::checks::Facts;
use crate::config::{
    Cidr, Config, DmarcAction, InboundConfig, SendmailConfig, SpfFailAction, TempErrorAction,
};
use crate::message::HeaderEdits;
use crate::proto::address::Domain;
use crate::proto::command::{MailFrom, RcptTo};
use crate::proto::envelope::Recipient;
use crate::proto::reply::{self, Reply};
use crate::proto::{Decision, Verdict};

/// The parts of the configuration that decisions depend on.
#[derive(Debug, Clone)]
pub struct Policy {
    directory: Arc<Directory>,
    trusted: Vec<Cidr>,
    sender_login_match: bool,
    check_header_from: bool,
    hostname: String,
    sendmail: SendmailConfig,
    inbound: InboundConfig,
}

/// A complete message's header section, as the checks at the end of DATA
/// see it.
#[derive(Debug, Default, Clone, Copy)]
pub struct MessageFacts<'a> {
    /// The header section as it will be stored, at most
    /// [`crate::message::MAX_HEADER_SECTION`] bytes, CRLF line ends,
    /// without the empty line that ends it.
    pub header: &'a [u8],
    /// False when the header section was longer and `header` holds only
    /// its start.
    pub header_complete: bool,
}

/// A program on this machine submitting through the sendmail socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    pub uid: u32,
    /// The user name, or "uid N" when it has none.
    pub name: String,
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
    /// The local user of a submission through the sendmail socket.
    pub local: Option<LocalUser>,
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
            hostname: cfg.server.hostname.to_ascii_lowercase(),
            sendmail: cfg.sendmail.clone(),
            inbound: cfg.inbound.clone(),
        }
    }

    /// The verdict at the stage the session stopped at.
    pub fn decide(&self, d: &Decision<'_>, facts: &Facts, client: &Client) -> Verdict {
        let refused = |r: Result<(), Reply>| match r {
            Ok(()) => Verdict::accept(),
            Err(r) => Verdict::Reject(r),
        };
        match *d {
            Decision::Connect => refused(self.check_connect(client)),
            Decision::Helo { .. } => Verdict::accept(),
            Decision::Mail { mail } => match self
                .check_mail(client, mail, facts.spool_has_space)
                .and_then(|()| self.check_spf(facts))
            {
                Ok(()) => Verdict::Accept(self.sender_edits(client, mail)),
                Err(r) => Verdict::Reject(r),
            },
            Decision::Rcpt { rcpt, .. } => refused(self.check_rcpt(client, rcpt)),
            Decision::Content {
                rcpts,
                header,
                header_complete,
                ..
            } => match self.check_message(
                client,
                &MessageFacts {
                    header,
                    header_complete,
                },
                rcpts,
            ) {
                Err(r) => Verdict::Reject(r),
                Ok(()) => match &facts.auth {
                    Some(a) => self.authentication_verdict(a),
                    None => Verdict::accept(),
                },
            },
        }
    }

    /// MAIL FROM: with `inbound.spf_fail = "reject"`, an SPF `fail` of
    /// the sender's domain is refused now (RFC 7208 §8.4: 550 5.7.23,
    /// RFC 7372); by default DMARC decides at the end of DATA.
    fn check_spf(&self, facts: &Facts) -> Result<(), Reply> {
        let Some(spf) = &facts.spf else {
            return Ok(());
        };
        if self.inbound.spf_fail != SpfFailAction::Reject
            || spf.mail_from.result != crate::checks::spf::SpfResult::Fail
        {
            return Ok(());
        }
        let why = spf
            .mail_from
            .explanation
            .as_deref()
            .filter(|e| e.len() <= 200 && e.bytes().all(|c| (0x20..0x7f).contains(&c)))
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        Err(Reply::owned(
            550,
            "5.7.23",
            format!(
                "SPF validation failed: {} does not allow this host to send for it{why}",
                spf.mail_from.domain
            ),
        ))
    }

    /// End of DATA for checked mail: the `Authentication-Results:` field
    /// is added, and the domain's DMARC policy applied as configured. A
    /// temporary DNS problem never becomes a permanent refusal.
    fn authentication_verdict(&self, a: &AuthFacts) -> Verdict {
        let mut edits = HeaderEdits::new();
        // RFC 8617 §4.1: the newest ARC set on top, then the results.
        for field in &a.arc_seal {
            edits.add_raw(field.as_bytes());
        }
        edits.add_raw(a.header.as_bytes());
        if a.ambiguous_author && self.inbound.dmarc {
            return Verdict::Reject(reply::AMBIGUOUS_AUTHOR);
        }
        if a.temporary() && self.inbound.temperror == TempErrorAction::Defer {
            return Verdict::Reject(reply::AUTH_TEMPORARY_FAILURE);
        }
        let Some((d, disposition)) = a.dmarc_failure() else {
            return Verdict::Accept(edits);
        };
        let action = match disposition {
            Disposition::Reject => self.inbound.dmarc_reject,
            Disposition::Quarantine => self.inbound.dmarc_quarantine,
            Disposition::None => DmarcAction::None,
        };
        match action {
            DmarcAction::Reject => Verdict::Reject(Reply::owned(
                550,
                "5.7.1",
                format!(
                    "Email rejected per DMARC policy for {} (the message is not authenticated by SPF or DKIM for its From: domain)",
                    d.from_domain
                ),
            )),
            DmarcAction::Quarantine => {
                edits.add(
                    crate::message::auth_results::QUARANTINE_FIELD,
                    &format!(
                        "dmarc p={} header.from={}",
                        disposition_name(disposition),
                        d.from_domain
                    ),
                );
                Verdict::Accept(edits)
            }
            DmarcAction::None => Verdict::Accept(edits),
        }
    }

    /// Before the greeting: a local user must be allowed to submit
    /// (`sendmail.allowed_users`, as Postfix's `authorized_submit_users`).
    fn check_connect(&self, client: &Client) -> Result<(), Reply> {
        match &client.local {
            Some(u)
                if !self.sendmail.allowed_users.is_empty()
                    && !self.sendmail.allowed_users.iter().any(|a| a == &u.name) =>
            {
                Err(reply::LOCAL_USER_NOT_ALLOWED)
            }
            _ => Ok(()),
        }
    }

    /// Whether a local user may use `sender` as the envelope sender: a
    /// trusted user any; others their own (`name@server.hostname`), the
    /// null sender, and those `sendmail.senders` lists for them (an
    /// address, or `@domain` for all of a domain).
    fn local_sender_ok(&self, user: &LocalUser, sender: &str) -> bool {
        if self.sendmail.trusted_users.iter().any(|t| t == &user.name) || sender.is_empty() {
            return true;
        }
        let sender = sender.to_lowercase();
        let Some((local, domain)) = sender.rsplit_once('@') else {
            return false;
        };
        if local == user.name.to_lowercase() && domain == self.hostname {
            return true;
        }
        self.sendmail.senders.get(&user.name).is_some_and(|list| {
            list.iter().any(|a| {
                let a = a.to_lowercase();
                match a.strip_prefix('@') {
                    Some(d) => d == domain,
                    None => a == sender,
                }
            })
        })
    }

    /// Header fields that go with an accepted sender: a local user who set
    /// a sender that is not theirs gets an `X-Authentication-Warning:`, as
    /// sendmail(8) adds one.
    fn sender_edits(&self, client: &Client, mail: &MailFrom) -> HeaderEdits {
        let mut edits = HeaderEdits::new();
        if let Some(user) = &client.local {
            let sender = mail
                .sender
                .as_ref()
                .map(|m| m.address())
                .unwrap_or_default();
            if !self.local_sender_ok(user, &sender) {
                edits.add(
                    "X-Authentication-Warning",
                    &format!("{}: {} set sender to <{sender}>", self.hostname, user.name),
                );
            }
        }
        edits
    }

    /// Facts about a newly connected client.
    pub fn client(&self, ip: IpAddr, auth_required: bool) -> Client {
        Client {
            ip,
            trusted: self.is_trusted(ip),
            auth_required,
            user: None,
            local: None,
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
        if let Some(user) = &client.local {
            let sender = mail
                .sender
                .as_ref()
                .map(|m| m.address())
                .unwrap_or_default();
            if self.sendmail.restrict_senders && !self.local_sender_ok(user, &sender) {
                return Err(reply::LOCAL_SENDER_NOT_OWNED);
            }
        }
        if !spool_has_space {
            return Err(reply::INSUFFICIENT_STORAGE);
        }
        Ok(())
    }

    /// End of DATA/BDAT, before the message is committed: the checks on
    /// its header section, in order (docs/policy.md).
    pub fn check_message(
        &self,
        client: &Client,
        facts: &MessageFacts<'_>,
        rcpts: &[Recipient],
    ) -> Result<(), Reply> {
        self.check_header_from(client, facts)?;
        self.check_delivered_to(facts, rcpts)
    }

    /// With `auth.check_header_from`, an authenticated user's message
    /// must have exactly one From: field (RFC 5322 §3.6), every address
    /// in it must be theirs, and the header section must be small enough
    /// to be read whole.
    fn check_header_from(&self, client: &Client, facts: &MessageFacts<'_>) -> Result<(), Reply> {
        let (true, Some(user)) = (self.check_header_from, &client.user) else {
            return Ok(());
        };
        if !facts.header_complete {
            return Err(reply::HEADER_TOO_LARGE_TO_CHECK);
        }
        let mut header = facts.header.to_vec();
        header.extend_from_slice(b"\r\n");
        let Some(m) = mail_parser::MessageParser::default().parse_headers(&header) else {
            return Err(reply::FROM_HEADER_NOT_OWNED);
        };
        let mut from = m
            .headers()
            .iter()
            .filter(|h| h.name == mail_parser::HeaderName::From);
        let (Some(field), None) = (from.next(), from.next()) else {
            return match m.header_values(mail_parser::HeaderName::From).count() {
                0 => Err(reply::FROM_HEADER_NOT_OWNED),
                _ => Err(reply::FROM_HEADER_MULTIPLE),
            };
        };
        let mail_parser::HeaderValue::Address(list) = &field.value else {
            return Err(reply::FROM_HEADER_NOT_OWNED);
        };
        let mut n = 0;
        for a in list.iter() {
            n += 1;
            match a.address() {
                Some(addr) if user.may_send_as(addr.trim()) => {}
                _ => return Err(reply::FROM_HEADER_NOT_OWNED),
            }
        }
        if n == 0 {
            return Err(reply::FROM_HEADER_NOT_OWNED);
        }
        Ok(())
    }

    /// A local recipient must not loop through the aliases the message's
    /// own `Delivered-To:` fields name: each accepted recipient is
    /// resolved with that history exactly as local delivery will resolve
    /// it (same fields, same bound), so a message that delivery would
    /// bounce as a loop is refused now instead (`554 5.4.6`).
    fn check_delivered_to(
        &self,
        facts: &MessageFacts<'_>,
        rcpts: &[Recipient],
    ) -> Result<(), Reply> {
        let history = crate::users::directory::delivered_to(facts.header);
        if history.is_empty() {
            return Ok(());
        }
        for r in rcpts {
            match self.directory.resolve_after(&r.address, &history) {
                Ok(_) => {}
                Err(Unresolved::Loop(_)) => return Err(reply::DELIVERED_TO_LOOP),
                Err(_) => return Err(reply::ALIAS_ERROR),
            }
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
            Err(Unresolved::Srs(_)) => Err(reply::SRS_INVALID),
            Err(_) => Err(reply::ALIAS_ERROR),
        }
    }

    /// The directory the decisions use.
    pub fn directory(&self) -> &Arc<Directory> {
        &self.directory
    }
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
        let users = crate::users::UserDb::load(&cfg.auth).unwrap();
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

    /// A U-label domain on the wire is the local A-label domain.
    #[test]
    fn utf8_domain_is_local_as_its_a_label() {
        let mut cfg = Config::default();
        cfg.server.hostname = "mx.example.org".into();
        cfg.domains.local = vec!["example.org".into(), "xn--bcher-kva.example".into()];
        let d = catch_all(&mut cfg);
        let p = Policy::new(&cfg, d);
        let line = "RCPT TO:<postmaster@B\u{fc}cher.example>";
        assert_eq!(rcpt(&p, "198.51.100.7", line), Ok(()));
        // The reverse: the configuration in U-labels, mail in A-labels.
        let mut cfg = crate::config::parse(
            "[server]\nhostname = \"mx.example.org\"\n[domains]\nlocal = [\"example.org\", \"b\u{fc}cher.example\"]\n",
        )
        .unwrap();
        assert_eq!(cfg.domains.local[1], "xn--bcher-kva.example");
        let d = catch_all(&mut cfg);
        let p2 = Policy::new(&cfg, d);
        assert_eq!(
            rcpt(
                &p2,
                "198.51.100.7",
                "RCPT TO:<postmaster@xn--bcher-kva.example>"
            ),
            Ok(())
        );
        assert_eq!(rcpt(&p2, "198.51.100.7", line), Ok(()));
        assert_eq!(
            rcpt(&p, "198.51.100.7", "RCPT TO:<nobody@b\u{fc}cher.example>"),
            Err(reply::USER_UNKNOWN)
        );
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
            password: crate::users::hash_password("pw").unwrap(),
            addresses: vec!["alice@example.org".into(), "@alice.test".into()],
            delivery: None,
            maildir: None,
        }];
        let db = crate::users::UserDb::load(&cfg.auth).unwrap();
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

    /// The verdict on a message whose header section is `header` (the
    /// fields, CRLF line ends, without the empty line).
    fn from_check(p: &Policy, c: &Client, header: &str) -> Result<(), Reply> {
        let facts = MessageFacts {
            header: header.as_bytes(),
            header_complete: true,
        };
        p.check_message(c, &facts, &[])
    }

    fn from_field(value: &str) -> String {
        format!("Received: by mx.test\r\n\tid X;\r\n\tdate\r\nSubject: s\r\nFrom: {value}\r\n")
    }

    #[test]
    fn header_from_rule() {
        let (p, _, alice) = setup(true);
        for ok in [
            "Alice <alice@example.org>",
            "alice@example.org (Alice)",
            "\"Bob <bob@x.test>\" <a@alice.test>",
            "ALICE@example.org",
            "alice@example.org, Other <x@alice.test>",
            "=?utf-8?q?Alice?= <alice@example.org>",
            "Alice\r\n <alice@example.org>",
        ] {
            assert_eq!(from_check(&p, &alice, &from_field(ok)), Ok(()), "{ok}");
        }
        for bad in [
            "Bob <bob@example.org>",
            "alice@example.org, bob@example.org",
            "<alice@example.org>, bob@example.org",
            "<alice@example.org>,\r\n bob@example.org",
            "Alice <alice@example.org>, Bob <bob@example.org>",
            "alice@example.org (x), (y) bob@example.org",
            "Team: alice@example.org, bob@example.org;",
            "undisclosed-recipients:;",
            "alice",
            "",
        ] {
            assert_eq!(
                from_check(&p, &alice, &from_field(bad)),
                Err(reply::FROM_HEADER_NOT_OWNED),
                "{bad}"
            );
        }
        // No From: field at all.
        assert_eq!(
            from_check(&p, &alice, "Subject: s\r\n"),
            Err(reply::FROM_HEADER_NOT_OWNED)
        );
        // Two From: fields, in either order, whatever their case.
        for two in [
            "From: alice@example.org\r\nfrom: bob@example.org\r\n",
            "FROM: bob@example.org\r\nSubject: s\r\nFrom: alice@example.org\r\n",
            "From: alice@example.org\r\nFrom : bob@example.org\r\n",
            "From: alice@example.org\r\nFrom:\r\n",
        ] {
            assert_eq!(
                from_check(&p, &alice, two),
                Err(reply::FROM_HEADER_MULTIPLE),
                "{two}"
            );
        }
        // Padding the value far past any short cut does not hide an
        // address after it.
        let padded = from_field(&format!(
            "\"{}\" <alice@example.org>, bob@example.org",
            "p".repeat(5000)
        ));
        assert_eq!(
            from_check(&p, &alice, &padded),
            Err(reply::FROM_HEADER_NOT_OWNED)
        );
        // A header section too large to be read whole is refused.
        let facts = MessageFacts {
            header: b"From: alice@example.org\r\n",
            header_complete: false,
        };
        assert_eq!(
            p.check_message(&alice, &facts, &[]),
            Err(reply::HEADER_TOO_LARGE_TO_CHECK)
        );
        // Off, or not authenticated: no check.
        let (p, anon, alice) = setup(false);
        assert_eq!(
            from_check(&p, &alice, &from_field("Bob <bob@example.org>")),
            Ok(())
        );
        let (p, _, _) = setup(true);
        assert_eq!(
            from_check(&p, &anon, &from_field("Bob <bob@example.org>")),
            Ok(())
        );
    }

    fn rcpts(addrs: &[&str]) -> Vec<Recipient> {
        addrs
            .iter()
            .map(|a| Recipient {
                address: a.to_string(),
                orcpt: None,
                notify: Default::default(),
            })
            .collect()
    }

    #[test]
    fn delivered_to_loop_refused_at_end_of_data() {
        let (p, anon, _) = setup(false);
        let check = |header: &str, to: &[&str]| {
            let facts = MessageFacts {
                header: header.as_bytes(),
                header_complete: true,
            };
            p.check_message(&anon, &facts, &rcpts(to))
        };
        // postmaster is an alias without a mailbox of its own: a message
        // that says it already went through it would loop.
        let forged = "Received: by mx\r\nDelivered-To: postmaster@example.org\r\nSubject: s\r\n";
        assert_eq!(
            check(forged, &["postmaster@example.org"]),
            Err(reply::DELIVERED_TO_LOOP)
        );
        assert_eq!(
            check(forged, &["box@example.org", "Postmaster@example.org"]),
            Err(reply::DELIVERED_TO_LOOP)
        );
        let folded = "Delivered-To:\r\n <POSTMASTER@example.org>\r\n";
        assert_eq!(
            check(folded, &["postmaster@example.org"]),
            Err(reply::DELIVERED_TO_LOOP)
        );
        // Other recipients, and remote ones, are not affected.
        assert_eq!(check(forged, &["box@example.org", "x@remote.test"]), Ok(()));
        assert_eq!(check("Subject: s\r\n", &["postmaster@example.org"]), Ok(()));
        // A mailbox address in the history is simply its mailbox.
        assert_eq!(
            check("Delivered-To: box@example.org\r\n", &["box@example.org"]),
            Ok(())
        );
        // What the session checks is what delivery will read.
        let stored = format!("{forged}\r\nbody\r\n");
        let history = crate::users::directory::message_history(stored.as_bytes());
        assert!(matches!(
            p.directory()
                .resolve_after("postmaster@example.org", &history),
            Err(Unresolved::Loop(_))
        ));
    }
}

#[cfg(test)]
mod local_user_tests {
    use super::*;
    use crate::proto::command::{parse_command, Command};

    fn policy(f: impl FnOnce(&mut Config)) -> Policy {
        let mut cfg = Config::default();
        cfg.server.hostname = "host.example.org".into();
        cfg.domains.local = vec!["example.org".into()];
        f(&mut cfg);
        let d = super::tests::catch_all(&mut cfg);
        Policy::new(&cfg, d)
    }

    fn local(p: &Policy, name: &str) -> Client {
        let mut c = p.client("127.0.0.1".parse().unwrap(), false);
        c.trusted = true;
        c.local = Some(LocalUser {
            uid: 1000,
            name: name.into(),
        });
        c
    }

    fn mail_verdict(p: &Policy, c: &Client, from: &str) -> Verdict {
        let Ok(Command::Mail(m)) = parse_command(format!("MAIL FROM:<{from}>").as_bytes()) else {
            panic!("{from}");
        };
        p.decide(&Decision::Mail { mail: &m }, &Facts::default(), c)
    }

    fn warning(v: &Verdict) -> Option<String> {
        match v {
            Verdict::Accept(e) if e.is_empty() => None,
            Verdict::Accept(e) => Some(String::from_utf8_lossy(e.as_bytes()).into_owned()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn own_listed_and_null_senders_pass_others_get_a_warning() {
        let p = policy(|cfg| {
            cfg.sendmail.senders.insert(
                "www".into(),
                vec!["noreply@example.org".into(), "@lists.example.org".into()],
            );
        });
        let www = local(&p, "www");
        for ok in [
            "www@host.example.org",
            "WWW@Host.Example.org",
            "",
            "noreply@example.org",
            "x@lists.example.org",
        ] {
            assert_eq!(warning(&mail_verdict(&p, &www, ok)), None, "{ok}");
        }
        let w = warning(&mail_verdict(&p, &www, "ceo@example.org")).unwrap();
        assert_eq!(
            w,
            "X-Authentication-Warning: host.example.org: www set sender to\r\n <ceo@example.org>\r\n"
        );
        // root is trusted by default.
        assert_eq!(
            warning(&mail_verdict(&p, &local(&p, "root"), "ceo@example.org")),
            None
        );
        // Not a local submission: no warning.
        let net = p.client("192.0.2.1".parse().unwrap(), false);
        assert_eq!(warning(&mail_verdict(&p, &net, "ceo@example.org")), None);
    }

    #[test]
    fn restricted_senders_are_refused_and_unlisted_users_cannot_submit() {
        let p = policy(|cfg| {
            cfg.sendmail.restrict_senders = true;
            cfg.sendmail.allowed_users = vec!["www".into(), "root".into()];
        });
        let www = local(&p, "www");
        assert_eq!(
            mail_verdict(&p, &www, "ceo@example.org"),
            Verdict::Reject(reply::LOCAL_SENDER_NOT_OWNED)
        );
        assert_eq!(
            warning(&mail_verdict(&p, &www, "www@host.example.org")),
            None
        );
        assert_eq!(
            p.decide(&Decision::Connect, &Facts::default(), &www),
            Verdict::accept()
        );
        assert_eq!(
            p.decide(&Decision::Connect, &Facts::default(), &local(&p, "mallory")),
            Verdict::Reject(reply::LOCAL_USER_NOT_ALLOWED)
        );
        let net = p.client("192.0.2.1".parse().unwrap(), false);
        assert_eq!(
            p.decide(&Decision::Connect, &Facts::default(), &net),
            Verdict::accept()
        );
    }
}
