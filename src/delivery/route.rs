//! Where mail for a domain goes next: a per-domain route, the relay host,
//! or the domain's MX hosts (with implicit and null MX, RFC 5321 §5.1 and
//! RFC 7505). Reads the delivery configuration and asks the resolver;
//! decides nothing about TLS or retries. Untrusted DNS answers reach it.

use crate::config::DeliveryConfig;
use crate::dns::{MxAnswer, Resolver};

use super::classify::Event;

/// Where mail for a domain goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// A named host (or IP literal), no MX lookup: "[host]:port".
    Direct { host: String, port: u16 },
    /// The MX hosts of a domain (or of a relay host given without brackets).
    Mx { domain: String, port: u16 },
}

/// Parses "[host]:port", "[host]", "host:port" or "host".
pub fn parse_hop(s: &str, default_port: u16) -> Option<Hop> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        if host.is_empty() {
            return None;
        }
        return Some(Hop::Direct {
            host: host.to_ascii_lowercase(),
            port,
        });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (s, default_port),
    };
    if host.is_empty() {
        return None;
    }
    Some(Hop::Mx {
        domain: host.to_ascii_lowercase(),
        port,
    })
}

/// The next hop for `domain`: its route, else the relay host, else its MX.
pub fn hop(d: &DeliveryConfig, domain: &str) -> Hop {
    if let Some(route) = d.routes.get(domain) {
        if let Some(h) = parse_hop(route, d.remote_port) {
            return h;
        }
    }
    if !d.relay_host.is_empty() {
        if let Some(h) = parse_hop(&d.relay_host, d.remote_port) {
            return h;
        }
    }
    Hop::Mx {
        domain: domain.to_string(),
        port: d.remote_port,
    }
}

/// Mail for `domain` goes through the relay host (not a route of its own).
pub fn via_relay(d: &DeliveryConfig, domain: &str) -> bool {
    !d.routes.contains_key(domain) && !d.relay_host.is_empty()
}

/// The key per-destination limits and kept connections go by.
pub fn destination(hop: &Hop) -> String {
    match hop {
        Hop::Direct { host, port } => format!("[{host}]:{port}"),
        Hop::Mx { domain, port } => format!("{domain}:{port}"),
    }
}

/// The hosts to try, in order, and their port; or the event that ends the
/// attempt (null MX, a DNS failure).
pub async fn hosts(resolver: &dyn Resolver, hop: Hop) -> Result<(Vec<String>, u16), Event> {
    match hop {
        Hop::Direct { host, port } => Ok((vec![host], port)),
        Hop::Mx {
            domain: target,
            port,
        } => match resolver.mx(&target).await {
            Ok(MxAnswer::Mx(list)) => Ok((list.into_iter().map(|m| m.host).collect(), port)),
            Ok(MxAnswer::Implicit(d)) => Ok((vec![d], port)),
            Ok(MxAnswer::NullMx) => Err(Event::NullMx),
            Err(e) => Err(Event::Dns(e)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops() {
        assert_eq!(
            parse_hop("[smtp.isp.test]:587", 25),
            Some(Hop::Direct {
                host: "smtp.isp.test".into(),
                port: 587
            })
        );
        assert_eq!(
            parse_hop("[127.0.0.1]", 25),
            Some(Hop::Direct {
                host: "127.0.0.1".into(),
                port: 25
            })
        );
        assert_eq!(
            parse_hop("relay.test:2525", 25),
            Some(Hop::Mx {
                domain: "relay.test".into(),
                port: 2525
            })
        );
        assert_eq!(
            parse_hop("Relay.test", 25),
            Some(Hop::Mx {
                domain: "relay.test".into(),
                port: 25
            })
        );
        assert_eq!(parse_hop("[]:25", 25), None);
        assert_eq!(parse_hop("[x]junk", 25), None);
        assert_eq!(parse_hop("x:notaport", 25), None);
    }
}
