//! Fuzz target: the remover of forged Authentication-Results fields.
//!
//! The first byte chooses a chunk size, the rest is a message. Properties:
//! the output does not depend on how the message is cut into chunks; it is
//! never longer than the input; and the filter is idempotent (run on its
//! own output it removes nothing and changes nothing), so no field naming
//! this server survives it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon::message::auth_results::AuthResultsFilter;

fn run(msg: &[u8], chunk: usize) -> (Vec<u8>, usize) {
    let mut f = AuthResultsFilter::new("mx.example.org");
    let mut out = Vec::new();
    for c in msg.chunks(chunk.max(1)) {
        if f.passthrough() {
            out.extend_from_slice(c);
        } else {
            f.push(c, &mut out);
        }
    }
    f.finish(&mut out);
    (out, f.removed())
}

fuzz_target!(|data: &[u8]| {
    let Some((&k, msg)) = data.split_first() else {
        return;
    };
    let (whole, removed) = run(msg, msg.len());
    let (chunked, removed2) = run(msg, k as usize % 37 + 1);
    assert_eq!(whole, chunked, "output depends on chunking");
    assert_eq!(removed, removed2);
    assert!(whole.len() <= msg.len());
    let (again, removed_again) = run(&whole, msg.len().max(1));
    assert_eq!(removed_again, 0, "a field survived the filter");
    assert_eq!(again, whole);
});
