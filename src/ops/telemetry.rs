//! Logging set-up: tracing to stderr as text or JSON. Under systemd
//! (`JOURNAL_STREAM` set) text lines carry no timestamp (the journal adds
//! it) and start with a `<N>` priority prefix (sd-daemon(3)), so that
//! `journalctl -p warning` works. Spans: one per connection ("conn") and one
//! per queue id ("msg"), whose fields prefix every line logged inside them.
//! The level can be changed while running ([`LogHandle::set_level`]).

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{self as tfmt, FmtContext};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{reload, EnvFilter, Registry};

use crate::config::{LogConfig, LogFormat};

/// Changes the log level of a running process.
pub struct LogHandle {
    filter: Option<reload::Handle<EnvFilter, Registry>>,
}

impl LogHandle {
    /// Sets `pigeon=<level>` (unless `PIGEON_LOG` chose the filter).
    pub fn set_level(&self, level: &str) {
        if std::env::var_os("PIGEON_LOG").is_some() {
            return;
        }
        if let Some(h) = &self.filter {
            let _ = h.reload(EnvFilter::new(format!("pigeon={level}")));
        }
    }
}

/// Text lines for the journal: `<priority>` then the usual line, no time.
struct Journald {
    inner: format::Format<format::Full, ()>,
}

impl<S, N> FormatEvent<S, N> for Journald
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        write!(writer, "<{priority}>")?;
        self.inner.format_event(ctx, writer, event)
    }
}

pub fn init(cfg: &LogConfig) -> LogHandle {
    let filter = EnvFilter::try_from_env("PIGEON_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("pigeon={}", cfg.level)));
    let (filter, handle) = reload::Layer::new(filter);
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let registry = Registry::default().with(filter);
    let result = match (cfg.format, journald) {
        (LogFormat::Json, _) => registry
            .with(
                tfmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        (LogFormat::Text, true) => registry
            .with(
                tfmt::layer()
                    .event_format(Journald {
                        inner: format::format()
                            .without_time()
                            .with_target(false)
                            .with_ansi(false),
                    })
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        (LogFormat::Text, false) => registry
            .with(
                tfmt::layer()
                    .with_ansi(false)
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A second init (tests) keeps the first subscriber.
    LogHandle {
        filter: result.is_ok().then_some(handle),
    }
}
