//! The plugin's logging: one line per event on stderr, at the level the configuration sets.
//!
//! The plugin is a short-lived process whose stdout belongs to the runtime, so it does not rely
//! on whatever subscriber the binary installed: [`with_stderr_log`] runs the plugin under its
//! own subscriber for the calling thread (the plugin's runtime is current-thread, so every task
//! runs there). Its lines have the shape of every other Ambit binary's (ztunnel's text).

use std::str::FromStr;

use tracing::Level;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

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
    with_log(level, std::io::stderr, f)
}

/// Runs `f` with the plugin's events at `level` or above written to `writer`, in ztunnel's text
/// shape (`<time>\t<level>\t<target>\t<message>\t<key>=<value> …`, see `ambit_logging`).
fn with_log<T, W>(level: LogLevel, writer: W, f: impl FnOnce() -> T) -> T
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let subscriber = tracing_subscriber::registry()
        .with(LevelFilter::from(level.0))
        .with(ambit_logging::layer(
            ambit_logging::Format::Text,
            ambit_logging::Clock::System,
            writer,
        ));
    tracing::subscriber::with_default(subscriber, f)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn lines_have_ztunnels_shape_and_respect_the_level() {
        let out = ambit_logging::Capture::new();
        with_log(LogLevel::DEFAULT, out.clone(), || {
            tracing::info!(pod = "default/a", "not shown at the default level");
            tracing::warn!(pod = "default/a", "cannot reach the agent");
        });
        let lines = out.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let columns: Vec<&str> = lines[0].split('\t').collect();
        assert_eq!(
            columns[1..],
            [
                "warn",
                "ambit_capture::plugin::log::tests",
                "cannot reach the agent",
                r#"pod="default/a""#
            ],
            "{lines:?}"
        );
        assert!(columns[0].ends_with('Z'), "{lines:?}");

        let silent = ambit_logging::Capture::new();
        with_log("none".parse().unwrap(), silent.clone(), || {
            tracing::error!("never written");
        });
        assert!(silent.lines().is_empty());
    }
}
