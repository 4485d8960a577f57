//! `[tls]`: certificates for the listeners.

use super::*;

/// `[tls]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chains and keys (PEM files). The first is the default;
    /// the others are chosen by the name the client asks for (SNI) when it
    /// matches a name in the certificate. Default: none.
    pub certificates: Vec<CertificateConfig>,
    /// When no certificate is configured, make a self-signed one for
    /// `server.hostname` on first start and keep it in `<spool>/tls/`.
    /// Meant for testing; clients will warn about it. Default: false.
    pub self_signed: bool,
}

impl TlsConfig {
    /// TLS is available (STARTTLS offered, implicit TLS possible).
    pub fn enabled(&self) -> bool {
        !self.certificates.is_empty() || self.self_signed
    }
}

/// One `[[tls.certificates]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// DER file with an OCSP response for the certificate, stapled to
    /// handshakes (re-read on reload). Default: none.
    #[serde(default)]
    pub ocsp: PathBuf,
}
