//! The node proxy's HTTP side doors, on ztunnel's ports:
//!
//! - **stats** (`:15020`): `GET /stats/prometheus` and `GET /metrics`, the same Prometheus text;
//! - **readiness** (`:15021`): `GET /healthz/ready`, 200 only while the readiness check passes
//!   (certificates and WDS synced), else 503 with the reason;
//! - **admin** (`127.0.0.1:15000`): `GET /config_dump` (the data path's state plus a telemetry
//!   summary), `GET /logging` (the current filter), `POST /logging?level=debug` or
//!   `POST /logging?access=info` (change the filter at runtime), `POST /quitquitquit` (ask the
//!   process to shut down).
//!
//! Every server is HTTP/1.1, reads no request bodies, answers 405 to methods other than the one
//! an endpoint takes (and to anything but GET and POST) and 404 to unknown paths. The admin
//! server can stop the process and raise log levels, so [`serve_admin`] refuses any address
//! that is not loopback.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ambit_app::http::{self, BindError, Method, Reply, Route, StatusCode};
use ambit_proto::ports;
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::telemetry::{Metrics, Telemetry};

pub use ambit_app::http::Server;

/// ztunnel's admin address: loopback only.
pub const DEFAULT_ADMIN_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports::ADMIN);
/// ztunnel's stats address.
pub const DEFAULT_STATS_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), ports::STATS);
/// ztunnel's readiness address.
pub const DEFAULT_READINESS_ADDR: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), ports::READINESS);

/// Answers whether the proxy is ready; `Err` carries the reason shown with the 503.
pub type ReadinessCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Produces the data path's state for `/config_dump`.
pub type ConfigDumpProvider = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A readiness check that passes while `rx` holds `true`, failing with `reason` otherwise.
pub fn ready_when(rx: watch::Receiver<bool>, reason: impl Into<String>) -> ReadinessCheck {
    let reason = reason.into();
    Arc::new(move || (*rx.borrow()).then_some(()).ok_or_else(|| reason.clone()))
}

/// How `/logging` reads and changes the process's log filter (the binary wires both to a
/// `tracing-subscriber` reload handle).
#[derive(Clone)]
pub struct LogControl {
    current: Arc<dyn Fn() -> String + Send + Sync>,
    set: SetLogFilter,
}

type SetLogFilter = Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

impl LogControl {
    /// `current` returns the filter in `RUST_LOG` syntax; `set` installs a whole new filter and
    /// returns the filter now in effect, or why it was refused.
    pub fn new(
        current: impl Fn() -> String + Send + Sync + 'static,
        set: impl Fn(&str) -> Result<String, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            current: Arc::new(current),
            set: Arc::new(set),
        }
    }
}

impl fmt::Debug for LogControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogControl").finish_non_exhaustive()
    }
}

/// Everything the admin server serves.
#[derive(Clone)]
pub struct Admin {
    pub telemetry: Telemetry,
    pub config_dump: ConfigDumpProvider,
    pub logging: LogControl,
    /// Notified (once, with a stored permit) by `POST /quitquitquit`.
    pub shutdown: Arc<Notify>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("telemetry", &self.telemetry)
            .finish_non_exhaustive()
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("the admin server listens on loopback only, not on {0}")]
    NotLoopback(SocketAddr),
}

/// Serves `/stats/prometheus` and `/metrics` from `metrics` on `addr`.
pub async fn serve_stats(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Server, AdminError> {
    spawn("stats", addr, move |method, path, _query| match path {
        "/stats/prometheus" | "/metrics" if method == Method::GET => {
            let text = "text/plain; version=0.0.4; charset=utf-8";
            Reply::new(StatusCode::OK, text, metrics.render())
        }
        "/stats/prometheus" | "/metrics" => Reply::method_not_allowed("GET"),
        _ => Reply::not_found(path),
    })
    .await
}

/// Serves `/healthz/ready` on `addr`, answering from `check` on every probe.
pub async fn serve_readiness(
    addr: SocketAddr,
    check: ReadinessCheck,
) -> Result<Server, AdminError> {
    spawn("readiness", addr, move |method, path, _query| match path {
        "/healthz/ready" if method == Method::GET => match check() {
            Ok(()) => Reply::text(StatusCode::OK, "ready\n"),
            Err(reason) => Reply::text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
        "/healthz/ready" => Reply::method_not_allowed("GET"),
        _ => Reply::not_found(path),
    })
    .await
}

/// Serves the admin endpoints on `addr`, which must be a loopback address.
pub async fn serve_admin(addr: SocketAddr, admin: Admin) -> Result<Server, AdminError> {
    if !addr.ip().is_loopback() {
        return Err(AdminError::NotLoopback(addr));
    }
    spawn("admin", addr, move |method, path, query| {
        route_admin(&admin, method, path, query)
    })
    .await
}

// === admin routes ===

fn route_admin(admin: &Admin, method: &Method, path: &str, query: Option<&str>) -> Reply {
    match (path, method) {
        ("/", &Method::GET) => Reply::text(
            StatusCode::OK,
            "GET  /config_dump\nGET  /logging\nPOST /logging?level=<filter> | ?<target>=<level>\n\
             POST /quitquitquit\n",
        ),
        ("/config_dump", &Method::GET) => {
            let mut dump = (admin.config_dump)();
            let summary = admin.telemetry.summary();
            match &mut dump {
                serde_json::Value::Object(map) if !map.contains_key("telemetry") => {
                    map.insert("telemetry".into(), summary);
                }
                _ => dump = serde_json::json!({ "config": dump, "telemetry": summary }),
            }
            Reply::json(&dump)
        }
        ("/logging", &Method::GET) => Reply::text(
            StatusCode::OK,
            format!("current log filter is {}\n", (admin.logging.current)()),
        ),
        ("/logging", &Method::POST) => change_logging(&admin.logging, query.unwrap_or("")),
        ("/quitquitquit", &Method::POST) => {
            warn!("shutdown requested through the admin server");
            admin.shutdown.notify_one();
            Reply::text(StatusCode::OK, "shutting down\n")
        }
        ("/" | "/config_dump", _) => Reply::method_not_allowed("GET"),
        ("/logging", _) => Reply::method_not_allowed("GET, POST"),
        ("/quitquitquit", _) => Reply::method_not_allowed("POST"),
        _ => Reply::not_found(path),
    }
}

fn change_logging(logging: &LogControl, query: &str) -> Reply {
    let filter = match merge_log_filter(&(logging.current)(), query) {
        Ok(filter) => filter,
        Err(e) => return Reply::text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    match (logging.set)(&filter) {
        Ok(now) => {
            info!(filter = %now, "log filter changed through the admin server");
            Reply::text(StatusCode::OK, format!("current log filter is {now}\n"))
        }
        Err(e) => Reply::text(
            StatusCode::BAD_REQUEST,
            format!("log filter {filter:?} refused: {e}\n"),
        ),
    }
}

/// Why a `POST /logging` query was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoggingQueryError {
    #[error("expected ?level=<filter> or ?<target>=<level>, got {0:?}")]
    Malformed(String),
    #[error("unknown level {level:?} for target {target:?} (off, error, warn, info, debug, trace)")]
    UnknownLevel { target: String, level: String },
}

/// Applies a `/logging` query to the filter `current` (in `RUST_LOG` syntax): `level=<filter>`
/// replaces the whole filter, `<target>=<level>` replaces or adds that target's directive.
pub fn merge_log_filter(current: &str, query: &str) -> Result<String, LoggingQueryError> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let malformed = || LoggingQueryError::Malformed(query.to_owned());
    let mut directives: Vec<String> = split_directives(current);
    let mut changed = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(malformed)?;
        let key = percent_decode(key).ok_or_else(malformed)?;
        let value = percent_decode(value).ok_or_else(malformed)?;
        if key.is_empty() || value.is_empty() {
            return Err(malformed());
        }
        if key == "level" {
            directives = split_directives(&value);
        } else {
            if !LEVELS.contains(&value.to_ascii_lowercase().as_str()) {
                return Err(LoggingQueryError::UnknownLevel {
                    target: key,
                    level: value,
                });
            }
            directives.retain(|d| d.split_once('=').is_none_or(|(t, _)| t != key));
            directives.push(format!("{key}={value}"));
        }
        changed = true;
    }
    if !changed {
        return Err(malformed());
    }
    Ok(directives.join(","))
}

fn split_directives(filter: &str) -> Vec<String> {
    filter
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

// === HTTP plumbing ===

/// Serves `route` on `addr`, answering 405 to anything but GET and POST before it is asked.
async fn spawn<F>(server: &'static str, addr: SocketAddr, route: F) -> Result<Server, AdminError>
where
    F: Fn(&Method, &str, Option<&str>) -> Reply + Send + Sync + 'static,
{
    let route: Route = Arc::new(move |method: &Method, path: &str, query: Option<&str>| {
        if method == Method::GET || method == Method::POST {
            route(method, path, query)
        } else {
            Reply::method_not_allowed("GET, POST")
        }
    });
    Ok(http::spawn(server, addr, route).await?)
}
