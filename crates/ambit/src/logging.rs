//! Process-wide logging for every role: ztunnel's text lines by default, ztunnel's JSON
//! objects with `--log-format json` (both from `ambit_logging`), written to stderr; levels from
//! `--log-level` or `RUST_LOG` (the same filter syntax), and a handle to change the filter at
//! runtime (the node proxy's `/logging` admin endpoint).

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

#[derive(Debug, Args)]
pub(crate) struct LogArgs {
    /// Log line format: ztunnel's TAB-separated text, or ztunnel's JSON keys.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter, e.g. `info` or `info,access=debug`; overrides RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

impl LogArgs {
    pub(crate) fn is_json(&self) -> bool {
        self.log_format == LogFormat::Json
    }
}

/// Reads and replaces the active log filter.
#[derive(Clone)]
pub(crate) struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    current: Arc<std::sync::Mutex<String>>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle")
            .field("current", &self.current())
            .finish()
    }
}

impl LogHandle {
    pub(crate) fn current(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Installs `filter` (full filter syntax); returns it back, or why it was refused.
    pub(crate) fn set(&self, filter: &str) -> Result<String, String> {
        let parsed =
            EnvFilter::try_new(filter).map_err(|e| format!("bad filter {filter:?}: {e}"))?;
        self.reload
            .reload(parsed)
            .map_err(|e| format!("cannot change the filter: {e}"))?;
        if let Ok(mut current) = self.current.lock() {
            filter.clone_into(&mut current);
        }
        Ok(filter.to_owned())
    }
}

/// Installs the process's logger. The filter is `--log-level`, else `RUST_LOG`, else
/// `default` (each command picks its own: `info` for the long-running roles).
pub(crate) fn init(args: &LogArgs, default: &str) -> anyhow::Result<LogHandle> {
    let text = match &args.log_level {
        Some(level) => level.clone(),
        None => std::env::var("RUST_LOG")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| default.to_owned()),
    };
    let filter = EnvFilter::try_new(&text).with_context(|| format!("bad log filter {text:?}"))?;
    let (filter, reload) = reload::Layer::new(filter);
    let format = match args.log_format {
        LogFormat::Text => ambit_logging::Format::Text,
        LogFormat::Json => ambit_logging::Format::Json,
    };
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(ambit_logging::layer(
            format,
            ambit_logging::Clock::System,
            std::io::stderr,
        ))
        .try_init();
    installed.map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(LogHandle {
        reload,
        current: Arc::new(std::sync::Mutex::new(text)),
    })
}
