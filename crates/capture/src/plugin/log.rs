//! The plugin's logging: one line per event on stderr, at the level the configuration sets.
//!
//! The plugin is a short-lived process whose stdout belongs to the runtime, so it does not rely
//! on whatever subscriber the binary installed: [`with_stderr_log`] runs the plugin under its
//! own subscriber for the calling thread (the plugin's runtime is current-thread, so every task
//! runs there). Spans are not tracked; only events are written.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::str::FromStr;

use tracing::field::{Field, Visit};
use tracing::level_filters::LevelFilter;
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};

/// How much the plugin logs, from `ambit.log_level` (or Istio's `plugin_log_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LogLevel(Option<Level>);

impl LogLevel {
    /// What the plugin logs unless configured: problems only, the runtime's log is shared.
    pub(crate) const DEFAULT: Self = Self(Some(Level::WARN));
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "none" | "off" => Ok(Self(None)),
            "error" => Ok(Self(Some(Level::ERROR))),
            "warn" | "warning" => Ok(Self(Some(Level::WARN))),
            "info" => Ok(Self(Some(Level::INFO))),
            "debug" => Ok(Self(Some(Level::DEBUG))),
            "trace" => Ok(Self(Some(Level::TRACE))),
            other => Err(format!(
                "unknown level `{other}` (expected none, error, warn, info, debug or trace)"
            )),
        }
    }
}

/// Runs `f` with the plugin's events written to stderr at `level`.
pub(crate) fn with_stderr_log<T>(level: LogLevel, f: impl FnOnce() -> T) -> T {
    tracing::subscriber::with_default(StderrLog { max: level.0 }, f)
}

/// Writes each enabled event as `LEVEL ambit-cni: message key=value ...`.
#[derive(Debug)]
struct StderrLog {
    max: Option<Level>,
}

impl Subscriber for StderrLog {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // Decided per event: other threads may run under another subscriber.
        Interest::sometimes()
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.max.is_some_and(|max| *metadata.level() <= max)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from(self.max))
    }

    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }

    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}

    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut line = format!("{} ambit-cni:", event.metadata().level());
        event.record(&mut LineVisitor(&mut line));
        line.push('\n');
        // A log line that cannot be written is dropped: logging must never fail the plugin.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn enter(&self, _: &span::Id) {}

    fn exit(&self, _: &span::Id) {}
}

struct LineVisitor<'a>(&'a mut String);

impl Visit for LineVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = if field.name() == "message" {
            write!(self.0, " {value:?}")
        } else {
            write!(self.0, " {}={value:?}", field.name())
        };
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = if field.name() == "message" {
            write!(self.0, " {value}")
        } else {
            write!(self.0, " {}={value:?}", field.name())
        };
    }
}
