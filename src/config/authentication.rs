//! `[dkim]`, `[inbound]` and `[srs]`: email authentication of outgoing
//! mail (signing), the checks of incoming mail, and the sender rewriting
//! of forwarded mail.

use super::*;

/// `[dkim]`: DKIM signing of mail this server originates.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DkimConfig {
    /// Sign mail from authenticated users, trusted networks, `pigeon
    /// sendmail`, and this server's own reports, for the domain of its
    /// `From:` when a key for it is configured. Default: true.
    pub sign: bool,
    /// Header fields signed, in this order; `From` is always signed and
    /// oversigned (listed once more than it occurs, so that no `From` can
    /// be added). Fields absent from a message are oversigned too, so they
    /// cannot be added later. Default: From, To, Cc, Subject, Date,
    /// Message-ID, Reply-To, In-Reply-To, References, MIME-Version,
    /// Content-Type, Content-Transfer-Encoding, List-Unsubscribe,
    /// List-Unsubscribe-Post.
    pub headers: Vec<String>,
    /// Signature lifetime (`x=`), seconds; 0 = no expiry. Default: 0.
    pub expire_secs: u64,
    /// Sign mail from a subdomain (`From: a@news.example.org`) with the key
    /// of a parent domain (`example.org`) when the subdomain has none of
    /// its own; DMARC relaxed alignment accepts it. Default: true.
    pub sign_subdomains: bool,
    /// `[[dkim.key]]`: the keys. Several keys for one domain (different
    /// selectors) all sign: RSA and Ed25519 side by side, or an old and a
    /// new key while rolling over.
    #[serde(rename = "key")]
    pub keys: Vec<DkimKeyConfig>,
}

impl Default for DkimConfig {
    fn default() -> DkimConfig {
        DkimConfig {
            sign: true,
            headers: [
                "From",
                "To",
                "Cc",
                "Subject",
                "Date",
                "Message-ID",
                "Reply-To",
                "In-Reply-To",
                "References",
                "MIME-Version",
                "Content-Type",
                "Content-Transfer-Encoding",
                "List-Unsubscribe",
                "List-Unsubscribe-Post",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            expire_secs: 0,
            sign_subdomains: true,
            keys: Vec::new(),
        }
    }
}

/// `[[dkim.key]]`: one signing key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`): the key is published at
    /// `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// The private key, PEM (PKCS#8, or PKCS#1 for RSA), as `pigeon dkim
    /// keygen` writes it. Must not be readable by others.
    pub file: PathBuf,
    /// `rsa-sha256` (RFC 6376; 2048 bits or more) or `ed25519-sha256`
    /// (RFC 8463). Default: `rsa-sha256`.
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
}

/// A DKIM signing algorithm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum DkimAlgorithm {
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}

impl DkimAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }
}

/// `[inbound]`: SPF, DKIM, DMARC and ARC checks of mail arriving on `smtp`
/// listeners from clients that are neither authenticated nor in trusted
/// networks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboundConfig {
    /// Check SPF (RFC 7208) for the HELO and MAIL FROM identities.
    /// Default: true.
    pub spf: bool,
    /// Verify DKIM signatures (RFC 6376, RFC 8463). Default: true.
    pub dkim: bool,
    /// Evaluate DMARC (RFC 7489) and apply the sender domain's policy.
    /// Needs `spf` and `dkim`. Default: true.
    pub dmarc: bool,
    /// Validate ARC chains (RFC 8617). Default: true.
    pub arc: bool,
    /// The authserv-id of the `Authentication-Results:` field added, and
    /// of the ones removed from arriving mail. Default: `server.hostname`.
    pub authserv_id: String,
    /// Most DKIM signatures verified per message (the first ones in the
    /// header); the others are neither verified nor reported. Default: 5.
    pub max_signatures: usize,
    /// Deadline for the SPF check at MAIL FROM, and for the DKIM, ARC and
    /// DMARC checks together at the end of the data, seconds. A check that
    /// runs out of time is a temporary error. Default: 15.
    pub timeout_secs: u64,
    /// What a DMARC failure does when the domain's policy is `reject`:
    /// `reject` (550 5.7.1 at the end of the data; nothing is stored or
    /// bounced), `quarantine` (as for `p=quarantine`) or `none` (accepted,
    /// recorded in the header). Default: `reject`.
    pub dmarc_reject: DmarcAction,
    /// What a DMARC failure does when the policy is `quarantine`:
    /// `quarantine` (delivered to the recipient's Junk folder, see
    /// `junk_folder`, and marked with `X-Pigeon-Quarantine:`), or `none`.
    /// Default: `quarantine`.
    pub dmarc_quarantine: DmarcAction,
    /// What an SPF `fail` (`-all`) does on its own: `none` (recorded; let
    /// DMARC decide) or `reject` (550 5.7.23 at MAIL FROM). Default: `none`.
    pub spf_fail: SpfFailAction,
    /// What a temporary DNS error does when it decides the outcome (a
    /// DMARC policy that could not be fetched, or a failure under a policy
    /// other than `none` that might have been a pass): `accept`
    /// (delivered, recorded as `temperror`) or
    /// `defer` (451 4.4.3: the sender retries). Never a permanent refusal.
    /// Default: `accept`.
    pub temperror: TempErrorAction,
    /// The Maildir++ folder quarantined mail goes to, when it exists in
    /// the recipient's Maildir (it is never created); otherwise the inbox.
    /// Default: `.Junk`.
    pub junk_folder: String,
    /// Messages larger than this (bytes) are not kept in memory for DKIM
    /// and ARC verification: DMARC is decided from SPF alone, and a
    /// failure counts one policy level weaker (reject → quarantine,
    /// quarantine → none). Default: 26214400 (25 MiB).
    pub max_verify_size: u64,
    /// Most bytes of all messages held for verification at once; a message
    /// arriving when the budget is spent is handled as one too large.
    /// Default: 268435456 (256 MiB).
    pub verify_memory: u64,
}

impl Default for InboundConfig {
    fn default() -> InboundConfig {
        InboundConfig {
            spf: true,
            dkim: true,
            dmarc: true,
            arc: true,
            authserv_id: String::new(),
            max_signatures: 5,
            timeout_secs: 15,
            dmarc_reject: DmarcAction::Reject,
            dmarc_quarantine: DmarcAction::Quarantine,
            spf_fail: SpfFailAction::None,
            temperror: TempErrorAction::Accept,
            junk_folder: ".Junk".into(),
            max_verify_size: 25 * 1024 * 1024,
            verify_memory: 256 * 1024 * 1024,
        }
    }
}

/// What a DMARC failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcAction {
    Reject,
    Quarantine,
    None,
}

/// What an SPF failure leads to on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpfFailAction {
    None,
    Reject,
}

/// What a temporary DNS error leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TempErrorAction {
    Accept,
    Defer,
}

/// `[srs]`: the Sender Rewriting Scheme for mail an alias forwards to
/// another domain.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SrsConfig {
    /// The secret the addresses are signed with (16 characters or more).
    /// "" = no rewriting: forwarded mail keeps its sender (and fails SPF
    /// at the destination). Default: "".
    pub secret: String,
    /// Earlier secrets still accepted for returning bounces, newest first,
    /// so that the secret can be changed without refusing bounces of mail
    /// forwarded before. Default: none.
    pub previous_secrets: Vec<String>,
    /// The domain of rewritten senders; it must be one of this server's
    /// local domains (bounces have to come back here). Default:
    /// `server.hostname`.
    pub domain: String,
    /// How long a rewritten address stays valid for bounces, days.
    /// Default: 21.
    pub max_age_days: u32,
}

impl Default for SrsConfig {
    fn default() -> SrsConfig {
        SrsConfig {
            secret: String::new(),
            previous_secrets: Vec::new(),
            domain: String::new(),
            max_age_days: 21,
        }
    }
}
