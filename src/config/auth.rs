//! `[auth]` and `[[auth.user]]`: logins, password checks and their limits.

use super::*;

/// `[auth]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// A TOML file of `[[user]]` entries (same keys as `[[auth.user]]`),
    /// read at start. Empty: none. Default: empty.
    pub users_file: PathBuf,
    /// Users given inline. Default: none.
    #[serde(rename = "user")]
    pub users: Vec<UserConfig>,
    /// An authenticated user may use only their own addresses in MAIL FROM
    /// (553 5.7.1 otherwise). Default: true.
    pub sender_login_match: bool,
    /// Apply the same rule to the addresses in the From: header. Default: false.
    pub check_header_from: bool,
    /// Milliseconds to wait before answering a failed authentication.
    /// Default: 1000.
    pub failure_delay_ms: u64,
    /// Failed authentications allowed on one connection before it is closed
    /// with 421. Default: 3.
    pub max_failures_per_connection: u32,
    /// Failed authentications from one IP address, within
    /// `ip_failure_window_secs`, after which that address may not try again
    /// for `ip_block_secs`. 0 disables the per-address limit. Default: 10.
    pub ip_max_failures: u32,
    /// Default: 600.
    pub ip_failure_window_secs: u64,
    /// Default: 900.
    pub ip_block_secs: u64,
    /// Exempt loopback clients from the per-address limit. Default: false.
    pub exempt_loopback: bool,
    /// Password checks run at once (each argon2id check takes about 19 MiB
    /// and a core for a moment); 0 means one per CPU. An attempt that
    /// finds them all busy waits up to `verification_wait_ms`, then gets
    /// 454 4.7.0. Default: 0.
    pub max_parallel_verifications: usize,
    /// Default: 2000.
    pub verification_wait_ms: u64,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            users_file: PathBuf::new(),
            users: Vec::new(),
            sender_login_match: true,
            check_header_from: false,
            failure_delay_ms: 1000,
            max_failures_per_connection: 3,
            ip_max_failures: 10,
            ip_failure_window_secs: 600,
            ip_block_secs: 900,
            exempt_loopback: false,
            max_parallel_verifications: 0,
            verification_wait_ms: 2000,
        }
    }
}

/// One user, in `[[auth.user]]` or in the users file's `[[user]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The name given to AUTH.
    pub login: String,
    /// Password hash: argon2id (`$argon2id$...`, made by
    /// `pigeon hash-password`), sha512-crypt (`$6$...`) or bcrypt (`$2y$...`).
    pub password: String,
    /// Addresses the user may send as: `user@domain`, or `@domain` for any
    /// address in that domain. Those of them (`user@domain` only) in a local
    /// domain also receive mail into the user's mailbox; the first of those
    /// is the mailbox's primary address.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// Where the user's mail goes: `maildir`, `lmtp` or `none` (no mailbox:
    /// an account for sending only). Default: `local.delivery`.
    #[serde(default)]
    pub delivery: Option<UserDelivery>,
    /// This user's Maildir, instead of the `local.maildir` template (the
    /// same `{user}`, `{domain}` and `{login}` placeholders). Default: none.
    #[serde(default)]
    pub maildir: Option<String>,
}

/// A user's delivery target, in `[[auth.user]]`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserDelivery {
    Maildir,
    Lmtp,
    /// No mailbox: the user's addresses receive no mail.
    None,
}

/// How local mail is delivered.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LocalDelivery {
    /// Written into the user's Maildir by pigeon.
    #[default]
    Maildir,
    /// Handed to an LMTP server (Dovecot) at `local.lmtp`.
    Lmtp,
}
