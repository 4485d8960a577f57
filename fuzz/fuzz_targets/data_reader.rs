//! Fuzz target: the DATA and BDAT content decoders.
//!
//! Properties, for both `BodyDecoder::data()` and `BodyDecoder::chunks()`:
//! - no panic on any input;
//! - the decoded content never holds a bare CR or a bare LF (the SMTP
//!   smuggling defence: whatever the client sent, stored lines end in CRLF);
//! - feeding the input in two pieces, split at any point, gives the same
//!   content, the same end position and the same bare-newline verdict as
//!   feeding it whole;
//! - discarding (no output buffer) finds the same end as decoding.
//!
//! The first byte of the input chooses the split point; the rest is the
//! client's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon::proto::data::{BodyDecoder, Progress};

#[derive(Debug, PartialEq)]
struct Outcome {
    out: Vec<u8>,
    /// Offset just past the DATA terminator, if found.
    end: Option<usize>,
    bare: bool,
}

fn decode(mut d: BodyDecoder, dot: bool, pieces: &[&[u8]]) -> Outcome {
    let mut out = Vec::new();
    let mut offset = 0;
    let mut end = None;
    for p in pieces {
        match d.feed(p, Some(&mut out)) {
            Progress::End(n) => {
                assert!(dot, "the BDAT decoder reported an end");
                assert!(n <= p.len(), "end {n} past the {} bytes given", p.len());
                end = Some(offset + n);
                break;
            }
            Progress::More => offset += p.len(),
        }
    }
    if !dot {
        d.finish_chunks(Some(&mut out));
    }
    Outcome { out, end, bare: d.saw_bare_newline() }
}

fn discard_end(mut d: BodyDecoder, input: &[u8]) -> Option<usize> {
    match d.feed(input, None) {
        Progress::End(n) => Some(n),
        Progress::More => None,
    }
}

fn check_crlf(out: &[u8], dot: bool, ended: bool) {
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i} in {out:?}");
        }
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i} in {out:?}");
        }
    }
    // Complete content is empty or ends with a line ending.
    if (!dot || ended) && !out.is_empty() {
        assert!(out.ends_with(b"\r\n"), "content does not end in CRLF: {out:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let split = if input.is_empty() { 0 } else { sel as usize % (input.len() + 1) };
    let (a, b) = input.split_at(split);

    for dot in [true, false] {
        let mk = || if dot { BodyDecoder::data() } else { BodyDecoder::chunks() };
        let whole = decode(mk(), dot, &[input]);
        check_crlf(&whole.out, dot, whole.end.is_some());
        let halves = decode(mk(), dot, &[a, b]);
        assert_eq!(whole, halves, "split at {split} changed the result (dot mode {dot})");
        if dot {
            assert_eq!(discard_end(mk(), input), whole.end, "discarding found another end");
        }
    }
});
