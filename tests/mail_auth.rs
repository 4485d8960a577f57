//! Email authentication through the real server: DKIM signatures of mail
//! pigeon originates, verified by dkimpy (an independent implementation);
//! mail signed by dkimpy verified by pigeon (and failing after one body
//! byte changes); DMARC policies (reject, quarantine to Junk, none, sp=,
//! pct=, strict and relaxed alignment) applied to mail from an untrusted
//! client; forged Authentication-Results removed; SRS for forwarded mail
//! and its bounces. DNS comes from the in-process test server.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::dns::{Data, Record};
use common::harness::Net;
use common::sink::Behaviour;
use common::Client;
use pigeon::config::{Config, DkimAlgorithm, DkimKeyConfig};
use pigeon::signing::keys;

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A TXT record split into strings of 255 bytes at most.
fn txt(name: &str, text: &str) -> Record {
    let parts = text
        .as_bytes()
        .chunks(255)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    Record::new(name, Data::TxtParts(parts))
}

/// A new key of `alg` written (0600) to `dir/<selector>.key`: its
/// `[[dkim.key]]` entry for `domain`, and its DNS record.
fn new_key(
    dir: &Path,
    domain: &str,
    selector: &str,
    alg: DkimAlgorithm,
) -> (DkimKeyConfig, Record) {
    use std::os::unix::fs::PermissionsExt;
    let pem = keys::generate(alg).unwrap();
    let file = dir.join(format!("{selector}.key"));
    std::fs::write(&file, &pem).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let record = keys::parse(&pem, alg).unwrap().dns_record();
    let entry = DkimKeyConfig {
        domain: domain.into(),
        selector: selector.into(),
        file,
        algorithm: alg,
    };
    (
        entry,
        txt(&format!("{selector}._domainkey.{domain}"), &record),
    )
}

/// The Python preamble of the dkimpy checks: `msg` (argv 1) and `dns`, a
/// resolver answering from the TXT records of the zone (argv 2).
const DKIMPY_PREAMBLE: &str = r#"
import sys, dkim
recs = {}
for line in open(sys.argv[2]):
    n, t = line.rstrip('\n').split('\t', 1)
    recs[n.lower().rstrip('.')] = t.encode()
def dns(name, timeout=5):
    return recs.get(name.decode().lower().rstrip('.'))
msg = open(sys.argv[1], 'rb').read()
"#;

/// Runs `check` (Python, after [`DKIMPY_PREAMBLE`]) on `message` with the
/// TXT records of `zone`; panics with dkimpy's output if it exits non-zero.
fn dkimpy_check(dir: &Path, message: &[u8], zone: &[Record], check: &str, what: &str) {
    let mut records = String::new();
    for r in zone {
        if let Data::TxtParts(p) = &r.data {
            records.push_str(&format!("{}\t{}\n", r.name, p.join("")));
        }
    }
    let mfile = dir.join("checked.eml");
    std::fs::write(&mfile, message).unwrap();
    let rfile = dir.join("records.txt");
    std::fs::write(&rfile, records).unwrap();
    let out = Command::new(python())
        .args(["-c", &format!("{DKIMPY_PREAMBLE}{check}")])
        .arg(&mfile)
        .arg(&rfile)
        .output()
        .expect("python3 with dkimpy (python3-dkim, python3-nacl)");
    assert!(
        out.status.success(),
        "dkimpy: {what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The configuration of a server receiving from the internet: no client
/// is trusted, so every message is checked.
fn inbound(net: &Net) -> Config {
    let mut cfg = net.config();
    cfg.relay.trusted_networks = vec![];
    cfg
}

fn maildir(net: &Net) -> PathBuf {
    net.dir.path().join("mail/example.org/box/Maildir")
}

async fn wait_messages(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    let deadline = std::time::Instant::now() + Net::patience();
    loop {
        let m = common::maildir_messages(dir);
        if m.len() >= n {
            return m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} messages in {}, want {n}",
            m.len(),
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One transaction from an untrusted client; the final reply.
async fn submit(addr: std::net::SocketAddr, from: &str, to: &str, message: &str) -> String {
    let mut c = Client::connect(addr).await;
    c.reply().await;
    c.cmd("EHLO client.example.net").await;
    let r = c.cmd(&format!("MAIL FROM:<{from}>")).await;
    if !r.starts_with("250") {
        return r;
    }
    let r = c.cmd(&format!("RCPT TO:<{to}>")).await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.cmd("DATA").await;
    assert!(r.starts_with("354"), "{r}");
    c.send(message).await;
    c.send(".\r\n").await;
    let r = c.reply().await;
    c.cmd("QUIT").await;
    r
}

/// The header section, with LF line ends (Maildir files have them).
fn header_of(msg: &[u8]) -> String {
    let text = String::from_utf8_lossy(msg).replace("\r\n", "\n");
    text.split("\n\n").next().unwrap_or("").to_string()
}

/// The Authentication-Results fields of a header section, unfolded.
fn results(msg: &[u8]) -> Vec<String> {
    let h = header_of(msg).replace("\n\t", " ").replace("\n ", " ");
    h.lines()
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with("authentication-results:")
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pigeon_signatures_verify_with_dkimpy() {
    let dir = tempfile::tempdir().unwrap();
    let mut zone = vec![
        Record::mx("remote.test", 10, "mx.remote.test"),
        Record::a("mx.remote.test", "127.0.0.2"),
    ];
    let mut keys_cfg = Vec::new();
    for (sel, alg) in [
        ("rsa", DkimAlgorithm::RsaSha256),
        ("ed", DkimAlgorithm::Ed25519Sha256),
    ] {
        let (entry, record) = new_key(dir.path(), "sender.test", sel, alg);
        keys_cfg.push(entry);
        zone.push(record);
    }
    let net = Net::new(zone.clone()).await;
    let sink = net.sink(2, Behaviour::default()).await;
    let mut cfg = net.config();
    cfg.dkim.keys = keys_cfg;
    let d = net.start(cfg).await;
    // Body with trailing blank lines and spaces: canonicalisation matters.
    let body = "From: Alice <alice@sender.test>\r\nTo: bob@remote.test\r\nSubject: signed  twice\r\nAuthentication-Results: mx.test; dmarc=pass\r\n\r\nHello   world \r\n\r\n\r\n";
    d.send("alice@sender.test", &["bob@remote.test"], body)
        .await;
    let got = sink.wait_for(1, 20).await;
    let msg = got[0].data.clone();
    let text = String::from_utf8_lossy(&msg);
    assert_eq!(text.matches("DKIM-Signature:").count(), 2, "{text}");
    assert!(
        !text.contains("dmarc=pass"),
        "the forged results field was removed: {text}"
    );
    // dkimpy verifies both signatures with the records the test DNS holds.
    let verify_both = r#"
d = dkim.DKIM(msg)
n = len([h for h in d.headers if h[0].lower() == b'dkim-signature'])
ok = [d.verify(idx=i, dnsfunc=dns) for i in range(n)]
print(n, ok)
sys.exit(0 if n == 2 and all(ok) else 1)
"#;
    dkimpy_check(
        dir.path(),
        &msg,
        &zone,
        verify_both,
        "signatures do not verify",
    );
    d.stop().await;
}

/// dkimpy signs `message` for sender.test with selector `sel`; returns
/// the signed message and the DNS record of the key.
fn dkimpy_sign(dir: &Path, message: &str, sel: &str, ed25519: bool) -> (String, String) {
    let mfile = dir.join(format!("{sel}-in.eml"));
    std::fs::write(&mfile, message).unwrap();
    let script = r#"
import sys, dkim, base64
msg = open(sys.argv[1], 'rb').read()
sel = sys.argv[2].encode()
if sys.argv[3] == 'ed':
    import nacl.signing
    k = nacl.signing.SigningKey.generate()
    priv = base64.b64encode(bytes(k))
    pub = 'v=DKIM1; k=ed25519; p=' + base64.b64encode(bytes(k.verify_key)).decode()
    sig = dkim.sign(msg, sel, b'sender.test', priv, signature_algorithm=b'ed25519-sha256',
                    canonicalize=(b'relaxed', b'relaxed'), include_headers=[b'from', b'to', b'subject'])
else:
    import subprocess
    pem = subprocess.run(['openssl', 'genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'],
                         capture_output=True, check=True).stdout
    der = subprocess.run(['openssl', 'pkey', '-pubout', '-outform', 'DER'], input=pem,
                         capture_output=True, check=True).stdout
    pub = 'v=DKIM1; k=rsa; p=' + base64.b64encode(der).decode()
    sig = dkim.sign(msg, sel, b'sender.test', pem, canonicalize=(b'relaxed', b'simple'),
                    include_headers=[b'from', b'to', b'subject'])
sys.stdout.write(pub + '\n' + (sig + msg).decode())
"#;
    let out = Command::new(python())
        .args(["-c", script])
        .arg(&mfile)
        .arg(sel)
        .arg(if ed25519 { "ed" } else { "rsa" })
        .output()
        .expect("python3 with dkimpy");
    assert!(
        out.status.success(),
        "dkimpy sign: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (record, signed) = text.split_once('\n').unwrap();
    // dkimpy folds with LF: SMTP wants CRLF.
    let signed = signed.replace("\r\n", "\n").replace('\n', "\r\n");
    (signed, record.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkimpy_signatures_pass_and_a_changed_byte_fails() {
    let dir = tempfile::tempdir().unwrap();
    let message = "From: carol@sender.test\r\nTo: box@example.org\r\nSubject: from dkimpy\r\n\r\nOne body line.\r\nTwo body lines.\r\n";
    let (rsa_signed, rsa_rec) = dkimpy_sign(dir.path(), message, "py", false);
    let (ed_signed, ed_rec) = dkimpy_sign(dir.path(), message, "pyed", true);
    let zone = vec![
        txt("py._domainkey.sender.test", &rsa_rec),
        txt("pyed._domainkey.sender.test", &ed_rec),
        txt("sender.test", "v=spf1 -all"),
        txt("_dmarc.sender.test", "v=DMARC1; p=reject"),
    ];
    let net = Net::new(zone).await;
    let d = net.start(inbound(&net)).await;
    for signed in [&rsa_signed, &ed_signed] {
        let r = submit(d.addr, "carol@sender.test", "box@example.org", signed).await;
        assert!(r.starts_with("250"), "{r}");
    }
    let got = wait_messages(&maildir(&net), 2).await;
    for (m, sel) in got.iter().zip(["py", "pyed"]) {
        let ar = results(m);
        assert_eq!(ar.len(), 1, "{ar:?}");
        assert!(
            ar[0].contains(&format!("dkim=pass header.d=sender.test header.s={sel}")),
            "{ar:?}"
        );
        assert!(ar[0].contains("spf=fail"), "{ar:?}");
        assert!(
            ar[0].contains("dmarc=pass header.from=sender.test"),
            "{ar:?}"
        );
    }
    // One body byte changed: the signature fails, and with SPF failing
    // too, the domain's p=reject refuses the message.
    for signed in [&rsa_signed, &ed_signed] {
        let tampered = signed.replace("One body line.", "One body lime.");
        let r = submit(d.addr, "carol@sender.test", "box@example.org", &tampered).await;
        assert!(r.starts_with("550 5.7.1"), "{r}");
    }
    d.stop().await;
    assert_eq!(common::maildir_messages(&maildir(&net)).len(), 2);
}

/// The zone of the DMARC cases: domains with each policy; SPF allows
/// 127.0.0.1 only for `good.test` (and `mail.align.test`).
fn dmarc_zone() -> Vec<Record> {
    vec![
        txt("bank.test", "v=spf1 -all"),
        txt("_dmarc.bank.test", "v=DMARC1; p=reject"),
        txt("loose.test", "v=spf1 -all"),
        txt("_dmarc.loose.test", "v=DMARC1; p=none"),
        txt("junk.test", "v=spf1 -all"),
        txt("_dmarc.junk.test", "v=DMARC1; p=quarantine"),
        txt("sample.test", "v=spf1 -all"),
        txt("_dmarc.sample.test", "v=DMARC1; p=reject; pct=0"),
        txt("_dmarc.org2.test", "v=DMARC1; p=none; sp=reject"),
        txt("sub.org2.test", "v=spf1 -all"),
        txt("mail.align.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("_dmarc.align.test", "v=DMARC1; p=reject; aspf=r"),
        txt("mail.strict.test", "v=spf1 ip4:127.0.0.1 -all"),
        txt("_dmarc.strict.test", "v=DMARC1; p=reject; aspf=s"),
        Record::behave("_dmarc.slow.test", Data::Timeout),
        txt("slow.test", "v=spf1 -all"),
    ]
}

fn plain(from: &str, subject: &str) -> String {
    format!("From: {from}\r\nTo: box@example.org\r\nSubject: {subject}\r\nAuthentication-Results: mx.test; dmarc=pass header.from=forged\r\n\r\nbody\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_policies_through_the_server() {
    let net = Net::new(dmarc_zone()).await;
    let junk = maildir(&net).join(".Junk");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(junk.join(sub)).unwrap();
        std::fs::create_dir_all(maildir(&net).join(sub)).unwrap();
    }
    let d = net.start(inbound(&net)).await;
    let a = d.addr;
    // p=reject, SPF fails, no DKIM: refused at the end of DATA.
    let r = submit(
        a,
        "ceo@bank.test",
        "box@example.org",
        &plain("ceo@bank.test", "forged"),
    )
    .await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    assert!(r.contains("DMARC"), "{r}");
    // The subdomain policy sp=reject applies to sub.org2.test.
    let r = submit(
        a,
        "x@sub.org2.test",
        "box@example.org",
        &plain("x@sub.org2.test", "sp"),
    )
    .await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    // Strict SPF alignment: mail.strict.test passes SPF but is not
    // strict.test.
    let r = submit(
        a,
        "x@mail.strict.test",
        "box@example.org",
        &plain("x@strict.test", "strict"),
    )
    .await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    // Relaxed alignment: mail.align.test is aligned with align.test.
    let r = submit(
        a,
        "x@mail.align.test",
        "box@example.org",
        &plain("x@align.test", "relaxed"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    // p=none: delivered, recorded as a failure.
    let r = submit(
        a,
        "x@loose.test",
        "box@example.org",
        &plain("x@loose.test", "none"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    // p=reject with pct=0: not sampled, so quarantined instead.
    let r = submit(
        a,
        "x@sample.test",
        "box@example.org",
        &plain("x@sample.test", "pct"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    // p=quarantine: delivered to the Junk folder.
    let r = submit(
        a,
        "x@junk.test",
        "box@example.org",
        &plain("x@junk.test", "junk"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");
    // The DMARC lookup times out: a temporary error never refuses for good
    // (default: accept, recorded as temperror).
    let r = submit(
        a,
        "x@slow.test",
        "box@example.org",
        &plain("x@slow.test", "slow"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");

    let inbox = wait_messages(&maildir(&net), 3).await;
    let quarantined = wait_messages(&junk, 2).await;
    let subject = |m: &Vec<u8>| {
        header_of(m)
            .lines()
            .find(|l| l.starts_with("Subject:"))
            .unwrap_or("")
            .to_string()
    };
    let by_subject = |list: &[Vec<u8>], s: &str| -> Vec<String> {
        let m = list
            .iter()
            .find(|m| subject(m) == format!("Subject: {s}"))
            .unwrap_or_else(|| panic!("no message {s}"));
        results(m)
    };
    let relaxed = by_subject(&inbox, "relaxed");
    assert!(relaxed[0].contains("spf=pass"), "{relaxed:?}");
    assert!(
        relaxed[0].contains("dmarc=pass header.from=align.test"),
        "{relaxed:?}"
    );
    let none = by_subject(&inbox, "none");
    assert_eq!(none.len(), 1, "the forged field is gone: {none:?}");
    assert!(
        none[0].starts_with("Authentication-Results: mx.test;"),
        "{none:?}"
    );
    assert!(
        none[0].contains("dmarc=fail (p=none) header.from=loose.test"),
        "{none:?}"
    );
    assert!(!none[0].contains("forged"));
    let slow = by_subject(&inbox, "slow");
    assert!(slow[0].contains("dmarc=temperror"), "{slow:?}");
    let pct = by_subject(&quarantined, "pct");
    assert!(pct[0].contains("dmarc=fail (p=reject)"), "{pct:?}");
    let j = by_subject(&quarantined, "junk");
    assert!(
        j[0].contains("dmarc=fail (p=quarantine) header.from=junk.test"),
        "{j:?}"
    );
    // Nothing refused reached a mailbox, and nothing stays queued.
    assert_eq!(inbox.len() + quarantined.len(), 5);
    d.wait_queue_len(0, 10).await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_fail_can_refuse_at_mail_and_temperror_can_defer() {
    let net = Net::new(dmarc_zone()).await;
    let mut cfg = inbound(&net);
    cfg.inbound.spf_fail = pigeon::config::SpfFailAction::Reject;
    cfg.inbound.temperror = pigeon::config::TempErrorAction::Defer;
    let d = net.start(cfg).await;
    let r = submit(
        d.addr,
        "x@loose.test",
        "box@example.org",
        &plain("x@loose.test", "s"),
    )
    .await;
    assert!(r.starts_with("550 5.7.23"), "{r}");
    let r = submit(
        d.addr,
        "x@mail.align.test",
        "box@example.org",
        &plain("x@slow.test", "t"),
    )
    .await;
    assert!(r.starts_with("451 4.4.3"), "{r}");
    // Trusted and authenticated clients are never checked.
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_mail_gets_an_srs_sender_and_its_bounce_comes_back() {
    let net = Net::new(vec![
        Record::mx("remote.test", 10, "mx.remote.test"),
        Record::a("mx.remote.test", "127.0.0.2"),
        Record::mx("sender.test", 10, "mx.sender.test"),
        Record::a("mx.sender.test", "127.0.0.3"),
    ])
    .await;
    let forward_sink = net.sink(2, Behaviour::default()).await;
    let sender_sink = net.sink(3, Behaviour::default()).await;
    let mut cfg = inbound(&net);
    let secret = "a test secret, long enough";
    cfg.srs.secret = secret.into();
    common::alias(&mut cfg, "fwd@example.org", &["friend@remote.test"]);
    let d = net.start(cfg).await;
    let msg =
        "From: carol@sender.test\r\nTo: fwd@example.org\r\nSubject: forward me\r\n\r\nhello\r\n";
    let r = submit(d.addr, "carol@sender.test", "fwd@example.org", msg).await;
    assert!(r.starts_with("250"), "{r}");
    let got = forward_sink.wait_for(1, 20).await;
    let srs_sender = got[0].mail_from.clone();
    assert_eq!(got[0].rcpts, vec!["friend@remote.test".to_string()]);
    assert!(
        srs_sender.starts_with("SRS0=") && srs_sender.ends_with("=sender.test=carol@mx.test"),
        "{srs_sender}"
    );
    // The rewritten sender verifies with the secret.
    let srs = pigeon::users::srs::Srs::new(secret, &[], "mx.test", 21).unwrap();
    assert_eq!(
        srs.reverse(&srs_sender, pigeon::users::srs::today())
            .unwrap(),
        "carol@sender.test"
    );
    // The destination bounces it: the bounce reaches the original sender.
    let bounce = "From: MAILER-DAEMON@remote.test\r\nTo: carol@sender.test\r\nSubject: Undelivered Mail\r\n\r\nno such user\r\n";
    let r = submit(d.addr, "", &srs_sender, bounce).await;
    assert!(r.starts_with("250"), "{r}");
    let back = sender_sink.wait_for(1, 20).await;
    assert_eq!(back[0].rcpts, vec!["carol@sender.test".to_string()]);
    assert_eq!(back[0].mail_from, "");
    // Forged and expired addresses are refused at RCPT.
    let mut c = Client::connect(d.addr).await;
    c.reply().await;
    c.cmd("EHLO bouncer.example.net").await;
    assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
    let forged = srs_sender.replace("carol@", "mallory@");
    let r = c.cmd(&format!("RCPT TO:<{forged}>")).await;
    assert!(r.starts_with("550 5.1.1"), "{r}");
    let old = pigeon::users::srs::Srs::new(secret, &[], "mx.test", 21)
        .unwrap()
        .forward("carol@sender.test", pigeon::users::srs::today() - 30)
        .unwrap();
    let r = c.cmd(&format!("RCPT TO:<{old}>")).await;
    assert!(r.starts_with("550 5.1.1"), "{r}");
    c.cmd("QUIT").await;
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsns_are_signed_for_the_server_domain() {
    let dir = tempfile::tempdir().unwrap();
    let (entry, record) = new_key(dir.path(), "mx.test", "host", DkimAlgorithm::Ed25519Sha256);
    let net = Net::new(vec![
        Record::mx("remote.test", 10, "mx.remote.test"),
        Record::a("mx.remote.test", "127.0.0.2"),
        record.clone(),
    ])
    .await;
    let _sink = net
        .sink(
            2,
            Behaviour {
                reject_rcpts: vec!["nobody@remote.test".into()],
                ..Behaviour::default()
            },
        )
        .await;
    let mut cfg = net.config();
    cfg.dkim.keys = vec![entry];
    let d = net.start(cfg).await;
    d.send(
        "box@example.org",
        &["nobody@remote.test"],
        "From: box@example.org\r\nSubject: to nobody\r\n\r\nhi\r\n",
    )
    .await;
    let got = wait_messages(&maildir(&net), 1).await;
    let dsn = String::from_utf8_lossy(&got[0])
        .replace("\r\n", "\n")
        .replace('\n', "\r\n");
    assert!(dsn.contains("d=mx.test"), "{dsn}");
    // It verifies, with the record published for the key.
    let dns = common::dns::TestDns::start(vec![record]).await;
    let r = pigeon::dns::HickoryResolver::new(&[dns.addr], Duration::from_secs(2), 1).unwrap();
    let facts = pigeon::checks::authentication::check_message(
        &r,
        &pigeon::config::InboundConfig::default(),
        "check.test",
        Some(dsn.as_bytes()),
        b"",
        None,
        None,
    )
    .await;
    assert_eq!(facts.dkim.len(), 1, "{facts:?}");
    assert_eq!(facts.dkim[0].result, "pass", "{facts:?}");
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_mail_is_arc_sealed_and_dkimpy_validates_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (entry, record) = new_key(dir.path(), "mx.test", "arc", DkimAlgorithm::RsaSha256);
    let zone = vec![
        Record::mx("remote.test", 10, "mx.remote.test"),
        Record::a("mx.remote.test", "127.0.0.2"),
        record,
        txt("sender.test", "v=spf1 ip4:127.0.0.1 -all"),
    ];
    let net = Net::new(zone.clone()).await;
    let sink = net.sink(2, Behaviour::default()).await;
    let mut cfg = inbound(&net);
    cfg.dkim.keys = vec![entry];
    common::alias(&mut cfg, "fwd@example.org", &["friend@remote.test"]);
    let d = net.start(cfg).await;
    let msg = "From: carol@sender.test\r\nTo: fwd@example.org\r\nSubject: seal me\r\nDate: Tue, 08 Dec 2026 01:00:00 +0000\r\nMessage-ID: <seal@sender.test>\r\n\r\nhello\r\n";
    let r = submit(d.addr, "carol@sender.test", "fwd@example.org", msg).await;
    assert!(r.starts_with("250"), "{r}");
    let got = sink.wait_for(1, 20).await;
    let out = got[0].data.clone();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("\r\nARC-Seal: i=1; a=rsa-sha256;"), "{text}");
    assert!(text.contains("ARC-Message-Signature: i=1;"), "{text}");
    assert!(
        text.contains("ARC-Authentication-Results: i=1; mx.test;"),
        "{text}"
    );
    assert!(text.contains("cv=none"), "{text}");
    let validate = r#"
cv, results, reason = dkim.arc_verify(msg, dnsfunc=dns)
print(cv, reason)
sys.exit(0 if cv == dkim.CV_Pass else 1)
"#;
    dkimpy_check(
        dir.path(),
        &out,
        &zone,
        validate,
        "the ARC chain does not validate",
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_authors_are_refused_and_large_spoofs_still_meet_dmarc() {
    let net = Net::new(dmarc_zone()).await;
    let junk = maildir(&net).join(".Junk");
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(junk.join(sub)).unwrap();
        std::fs::create_dir_all(maildir(&net).join(sub)).unwrap();
    }
    let mut cfg = inbound(&net);
    // Small enough that the test message is not kept for verification.
    cfg.inbound.max_verify_size = 2048;
    let d = net.start(cfg).await;
    // Two From: fields, or one with two domains: no single author domain.
    let two_fields = "From: ceo@bank.test\r\nFrom: x@loose.test\r\nSubject: two\r\n\r\nbody\r\n";
    let r = submit(d.addr, "x@loose.test", "box@example.org", two_fields).await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    let two_domains = "From: ceo@bank.test, x@loose.test\r\nSender: x@loose.test\r\nSubject: mixed\r\n\r\nbody\r\n";
    let r = submit(d.addr, "x@loose.test", "box@example.org", two_domains).await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    // A spoof of a p=reject domain too large to verify: DMARC from SPF
    // alone, one level weaker: quarantined, not delivered to the inbox.
    let big = format!(
        "From: ceo@bank.test\r\nSubject: big\r\n\r\n{}\r\n",
        "x".repeat(4000)
    );
    let r = submit(d.addr, "ceo@bank.test", "box@example.org", &big).await;
    assert!(r.starts_with("250"), "{r}");
    let q = wait_messages(&junk, 1).await;
    let ar = results(&q[0]);
    assert!(
        ar[0].contains("dkim=none (message too large to verify)"),
        "{ar:?}"
    );
    assert!(
        ar[0].contains("dmarc=fail (p=reject) header.from=bank.test"),
        "{ar:?}"
    );
    assert!(common::maildir_messages(&maildir(&net)).is_empty());
    d.stop().await;
}
