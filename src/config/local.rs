//! `[local]`: mailboxes on this machine and aliases.

use super::*;

/// `[local]`: mailboxes on this machine and aliases.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// How users' mail is delivered unless their entry says otherwise.
    /// Default: `maildir`.
    pub delivery: LocalDelivery,
    /// Maildir path template: `{user}` is the local part of the user's
    /// primary address, `{domain}` its domain, `{login}` the login. A
    /// relative path is taken relative to the working directory.
    /// Default: `/var/mail/{domain}/{user}/Maildir`.
    pub maildir: String,
    /// Create a missing Maildir (mode 0700). Off: mail for a user whose
    /// Maildir does not exist is returned to the sender. Default: true.
    pub create_maildir: bool,
    /// The LMTP server: a Unix socket path (starting with `/`), or
    /// `host:port` / `[host]:port` over TCP. Default: `/run/dovecot/lmtp`.
    pub lmtp: String,
    /// Characters that start a subaddress (`alice+tag@` is delivered to
    /// `alice@`); empty = no subaddressing. Default: `+`.
    pub recipient_delimiter: String,
    /// Deliver `alice+tag@` into the Maildir++ folder `.tag` of Alice's
    /// Maildir when that folder exists (it is never created). Default: false.
    pub subaddress_folders: bool,
    /// A TOML file of aliases (`"address" = "target"` or `= ["t1", "t2"]`),
    /// read at start and on SIGHUP; "" for none. Default: "".
    pub aliases_file: PathBuf,
    /// Aliases given inline, in the same form as the aliases file. Keys:
    /// `local@domain`, `local` (in every local domain) or `@domain`
    /// (catch-all). Targets: addresses, or a bare local part (same domain).
    pub aliases: std::collections::BTreeMap<String, AliasTargets>,
    /// Deepest alias chain followed; deeper is an error. Default: 20.
    pub max_alias_depth: u32,
    /// Most addresses one recipient may expand to. Default: 1000.
    pub max_alias_targets: usize,
    /// Most local deliveries (Maildir writes, LMTP sessions) at once.
    /// Default: 50.
    pub max_deliveries: usize,
}

impl Default for LocalConfig {
    fn default() -> LocalConfig {
        LocalConfig {
            delivery: LocalDelivery::Maildir,
            maildir: "/var/mail/{domain}/{user}/Maildir".to_string(),
            create_maildir: true,
            lmtp: "/run/dovecot/lmtp".to_string(),
            recipient_delimiter: "+".to_string(),
            subaddress_folders: false,
            aliases_file: PathBuf::new(),
            aliases: Default::default(),
            max_alias_depth: 20,
            max_alias_targets: 1000,
            max_deliveries: 50,
        }
    }
}

/// One alias's targets: a single address or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AliasTargets(pub Vec<String>);

impl<'de> Deserialize<'de> for AliasTargets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AliasTargets, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AliasTargets;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address, or a list of addresses")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AliasTargets, E> {
                Ok(AliasTargets(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AliasTargets, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(AliasTargets(out))
            }
        }
        d.deserialize_any(V)
    }
}
