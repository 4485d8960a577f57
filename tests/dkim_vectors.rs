//! Fixed DKIM test vectors: the example of RFC 8463 Appendix A.3, the
//! RFC 6376 example message signed twice (Ed25519 with the RFC 8032 §7.1
//! test key, and rsa-sha256), verified by pigeon's inbound checks with the
//! keys of Appendix A.2 served by the test DNS; and the same message with
//! one body byte changed, which must fail both.

mod common;

use std::time::Duration;

use common::dns::{Data, Record, TestDns};
use pigeon::checks::authentication::check_message;
use pigeon::config::InboundConfig;
use pigeon::dns::HickoryResolver;

fn zone() -> Vec<Record> {
    let text = std::fs::read_to_string("tests/data/dkim/rfc8463-a3.dns").unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, txt) = l.split_once(' ').unwrap();
            let parts = txt
                .as_bytes()
                .chunks(255)
                .map(|c| String::from_utf8(c.to_vec()).unwrap())
                .collect();
            Record::new(name, Data::TxtParts(parts))
        })
        .collect()
}

fn message() -> Vec<u8> {
    let text = std::fs::read_to_string("tests/data/dkim/rfc8463-a3.eml").unwrap();
    text.replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes()
}

async fn verify(msg: &[u8]) -> Vec<(String, String, String)> {
    let dns = TestDns::start(zone()).await;
    let r = HickoryResolver::new(&[dns.addr], Duration::from_secs(2), 1).unwrap();
    let cfg = InboundConfig::default();
    let facts = check_message(&r, &cfg, "mx.test", Some(msg), b"", None, None).await;
    assert!(facts.verified);
    facts
        .dkim
        .iter()
        .map(|d| (d.result.to_string(), d.domain.clone(), d.selector.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc8463_example_verifies() {
    let got = verify(&message()).await;
    assert_eq!(
        got,
        vec![
            (
                "pass".into(),
                "football.example.com".into(),
                "brisbane".into()
            ),
            ("pass".into(), "football.example.com".into(), "test".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc8463_example_with_a_changed_body_byte_fails() {
    let msg = String::from_utf8(message())
        .unwrap()
        .replace("hungry", "hangry");
    let got = verify(msg.as_bytes()).await;
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(r, _, _)| r == "fail"), "{got:?}");
}
