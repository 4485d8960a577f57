//! `pigeon dkim keygen` and `pigeon dkim show`: making a DKIM key and
//! printing the DNS records to publish for the configured ones.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::config::{Config, DkimAlgorithm};
use crate::signing::keys;

/// The TXT record as a zone-file line, the text split into strings of at
/// most 255 bytes (RFC 1035 §3.3.14; RFC 6376 §3.6.2.2).
pub fn zone_line(domain: &str, selector: &str, record: &str) -> String {
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!(
        "{selector}._domainkey.{domain}. IN TXT ( {} )",
        strings.join(" ")
    )
}

pub fn keygen(
    cfg: Option<&Config>,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
    out: Option<PathBuf>,
) -> ExitCode {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    if !domain.contains('.') || !domain.split('.').all(valid_label) {
        eprintln!("pigeon dkim keygen: {domain:?} is not a domain name");
        return ExitCode::FAILURE;
    }
    if !selector.split('.').all(valid_label) {
        eprintln!(
            "pigeon dkim keygen: {selector:?} is not a valid selector (letters, digits, '-', '.')"
        );
        return ExitCode::FAILURE;
    }
    let path =
        out.unwrap_or_else(|| PathBuf::from(format!("/etc/pigeon/dkim/{domain}.{selector}.key")));
    let pem = match keys::generate(algorithm) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pigeon dkim keygen: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = write_key(&path, &pem, cfg) {
        eprintln!("pigeon dkim keygen: {}: {e}", path.display());
        return ExitCode::FAILURE;
    }
    let record = match keys::parse(&pem, algorithm) {
        Ok(k) => k.dns_record(),
        Err(e) => {
            eprintln!("pigeon dkim keygen: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("# Key written to {} (mode 0600).", path.display());
    println!("# Publish this DNS record:");
    println!("{}", zone_line(&domain, selector, &record));
    println!("# Then add to the configuration:");
    println!("[[dkim.key]]");
    println!("domain = \"{domain}\"");
    println!("selector = \"{selector}\"");
    println!("file = \"{}\"", path.display());
    println!("algorithm = \"{}\"", algorithm.name());
    ExitCode::SUCCESS
}

/// Writes a new key file (never over an existing one), readable by its
/// owner only; as root, owned by the user the server runs as.
fn write_key(path: &Path, pem: &[u8], cfg: Option<&Config>) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(pem)?;
    f.sync_all()?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if let (true, Some(cfg)) = (root, cfg) {
        let user = &cfg.server.user;
        if !user.is_empty() {
            match crate::ops::system::lookup_account(user, &cfg.server.group) {
                Ok(a) => std::os::unix::fs::chown(path, Some(a.uid), Some(a.gid))?,
                Err(e) => eprintln!("warning: {e}; the key stays owned by root"),
            }
        }
    }
    Ok(())
}

pub fn show(cfg: &Config) -> ExitCode {
    if cfg.dkim.keys.is_empty() {
        println!("# No [[dkim.key]] is configured.");
        return ExitCode::SUCCESS;
    }
    let mut ok = true;
    for k in &cfg.dkim.keys {
        match keys::load(&k.file, k.algorithm) {
            Ok(key) => {
                println!(
                    "# {} selector {} ({}, {})",
                    k.domain,
                    k.selector,
                    k.algorithm.name(),
                    k.file.display()
                );
                println!("{}", zone_line(&k.domain, &k.selector, &key.dns_record()));
            }
            Err(e) => {
                eprintln!("dkim.key {}/{}: {e}", k.domain, k.selector);
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
