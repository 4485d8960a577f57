//! TLS for the server: certificates from PEM files (several, chosen by
//! SNI), an optional self-signed certificate generated on first start and
//! kept in the spool, the rustls configuration (TLS 1.2 and 1.3 only, ring
//! provider), and reloading certificates without dropping connections.
//! Reads the certificate files and writes only `<spool>/tls/`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::Config;

/// The certificates in use; replaced whole on reload.
#[derive(Debug)]
struct CertSet {
    /// In configuration order; the first is the default.
    certs: Vec<Arc<CertifiedKey>>,
}

#[derive(Debug)]
pub struct CertResolver {
    current: RwLock<Arc<CertSet>>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(sni) = hello.server_name() {
            if let Ok(name) = ServerName::try_from(sni) {
                for ck in &set.certs {
                    let matches = ck
                        .cert
                        .first()
                        .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
                        .is_some_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok());
                    if matches {
                        return Some(ck.clone());
                    }
                }
            }
        }
        set.certs.first().cloned()
    }
}

/// Everything a listener needs to speak TLS.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<CertResolver>,
    sources: Arc<RwLock<Vec<(PathBuf, PathBuf)>>>,
}

/// The (certificate, key) files a configuration names: its own, or the
/// self-signed pair (made on first use).
fn sources(cfg: &Config) -> Result<Vec<(PathBuf, PathBuf)>, String> {
    let mut sources: Vec<(PathBuf, PathBuf)> = cfg
        .tls
        .certificates
        .iter()
        .map(|c| (c.cert.clone(), c.key.clone()))
        .collect();
    if sources.is_empty() {
        sources.push(self_signed(&cfg.spool.dir, &cfg.server.hostname)?);
    }
    Ok(sources)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Loads the configured certificates (making the self-signed one first
    /// if asked to). `Ok(None)` when TLS is not configured. Errors name the file.
    pub fn load(cfg: &Config) -> Result<Option<Tls>, String> {
        if !cfg.tls.enabled() {
            return Ok(None);
        }
        let sources = sources(cfg)?;
        let set = load_set(&sources)?;
        let resolver = Arc::new(CertResolver {
            current: RwLock::new(Arc::new(set)),
        });
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        Ok(Some(Tls {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            resolver,
            sources: Arc::new(RwLock::new(sources)),
        }))
    }

    /// Re-reads the certificate files. On any error the certificates in use
    /// stay, and the error (naming the file) is returned for the log.
    pub fn reload(&self) -> Result<usize, String> {
        let sources = self
            .sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.install(&sources)
    }

    /// Loads the certificates a (new) configuration names and puts them in
    /// use; on any error the certificates in use stay.
    pub fn reload_from(&self, cfg: &Config) -> Result<usize, String> {
        if !cfg.tls.enabled() {
            return Err("TLS can be turned off only with a restart".into());
        }
        let sources = sources(cfg)?;
        let n = self.install(&sources)?;
        *self.sources.write().unwrap_or_else(|p| p.into_inner()) = sources;
        Ok(n)
    }

    fn install(&self, sources: &[(PathBuf, PathBuf)]) -> Result<usize, String> {
        let set = load_set(sources)?;
        let n = set.certs.len();
        *self
            .resolver
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        Ok(n)
    }
}

fn load_set(sources: &[(PathBuf, PathBuf)]) -> Result<CertSet, String> {
    let provider = provider();
    let mut certs = Vec::new();
    for (cert, key) in sources {
        certs.push(Arc::new(load_pair(cert, key, &provider)?));
    }
    Ok(CertSet { certs })
}

fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("certificate file {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate file {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "certificate file {}: no certificate found",
            cert.display()
        ));
    }
    let pk = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("key file {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, pk, provider).map_err(|e| {
        format!(
            "key file {} does not fit certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

/// Makes (once) and returns the paths of a self-signed certificate for
/// `hostname` under `<spool>/tls/`.
fn self_signed(spool: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), String> {
    let dir = spool.join("tls");
    let cert = dir.join("selfsigned-cert.pem");
    let key = dir.join("selfsigned-key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let generated = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .map_err(|e| format!("cannot generate a self-signed certificate: {e}"))?;
    write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
    write_private(&cert, generated.cert.pem().as_bytes())?;
    tracing::warn!(cert = %cert.display(), hostname, "generated a self-signed certificate; clients will not trust it");
    Ok((cert, key))
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// "TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384", for logs and Received:.
pub fn describe(conn: &rustls::ServerConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(v) => format!("{v:?}"),
        None => "TLS".to_string(),
    };
    match conn.negotiated_cipher_suite() {
        Some(s) => format!("{version} with cipher {:?}", s.suite()),
        None => version,
    }
}
