//! `[sendmail]` and `[metrics]`: local submission and the metrics endpoint.

use super::*;

/// `[sendmail]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SendmailConfig {
    /// The Unix socket `pigeon sendmail` hands messages to (mode 0666:
    /// every local user may connect). "" = off. Default:
    /// `/run/pigeon/sendmail.sock`.
    pub socket: PathBuf,
    /// Local users (names) who may submit mail; empty = every user.
    /// Default: empty.
    pub allowed_users: Vec<String>,
    /// Local users who may use any envelope sender (`-f`) without a
    /// warning. Default: `["root"]`.
    pub trusted_users: Vec<String>,
    /// Refuse (553 5.7.1) a sender that is not the user's own
    /// (`user@server.hostname`), not `<>` and not listed for them in
    /// `senders`; when false such mail goes out with an
    /// `X-Authentication-Warning:` field. Default: false.
    pub restrict_senders: bool,
    /// Further senders each local user may use: user name = list of
    /// addresses or `@domain`. Default: none.
    pub senders: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for SendmailConfig {
    fn default() -> SendmailConfig {
        SendmailConfig {
            socket: PathBuf::from("/run/pigeon/sendmail.sock"),
            allowed_users: Vec::new(),
            trusted_users: vec!["root".into()],
            restrict_senders: false,
            senders: Default::default(),
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Loopback address and port of the Prometheus text endpoint
    /// (`/metrics`), e.g. "127.0.0.1:9587"; "" = off. Default: "".
    pub listen: String,
}
