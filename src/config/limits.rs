//! `[limits]`: every resource a client can consume has a bound here.

use super::*;

/// `[limits]`: every resource a client can consume has a bound here.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest command line accepted, in bytes including CRLF.
    /// Default 512, the RFC 5321 §4.5.3.1.4 minimum; 512 to 1048576.
    pub max_command_line: usize,
    /// Largest message accepted, in bytes; advertised in the EHLO `SIZE`
    /// keyword. Default 52428800 (50 MiB); at least 1024.
    pub max_message_size: u64,
    /// Most recipients accepted in one transaction. Default 1000; at least
    /// 100 (RFC 5321 §4.5.3.1.8).
    pub max_recipients: usize,
    /// Error replies (4xx and 5xx) tolerated in one session; one more and
    /// the server answers 421 and closes the connection. Default 10; at
    /// least 1.
    pub max_errors: u32,
    /// A message carrying more `Received:` headers than this is refused
    /// with 554 5.4.6 (mail loop). Default 50; at least 1.
    pub max_received_headers: u32,
    /// Most simultaneous connections on the `smtp` listeners (and local
    /// submissions). Default 5000; 1 to 1000000.
    pub max_connections: usize,
    /// Most simultaneous connections on the `submission` and `submissions`
    /// listeners: a pool of their own, so that a flood on port 25 cannot
    /// lock users out. Default 1000; 1 to 1000000.
    pub max_submission_connections: usize,
    /// Most simultaneous connections from one client network (an IPv4
    /// address, or an IPv6 network of `ipv6_prefix` bits); 0 means no
    /// limit. Clients in `relay.trusted_networks` are exempt. Default 50.
    pub max_connections_per_ip: usize,
    /// IPv6 clients are counted together per network of this many bits
    /// (one site usually has a whole /64), for the per-client connection
    /// limit and the failed-AUTH limit. Default 64; 32 to 128.
    pub ipv6_prefix: u8,
    /// NOOP, RSET, VRFY and HELP commands tolerated in a row without an
    /// accepted message before the server answers 421 and closes (as
    /// Postfix's smtpd_junk_command_limit); 0 means no limit. Default 100.
    pub max_junk_commands: u32,
    /// Seconds to wait for the next command. Default 300, the RFC 5321
    /// §4.5.3.2.7 minimum; lower values are accepted. Timeouts range from 1
    /// to 604800 (one week).
    pub command_timeout_secs: u64,
    /// Seconds to wait for the next block of message data during DATA or
    /// BDAT. Default 600; at least 1.
    pub data_timeout_secs: u64,
    /// Longest a single connection may last, in seconds. Default 3600; at
    /// least 1.
    pub session_timeout_secs: u64,
    /// On SIGTERM, seconds that transactions in progress may continue
    /// before connections are closed. Default 30; 0 closes at once.
    pub shutdown_grace_secs: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_command_line: 512,
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_errors: 10,
            max_received_headers: 50,
            max_connections: 5000,
            max_submission_connections: 1000,
            max_connections_per_ip: 50,
            ipv6_prefix: 64,
            max_junk_commands: 100,
            command_timeout_secs: 300,
            data_timeout_secs: 600,
            session_timeout_secs: 3600,
            shutdown_grace_secs: 30,
        }
    }
}
