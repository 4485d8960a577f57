//! TLS for the server: certificates from PEM files (several, chosen by
//! SNI), an optional self-signed certificate generated on first start and
//! kept in the spool, the rustls configuration (TLS 1.2 and 1.3 only, ring
//! provider, the server's cipher-suite order preferred), optional OCSP
//! responses to staple (RFC 6066 §8), and reloading certificates without
//! dropping connections. Reads the certificate and OCSP files and writes
//! only `<spool>/tls/`. The SNI name the client sends is untrusted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// One loaded certificate and the DNS names it is chosen for.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    /// Lowercase names from the certificate (`*.example.org` allowed),
    /// parsed once at load time rather than at every handshake.
    names: Vec<String>,
}

impl Loaded {
    fn serves(&self, sni: &str) -> bool {
        self.names.iter().any(|n| match n.strip_prefix("*.") {
            // A wildcard covers exactly one leftmost label (RFC 6125 §6.4.3).
            Some(rest) => sni
                .split_once('.')
                .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
            None => n == sni,
        })
    }
}

/// The certificates in use; replaced whole on reload.
#[derive(Debug)]
struct CertSet {
    /// In configuration order; the first is the default.
    certs: Vec<Loaded>,
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
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            if let Some(l) = set.certs.iter().find(|l| l.serves(&sni)) {
                return Some(l.key.clone());
            }
        }
        set.certs.first().map(|l| l.key.clone())
    }
}

/// Everything a listener needs to speak TLS.
#[derive(Clone)]
pub struct Tls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<CertResolver>,
    sources: Arc<RwLock<Vec<Source>>>,
}

/// The files of one certificate: chain, key, and an optional DER OCSP
/// response to staple.
#[derive(Debug, Clone)]
struct Source {
    cert: PathBuf,
    key: PathBuf,
    ocsp: Option<PathBuf>,
}

/// The files a configuration names: its own, or the self-signed pair
/// (made on first use).
fn sources(cfg: &Config) -> Result<Vec<Source>, String> {
    let mut sources: Vec<Source> = cfg
        .tls
        .certificates
        .iter()
        .map(|c| Source {
            cert: c.cert.clone(),
            key: c.key.clone(),
            ocsp: (!c.ocsp.as_os_str().is_empty()).then(|| c.ocsp.clone()),
        })
        .collect();
    if sources.is_empty() {
        let (cert, key) = self_signed(&cfg.spool.dir, &cfg.server.hostname)?;
        sources.push(Source {
            cert,
            key,
            ocsp: None,
        });
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
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        // The provider lists its suites strongest first (AES-256-GCM,
        // then ChaCha20, then AES-128): that order, not the client's.
        config.ignore_client_order = true;
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

    fn install(&self, sources: &[Source]) -> Result<usize, String> {
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

/// Largest OCSP response file read.
const MAX_OCSP_BYTES: u64 = 64 * 1024;

fn load_set(sources: &[Source]) -> Result<CertSet, String> {
    let provider = provider();
    let mut certs = Vec::new();
    for src in sources {
        let mut key = load_pair(&src.cert, &src.key, &provider)?;
        if let Some(path) = &src.ocsp {
            key.ocsp = Some(read_ocsp(path)?);
        }
        let names = key
            .cert
            .first()
            .and_then(|der| webpki::EndEntityCert::try_from(der).ok())
            .map(|ee| {
                ee.valid_dns_names()
                    .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        certs.push(Loaded {
            key: Arc::new(key),
            names,
        });
    }
    Ok(CertSet { certs })
}

/// A DER OCSP response (as `openssl ocsp -respout` writes it), stapled
/// as it is; the operator's job (cron) keeps it fresh, and a reload picks
/// up the new file.
fn read_ocsp(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let shown = path.display();
    let f = std::fs::File::open(path).map_err(|e| format!("OCSP response file {shown}: {e}"))?;
    let mut der = Vec::new();
    f.take(MAX_OCSP_BYTES + 1)
        .read_to_end(&mut der)
        .map_err(|e| format!("OCSP response file {shown}: {e}"))?;
    if der.len() as u64 > MAX_OCSP_BYTES {
        return Err(format!(
            "OCSP response file {shown}: larger than {MAX_OCSP_BYTES} bytes"
        ));
    }
    // An OCSPResponse is a DER SEQUENCE (RFC 6960 §4.2.1).
    if der.first() != Some(&0x30) {
        return Err(format!(
            "OCSP response file {shown}: not a DER OCSP response"
        ));
    }
    Ok(der)
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
