//! Fuzz target: the queue-file and status-file decoders.
//!
//! Properties:
//! - `decode_message` and `decode_status` never panic on any bytes;
//! - whatever `decode_message` accepts, `encode_message` re-encodes into
//!   bytes that decode to the same message (likewise for status files).
//!
//! Both formats end in a CRC32 over the whole file, which random mutations
//! almost never keep valid; so each input is also tried with its last four
//! bytes replaced by the right CRC, which lets the fuzzer reach the record
//! grammar behind the checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon::queue::{decode_message, decode_status, encode_message, encode_status};

fn with_fixed_crc(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 8 {
        return None;
    }
    let mut v = data.to_vec();
    let n = v.len() - 4;
    let crc = crc32fast::hash(&v[..n]);
    v[n..].copy_from_slice(&crc.to_le_bytes());
    Some(v)
}

fn check(bytes: &[u8]) {
    if let Ok(m) = decode_message(bytes) {
        let again = encode_message(m.id, m.arrival, &m.envelope, &m.body, &m.extras());
        let m2 = decode_message(&again).expect("a re-encoded message does not decode");
        assert_eq!(m, m2, "message changed by a decode/encode round trip");
    }
    if let Ok(st) = decode_status(bytes) {
        let again = encode_status(&st);
        let st2 = decode_status(&again).expect("a re-encoded status does not decode");
        assert_eq!(st, st2, "status changed by a decode/encode round trip");
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(fixed) = with_fixed_crc(data) {
        check(&fixed);
    }
});
