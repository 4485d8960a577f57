//! IP networks in CIDR notation (`10.0.0.0/8`, `::1/128`) and membership tests.
//!
//! Owns the [`Cidr`] type used by `relay.trusted_networks`: the `ipnet`
//! crate's networks, with pigeon's own rule for IPv4-mapped IPv6 (a
//! mapped network or client is the IPv4 one it carries). Parses operator
//! text; touches nothing else. Client addresses passed to [`Cidr::contains`]
//! come from the network, but are already typed `IpAddr` values.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// An IP network: an address and a prefix length.
///
/// Values built by [`FromStr`] are canonical: the host bits of `addr` are
/// zero, and a network written as an IPv4-mapped IPv6 range
/// (`::ffff:10.0.0.0/104`) is stored as the IPv4 network (`10.0.0.0/8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    /// The network address.
    pub addr: IpAddr,
    /// The prefix length: 0..=32 for IPv4, 0..=128 for IPv6.
    pub prefix: u8,
}

/// Why a string is not a valid [`Cidr`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseCidrError {
    message: String,
}

impl fmt::Display for ParseCidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ParseCidrError {}

impl Cidr {
    /// Builds a network from an address and a prefix length, clearing the
    /// host bits. Fails if the prefix is longer than the address.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, ParseCidrError> {
        let max = max_prefix(addr);
        let net = ipnet::IpNet::new(addr, prefix).map_err(|_| ParseCidrError {
            message: format!("prefix length /{prefix} is longer than the address ({max} bits)"),
        })?;
        // An IPv4-mapped IPv6 network (::ffff:0:0/96 and narrower) is an IPv4
        // network; store it as one so that it matches IPv4 clients.
        if let IpAddr::V6(v6) = addr {
            if let (Some(v4), true) = (v6.to_ipv4_mapped(), prefix >= 96) {
                return Cidr::new(IpAddr::V4(v4), prefix - 96);
            }
        }
        Ok(Cidr {
            addr: net.trunc().addr(),
            prefix,
        })
    }

    /// Whether `ip` lies inside this network.
    ///
    /// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`, as seen on a dual-stack
    /// socket) is treated as the IPv4 address it carries. An IPv4 address never
    /// matches an IPv6 network, and the other way round.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            },
            v4 => v4,
        };
        ipnet::IpNet::new(self.addr, self.prefix).is_ok_and(|n| n.contains(&ip))
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The key under which a client is counted by per-client limits: an IPv4
/// address (IPv4-mapped IPv6 included) as it is, an IPv6 address reduced
/// to its network of `v6_prefix` bits, since one site, and so one
/// attacker, usually holds a whole /64.
pub fn client_network(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(
                ipnet::Ipv6Net::new(v6, v6_prefix.min(128))
                    .map(|n| n.network())
                    .unwrap_or(v6),
            ),
        },
    }
}

impl FromStr for Cidr {
    type Err = ParseCidrError;

    /// Parses `ADDRESS/PREFIX` or a bare `ADDRESS` (a single host: /32 or
    /// /128). Host bits below the prefix are cleared, so `10.1.2.3/8` reads
    /// as `10.0.0.0/8`.
    fn from_str(s: &str) -> Result<Cidr, ParseCidrError> {
        let bad = |why: &str| ParseCidrError {
            message: format!("`{s}` is not a network: {why}"),
        };
        let (addr_text, prefix_text) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| bad("expected an IP address, optionally followed by /PREFIX"))?;
        let prefix = match prefix_text {
            None => max_prefix(addr),
            Some(p) => {
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("the prefix length must be a number"));
                }
                p.parse::<u8>()
                    .map_err(|_| bad("the prefix length is out of range"))?
            }
        };
        Cidr::new(addr, prefix).map_err(|e| bad(&e.message))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        struct CidrVisitor;
        impl serde::de::Visitor<'_> for CidrVisitor {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a network such as \"10.0.0.0/8\" or \"::1/128\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Cidr, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(CidrVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn net(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn v4_membership() {
        let n = net("10.0.0.0/8");
        assert!(n.contains(ip("10.0.0.0")));
        assert!(n.contains(ip("10.255.255.255")));
        assert!(!n.contains(ip("11.0.0.0")));
        assert!(!n.contains(ip("9.255.255.255")));
        assert!(
            !n.contains(ip("::a00:1")),
            "v4 network must not match a plain v6 address"
        );
    }

    #[test]
    fn v6_membership() {
        let n = net("2001:db8::/32");
        assert!(n.contains(ip("2001:db8::1")));
        assert!(n.contains(ip("2001:db8:ffff::1")));
        assert!(!n.contains(ip("2001:db9::1")));
        assert!(!n.contains(ip("32.1.13.184")));
        let lo = net("::1/128");
        assert!(lo.contains(ip("::1")));
        assert!(!lo.contains(ip("::2")));
    }

    #[test]
    fn mapped_v4_client_matches_v4_network() {
        let n = net("192.0.2.0/24");
        assert!(n.contains(ip("::ffff:192.0.2.7")));
        assert!(!n.contains(ip("::ffff:192.0.3.7")));
        // A mapped network is stored as the IPv4 network it describes.
        let m = net("::ffff:10.0.0.0/104");
        assert_eq!(m, net("10.0.0.0/8"));
        assert!(m.contains(ip("10.9.9.9")));
        assert!(m.contains(ip("::ffff:10.9.9.9")));
    }

    #[test]
    fn zero_prefix_matches_its_family() {
        let any4 = net("0.0.0.0/0");
        assert!(any4.contains(ip("1.2.3.4")));
        assert!(any4.contains(ip("255.255.255.255")));
        assert!(any4.contains(ip("::ffff:1.2.3.4")));
        assert!(!any4.contains(ip("2001:db8::1")));
        let any6 = net("::/0");
        assert!(any6.contains(ip("2001:db8::1")));
        assert!(!any6.contains(ip("1.2.3.4")));
    }

    #[test]
    fn host_routes() {
        let h = net("192.0.2.1/32");
        assert!(h.contains(ip("192.0.2.1")));
        assert!(!h.contains(ip("192.0.2.2")));
        assert_eq!(net("192.0.2.1"), h, "a bare address is a host route");
        assert_eq!(net("::1"), net("::1/128"));
    }

    #[test]
    fn host_bits_are_masked_and_display_is_canonical() {
        let n = net("10.1.2.3/8");
        assert_eq!(n.addr, ip("10.0.0.0"));
        assert_eq!(n.to_string(), "10.0.0.0/8");
        assert_eq!(net("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(net("::1").to_string(), "::1/128");
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0/8",
            "example.org",
            " 10.0.0.0/8",
            "10.0.0.0/0008",
        ] {
            assert!(s.parse::<Cidr>().is_err(), "{s:?} should be rejected");
        }
    }

    #[test]
    fn unmasked_public_fields_still_compare_by_network() {
        let n = Cidr {
            addr: ip("10.1.2.3"),
            prefix: 8,
        };
        assert!(n.contains(ip("10.200.0.1")));
    }
}
