//! TLS and AUTH on the real server: implicit TLS (465 role), STARTTLS
//! (587 role), the STARTTLS injection defence, AUTH PLAIN/LOGIN, sender and
//! relay rules, brute-force limits, SNI and certificate reload.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use pigeon::config::{CertificateConfig, Config, ListenerConfig, ListenerMode, UserConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Tests talk to self-signed certificates: accept any, but keep the chain.
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn connector(versions: &[&'static rustls::SupportedProtocolVersion]) -> tokio_rustls::TlsConnector {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAny))
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

struct TlsClient {
    s: BufReader<TlsStream<TcpStream>>,
}

impl TlsClient {
    async fn send(&mut self, data: &str) {
        self.s.get_mut().write_all(data.as_bytes()).await.unwrap();
        self.s.get_mut().flush().await.unwrap();
    }
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.s.read_line(&mut line))
                .await
                .unwrap()
                .unwrap_or(0);
            if n == 0 {
                return all;
            }
            let done = line.as_bytes().get(3) == Some(&b' ');
            all.push_str(line.trim_end());
            if done {
                return all;
            }
            all.push('\n');
        }
    }
    async fn cmd(&mut self, line: &str) -> String {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }
    fn peer_cert(&self) -> Vec<u8> {
        self.s.get_ref().get_ref().1.peer_certificates().unwrap()[0].to_vec()
    }
    fn version(&self) -> Option<rustls::ProtocolVersion> {
        self.s.get_ref().get_ref().1.protocol_version()
    }
}

async fn tls_over(
    tcp: TcpStream,
    sni: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<TlsClient> {
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let s = connector(versions).connect(name, tcp).await?;
    Ok(TlsClient {
        s: BufReader::new(s),
    })
}

const ALL: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn users() -> Vec<UserConfig> {
    vec![common::user(
        "alice",
        &pigeon::users::hash_password("secret").unwrap(),
        &["alice@example.org"],
    )]
}

/// Listeners: [0] smtp, [1] submission, [2] submissions.
fn tls_config() -> Config {
    let mut cfg = test_config();
    cfg.listeners = vec![
        ListenerConfig::new("127.0.0.1:0".parse().unwrap(), ListenerMode::Smtp),
        ListenerConfig::new("127.0.0.1:0".parse().unwrap(), ListenerMode::Submission),
        ListenerConfig::new("127.0.0.1:0".parse().unwrap(), ListenerMode::Submissions),
    ];
    cfg.tls.self_signed = true;
    cfg.auth.users.extend(users());
    cfg.auth.failure_delay_ms = 10;
    cfg.relay.trusted_networks = vec![];
    cfg
}

fn addr(srv: &TestServer, i: usize) -> std::net::SocketAddr {
    srv.running.as_ref().unwrap().addrs[i]
}

/// "\0alice\0secret"
const PLAIN_ALICE: &str = "AGFsaWNlAHNlY3JldA==";

#[tokio::test]
async fn implicit_tls_auth_and_submit() {
    let srv = start(tls_config()).await;
    let tcp = TcpStream::connect(addr(&srv, 2)).await.unwrap();
    let mut c = tls_over(tcp, "mx.test", ALL).await.unwrap();
    assert!(c.reply().await.starts_with("220 mx.test"));
    let ehlo = c.cmd("EHLO client").await;
    assert!(
        ehlo.contains("250-AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    assert!(c
        .cmd("MAIL FROM:<alice@example.org>")
        .await
        .starts_with("530 5.7.0"));
    assert!(c
        .cmd(&format!("AUTH PLAIN {PLAIN_ALICE}"))
        .await
        .starts_with("235 2.7.0"));
    assert!(c
        .cmd("MAIL FROM:<bob@example.org>")
        .await
        .starts_with("553 5.7.1"));
    assert!(c
        .cmd("MAIL FROM:<alice@example.org> AUTH=alice@example.org")
        .await
        .starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<friend@remote.test>")
            .await
            .starts_with("250"),
        "authenticated relay"
    );
    assert!(c.cmd("DATA").await.starts_with("354"));
    let r = c.cmd("Subject: hi\r\n\r\nhello\r\n.").await;
    assert!(r.starts_with("250 2.0.0 Ok: queued as"), "{r}");
    let msg = pigeon::queue::read_message(&srv.spool, queued_id(&r).parse().unwrap()).unwrap();
    assert_eq!(msg.envelope.sender, "alice@example.org");
    assert_eq!(msg.envelope.auth_user.as_deref(), Some("alice"));
    let text = String::from_utf8_lossy(&msg.body);
    assert!(text.contains("(using TLSv1.3 with cipher TLS13_"), "{text}");
    assert!(text.contains("with ESMTPSA id"), "{text}");
}

#[tokio::test]
async fn starttls_submission_login() {
    let srv = start(tls_config()).await;
    let mut c = Client::connect(addr(&srv, 1)).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO client").await;
    assert!(
        ehlo.contains("250-STARTTLS") && !ehlo.contains("AUTH"),
        "{ehlo}"
    );
    assert!(c.cmd("AUTH LOGIN").await.starts_with("538 5.7.11"));
    assert!(c
        .cmd("MAIL FROM:<alice@example.org>")
        .await
        .starts_with("530 5.7.0"));
    assert_eq!(c.cmd("STARTTLS").await, "220 2.0.0 Ready to start TLS");
    let tcp = c.r.into_inner().reunite(c.w).unwrap();
    let mut t = tls_over(tcp, "mx.test", &[&rustls::version::TLS12])
        .await
        .unwrap();
    assert_eq!(t.version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let ehlo = t.cmd("EHLO client").await;
    assert!(
        !ehlo.contains("STARTTLS") && ehlo.contains("AUTH PLAIN LOGIN"),
        "{ehlo}"
    );
    assert!(t.cmd("AUTH LOGIN").await.starts_with("334 VXNlcm5hbWU6"));
    assert!(t.cmd("YWxpY2U=").await.starts_with("334 UGFzc3dvcmQ6"));
    assert!(t.cmd("c2VjcmV0").await.starts_with("235 2.7.0"));
    assert!(t
        .cmd("MAIL FROM:<alice@example.org>")
        .await
        .starts_with("250"));
}

#[tokio::test]
async fn starttls_injection_is_never_executed() {
    let srv = start(tls_config()).await;
    for port in [0, 1] {
        let mut c = Client::connect(addr(&srv, port)).await;
        c.reply().await;
        c.cmd("EHLO client").await;
        // STARTTLS and the next commands in one write.
        c.send("STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<u@example.org>\r\n")
            .await;
        assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS");
        let tcp = c.r.into_inner().reunite(c.w).unwrap();
        // Either the server dropped the injected bytes (the handshake
        // works and no MAIL is in effect) or the handshake fails.
        let Ok(mut t) = tls_over(tcp, "mx.test", ALL).await else {
            continue;
        };
        let ehlo = t.cmd("EHLO client").await;
        assert!(ehlo.starts_with("250"), "{ehlo}");
        let r = t.cmd("RCPT TO:<u@example.org>").await;
        assert!(
            r.starts_with("503 5.5.1"),
            "injected MAIL was executed: {r}"
        );
        assert!(t.cmd("DATA").await.starts_with("503"));
    }
    assert!(srv.queued().is_empty());
}

/// A man in the middle on port 25 injects a transaction with a BDAT chunk
/// (small, and large enough that the server has already started writing
/// it to the queue) in front of the client's STARTTLS. The server refuses
/// STARTTLS while the transaction is open, and after a clean STARTTLS the
/// message sent inside TLS carries nothing of before it.
#[tokio::test]
async fn starttls_during_a_transaction_carries_nothing_into_tls() {
    let srv = start(tls_config()).await;
    let big = format!("X-Injected: evil\r\n{}\r\n", "a".repeat(70_000));
    for chunk in ["X-Injected: evil\r\n".to_string(), big] {
        let mut c = Client::connect(addr(&srv, 0)).await;
        c.reply().await;
        c.cmd("EHLO client").await;
        assert!(c.cmd("MAIL FROM:<x@y.test>").await.starts_with("250"));
        assert!(c.cmd("RCPT TO:<bob@example.org>").await.starts_with("250"));
        c.send(&format!("BDAT {}\r\n{chunk}", chunk.len())).await;
        assert!(c.reply().await.starts_with("250"));
        assert_eq!(
            c.cmd("STARTTLS").await,
            "503 5.5.1 Error: STARTTLS not allowed during a mail transaction"
        );
        assert!(c.cmd("RSET").await.starts_with("250"));
        c.send("STARTTLS\r\n").await;
        assert_eq!(c.reply().await, "220 2.0.0 Ready to start TLS");
        let tcp = c.r.into_inner().reunite(c.w).unwrap();
        let mut t = tls_over(tcp, "mx.test", ALL).await.unwrap();
        assert!(t.cmd("EHLO client").await.starts_with("250"));
        assert!(t.cmd("MAIL FROM:<a@b.test>").await.starts_with("250"));
        assert!(t
            .cmd("RCPT TO:<alice@example.org>")
            .await
            .starts_with("250"));
        let body = "Subject: inside TLS\r\n\r\nhello\r\n";
        t.send(&format!("BDAT {} LAST\r\n{body}", body.len())).await;
        let r = t.reply().await;
        assert!(r.starts_with("250 2.0.0 Ok: queued as "), "{r}");
        let id = r.rsplit(' ').next().unwrap().to_string();
        let bytes = std::fs::read(srv.spool.join("queue").join(&id)).unwrap();
        let m = pigeon::queue::decode_message(&bytes).unwrap();
        let text = String::from_utf8_lossy(&m.body);
        assert!(!text.contains("X-Injected"), "{text}");
        assert_eq!(text.matches("Received:").count(), 1, "{text}");
        assert!(text.ends_with(body), "{text}");
        assert_eq!(m.envelope.sender, "a@b.test");
        let rcpts: Vec<_> = m
            .envelope
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        assert_eq!(rcpts, ["alice@example.org"]);
        t.cmd("QUIT").await;
    }
    // One message per round, and nothing left over from the injected ones.
    assert_eq!(srv.queued().len(), 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let tmp = std::fs::read_dir(srv.spool.join("tmp"))
            .map(|d| d.count())
            .unwrap_or(0);
        if tmp == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{tmp} files left in tmp/"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn brute_force_limits() {
    let mut cfg = tls_config();
    cfg.auth.ip_max_failures = 4;
    let srv = start(cfg).await;
    let tcp = TcpStream::connect(addr(&srv, 2)).await.unwrap();
    let mut c = tls_over(tcp, "mx.test", ALL).await.unwrap();
    c.reply().await;
    c.cmd("EHLO client").await;
    // "\0alice\0wrong"
    let bad = "AGFsaWNlAHdyb25n";
    let t = std::time::Instant::now();
    assert!(c
        .cmd(&format!("AUTH PLAIN {bad}"))
        .await
        .starts_with("535 5.7.8"));
    assert!(
        t.elapsed() >= Duration::from_millis(10),
        "failure not delayed"
    );
    assert!(c
        .cmd(&format!("AUTH PLAIN {bad}"))
        .await
        .starts_with("535 5.7.8"));
    assert!(c
        .cmd(&format!("AUTH PLAIN {bad}"))
        .await
        .starts_with("535 5.7.8"));
    assert_eq!(
        c.reply().await,
        "421 4.7.0 Error: too many failed authentications, closing connection"
    );
    assert_eq!(c.reply().await, "");
    // A fourth failure from this address blocks it, even with the right password next.
    let tcp = TcpStream::connect(addr(&srv, 2)).await.unwrap();
    let mut c = tls_over(tcp, "mx.test", ALL).await.unwrap();
    c.reply().await;
    c.cmd("EHLO client").await;
    assert!(c
        .cmd(&format!("AUTH PLAIN {bad}"))
        .await
        .starts_with("421 4.7.0"));
    let tcp = TcpStream::connect(addr(&srv, 2)).await.unwrap();
    let mut c = tls_over(tcp, "mx.test", ALL).await.unwrap();
    c.reply().await;
    c.cmd("EHLO client").await;
    let r = c.cmd(&format!("AUTH PLAIN {PLAIN_ALICE}")).await;
    assert!(
        r.starts_with("421 4.7.0 Error: too many failed authentications from your address"),
        "{r}"
    );
}

#[tokio::test]
async fn smtp_port_offers_starttls_not_auth_and_never_relays() {
    let srv = start(tls_config()).await;
    let mut c = Client::connect(addr(&srv, 0)).await;
    c.reply().await;
    let ehlo = c.cmd("EHLO client").await;
    assert!(ehlo.contains("STARTTLS") && !ehlo.contains("AUTH"));
    c.cmd("STARTTLS").await;
    let tcp = c.r.into_inner().reunite(c.w).unwrap();
    let mut t = tls_over(tcp, "mx.test", ALL).await.unwrap();
    let ehlo = t.cmd("EHLO client").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    assert!(t
        .cmd(&format!("AUTH PLAIN {PLAIN_ALICE}"))
        .await
        .starts_with("503 5.5.1"));
    assert!(t.cmd("MAIL FROM:<a@src.test>").await.starts_with("250"));
    assert!(t
        .cmd("RCPT TO:<x@remote.test>")
        .await
        .starts_with("554 5.7.1"));
    assert!(t.cmd("RCPT TO:<x@example.org>").await.starts_with("250"));
}

fn write_cert(dir: &std::path::Path, name: &str) -> CertificateConfig {
    let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    CertificateConfig {
        cert,
        key,
        ocsp: Default::default(),
    }
}

fn der_of(c: &CertificateConfig) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(&c.cert).unwrap().to_vec()
}

#[tokio::test]
async fn sni_chooses_certificate_and_reload_keeps_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_cert(dir.path(), "a.test");
    let b = write_cert(dir.path(), "b.test");
    let mut cfg = tls_config();
    cfg.tls.self_signed = false;
    cfg.tls.certificates = vec![a.clone(), b.clone()];
    let srv = start(cfg.clone()).await;
    let port = addr(&srv, 2);
    let get = |sni: &'static str| async move {
        let tcp = TcpStream::connect(port).await.unwrap();
        tls_over(tcp, sni, ALL).await.unwrap()
    };
    assert_eq!(get("b.test").await.peer_cert(), der_of(&b));
    assert_eq!(get("a.test").await.peer_cert(), der_of(&a));
    assert_eq!(
        get("other.test").await.peer_cert(),
        der_of(&a),
        "the first certificate is the default"
    );

    // Replace a.test's files; an open session survives the reload.
    let mut open = get("a.test").await;
    open.reply().await;
    let a2 = write_cert(dir.path(), "a.test");
    srv.running.as_ref().unwrap().reload(&cfg).unwrap();
    assert_eq!(get("a.test").await.peer_cert(), der_of(&a2));
    assert!(open.cmd("NOOP").await.starts_with("250"));
    // A broken file keeps the current certificates.
    std::fs::write(&a2.cert, "not a certificate").unwrap();
    assert!(srv.running.as_ref().unwrap().reload(&cfg).is_err());
    let served = get("a.test").await.peer_cert();
    assert!(!served.is_empty());
    assert!(open.cmd("NOOP").await.starts_with("250"));
}

#[tokio::test]
async fn missing_certificate_is_a_clear_startup_error() {
    let mut cfg = tls_config();
    cfg.tls.self_signed = false;
    cfg.tls.certificates = vec![CertificateConfig {
        cert: "/nonexistent/cert.pem".into(),
        key: "/nonexistent/key.pem".into(),
        ocsp: Default::default(),
    }];
    let dir = tempfile::tempdir().unwrap();
    cfg.spool.dir = dir.path().join("spool");
    let (q, _) = pigeon::queue::Queue::open(&cfg.spool.dir, 1).unwrap();
    let listeners = pigeon::server::bind_all(&cfg).unwrap();
    let err = pigeon::server::start(common::live(cfg), q, listeners, None)
        .err()
        .unwrap();
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}
