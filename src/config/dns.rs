//! `[dns]`: the resolver.

use super::*;

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
