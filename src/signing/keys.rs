//! DKIM private keys: reading them from PEM files, generating new ones,
//! and the public-key record (RFC 6376 §3.6.1) to publish for them.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

use crate::config::DkimAlgorithm;

/// Key files larger than this are refused (an RSA-8192 PEM is ~6 KB).
const MAX_KEY_FILE: u64 = 64 * 1024;

/// A private key that signs.
pub enum Key {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

impl Key {
    pub fn algorithm(&self) -> DkimAlgorithm {
        match self {
            Key::Rsa(_) => DkimAlgorithm::RsaSha256,
            Key::Ed25519(_) => DkimAlgorithm::Ed25519Sha256,
        }
    }

    /// The DNS TXT record of the public key: `v=DKIM1; k=rsa; p=...` with
    /// the SubjectPublicKeyInfo for RSA (as opendkim-genkey and openssl
    /// publish it), `k=ed25519` with the raw 32-byte key (RFC 8463 §4.2).
    pub fn dns_record(&self) -> String {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        match self {
            Key::Rsa(k) => format!("v=DKIM1; k=rsa; p={}", b64(&rsa_spki(&k.public_key()))),
            Key::Ed25519(k) => format!("v=DKIM1; k=ed25519; p={}", b64(&k.public_key())),
        }
    }
}

/// Reads the key in `path`, which must hold the algorithm `algorithm`
/// wants and must not be readable by other users.
pub fn load(path: &Path, algorithm: DkimAlgorithm) -> Result<Key, String> {
    let name = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("{name}: {e}"))?;
    let meta = file.metadata().map_err(|e| format!("{name}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{name}: not a regular file"));
    }
    if meta.permissions().mode() & 0o004 != 0 {
        return Err(format!(
            "{name}: the private key is readable by every user; chmod o-r (0600 or 0640)"
        ));
    }
    if meta.len() > MAX_KEY_FILE {
        return Err(format!("{name}: larger than {MAX_KEY_FILE} bytes"));
    }
    let mut pem = Vec::new();
    file.take(MAX_KEY_FILE)
        .read_to_end(&mut pem)
        .map_err(|e| format!("{name}: {e}"))?;
    parse(&pem, algorithm).map_err(|e| format!("{name}: {e}"))
}

/// A key from PEM text.
pub fn parse(pem: &[u8], algorithm: DkimAlgorithm) -> Result<Key, String> {
    let der = PrivateKeyDer::from_pem_slice(pem)
        .map_err(|e| format!("no PEM private key found ({e})"))?;
    match algorithm {
        DkimAlgorithm::RsaSha256 => {
            RsaKey::<Sha256>::from_key_der(der)
                .map(Key::Rsa)
                .map_err(|e| {
                    format!("not an RSA private key of 2048 to 8192 bits in PKCS#8 or PKCS#1 ({e})")
                })
        }
        DkimAlgorithm::Ed25519Sha256 => match der {
            PrivateKeyDer::Pkcs8(p) => {
                Ed25519Key::from_pkcs8_maybe_unchecked_der(p.secret_pkcs8_der())
                    .map(Key::Ed25519)
                    .map_err(|e| format!("not an Ed25519 private key in PKCS#8 ({e})"))
            }
            _ => Err("not an Ed25519 private key in PKCS#8".into()),
        },
    }
}

/// A new private key as PEM (PKCS#8). Ed25519 keys come from ring; RSA
/// keys (2048 bits) from `openssl genpkey`, as opendkim-genkey makes them,
/// because ring signs with RSA but does not generate RSA keys.
pub fn generate(algorithm: DkimAlgorithm) -> Result<Vec<u8>, String> {
    let pem = match algorithm {
        DkimAlgorithm::Ed25519Sha256 => {
            let der = Ed25519Key::generate_pkcs8().map_err(|e| e.to_string())?;
            to_pem("PRIVATE KEY", &der)
        }
        DkimAlgorithm::RsaSha256 => {
            let out = std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| {
                    format!("cannot run openssl to generate an RSA key ({e}); install openssl or use --algorithm ed25519")
                })?;
            if !out.status.success() {
                return Err(format!(
                    "openssl genpkey failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            out.stdout
        }
    };
    parse(&pem, algorithm)?;
    Ok(pem)
}

fn to_pem(label: &str, der: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out.into_bytes()
}

/// Wraps a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo (RFC 5280
/// §4.1.2.7, with the rsaEncryption algorithm of RFC 3279 §2.3.1).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    // SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }
    const ALGORITHM: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut inner = ALGORITHM.to_vec();
    der_push(&mut inner, 0x03, &bits);
    let mut out = Vec::with_capacity(inner.len() + 4);
    der_push(&mut out, 0x30, &inner);
    out
}

/// Appends a DER TLV.
fn der_push(out: &mut Vec<u8>, tag: u8, value: &[u8]) {
    out.push(tag);
    let len = value.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_generate_parse_and_record() {
        let pem = generate(DkimAlgorithm::Ed25519Sha256).unwrap();
        assert!(pem.starts_with(b"-----BEGIN PRIVATE KEY-----\n"));
        let key = parse(&pem, DkimAlgorithm::Ed25519Sha256).unwrap();
        let rec = key.dns_record();
        let p = rec.strip_prefix("v=DKIM1; k=ed25519; p=").unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        assert_eq!(raw.len(), 32);
        assert!(parse(&pem, DkimAlgorithm::RsaSha256).is_err());
        assert!(parse(b"garbage", DkimAlgorithm::Ed25519Sha256).is_err());
    }

    #[test]
    fn spki_wraps_pkcs1() {
        // A short fake key body: the wrapper's framing is what is checked.
        let spki = rsa_spki(&[0x30, 0x03, 0x02, 0x01, 0x05]);
        assert_eq!(spki[0], 0x30);
        assert_eq!(spki[1] as usize, spki.len() - 2);
        assert_eq!(
            &spki[2..17],
            &[
                0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
                0x00
            ]
        );
        assert_eq!(&spki[17..20], &[0x03, 0x06, 0x00]);
        let mut long = Vec::new();
        der_push(&mut long, 0x04, &[0u8; 300]);
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
    }
}
