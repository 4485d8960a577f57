//! Fuzz target: the SMTP/LMTP client's reply parser and state machine, as
//! used towards remote MXes and the local LMTP server.
//!
//! The input is split at 0xFF bytes into what the server "sends" in
//! successive reads; the first byte picks SMTP or LMTP. Property: whatever
//! the server sends, the client never panics, never loops without asking
//! for input, and ends the session once the input runs out.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon::proto::client::{ClientConfig, ClientEvent, ClientSession, OutMessage, StartTls};
use pigeon::proto::envelope::{Notify, Recipient};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut cfg = ClientConfig::new("fuzz.example");
    cfg.lmtp = mode & 1 == 1;
    cfg.use_starttls = if mode & 2 == 2 { StartTls::Opportunistic } else { StartTls::Never };
    let mut c = ClientSession::new(cfg);
    let msg = OutMessage {
        sender: "s@example.org".into(),
        recipients: (0..1 + (mode as usize >> 4) % 3)
            .map(|i| Recipient {
                address: format!("r{i}@example.net"),
                orcpt: None,
                notify: Notify::default(),
            })
            .collect(),
        size: 10,
        ..OutMessage::default()
    };
    let mut reads = rest.split(|&b| b == 0xff);
    let mut sent = false;
    let mut steps = 0;
    loop {
        steps += 1;
        assert!(steps < 100_000, "client does not make progress");
        match c.poll() {
            ClientEvent::Send(_) => {}
            ClientEvent::NeedInput => match reads.next() {
                Some(chunk) => {
                    let used = c.feed(chunk);
                    assert!(used <= chunk.len());
                }
                None => c.connection_lost(),
            },
            ClientEvent::StartTls => c.tls_established(),
            ClientEvent::NeedBody => c.body_chunk(b"Subject: x\r\n\r\nbody\r\n", true),
            ClientEvent::Ready => {
                if sent {
                    c.quit();
                } else {
                    sent = true;
                    if c.send_message(&msg).is_err() {
                        c.quit();
                    }
                }
            }
            ClientEvent::TransactionDone(r) => assert_eq!(r.rcpts.len(), msg.recipients.len()),
            ClientEvent::Closed(_) => return,
        }
    }
});
