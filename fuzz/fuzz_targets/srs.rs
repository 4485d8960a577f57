//! Fuzz target: the SRS address decoder (RCPT addresses from anyone).
//!
//! Properties: reversing any address never panics; an address that
//! reverses was made with the secret (the fuzzer cannot forge one, so any
//! success must be a round trip of something `forward` made); and every
//! address `forward` makes from the input reverses to that input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon::users::srs::Srs;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(srs) = Srs::new("fuzzing secret, sixteen+", &[], "mx.example.org", 21) else {
        return;
    };
    let day = 20_000;
    if let Ok(orig) = srs.reverse(text, day) {
        // Only a round trip can succeed: re-forwarding gives the same hash.
        let again = srs.forward(&orig, day);
        assert!(again.is_some(), "reversed {text:?} to {orig:?}, which does not forward");
    }
    if let Some(f) = srs.forward(text, day) {
        assert!(srs.is_srs(&f));
        let back = srs.reverse(&f, day).expect("a fresh SRS address reverses");
        let (l, d) = text.rsplit_once('@').expect("forward needs an @");
        assert_eq!(back, format!("{l}@{}", d.to_ascii_lowercase()));
    }
});
