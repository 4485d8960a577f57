//! Property tests of the queue file formats: encode/decode round-trips for
//! arbitrary envelopes, bodies and statuses; decoding arbitrary bytes never
//! panics; any single damaged byte is detected.

use std::net::IpAddr;

use pigeon::proto::reply::EnhancedCode;
use pigeon::proto::{BodyType, Envelope, Notify, Recipient, Ret};
use pigeon::queue::{
    decode_message, decode_status, encode_message, encode_status, DsnOwed, Extras, MessageStatus,
    QueueId, RcptState, RcptStatus,
};
use proptest::prelude::*;

/// Strings mixing arbitrary Unicode with the bytes that break line-based
/// formats: CR, LF, NUL and other controls.
fn text() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        3 => any::<char>(),
        1 => prop::sample::select(vec!['\r', '\n', '\0', '\t', '\u{7f}', '\u{1b}', ' ', '<', '>', '@']),
    ];
    prop::collection::vec(ch, 0..40).prop_map(|v| v.into_iter().collect())
}

fn recipient() -> impl Strategy<Value = Recipient> {
    (text(), prop::option::of(text()), any::<u8>()).prop_map(|(address, orcpt, n)| Recipient {
        address,
        orcpt,
        notify: Notify(n),
    })
}

fn envelope() -> impl Strategy<Value = Envelope> {
    let body_type = prop::sample::select(vec![
        BodyType::SevenBit,
        BodyType::EightBitMime,
        BodyType::BinaryMime,
    ]);
    let ret = prop::option::of(prop::sample::select(vec![Ret::Full, Ret::Hdrs]));
    (
        (
            text(),
            prop::collection::vec(recipient(), 0..6),
            ret,
            prop::option::of(text()),
        ),
        (
            body_type,
            any::<bool>(),
            any::<IpAddr>(),
            text(),
            text(),
            prop::option::of(text()),
        ),
    )
        .prop_map(
            |(
                (sender, recipients, ret, envid),
                (body_type, smtputf8, client_ip, helo, protocol, auth_user),
            )| {
                Envelope {
                    sender,
                    recipients,
                    ret,
                    envid,
                    body_type,
                    smtputf8,
                    client_ip,
                    helo,
                    protocol,
                    auth_user,
                }
            },
        )
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..600),
        1 => prop::collection::vec(prop::sample::select(vec![b'\r', b'\n', b'.', 0u8, 0xff]), 0..200),
        // Crosses the 64 KiB body record boundary.
        1 => (65_530usize..65_545, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ]
}

fn status() -> impl Strategy<Value = MessageStatus> {
    let state = prop::sample::select(vec![
        RcptState::Pending,
        RcptState::Delivered,
        RcptState::Failed,
    ]);
    let owed = prop::sample::select(vec![
        None,
        Some(DsnOwed::Failed),
        Some(DsnOwed::Delivered),
        Some(DsnOwed::Relayed),
        Some(DsnOwed::Expanded),
    ]);
    let code = prop::option::of((
        prop::sample::select(vec![2u8, 4, 5]),
        0u16..1000,
        0u16..1000,
    ));
    let rcpt = (state, any::<u32>(), any::<i64>(), text(), owed, code).prop_map(
        |(state, attempts, next_attempt, last_reply, dsn_owed, code)| RcptStatus {
            state,
            attempts,
            next_attempt,
            last_reply,
            status: code.map(|(c, s, d)| EnhancedCode::new(c, s, d)),
            dsn_owed,
        },
    );
    (
        prop::collection::vec(rcpt, 0..8),
        any::<i64>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(rcpts, next_attempt, hold, delay_warned)| MessageStatus {
            rcpts,
            next_attempt,
            hold,
            delay_warned,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn message_round_trips(id in any::<u64>(), arrival in any::<i64>(), env in envelope(), body in body()) {
        let bytes = encode_message(QueueId(id), arrival, &env, &body, &Extras::default());
        let m = decode_message(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(m.id, QueueId(id));
        prop_assert_eq!(m.arrival, arrival);
        prop_assert_eq!(&m.envelope, &env);
        prop_assert_eq!(&m.body, &body);
        prop_assert_eq!(m.status, MessageStatus::all_pending(env.recipients.len()));
    }

    #[test]
    fn status_round_trips(st in status()) {
        let bytes = encode_status(&st);
        prop_assert_eq!(decode_status(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?, st);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_message(&bytes);
        let _ = decode_status(&bytes);
        // The same with a valid preamble, to get past the magic check.
        let mut m = b"PGNQ\x01".to_vec();
        m.extend_from_slice(&bytes);
        let _ = decode_message(&m);
        let mut s = b"PGNS\x01".to_vec();
        s.extend_from_slice(&bytes);
        let _ = decode_status(&s);
    }

    #[test]
    fn any_single_byte_change_is_detected(
        env in envelope(),
        body in prop::collection::vec(any::<u8>(), 0..300),
        pos in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut bytes = encode_message(QueueId(42), 7, &env, &body, &Extras::default());
        let i = pos.index(bytes.len());
        bytes[i] ^= xor;
        prop_assert!(decode_message(&bytes).is_err(), "change at offset {} not detected", i);
    }

    #[test]
    fn any_single_byte_change_in_a_status_is_detected(
        st in status(),
        pos in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let mut bytes = encode_status(&st);
        let i = pos.index(bytes.len());
        bytes[i] ^= xor;
        prop_assert!(decode_status(&bytes).is_err(), "change at offset {} not detected", i);
    }

    #[test]
    fn truncation_is_detected(env in envelope(), body in body(), cut in any::<prop::sample::Index>()) {
        let bytes = encode_message(QueueId(1), 0, &env, &body, &Extras::default());
        let n = cut.index(bytes.len());
        prop_assert!(decode_message(&bytes[..n]).is_err());
    }

    #[test]
    fn queue_id_text_round_trips(v in any::<u64>(), w in any::<u64>()) {
        let (a, b) = (QueueId(v), QueueId(w));
        prop_assert_eq!(a.to_string().parse::<QueueId>().ok(), Some(a));
        prop_assert_eq!(a.to_string().to_lowercase().parse::<QueueId>().ok(), Some(a));
        prop_assert_eq!(a.to_string().cmp(&b.to_string()), a.cmp(&b));
    }
}
