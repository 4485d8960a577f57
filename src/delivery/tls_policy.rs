//! The TLS decision for one connection to a next hop, computed apart from
//! the connection and then carried out (as Postfix's
//! `smtp_tls_policy.c`): whether to use STARTTLS, whether the certificate
//! must verify, and the trust anchors; then the handshake itself, which
//! reports the protocol, the cipher and whether the certificate verified.
//! Remembers hosts whose handshake failed, for the plaintext fallback that
//! opportunistic TLS allows. Untrusted bytes (certificates) reach rustls
//! only.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::warn;

use crate::config::{Config, DeliveryConfig, TlsPolicy};
use crate::proto::client::StartTls;

/// How long a TLS failure with a host makes later attempts go without TLS
/// (when the policy allows falling back).
const TLS_FALLBACK_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// Longest a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// What one connection must do about TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requirement {
    pub starttls: StartTls,
    /// The certificate must verify for the host's name; otherwise any
    /// certificate is accepted (and whether it verified is recorded).
    pub verify: bool,
}

/// The requirement towards a host: the relay host's policy
/// (`delivery.relay_tls`) or the MX hosts' (`delivery.starttls`); with
/// opportunistic TLS, no STARTTLS towards a host whose handshake failed
/// recently when `delivery.tls_fallback_plaintext` allows.
pub fn requirement(d: &DeliveryConfig, relay: bool, failed_recently: bool) -> Requirement {
    let policy = if relay { d.relay_tls() } else { d.starttls };
    let starttls = match policy {
        TlsPolicy::None => StartTls::Never,
        TlsPolicy::Required => StartTls::Required,
        TlsPolicy::Opportunistic if d.tls_fallback_plaintext && failed_recently => StartTls::Never,
        TlsPolicy::Opportunistic => StartTls::Opportunistic,
    };
    Requirement {
        starttls,
        verify: policy == TlsPolicy::Required,
    }
}

/// have verified against the system's roots, for the log.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    seen: Mutex<HashMap<String, bool>>,
    require: bool,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = match &self.inner {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Err(rustls::Error::General("no trusted roots".into())),
        };
        let ok = verified.is_ok();
        if let Ok(mut m) = self.seen.lock() {
            if m.len() > 10_000 {
                m.clear();
            }
            m.insert(server_name.to_str().to_string(), ok);
        }
        if self.require {
            verified
        } else {
            Ok(ServerCertVerified::assertion())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The certificates of a PEM file of trust anchors (`delivery.tls_ca_file`).
pub fn load_ca_file(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let meta = std::fs::metadata(path).map_err(|e| format!("{path}: {e}"))?;
    if meta.len() > 16 << 20 {
        return Err(format!("{path}: larger than 16 MiB"));
    }
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no certificate in it"));
    }
    let mut store = rustls::RootCertStore::empty();
    for c in &certs {
        store
            .add(c.clone())
            .map_err(|e| format!("{path}: not a usable trust anchor: {e}"))?;
    }
    Ok(certs)
}

/// The TLS client set-up for one policy: the system's roots (which honour
/// `SSL_CERT_FILE`) plus `extra` trust anchors.
fn connector(
    require: bool,
    extra: &[CertificateDer<'static>],
) -> (tokio_rustls::TlsConnector, Arc<RecordingVerifier>) {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for c in native.certs.into_iter().chain(extra.iter().cloned()) {
        let _ = roots.add(c);
    }
    let inner = if roots.is_empty() {
        None
    } else {
        rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(provider()),
        )
        .build()
        .ok()
    };
    let verifier = Arc::new(RecordingVerifier {
        inner,
        seen: Mutex::new(HashMap::new()),
        require,
    });
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth()
        });
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "TLS client setup failed; using defaults");
            rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
                .with_safe_default_protocol_versions()
                .map(|b| {
                    b.dangerous()
                        .with_custom_certificate_verifier(verifier.clone())
                        .with_no_client_auth()
                })
                .unwrap_or_else(|_| {
                    rustls::ClientConfig::builder()
                        .dangerous()
                        .with_custom_certificate_verifier(verifier.clone())
                        .with_no_client_auth()
                })
        }
    };
    (tokio_rustls::TlsConnector::from(Arc::new(cfg)), verifier)
}

/// The TLS client set-ups, one verifying and one recording, and the hosts
/// whose handshake failed lately.
pub struct Tls {
    opportunistic: (tokio_rustls::TlsConnector, Arc<RecordingVerifier>),
    required: (tokio_rustls::TlsConnector, Arc<RecordingVerifier>),
    failed: Mutex<HashMap<String, Instant>>,
}

impl Tls {
    pub fn new(cfg: &Config) -> Tls {
        // Checked when the configuration was loaded; a file that has gone
        // bad since leaves only the system's roots.
        let extra = match cfg.delivery.tls_ca_file.as_str() {
            "" => Vec::new(),
            path => load_ca_file(path).unwrap_or_else(|e| {
                warn!(error = %e, "delivery.tls_ca_file not used");
                Vec::new()
            }),
        };
        Tls {
            opportunistic: connector(false, &extra),
            required: connector(true, &extra),
            failed: Mutex::new(HashMap::new()),
        }
    }

    pub fn failed_recently(&self, host: &str) -> bool {
        let m = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        m.get(host)
            .is_some_and(|t| t.elapsed() < TLS_FALLBACK_MEMORY)
    }

    fn remember_failure(&self, host: &str) {
        let mut m = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 10_000 {
            m.retain(|_, t| t.elapsed() < TLS_FALLBACK_MEMORY);
        }
        m.insert(host.to_string(), Instant::now());
    }

    /// The TLS handshake with `host` at `ip` over `tcp`, as `req` wants;
    /// on success the stream and a description for logs and Received:
    /// ("TLSv1_3 TLS13_AES_256_GCM_SHA384 certificate verified"). A failure
    /// is remembered for the plaintext fallback.
    pub async fn handshake(
        &self,
        req: Requirement,
        host: &str,
        ip: IpAddr,
        tcp: TcpStream,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, String), String> {
        let name = match ServerName::try_from(host.to_string()) {
            Ok(n) => n,
            Err(_) => ServerName::IpAddress(ip.into()),
        };
        let (conn, verifier) = if req.verify {
            &self.required
        } else {
            &self.opportunistic
        };
        match timeout(HANDSHAKE_TIMEOUT, conn.connect(name.clone(), tcp)).await {
            Ok(Ok(s)) => {
                let c = s.get_ref().1;
                let verified = verifier
                    .seen
                    .lock()
                    .ok()
                    .and_then(|m| m.get(name.to_str().as_ref()).copied())
                    .unwrap_or(false);
                let desc = format!(
                    "{:?} {:?} certificate {}",
                    c.protocol_version()
                        .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
                    c.negotiated_cipher_suite()
                        .map(|s| s.suite())
                        .unwrap_or(rustls::CipherSuite::Unknown(0)),
                    if verified { "verified" } else { "not verified" }
                );
                Ok((s, desc))
            }
            Ok(Err(e)) => {
                self.remember_failure(host);
                Err(e.to_string())
            }
            Err(_) => {
                self.remember_failure(host);
                Err("handshake timed out".into())
            }
        }
    }
}
