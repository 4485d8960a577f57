//! MX routing's view of DNS: `HickoryResolver` against an in-process DNS
//! server on 127.0.0.1, and `FakeResolver` on the same cases.

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::dns::{ip, Data, Record, RecordType, TestDns};
use pigeon::dns::{
    DnsError, FakeResolver, HickoryResolver, IpPreference, MxAnswer, MxHost, Resolver,
};

fn resolver(dns: &TestDns) -> HickoryResolver {
    HickoryResolver::new(&[dns.addr], Duration::from_secs(1), 1).unwrap()
}

/// The zone shared by the common cases, as DNS records...
fn zone() -> Vec<Record> {
    vec![
        Record::mx("example.com", 20, "MX3.Example.COM."),
        Record::mx("example.com", 10, "mx1.example.com"),
        Record::mx("example.com", 10, "mx2.example.com"),
        Record::mx("example.com", 5, "mx0.example.com"),
        Record::a("mx1.example.com", "127.0.0.11"),
        Record::a("only4.test", "127.0.0.4"),
        Record::aaaa("only6.test", "::1"),
        Record::txt("noaddr.test", "exists"),
        Record::null_mx("nullmx.test"),
        Record::null_mx("mixed.test"),
        Record::mx("mixed.test", 10, "real.mixed.test"),
        Record::mx("viacname.test", 10, "alias.viacname.test"),
        Record::cname("alias.viacname.test", "target.viacname.test"),
        Record::a("target.viacname.test", "127.0.0.7"),
        Record::cname("www.example.com", "example.com"),
        Record::a("dual.test", "127.0.0.1"),
        Record::aaaa("dual.test", "::1"),
        Record::a("dual.test", "127.0.0.2"),
        Record::behave("broken.test", Data::ServFail),
        Record::behave("refused.test", Data::Refused),
        Record::behave("gone.test", Data::NxDomain),
    ]
}

/// ...and the same zone as a fake.
fn fake() -> FakeResolver {
    FakeResolver::new()
        .with_mx(
            "example.com",
            vec![
                (20, "MX3.Example.COM."),
                (10, "mx1.example.com"),
                (10, "mx2.example.com"),
                (5, "mx0.example.com"),
            ],
        )
        .with_host("mx1.example.com", vec![ip("127.0.0.11")])
        .with_host("only4.test", vec![ip("127.0.0.4")])
        .with_host("only6.test", vec![ip("::1")])
        .with_host("noaddr.test", vec![])
        .with_null_mx("nullmx.test")
        .with_mx("mixed.test", vec![(0, "."), (10, "real.mixed.test")])
        .with_mx("viacname.test", vec![(10, "alias.viacname.test")])
        .with_host("alias.viacname.test", vec![ip("127.0.0.7")])
        .with_mx(
            "www.example.com",
            vec![
                (20, "mx3.example.com"),
                (10, "mx1.example.com"),
                (10, "mx2.example.com"),
                (5, "mx0.example.com"),
            ],
        )
        .with_host(
            "dual.test",
            vec![ip("127.0.0.1"), ip("::1"), ip("127.0.0.2")],
        )
        .with_error("broken.test", DnsError::Temporary("SERVFAIL".into()))
        .with_error("refused.test", DnsError::Temporary("REFUSED".into()))
}

fn mx_list(answer: Result<MxAnswer, DnsError>) -> Vec<(u16, String)> {
    match answer {
        Ok(MxAnswer::Mx(hosts)) => hosts
            .into_iter()
            .map(|MxHost { preference, host }| (preference, host))
            .collect(),
        other => panic!("expected an MX list, got {other:?}"),
    }
}

fn temporary<T: std::fmt::Debug>(r: Result<T, DnsError>) -> bool {
    matches!(r, Err(DnsError::Temporary(_)))
}

fn not_found<T: std::fmt::Debug>(r: Result<T, DnsError>) -> bool {
    matches!(r, Err(DnsError::NotFound(_)))
}

/// Every expectation of the shared zone; run against both resolvers.
async fn common_cases(r: &dyn Resolver) {
    // Sorted by preference, equal preferences in both orders over several calls,
    // hosts lowercased without the trailing dot.
    let mut middle_orders = HashSet::new();
    for _ in 0..30 {
        let list = mx_list(r.mx("Example.COM.").await);
        assert_eq!(list.len(), 4, "{list:?}");
        assert_eq!(list[0], (5, "mx0.example.com".to_string()));
        assert_eq!(list[3], (20, "mx3.example.com".to_string()));
        assert_eq!(list[1].0, 10);
        assert_eq!(list[2].0, 10);
        middle_orders.insert((list[1].1.clone(), list[2].1.clone()));
    }
    assert_eq!(
        middle_orders.len(),
        2,
        "both orders of equal preferences: {middle_orders:?}"
    );

    // Implicit MX: A only, AAAA only.
    assert_eq!(
        r.mx("only4.test").await,
        Ok(MxAnswer::Implicit("only4.test".into()))
    );
    assert_eq!(
        r.mx("ONLY6.test.").await,
        Ok(MxAnswer::Implicit("only6.test".into()))
    );
    // The name exists, but has neither MX nor addresses: no mail host, permanently.
    assert!(not_found(r.mx("noaddr.test").await));

    // Null MX; a "." among real MX records is ignored.
    assert_eq!(r.mx("nullmx.test").await, Ok(MxAnswer::NullMx));
    assert_eq!(
        mx_list(r.mx("mixed.test").await),
        vec![(10, "real.mixed.test".to_string())]
    );

    // An MX host reached through a CNAME; a domain that is a CNAME.
    assert_eq!(
        mx_list(r.mx("viacname.test").await),
        vec![(10, "alias.viacname.test".to_string())]
    );
    assert_eq!(
        r.addresses("alias.viacname.test", IpPreference::Ipv4First)
            .await,
        Ok(vec![ip("127.0.0.7")])
    );
    assert_eq!(mx_list(r.mx("www.example.com").await).len(), 4);

    // NXDOMAIN is permanent, SERVFAIL and REFUSED temporary.
    assert!(not_found(r.mx("nowhere.test").await));
    assert!(not_found(r.mx("gone.test").await));
    assert!(not_found(
        r.addresses("nowhere.test", IpPreference::Ipv4First).await
    ));
    assert!(temporary(r.mx("broken.test").await));
    assert!(temporary(
        r.addresses("broken.test", IpPreference::Ipv6First).await
    ));
    assert!(temporary(r.mx("refused.test").await));

    // Malformed names never reach the network and are permanent.
    assert!(not_found(r.mx("").await));
    assert!(not_found(r.mx("bad domain.test").await));
    assert!(not_found(r.mx("a..b").await));

    // Address family preferences.
    let (v4a, v4b, v6) = (ip("127.0.0.1"), ip("127.0.0.2"), ip("::1"));
    let sorted = |mut v: Vec<IpAddr>| {
        v.sort();
        v
    };
    let got = r
        .addresses("dual.test", IpPreference::Ipv4First)
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    assert_eq!(sorted(got[..2].to_vec()), vec![v4a, v4b]);
    assert_eq!(got[2], v6);
    let got = r
        .addresses("dual.test", IpPreference::Ipv6First)
        .await
        .unwrap();
    assert_eq!(got[0], v6);
    assert_eq!(sorted(got[1..].to_vec()), vec![v4a, v4b]);
    assert_eq!(
        sorted(
            r.addresses("dual.test", IpPreference::Ipv4Only)
                .await
                .unwrap()
        ),
        vec![v4a, v4b]
    );
    assert_eq!(
        r.addresses("dual.test", IpPreference::Ipv6Only).await,
        Ok(vec![v6])
    );
    assert_eq!(
        r.addresses("only4.test", IpPreference::Ipv6First).await,
        Ok(vec![ip("127.0.0.4")])
    );
    assert!(not_found(
        r.addresses("only4.test", IpPreference::Ipv6Only).await
    ));
    assert!(not_found(
        r.addresses("only6.test", IpPreference::Ipv4Only).await
    ));
    assert!(not_found(
        r.addresses("noaddr.test", IpPreference::Ipv4First).await
    ));
    // A name with MX records but no addresses of its own.
    assert!(not_found(
        r.addresses("viacname.test", IpPreference::Ipv4First).await
    ));
}

#[tokio::test]
async fn hickory_common_cases() {
    let dns = TestDns::start(zone()).await;
    common_cases(&resolver(&dns)).await;
}

#[tokio::test]
async fn fake_common_cases() {
    common_cases(&fake()).await;
}

#[tokio::test]
async fn usable_as_trait_object() {
    let dns = TestDns::start(zone()).await;
    let resolvers: Vec<std::sync::Arc<dyn Resolver>> = vec![
        std::sync::Arc::new(resolver(&dns)),
        std::sync::Arc::new(fake()),
    ];
    for r in resolvers {
        let r2 = r.clone();
        let answer = tokio::spawn(async move { r2.mx("nullmx.test").await })
            .await
            .unwrap();
        assert_eq!(answer, Ok(MxAnswer::NullMx));
    }
}

#[tokio::test]
async fn null_mx_asks_for_no_addresses() {
    let dns = TestDns::start(zone()).await;
    let r = resolver(&dns);
    assert_eq!(r.mx("nullmx.test").await, Ok(MxAnswer::NullMx));
    assert_eq!(dns.queries("nullmx.test", RecordType::MX), 1);
    assert_eq!(dns.queries("nullmx.test", RecordType::A), 0);
    assert_eq!(dns.queries("nullmx.test", RecordType::AAAA), 0);
}

#[tokio::test]
async fn mx_answer_asks_for_no_addresses_and_implicit_asks_once() {
    let dns = TestDns::start(zone()).await;
    let r = resolver(&dns);
    mx_list(r.mx("example.com").await);
    assert_eq!(dns.queries_for("example.com"), 1);
    assert_eq!(
        r.mx("only4.test").await,
        Ok(MxAnswer::Implicit("only4.test".into()))
    );
    assert_eq!(dns.queries("only4.test", RecordType::MX), 1);
    assert_eq!(dns.queries("only4.test", RecordType::A), 1);
    assert_eq!(dns.queries("only4.test", RecordType::AAAA), 1);
}

/// The resolvers here have a 1 s timeout and one attempt; hickory's own
/// default is 5 s (and two attempts). An answer within this bound shows
/// the configured timeout in force, with room for a loaded machine.
const NOT_THE_DEFAULT_TIMEOUT: Duration = Duration::from_millis(4500);

#[tokio::test]
async fn timeout_is_temporary_within_the_configured_timeout() {
    let dns = TestDns::start(vec![
        Record::behave("slow.test", Data::Timeout),
        Record::behave("dropped.test", Data::Drop),
    ])
    .await;
    let r = resolver(&dns);
    for (name, prefer) in [
        ("slow.test", IpPreference::Ipv4First),
        ("dropped.test", IpPreference::Ipv6Only),
    ] {
        let start = Instant::now();
        let answer = r.mx(name).await;
        let took = start.elapsed();
        assert!(temporary(answer.clone()), "{name}: {answer:?}");
        assert!(took < NOT_THE_DEFAULT_TIMEOUT, "{name}: took {took:?}");
        let start = Instant::now();
        assert!(temporary(r.addresses(name, prefer).await), "{name}");
        assert!(
            start.elapsed() < NOT_THE_DEFAULT_TIMEOUT,
            "{name}: took {:?}",
            start.elapsed()
        );
    }
    // attempts = 1 is one try: hickory may resend the UDP query within
    // that try's timeout (every 1.2 round-trip times), never start a second
    // try after it.
    let sent = dns.queries("slow.test", RecordType::MX);
    assert!((1..=4).contains(&sent), "{sent} queries for one try");
}

#[tokio::test]
async fn no_server_is_temporary() {
    // A port with nothing listening, on UDP or TCP.
    let addr = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let r = HickoryResolver::new(&[addr], Duration::from_secs(1), 1).unwrap();
    let start = Instant::now();
    let answer = r.mx("example.com").await;
    assert!(temporary(answer.clone()), "{answer:?}");
    assert!(
        start.elapsed() < NOT_THE_DEFAULT_TIMEOUT,
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn large_answer_falls_back_to_tcp() {
    let mut records: Vec<Record> = (0..80u16)
        .map(|i| {
            Record::mx(
                "big.test",
                i % 4,
                &format!("mail-exchanger-number-{i}.big.test"),
            )
        })
        .collect();
    records.push(Record::a("big.test", "127.0.0.1"));
    let dns = TestDns::start(records).await;
    let r = resolver(&dns);
    let list = mx_list(r.mx("big.test").await);
    assert_eq!(list.len(), 80);
    assert!(
        list.windows(2).all(|w| w[0].0 <= w[1].0),
        "sorted by preference"
    );
    let (udp, tcp) = dns.transport_counts();
    assert!(udp >= 1 && tcp >= 1, "udp {udp} tcp {tcp}");
}

#[tokio::test]
async fn resolver_answers_follow_the_zone_not_a_cache() {
    // Two servers with different zones: each resolver sees only its own.
    let one = TestDns::start(vec![Record::a("h.test", "127.0.0.1")]).await;
    let two = TestDns::start(vec![Record::a("h.test", "127.0.0.2")]).await;
    let (r1, r2) = (resolver(&one), resolver(&two));
    for _ in 0..3 {
        assert_eq!(
            r1.addresses("h.test", IpPreference::Ipv4Only).await,
            Ok(vec![ip("127.0.0.1")])
        );
        assert_eq!(
            r2.addresses("h.test", IpPreference::Ipv4Only).await,
            Ok(vec![ip("127.0.0.2")])
        );
    }
}

#[test]
fn fake_unknown_name_is_not_found_and_errors_apply_to_every_lookup() {
    let f = FakeResolver::new().with_error("mx.test", DnsError::Temporary("down".into()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(not_found(f.mx("unknown.test").await));
        assert_eq!(
            f.mx("mx.test").await,
            Err(DnsError::Temporary("down".into()))
        );
        assert_eq!(
            f.addresses("MX.test.", IpPreference::Ipv4First).await,
            Err(DnsError::Temporary("down".into()))
        );
    });
}

#[test]
fn built_outside_a_runtime_used_inside_one() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dns = rt.block_on(TestDns::start(zone()));
    let r = HickoryResolver::new(&[dns.addr], Duration::from_secs(1), 1).unwrap();
    assert_eq!(rt.block_on(r.mx("nullmx.test")), Ok(MxAnswer::NullMx));
}

#[test]
fn system_configuration_loads() {
    // Only builds the resolver from /etc/resolv.conf: no query is sent.
    if std::path::Path::new("/etc/resolv.conf").exists() {
        let r = HickoryResolver::new(&[], Duration::from_secs(1), 2);
        assert!(r.is_ok(), "{:?}", r.err());
    }
}
