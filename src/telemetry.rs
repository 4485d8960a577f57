//! Logging set-up: tracing to stderr as text or JSON. Under systemd
//! (JOURNAL_STREAM set) text lines carry no timestamp, the journal adds it.
//! Spans: one per connection ("conn") and one per queue id ("msg").

use crate::config::{LogConfig, LogFormat};

pub fn init(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PIGEON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("pigeon={}", cfg.level)));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match (cfg.format, journald) {
        (LogFormat::Json, _) => builder.json().flatten_event(true).try_init(),
        (LogFormat::Text, true) => builder.without_time().with_ansi(false).try_init(),
        (LogFormat::Text, false) => builder.with_ansi(false).try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}
