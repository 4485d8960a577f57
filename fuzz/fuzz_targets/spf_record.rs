//! Fuzz target: the SPF record parser and macro expansion (text from DNS).
//!
//! Properties: parsing never panics and is deterministic; every
//! domain-spec of a record that parses expands (with the longest values a
//! check can give) without panicking, to ASCII; an explanation string
//! expands likewise.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon::checks::spf::record::{self, MacroValues};

fuzz_target!(|data: &[u8]| {
    let long = "a".repeat(300);
    let sender = format!("{long}@{long}.example");
    let v = MacroValues {
        sender: &sender,
        domain: "example.org",
        ip: "2001:db8::1".parse().unwrap(),
        validated: &long,
        helo: "helo.example",
        receiver: "mx.example.org",
        timestamp: u64::MAX,
    };
    let parsed = record::parse(data);
    assert_eq!(parsed, record::parse(data), "parse is not deterministic");
    if let Ok(r) = parsed {
        let specs = r
            .directives
            .iter()
            .filter_map(|d| d.mechanism.domain_spec())
            .chain(r.redirect.iter())
            .chain(r.exp.iter());
        for m in specs {
            assert!(m.expand(&v).is_ascii());
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(m) = record::macro_string(text, true) {
            assert!(m.expand(&v).is_ascii());
        }
    }
});
