//! Tests for configuration parsing and validation: the shipped file, the
//! defaults, and one test per kind of error.

use super::*;
use std::net::IpAddr;

const SHIPPED: &str = include_str!("../../config/pigeon.toml");

/// Parses text expected to be rejected and returns its errors.
fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(e) => e,
    }
}

/// Parses text expected to give exactly one error.
fn one_error(text: &str) -> ConfigError {
    let mut e = errors(text);
    assert_eq!(e.len(), 1, "expected one error, got {e:?}");
    e.remove(0)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn shipped_config_parses() {
    let c = parse(SHIPPED).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.server.hostname, "pigeon.localhost");
    assert_eq!(c.listeners.len(), 3);
    assert_eq!(c.listeners[0].bind, "127.0.0.1:2525".parse().unwrap());
    assert_eq!(c.listeners[0].mode, ListenerMode::Smtp);
    assert_eq!(c.listeners[1].mode, ListenerMode::Submission);
    assert_eq!(c.listeners[2].mode, ListenerMode::Submissions);
    assert!(c.tls.self_signed);
    assert_eq!(c.domains.local, ["localhost.test", "example.org"]);
    assert_eq!(c.spool.dir, PathBuf::from("spool"));
    assert_eq!(c.log.level, "info");
}

#[test]
fn shipped_config_lists_every_key_at_its_default() {
    // Apart from the dev values, the shipped file must equal the defaults, so
    // that it is a faithful reference.
    let c = parse(SHIPPED).unwrap_or_else(|e| panic!("{e:?}"));
    let d = Config::default();
    assert_eq!(format!("{:?}", c.limits), format!("{:?}", d.limits));
    assert_eq!(c.relay.trusted_networks, d.relay.trusted_networks);
    assert_eq!(c.spool.reserve_bytes, d.spool.reserve_bytes);
    assert_eq!(c.smtp.bare_newline, d.smtp.bare_newline);
    assert_eq!(c.log.format, d.log.format);
    let mut auth = c.auth.clone();
    assert_eq!(auth.users.len(), 1, "the shipped dev user");
    auth.users.clear();
    assert_eq!(format!("{auth:?}"), format!("{:?}", d.auth));
    let mut local = c.local.clone();
    assert_eq!(local.maildir, "spool/mail/{domain}/{user}/Maildir");
    local.maildir = d.local.maildir.clone();
    local.aliases.clear();
    assert_eq!(format!("{local:?}"), format!("{:?}", d.local));
    assert_eq!(c.domains.include_hostname, d.domains.include_hostname);
    assert_eq!((c.server.user.as_str(), c.server.group.as_str()), ("", ""));
    assert!(
        c.server.allow_root,
        "the dev config may run from a checkout as root"
    );
    assert_eq!(c.sendmail.socket, PathBuf::from("spool/sendmail.sock"));
    assert_eq!(c.metrics.listen, d.metrics.listen);
    assert_eq!(format!("{:?}", c.delivery), format!("{:?}", d.delivery));
    assert_eq!(format!("{:?}", c.dns), format!("{:?}", d.dns));
    assert_eq!(c.listeners[0].plaintext_auth, d.listeners[0].plaintext_auth);
    // Every key of every section appears uncommented in the file.
    let table: toml::Table = toml::from_str(SHIPPED).unwrap();
    let keys = |section: &str| -> Vec<String> {
        match &table[section] {
            toml::Value::Table(t) => t.keys().cloned().collect(),
            toml::Value::Array(a) => match &a[0] {
                toml::Value::Table(t) => t.keys().cloned().collect(),
                _ => panic!("{section}"),
            },
            _ => panic!("{section}"),
        }
    };
    let expected: &[(&str, &[&str])] = &[
        ("server", &["allow_root", "group", "hostname", "user"]),
        ("listener", &["bind", "mode", "plaintext_auth"]),
        ("domains", &["include_hostname", "local"]),
        ("relay", &["trusted_networks"]),
        ("spool", &["dir", "reserve_bytes"]),
        (
            "limits",
            &[
                "command_timeout_secs",
                "data_timeout_secs",
                "ipv6_prefix",
                "max_command_line",
                "max_connections",
                "max_connections_per_ip",
                "max_errors",
                "max_junk_commands",
                "max_message_size",
                "max_received_headers",
                "max_recipients",
                "max_submission_connections",
                "session_timeout_secs",
                "shutdown_grace_secs",
            ],
        ),
        ("smtp", &["bare_newline"]),
        ("log", &["format", "level"]),
        ("tls", &["certificates", "self_signed"]),
        (
            "delivery",
            &[
                "bounce_size_limit",
                "connect_timeout_secs",
                "connection_reuse_secs",
                "delay_warning_secs",
                "double_bounce",
                "enabled",
                "first_retry_secs",
                "ip_preference",
                "max_connections_per_destination",
                "max_in_flight",
                "max_queue_lifetime_secs",
                "max_recipients_per_transaction",
                "max_retry_interval_secs",
                "postmaster",
                "relay_host",
                "relay_login",
                "relay_password",
                "relay_tls",
                "remote_port",
                "routes",
                "starttls",
                "tls_ca_file",
                "tls_fallback_plaintext",
            ],
        ),
        ("dns", &["attempts", "nameservers", "timeout_secs"]),
        (
            "sendmail",
            &[
                "allowed_users",
                "restrict_senders",
                "senders",
                "socket",
                "trusted_users",
            ],
        ),
        ("metrics", &["listen"]),
        (
            "auth",
            &[
                "check_header_from",
                "exempt_loopback",
                "failure_delay_ms",
                "ip_block_secs",
                "ip_failure_window_secs",
                "ip_max_failures",
                "max_failures_per_connection",
                "max_parallel_verifications",
                "sender_login_match",
                "user",
                "users_file",
                "verification_wait_ms",
            ],
        ),
        (
            "local",
            &[
                "aliases",
                "aliases_file",
                "create_maildir",
                "delivery",
                "lmtp",
                "maildir",
                "max_alias_depth",
                "max_alias_targets",
                "max_deliveries",
                "recipient_delimiter",
                "subaddress_folders",
            ],
        ),
        (
            "dkim",
            &["expire_secs", "headers", "sign", "sign_subdomains"],
        ),
        (
            "inbound",
            &[
                "arc",
                "dkim",
                "dmarc",
                "dmarc_quarantine",
                "dmarc_reject",
                "junk_folder",
                "max_signatures",
                "max_verify_size",
                "spf",
                "spf_fail",
                "temperror",
                "timeout_secs",
                "verify_memory",
            ],
        ),
        ("srs", &["max_age_days", "previous_secrets", "secret"]),
    ];
    for (section, want) in expected {
        let mut got = keys(section);
        got.sort();
        assert_eq!(got, *want, "[{section}]");
    }
    assert_eq!(table.len(), expected.len());
}

#[test]
fn empty_file_gives_defaults() {
    let c = parse("").unwrap_or_else(|e| panic!("{e:?}"));
    assert!(!c.server.hostname.is_empty());
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].bind, "0.0.0.0:25".parse().unwrap());
    assert_eq!(c.listeners[0].mode, ListenerMode::Smtp);
    assert!(c.domains.local.is_empty());
    assert_eq!(c.relay.trusted_networks.len(), 2);
    assert!(c.relay.trusted_networks[0].contains(ip("127.0.0.1")));
    assert!(c.relay.trusted_networks[1].contains(ip("::1")));
    assert_eq!(c.spool.dir, PathBuf::from("/var/spool/pigeon"));
    assert_eq!(c.spool.reserve_bytes, 0);
    assert_eq!(c.limits.max_command_line, 512);
    assert_eq!(c.limits.max_message_size, 52_428_800);
    assert_eq!(c.limits.max_recipients, 1000);
    assert_eq!(c.limits.max_errors, 10);
    assert_eq!(c.limits.max_received_headers, 50);
    assert_eq!(c.limits.max_connections, 5000);
    assert_eq!(c.limits.max_connections_per_ip, 50);
    assert_eq!(c.limits.command_timeout_secs, 300);
    assert_eq!(c.limits.data_timeout_secs, 600);
    assert_eq!(c.limits.session_timeout_secs, 3600);
    assert_eq!(c.limits.shutdown_grace_secs, 30);
    assert_eq!(c.smtp.bare_newline, BareNewline::Normalize);
    assert_eq!(c.log.level, "info");
    assert_eq!(c.log.format, LogFormat::Text);
}

#[test]
fn default_config_is_valid() {
    let mut c = Config::default();
    assert!(validate::normalize_and_validate(&mut c).is_empty());
}

#[test]
fn empty_sections_give_defaults() {
    let c = parse("[server]\n[domains]\n[relay]\n[spool]\n[limits]\n[smtp]\n[log]\n").unwrap();
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.limits.max_recipients, 1000);
}

#[test]
fn values_are_normalized() {
    let c = parse(
        "[server]\nhostname = \"MX.Example.COM.\"\n\
         [domains]\nlocal = [\"Example.ORG.\"]\n\
         [log]\nlevel = \"DEBUG\"\nformat = \"json\"\n",
    )
    .unwrap();
    assert_eq!(c.server.hostname, "mx.example.com");
    assert_eq!(c.domains.local, ["example.org"]);
    assert_eq!(c.log.level, "debug");
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn several_listeners_and_modes() {
    let c = parse(
        "[[listener]]\nbind = \"[::]:25\"\n\
         [[listener]]\nbind = \"0.0.0.0:25\"\n\
         [[listener]]\nbind = \"127.0.0.1:587\"\nmode = \"submission\"\n\
         [[listener]]\nbind = \"127.0.0.1:465\"\nmode = \"submissions\"\n\
         [tls]\nself_signed = true\n",
    )
    .unwrap();
    let modes: Vec<&str> = c.listeners.iter().map(|l| l.mode.as_str()).collect();
    assert_eq!(modes, ["smtp", "smtp", "submission", "submissions"]);
}

#[test]
fn error_unknown_key() {
    let e = one_error("[limits]\nmax_errors = 3\nmax_eror = 4\n");
    assert_eq!(e.key, "limits.max_eror");
    assert_eq!(e.line, Some(3));
    assert!(e.message.starts_with("unknown key"), "{}", e.message);
    assert!(
        e.message.contains("max_errors"),
        "valid keys are listed: {}",
        e.message
    );
}

#[test]
fn error_unknown_key_positions() {
    let e = one_error("hostname = \"x\"\n");
    assert_eq!((e.key.as_str(), e.line), ("hostname", Some(1)));

    let e = one_error("[server]\nhostname = \"a.b\"\n\n[bogus]\nx = 1\n");
    assert_eq!((e.key.as_str(), e.line), ("bogus", Some(4)));

    let e = one_error("[[listener]]\nbind = \"127.0.0.1:25\"\n\n[[listener]]\nbind = \"127.0.0.1:26\"\nport = 26\n");
    assert_eq!((e.key.as_str(), e.line), ("listener[1].port", Some(6)));

    let e = one_error("listener = [{ bind = \"127.0.0.1:25\", tls = true }]\n");
    assert_eq!((e.key.as_str(), e.line), ("listener[0].tls", Some(1)));

    let e = one_error("limits.max_conections = 3\n");
    assert_eq!((e.key.as_str(), e.line), ("limits.max_conections", Some(1)));
}

#[test]
fn error_wrong_type() {
    let e = one_error("[limits]\n\nmax_recipients = \"lots\"\n");
    assert_eq!(e.key, "limits.max_recipients");
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("invalid type"), "{}", e.message);

    let e = one_error("[limits]\nmax_errors = -1\n");
    assert_eq!((e.key.as_str(), e.line), ("limits.max_errors", Some(2)));
    assert!(
        !e.message.contains("u32"),
        "no Rust type names: {}",
        e.message
    );

    let e = one_error("[domains]\nlocal = \"example.org\"\n");
    assert_eq!((e.key.as_str(), e.line), ("domains.local", Some(2)));

    let e = one_error("server = 5\n");
    assert_eq!((e.key.as_str(), e.line), ("server", Some(1)));

    let e = one_error("[log]\nlevel = 1979-05-27T07:32:00Z\n");
    assert_eq!((e.key.as_str(), e.line), ("log.level", Some(2)));
}

#[test]
fn error_bad_cidr() {
    let e = one_error("[relay]\ntrusted_networks = [\n  \"10.0.0.0/8\",\n  \"10.0.0.0/33\",\n]\n");
    assert_eq!(e.key, "relay.trusted_networks[1]");
    assert_eq!(e.line, Some(4));
    assert!(e.message.contains("10.0.0.0/33"), "{}", e.message);
}

#[test]
fn error_bad_listener_mode() {
    let e = one_error("[[listener]]\nbind = \"127.0.0.1:25\"\nmode = \"smpt\"\n");
    assert_eq!(e.key, "listener[0].mode");
    assert_eq!(e.line, Some(3));
    assert!(
        e.message.contains("smpt") && e.message.contains("submission"),
        "{}",
        e.message
    );
}

#[test]
fn error_bad_or_missing_bind() {
    let e = one_error("[[listener]]\nbind = \"127.0.0.1\"\n");
    assert_eq!((e.key.as_str(), e.line), ("listener[0].bind", Some(2)));
    assert!(e.message.contains("IP:PORT"), "{}", e.message);

    let e = one_error("[[listener]]\nbind = \"127.0.0.1:25\"\n[[listener]]\nmode = \"smtp\"\n");
    assert_eq!((e.key.as_str(), e.line), ("listener[1].bind", Some(3)));
    assert_eq!(e.message, "required key is missing");
}

#[test]
fn error_no_listener() {
    let e = one_error("# no listeners\n\nlistener = []\n[server]\nhostname = \"a.example\"\n");
    assert_eq!((e.key.as_str(), e.line), ("listener", Some(3)));
    assert!(e.message.contains("at least one"), "{}", e.message);
    // Written after a table header, the key belongs to that table.
    let e = one_error("[server]\nhostname = \"a.example\"\nlistener = []\n");
    assert_eq!((e.key.as_str(), e.line), ("server.listener", Some(3)));
}

#[test]
fn error_duplicate_bind() {
    let e = one_error(
        "[[listener]]\nbind = \"127.0.0.1:25\"\n\
         [[listener]]\nbind = \"127.0.0.1:587\"\nmode = \"submission\"\n\
         [[listener]]\nbind = \"127.0.0.1:25\"\n[tls]\nself_signed = true\n",
    );
    assert_eq!(e.key, "listener[2].bind");
    assert_eq!(e.line, Some(7));
    assert!(e.message.contains("listener[0]"), "{}", e.message);

    let e =
        one_error("[[listener]]\nbind = \"0.0.0.0:25\"\n[[listener]]\nbind = \"10.0.0.1:25\"\n");
    assert_eq!((e.key.as_str(), e.line), ("listener[1].bind", Some(4)));
    assert!(e.message.contains("wildcard"), "{}", e.message);

    let e = one_error("[[listener]]\nbind = \"[::1]:25\"\n[[listener]]\nbind = \"[::]:25\"\n");
    assert_eq!((e.key.as_str(), e.line), ("listener[1].bind", Some(4)));

    // Port 0 (any free port) and different families never clash.
    parse("[[listener]]\nbind = \"127.0.0.1:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n").unwrap();
    parse("[[listener]]\nbind = \"0.0.0.0:25\"\n[[listener]]\nbind = \"[::]:25\"\n").unwrap();
}

#[test]
fn error_bad_hostname() {
    let e = one_error("[server]\nhostname = \"mail_server.example\"\n");
    assert_eq!(e.key, "server.hostname");
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("mail_server.example"), "{}", e.message);
    let e = one_error("[server]\nhostname = \"192.0.2.1\"\n");
    assert_eq!(e.key, "server.hostname");
}

#[test]
fn error_bad_local_domain() {
    let e = one_error("[domains]\nlocal = [\"ok.example\", \"bad..example\"]\n");
    assert_eq!((e.key.as_str(), e.line), ("domains.local[1]", Some(2)));
}

#[test]
fn error_limit_below_minimum() {
    let e = one_error("[limits]\nmax_recipients = 99\n");
    assert_eq!(e.key, "limits.max_recipients");
    assert_eq!(e.line, Some(2));
    assert_eq!(
        e.message,
        "is 99; must be at least 100 (RFC 5321 section 4.5.3.1.8)"
    );
    assert_eq!(
        e.to_string(),
        "line 2: key `limits.max_recipients`: is 99; must be at least 100 (RFC 5321 section 4.5.3.1.8)"
    );
    for (key, value) in [
        ("max_command_line", "511"),
        ("max_message_size", "1023"),
        ("max_errors", "0"),
        ("max_received_headers", "0"),
        ("max_connections", "0"),
        ("command_timeout_secs", "0"),
        ("data_timeout_secs", "0"),
        ("session_timeout_secs", "0"),
    ] {
        let e = one_error(&format!("[limits]\n{key} = {value}\n"));
        assert_eq!(e.key, format!("limits.{key}"));
        assert_eq!(e.line, Some(2));
    }
    // Zero is meaningful for these.
    parse("[limits]\nmax_connections_per_ip = 0\nshutdown_grace_secs = 0\n").unwrap();
}

#[test]
fn error_limit_above_maximum() {
    let e = one_error("[limits]\nsession_timeout_secs = 99999999\n");
    assert_eq!(
        (e.key.as_str(), e.line),
        ("limits.session_timeout_secs", Some(2))
    );
    let e = one_error("[limits]\nmax_connections = 99999999\n");
    assert_eq!(e.key, "limits.max_connections");
}

#[test]
fn error_bad_log_level() {
    let e = one_error("[log]\nformat = \"json\"\nlevel = \"verbose\"\n");
    assert_eq!(e.key, "log.level");
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("verbose"), "{}", e.message);
}

#[test]
fn error_bad_enum_value() {
    let e = one_error("[smtp]\nbare_newline = \"strip\"\n");
    assert_eq!((e.key.as_str(), e.line), ("smtp.bare_newline", Some(2)));
    let e = one_error("[log]\nformat = \"xml\"\n");
    assert_eq!((e.key.as_str(), e.line), ("log.format", Some(2)));
}

#[test]
fn error_empty_spool_dir() {
    let e = one_error("[spool]\ndir = \"\"\n");
    assert_eq!((e.key.as_str(), e.line), ("spool.dir", Some(2)));
}

#[test]
fn error_toml_syntax() {
    let e = one_error("[server]\nhostname = \"a.example\"\n[limits\nmax_errors = 3\n");
    assert_eq!(e.key, "");
    assert_eq!(e.line, Some(3));
    assert!(
        e.message.starts_with("invalid TOML at column"),
        "{}",
        e.message
    );
    assert!(!e.message.contains('\n'));
    assert!(e.to_string().starts_with("line 3: invalid TOML"), "{e}");

    let e = one_error("[log]\nlevel = \"info\nformat = \"text\"\n");
    assert_eq!(e.line, Some(2));

    let e = one_error("[log]\nlevel = \"info\"\nlevel = \"debug\"\n");
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("duplicate"), "{}", e.message);
}

#[test]
fn multiple_validation_errors_reported_together() {
    let text = "\
[server]
hostname = \"-bad-\"

[[listener]]
bind = \"127.0.0.1:25\"

[[listener]]
bind = \"127.0.0.1:25\"

[limits]
max_recipients = 1
max_errors = 0

[log]
level = \"loud\"
";
    let e = errors(text);
    let got: Vec<(&str, Option<usize>)> = e.iter().map(|e| (e.key.as_str(), e.line)).collect();
    assert_eq!(
        got,
        [
            ("server.hostname", Some(2)),
            ("listener[1].bind", Some(8)),
            ("limits.max_recipients", Some(11)),
            ("limits.max_errors", Some(12)),
            ("log.level", Some(15)),
        ]
    );
}

#[test]
fn error_display_without_line_or_key() {
    let e = ConfigError {
        key: String::new(),
        line: None,
        message: "cannot read x".into(),
    };
    assert_eq!(e.to_string(), "cannot read x");
    let e = ConfigError {
        key: "log.level".into(),
        line: None,
        message: "bad".into(),
    };
    assert_eq!(e.to_string(), "key `log.level`: bad");
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let e = load(&missing).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(e[0].message.contains("nope.toml"), "{}", e[0]);

    let good = dir.path().join("pigeon.toml");
    std::fs::write(&good, SHIPPED).unwrap();
    assert_eq!(load(&good).unwrap().server.hostname, "pigeon.localhost");

    let binary = dir.path().join("binary.toml");
    std::fs::write(&binary, b"a = \"\xff\"\n").unwrap();
    let e = load(&binary).unwrap_err();
    assert!(
        e[0].message.contains("binary.toml") && e[0].message.contains("UTF-8"),
        "{}",
        e[0]
    );

    let huge = dir.path().join("huge.toml");
    std::fs::write(&huge, vec![b'#'; MAX_CONFIG_FILE_BYTES as usize + 1]).unwrap();
    let e = load(&huge).unwrap_err();
    assert!(e[0].message.contains("larger than"), "{}", e[0]);
}

#[test]
fn effective_reserve() {
    let limits = Limits {
        max_message_size: 1000,
        ..Limits::default()
    };
    let spool = SpoolConfig {
        reserve_bytes: 0,
        ..SpoolConfig::default()
    };
    assert_eq!(spool.effective_reserve(&limits), 1500);
    let spool = SpoolConfig {
        reserve_bytes: 7,
        ..SpoolConfig::default()
    };
    assert_eq!(spool.effective_reserve(&limits), 7);
    let limits = Limits {
        max_message_size: u64::MAX,
        ..Limits::default()
    };
    let spool = SpoolConfig::default();
    assert_eq!(spool.effective_reserve(&limits), u64::MAX);
}

#[test]
fn hostile_input_does_not_panic() {
    for text in [
        "\u{feff}[server]\n",
        "a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        "[limits]\nmax_message_size = 99999999999999999999999\n",
        "[server]\nhostname = \"\u{0}\"\n",
        "\"\u{e9}\u{e9}\" = 1\n",
        "[[listener]]\n[[listener]]\n",
        "listener = 3\n",
        "[relay]\ntrusted_networks = [1, 2]\n",
        "=",
        "\n\n\n",
    ] {
        let _ = parse(text);
    }
}

#[test]
fn local_delivery_errors_name_the_key() {
    let e = one_error("[local]\nmaildir = \"/m/{name}/Maildir\"\n");
    assert_eq!((e.key.as_str(), e.line), ("local.maildir", Some(2)));
    assert!(e.message.contains("unknown placeholder {name}"), "{e}");
    let e = one_error("[local]\nlmtp = \"dovecot\"\nx = 1\n");
    assert_eq!(e.key, "local.x");
    let e = one_error("[local]\nlmtp = \"no port:\"\n");
    assert_eq!((e.key.as_str(), e.line), ("local.lmtp", Some(2)));
    let e = one_error("[local]\nrecipient_delimiter = \"@\"\n");
    assert_eq!(e.key, "local.recipient_delimiter");
    let e = one_error("[local]\nmax_deliveries = 0\n");
    assert_eq!(e.key, "local.max_deliveries");
    let e = one_error("[local]\ndelivery = \"mbox\"\n");
    assert_eq!((e.key.as_str(), e.line), ("local.delivery", Some(2)));
}

#[test]
fn alias_errors_name_the_alias_and_line() {
    let e = one_error(
        "[domains]\nlocal = [\"example.org\"]\n[local.aliases]\nok = \"a@example.org\"\n\"x@remote.test\" = \"a\"\n",
    );
    assert_eq!(e.key, "local.aliases.x@remote.test");
    assert_eq!(e.line, Some(5));
    assert!(
        e.message.contains("remote.test is not a local domain"),
        "{e}"
    );
    let e = one_error("[local.aliases]\na = [\"b c\"]\n");
    assert!(e.message.contains("target `b c` is not an address"), "{e}");
    let e = one_error("[local.aliases]\na = []\n");
    assert!(e.message.contains("no target"), "{e}");
    let e = one_error("[local.aliases]\na = 5\n");
    assert!(
        e.message.contains("an address, or a list of addresses"),
        "{e}"
    );
    let c = parse("[domains]\nlocal = [\"Example.org\"]\n[local.aliases]\n\"Info@EXAMPLE.org\" = [\"a\", \"b@X.test\"]\n").unwrap();
    assert_eq!(c.local.aliases["info@example.org"].0, ["a", "b@x.test"]);
}

#[test]
fn server_identity_and_metrics_errors() {
    let e = one_error("[server]\ngroup = \"mail\"\n");
    assert_eq!(e.key, "server.group");
    let e = one_error("[server]\nuser = \"a b\"\n");
    assert_eq!((e.key.as_str(), e.line), ("server.user", Some(2)));
    let e = one_error("[metrics]\nlisten = \"0.0.0.0:9587\"\n");
    assert!(e.message.contains("not a loopback address"), "{e}");
    let e = one_error("[metrics]\nlisten = \"localhost\"\n");
    assert_eq!(e.key, "metrics.listen");
    assert!(parse("[metrics]\nlisten = \"[::1]:9587\"\n").is_ok());
}

#[test]
fn relay_password_needs_verified_tls() {
    let relay = "[delivery]\nrelay_host = \"[smtp.example]:587\"\nrelay_login = \"u\"\nrelay_password = \"p\"\n";
    // Unset: a login makes it "required".
    let c = parse(relay).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.delivery.relay_tls(), TlsPolicy::Required);
    let c = parse(&format!("{relay}relay_tls = \"required\"\n")).unwrap();
    assert_eq!(c.delivery.relay_tls(), TlsPolicy::Required);
    for weak in ["opportunistic", "none"] {
        let e = one_error(&format!("{relay}relay_tls = \"{weak}\"\n"));
        assert_eq!((e.key.as_str(), e.line), ("delivery.relay_tls", Some(5)));
        assert!(e.message.contains("not verified"), "{e}");
    }
    // Without a login, "auto" stays opportunistic.
    let c = parse("[delivery]\nrelay_host = \"[smtp.example]:25\"\n").unwrap();
    assert_eq!(c.delivery.relay_tls(), TlsPolicy::Opportunistic);
}
