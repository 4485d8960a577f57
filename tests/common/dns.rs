//! A small authoritative DNS server for tests: UDP and TCP on one
//! 127.0.0.1 port, answering from a zone given in code. Messages are built
//! and parsed with hickory-proto.
//!
//! Per name, either records (MX, null MX, A, AAAA, CNAME) or a behaviour
//! (SERVFAIL, REFUSED, NXDOMAIN, never answer, drop), or a TXT record to
//! make a name exist without MX or addresses. Unknown names are
//! NXDOMAIN. CNAME chains inside the zone are answered in full (the CNAMEs
//! and the target's records). UDP answers larger than the client's payload
//! size are truncated, so the client retries over TCP. Every query is
//! counted per (name, type) and per transport.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
pub use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::proto::rr::{Name, RData, Record as DnsRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// What a name holds in the test zone.
#[derive(Debug, Clone)]
pub enum Data {
    Mx(u16, String),
    /// RFC 7505 `MX 0 .`.
    NullMx,
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Cname(String),
    /// A TXT record: makes a name exist without MX or addresses.
    Txt(String),
    /// A TXT record of several strings.
    TxtParts(Vec<String>),
    /// A PTR record (the name is `d.c.b.a.in-addr.arpa` or the `ip6.arpa`
    /// form).
    Ptr(String),
    /// Answer SERVFAIL to every query of the name.
    ServFail,
    /// Answer REFUSED.
    Refused,
    /// Answer NXDOMAIN (also what an unknown name gets).
    NxDomain,
    /// Never answer: over TCP the connection stays open and silent. With
    /// records of the type asked for beside it, those are answered.
    Timeout,
    /// No answer: over TCP the connection is closed at once.
    Drop,
}

/// One entry of the zone: a name and what it holds.
#[derive(Debug, Clone)]
pub struct Record {
    pub name: String,
    pub data: Data,
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl Record {
    pub fn new(name: &str, data: Data) -> Record {
        Record {
            name: key(name),
            data,
        }
    }
    pub fn mx(name: &str, preference: u16, host: &str) -> Record {
        Record::new(name, Data::Mx(preference, host.to_string()))
    }
    pub fn null_mx(name: &str) -> Record {
        Record::new(name, Data::NullMx)
    }
    pub fn a(name: &str, ip: &str) -> Record {
        Record::new(name, Data::A(ip.parse().expect("IPv4 address")))
    }
    pub fn aaaa(name: &str, ip: &str) -> Record {
        Record::new(name, Data::Aaaa(ip.parse().expect("IPv6 address")))
    }
    pub fn cname(name: &str, target: &str) -> Record {
        Record::new(name, Data::Cname(target.to_string()))
    }
    pub fn txt(name: &str, text: &str) -> Record {
        Record::new(name, Data::Txt(text.to_string()))
    }
    pub fn behave(name: &str, data: Data) -> Record {
        Record::new(name, data)
    }
}

#[derive(Default)]
struct Counts {
    by_name_type: HashMap<(String, RecordType), usize>,
    udp: usize,
    tcp: usize,
}

struct Zone {
    records: Vec<Record>,
    counts: Mutex<Counts>,
}

/// What to do with one query.
enum Reply {
    Send(Message),
    Silent,
    Close,
}

/// A running test DNS server; stops when dropped.
pub struct TestDns {
    pub addr: SocketAddr,
    zone: Arc<Zone>,
    tasks: Vec<JoinHandle<()>>,
}

impl TestDns {
    /// Binds UDP and TCP on the same 127.0.0.1 port and serves `records`.
    pub async fn start(records: Vec<Record>) -> TestDns {
        let zone = Arc::new(Zone {
            records,
            counts: Mutex::new(Counts::default()),
        });
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("local addr");
        let tasks = vec![
            tokio::spawn(serve_udp(udp, zone.clone())),
            tokio::spawn(serve_tcp(tcp, zone.clone())),
        ];
        TestDns { addr, zone, tasks }
    }

    /// How many queries of `rtype` for `name` arrived (over both transports).
    pub fn queries(&self, name: &str, rtype: RecordType) -> usize {
        let counts = self.zone.counts.lock().unwrap();
        counts
            .by_name_type
            .get(&(key(name), rtype))
            .copied()
            .unwrap_or(0)
    }

    /// How many queries of any type for `name` arrived.
    pub fn queries_for(&self, name: &str) -> usize {
        let name = key(name);
        let counts = self.zone.counts.lock().unwrap();
        counts
            .by_name_type
            .iter()
            .filter(|((n, _), _)| *n == name)
            .map(|(_, c)| c)
            .sum()
    }

    /// Queries received over (UDP, TCP).
    pub fn transport_counts(&self) -> (usize, usize) {
        let counts = self.zone.counts.lock().unwrap();
        (counts.udp, counts.tcp)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind UDP");
        let addr = udp.local_addr().expect("local addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP");
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Zone>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        zone.counts.lock().unwrap().udp += 1;
        if let Reply::Send(response) = zone.answer(&request) {
            let mut bytes = response.to_vec().expect("encode response");
            if bytes.len() > usize::from(request.max_payload()) {
                bytes = response
                    .truncate()
                    .to_vec()
                    .expect("encode truncated response");
            }
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Zone>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(serve_tcp_conn(stream, zone.clone()));
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, zone: Arc<Zone>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut buf = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        let Ok(request) = Message::from_vec(&buf) else {
            return;
        };
        zone.counts.lock().unwrap().tcp += 1;
        match zone.answer(&request) {
            Reply::Send(response) => {
                let bytes = response.to_vec().expect("encode response");
                let Ok(len) = u16::try_from(bytes.len()) else {
                    return;
                };
                if stream.write_u16(len).await.is_err() || stream.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            Reply::Silent => std::future::pending::<()>().await,
            Reply::Close => return,
        }
    }
}

fn name(s: &str) -> Name {
    Name::from_str_relaxed(format!("{}.", s.trim_end_matches('.'))).unwrap_or_else(|_| {
        // Names with bytes the text form refuses (spaces, colons) as raw labels.
        let labels: Vec<&[u8]> = s
            .trim_end_matches('.')
            .split('.')
            .map(str::as_bytes)
            .collect();
        let mut n = Name::from_labels(labels).expect("valid labels");
        n.set_fqdn(true);
        n
    })
}

impl Zone {
    fn answer(&self, request: &Message) -> Reply {
        let mut response = Message::new(request.metadata.id, MessageType::Response, OpCode::Query);
        response.metadata.authoritative = true;
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        let Some(query) = request.queries.first().cloned() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return Reply::Send(response);
        };
        response.add_query(query.clone());
        let qtype = query.query_type();
        // The raw labels, not the escaped text form, so names holding
        // spaces or colons match the zone as written.
        let raw: Vec<String> = query
            .name()
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let mut current = key(&raw.join("."));
        {
            let mut counts = self.counts.lock().unwrap();
            *counts
                .by_name_type
                .entry((current.clone(), qtype))
                .or_default() += 1;
        }

        // Follow CNAMEs inside the zone, at most 8 deep.
        for _ in 0..8 {
            let held: Vec<&Data> = self
                .records
                .iter()
                .filter(|r| r.name == current)
                .map(|r| &r.data)
                .collect();
            for data in &held {
                match data {
                    Data::ServFail => {
                        return Reply::Send(with_code(response, ResponseCode::ServFail))
                    }
                    Data::Refused => {
                        return Reply::Send(with_code(response, ResponseCode::Refused))
                    }
                    Data::Timeout if !held.iter().any(|d| holds_type(d, qtype)) => {
                        return Reply::Silent
                    }
                    Data::Drop => return Reply::Close,
                    _ => {}
                }
            }
            let nx = held.is_empty() || held.iter().any(|d| matches!(d, Data::NxDomain));
            if nx {
                response.metadata.response_code = ResponseCode::NXDomain;
                response.add_authority(soa());
                return Reply::Send(response);
            }
            if qtype != RecordType::CNAME {
                if let Some(Data::Cname(target)) = held.iter().find(|d| matches!(d, Data::Cname(_)))
                {
                    response.add_answer(DnsRecord::from_rdata(
                        name(&current),
                        0,
                        RData::CNAME(CNAME(name(target))),
                    ));
                    current = key(target);
                    continue;
                }
            }
            let owner = name(&current);
            let answers: Vec<DnsRecord> = held
                .iter()
                .filter_map(|d| {
                    let rdata = match (d, qtype) {
                        (Data::Mx(p, h), RecordType::MX) => RData::MX(MX::new(*p, name(h))),
                        (Data::NullMx, RecordType::MX) => RData::MX(MX::new(0, Name::root())),
                        (Data::A(ip), RecordType::A) => RData::A(A(*ip)),
                        (Data::Aaaa(ip), RecordType::AAAA) => RData::AAAA(AAAA(*ip)),
                        (Data::Cname(t), RecordType::CNAME) => RData::CNAME(CNAME(name(t))),
                        (Data::Txt(t), RecordType::TXT) => RData::TXT(TXT::new(vec![t.clone()])),
                        (Data::TxtParts(p), RecordType::TXT) => RData::TXT(TXT::new(p.clone())),
                        (Data::Ptr(h), RecordType::PTR) => RData::PTR(PTR(name(h))),
                        _ => return None,
                    };
                    Some(DnsRecord::from_rdata(owner.clone(), 0, rdata))
                })
                .collect();
            if answers.is_empty() {
                // NODATA: the name exists, the type does not.
                response.add_authority(soa());
            }
            for a in answers {
                response.add_answer(a);
            }
            return Reply::Send(response);
        }
        Reply::Send(with_code(response, ResponseCode::ServFail))
    }
}

/// Whether `d` is a record of type `t`.
fn holds_type(d: &Data, t: RecordType) -> bool {
    matches!(
        (d, t),
        (Data::Mx(..) | Data::NullMx, RecordType::MX)
            | (Data::A(_), RecordType::A)
            | (Data::Aaaa(_), RecordType::AAAA)
            | (Data::Txt(_) | Data::TxtParts(_), RecordType::TXT)
            | (Data::Ptr(_), RecordType::PTR)
            | (Data::Cname(_), _)
    )
}

fn with_code(mut response: Message, code: ResponseCode) -> Message {
    response.metadata.response_code = code;
    response
}

/// The SOA that negative answers carry (TTL and minimum 0: nothing is cached).
fn soa() -> DnsRecord {
    DnsRecord::from_rdata(
        Name::root(),
        0,
        RData::SOA(SOA::new(
            name("ns.test"),
            name("hostmaster.test"),
            1,
            3600,
            600,
            86400,
            0,
        )),
    )
}

/// Convenience: an `IpAddr` from text.
pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("IP address")
}
