//! Every accept/refuse decision about a client, a sender or a recipient, as
//! pure functions: facts in, `Ok(())` or the `Reply` to give out. The server
//! carries the verdicts out; nothing here does I/O. Untrusted (already
//! parsed) addresses reach these functions.
//!
//! The checks per command, in order, are documented in docs/policy.md.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::config::{Cidr, Config};
use crate::proto::address::Domain;
use crate::proto::command::{MailFrom, RcptTo};
use crate::proto::reply::{self, Reply};

/// The parts of the configuration that decisions depend on.
#[derive(Debug, Clone)]
pub struct Policy {
    local_domains: HashSet<String>,
    trusted: Vec<Cidr>,
}

/// What is known about the client when a decision is made.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub ip: IpAddr,
    /// In `relay.trusted_networks`.
    pub trusted: bool,
}

impl Policy {
    pub fn new(cfg: &Config) -> Policy {
        let mut local_domains: HashSet<String> =
            cfg.domains.local.iter().map(|d| d.to_ascii_lowercase()).collect();
        // The server's own name is always local, as Postfix's $myhostname is.
        local_domains.insert(cfg.server.hostname.to_ascii_lowercase());
        Policy { local_domains, trusted: cfg.relay.trusted_networks.clone() }
    }

    /// Facts about a newly connected client.
    pub fn client(&self, ip: IpAddr) -> Client {
        Client { ip, trusted: self.is_trusted(ip) }
    }

    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    pub fn is_local_domain(&self, domain: &Domain) -> bool {
        match domain {
            Domain::Name(d) => self.local_domains.contains(d.as_str()),
            // Address literals are never local: mail to [ip] is relaying.
            Domain::Literal(_) => false,
        }
    }

    /// MAIL FROM: may a transaction start now?
    pub fn check_mail(&self, _client: &Client, _mail: &MailFrom, spool_has_space: bool) -> Result<(), Reply> {
        if !spool_has_space {
            return Err(reply::INSUFFICIENT_STORAGE);
        }
        Ok(())
    }

    /// RCPT TO: is this recipient local, or may this client relay to it?
    pub fn check_rcpt(&self, client: &Client, rcpt: &RcptTo) -> Result<(), Reply> {
        if client.trusted {
            return Ok(());
        }
        if !self.is_local_domain(&rcpt.rcpt.domain) {
            return Err(reply::RELAY_DENIED);
        }
        // Sender-specified routing (user%host@local, host!user@local,
        // "user@host"@local) would let a later hop forward elsewhere: only
        // trusted clients may use it.
        let local = rcpt.rcpt.local_unquoted();
        if local.contains(['%', '!', '@']) {
            return Err(reply::RELAY_DENIED);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::command::{parse_command, Command};

    fn policy() -> Policy {
        let mut cfg = Config::default();
        cfg.server.hostname = "mx.example.org".into();
        cfg.domains.local = vec!["example.org".into()];
        Policy::new(&cfg)
    }

    fn rcpt(p: &Policy, ip: &str, line: &str) -> Result<(), Reply> {
        let Ok(Command::Rcpt(r)) = parse_command(line.as_bytes()) else {
            return Err(Reply::new(501, "5.5.4", "syntax"));
        };
        p.check_rcpt(&p.client(ip.parse().unwrap()), &r)
    }

    #[test]
    fn local_accepted_remote_refused() {
        let p = policy();
        assert!(rcpt(&p, "192.0.2.1", "RCPT TO:<alice@example.org>").is_ok());
        assert!(rcpt(&p, "192.0.2.1", "RCPT TO:<alice@EXAMPLE.ORG>").is_ok());
        assert!(rcpt(&p, "192.0.2.1", "RCPT TO:<postmaster@mx.example.org>").is_ok());
        assert_eq!(rcpt(&p, "192.0.2.1", "RCPT TO:<bob@remote.test>"), Err(reply::RELAY_DENIED));
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
