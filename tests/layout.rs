//! The import rules of `src/lib.rs`, checked on the source: for each
//! module, which other top-level modules of the crate its code names
//! (`crate::x` paths outside comments).

use std::collections::BTreeSet;
use std::path::Path;

/// The top-level modules module `m` (a directory or a file under `src/`)
/// names in its code.
fn imports(m: &str) -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let dir = root.join(m);
    if dir.is_dir() {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
    } else {
        files.push(root.join(format!("{m}.rs")));
    }
    let mut out = BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let code = code.split(" //").next().unwrap_or("");
            for (i, _) in code.match_indices("crate::") {
                let name: String = code[i + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != m {
                    out.insert(name);
                }
            }
        }
    }
    out
}

fn never(m: &str, forbidden: &[&str]) {
    let got = imports(m);
    for f in forbidden {
        assert!(
            !got.contains(*f),
            "`{m}` must not use `{f}` (it uses {got:?})"
        );
    }
}

fn only(m: &str, allowed: &[&str]) {
    let got = imports(m);
    for g in &got {
        assert!(
            allowed.contains(&g.as_str()),
            "`{m}` must not use `{g}` (allowed: {allowed:?})"
        );
    }
}

#[test]
fn leaves_import_nothing_or_only_what_they_may() {
    only("config", &[]);
    only("message", &[]);
    only("proto", &["message"]);
    only("signing", &["config", "message"]);
}

#[test]
fn policy_is_pure() {
    never(
        "policy",
        &["dns", "state", "queue", "server", "delivery", "net"],
    );
}

#[test]
fn checks_gather_facts_only() {
    only(
        "checks",
        &["dns", "state", "message", "config", "proto", "policy"],
    );
}

#[test]
fn inbound_and_outbound_stay_apart() {
    never("server", &["delivery"]);
    never("delivery", &["server"]);
}

#[test]
fn stores_sit_below_their_users() {
    for m in ["queue", "state"] {
        never(m, &["delivery", "server", "checks"]);
    }
    never("trace", &["ops", "server", "delivery"]);
}

#[test]
fn nothing_imports_the_command_line() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for e in std::fs::read_dir(&root).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "cli" || name == "main" || name == "lib" {
            continue;
        }
        assert!(!imports(&name).contains("cli"), "`{name}` imports `cli`");
    }
}

/// The rules can fail: `server` does use `queue`.
#[test]
fn the_scanner_sees_imports() {
    assert!(imports("server").contains("queue"));
    assert!(imports("proto").contains("message"));
}
