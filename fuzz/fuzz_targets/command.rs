//! Fuzz target: the SMTP command-line parser.
//!
//! Property: `parse_command` never panics on any line, and every string it
//! hands on (HELO name, addresses, decoded ENVID/ORCPT/AUTH values) is free
//! of CR, LF and NUL, since these end up in Received: headers, queue files
//! and delivery status notifications.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon::proto::command::{parse_command, Command};

fn clean(what: &str, s: &str) {
    assert!(!s.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0), "{what} holds CR, LF or NUL: {s:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(cmd) = parse_command(data) else {
        return;
    };
    match cmd {
        Command::Ehlo(h) | Command::Helo(h) => clean("HELO argument", &h),
        Command::Auth(a) => clean("AUTH argument", &a),
        Command::Mail(m) => {
            if let Some(s) = &m.sender {
                clean("sender local part", &s.local);
                clean("sender domain", s.domain.as_str());
            }
            if let Some(e) = &m.envid {
                clean("ENVID", e);
            }
            if let Some(a) = &m.auth {
                clean("MAIL AUTH=", a);
            }
        }
        Command::Rcpt(r) => {
            clean("recipient local part", &r.rcpt.local);
            clean("recipient domain", r.rcpt.domain.as_str());
            if let Some(o) = &r.orcpt {
                clean("ORCPT", o);
            }
        }
        _ => {}
    }
});
