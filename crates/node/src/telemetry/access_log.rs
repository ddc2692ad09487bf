//! ztunnel-shaped access logs: one `connection complete` event per connection, target `access`.
//!
//! The node proxy does not format log lines itself: it emits a `tracing` event whose fields are
//! chosen so that the binary's `tracing-subscriber` layers print exactly what ztunnel prints.
//! In text:
//!
//! ```text
//! INFO access: connection complete src.addr=10.0.0.1:41234 src.workload="sleep" src.namespace="default"
//!   src.identity="spiffe://cluster.local/ns/default/sa/sleep" dst.addr=10.0.0.2:15008
//!   dst.hbone_addr=10.0.0.2:8080 dst.service="httpbin.default.svc.cluster.local"
//!   dst.workload="httpbin" dst.namespace="default" dst.identity="spiffe://cluster.local/ns/default/sa/httpbin"
//!   direction="outbound" bytes_sent=120 bytes_recv=560 duration="12ms"
//! ```
//!
//! (one line), and with `--log-format json` one flattened object with the same keys. The field
//! value types do the quoting: names and identities are recorded as `&str` (quoted in text,
//! strings in JSON), addresses via `Display` (bare in text), byte counts as `u64` (bare in text,
//! numbers in JSON). Unknown fields are `None` and so left out entirely, as ztunnel does;
//! identities are shown only for mutual TLS connections, so a log line never claims an identity
//! that was not proven on the wire.
//!
//! Field meanings follow ztunnel, whose names differ from [`ConnectionInfo`]'s: `dst.addr` is
//! the address the proxy actually connected to (the peer's `:15008` for HBONE) and
//! `dst.hbone_addr` is the original destination carried in the CONNECT `:authority`.
//! `bytes_sent`/`bytes_recv` are from the point of view of the workload this proxy acted for
//! (the client when outbound, the server when inbound).
//!
//! The data path does not emit these events itself: [`crate::telemetry`] hands them to
//! its `writer` module, whose thread emits them off the tokio workers, losing none.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Map, Value};

use super::{ConnectionInfo, Direction, SecurityPolicy};

mod writer;

#[cfg(test)]
pub(crate) use writer::Queue;
pub(crate) use writer::{Entry, submit};
pub use writer::{flush, written_in_place};

/// The access log target; `RUST_LOG=access=off` silences access logs.
pub const TARGET: &str = "access";
/// The message of the per-connection event.
pub const MESSAGE: &str = "connection complete";
/// The message of a connection refused before it was opened.
pub const REFUSED_MESSAGE: &str = "connection failed";

/// How the binary formats log lines (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// tracing-subscriber's text format: `key=value` pairs after the message.
    #[default]
    Text,
    /// One JSON object per line, event fields flattened to the top level.
    Json,
}

impl LogFormat {
    /// `"text"` or `"json"`, as given on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// One access log entry, already in ztunnel's terms (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    pub src_addr: SocketAddr,
    pub src_workload: Option<String>,
    pub src_namespace: Option<String>,
    pub src_identity: Option<String>,
    pub dst_addr: SocketAddr,
    pub dst_hbone_addr: Option<SocketAddr>,
    pub dst_service: Option<String>,
    pub dst_workload: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_identity: Option<String>,
    pub direction: Direction,
    pub bytes_sent: u64,
    pub bytes_recv: u64,
    pub duration: Duration,
    pub error: Option<String>,
}

impl AccessRecord {
    /// The entry for a finished connection. `bytes_sent`/`bytes_recv` are the local workload's.
    pub fn new(
        info: &ConnectionInfo,
        bytes_sent: u64,
        bytes_recv: u64,
        duration: Duration,
        error: Option<String>,
    ) -> Self {
        let mtls = info.security == SecurityPolicy::MutualTls;
        let identity = |id: &str| non_empty(id).filter(|_| mtls);
        // ztunnel names a peer by its workload (pod) name, falling back to its canonical service.
        let name = |w: &str, app: &str| non_empty(w).or_else(|| non_empty(app));
        let (dst_addr, dst_hbone_addr) = match info.dst_hbone_addr {
            Some(tunnel) => (tunnel, Some(info.dst_addr)),
            None => (info.dst_addr, None),
        };
        Self {
            src_addr: info.src_addr,
            src_workload: name(&info.src.workload, &info.src.app),
            src_namespace: non_empty(&info.src.namespace),
            src_identity: identity(&info.src.identity),
            dst_addr,
            dst_hbone_addr,
            dst_service: info
                .dst_service
                .as_ref()
                .and_then(|s| non_empty(&s.hostname)),
            dst_workload: name(&info.dst.workload, &info.dst.app),
            dst_namespace: non_empty(&info.dst.namespace),
            dst_identity: identity(&info.dst.identity),
            direction: info.direction,
            bytes_sent,
            bytes_recv,
            duration,
            error,
        }
    }

    /// ztunnel logs a connection that ended in error at `ERROR`, others at `INFO`.
    pub fn level(&self) -> tracing::Level {
        if self.error.is_some() {
            tracing::Level::ERROR
        } else {
            tracing::Level::INFO
        }
    }

    /// `"123ms"`, ztunnel's duration shape (whole milliseconds).
    pub fn duration_text(&self) -> String {
        format!("{}ms", self.duration.as_millis())
    }

    /// Emits the event (target [`TARGET`], message [`MESSAGE`], level [`Self::level`]).
    pub fn emit(&self) {
        let duration = self.duration_text();
        macro_rules! event_at {
            ($level:expr) => {
                tracing::event!(
                    target: "access",
                    parent: None,
                    $level,
                    src.addr = %self.src_addr,
                    src.workload = self.src_workload.as_deref(),
                    src.namespace = self.src_namespace.as_deref(),
                    src.identity = self.src_identity.as_deref(),
                    dst.addr = %self.dst_addr,
                    dst.hbone_addr = self.dst_hbone_addr.map(display),
                    dst.service = self.dst_service.as_deref(),
                    dst.workload = self.dst_workload.as_deref(),
                    dst.namespace = self.dst_namespace.as_deref(),
                    dst.identity = self.dst_identity.as_deref(),
                    direction = direction_str(self.direction),
                    bytes_sent = self.bytes_sent,
                    bytes_recv = self.bytes_recv,
                    duration = duration.as_str(),
                    error = self.error.as_deref(),
                    "connection complete"
                )
            };
        }
        if self.error.is_some() {
            event_at!(tracing::Level::ERROR);
        } else {
            event_at!(tracing::Level::INFO);
        }
    }
}

/// The text a `tracing-subscriber` fmt layer prints for [`AccessRecord::emit`] after
/// `<LEVEL> access: `, byte for byte (without ANSI colours).
pub fn render_text(record: &AccessRecord) -> String {
    let mut line = String::from(MESSAGE);
    for (key, value) in fields(record) {
        let value = match value {
            FieldValue::Str(s) => format!("{s:?}"),
            FieldValue::Bare(s) => s,
            FieldValue::Number(n) => n.to_string(),
        };
        line.push_str(&format!(" {key}={value}"));
    }
    line
}

/// The keys and values a flattened JSON formatter prints for [`AccessRecord::emit`], besides
/// `timestamp`, `level` and `target`.
pub fn render_json(record: &AccessRecord) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert("message".into(), MESSAGE.into());
    for (key, value) in fields(record) {
        let value = match value {
            FieldValue::Str(s) | FieldValue::Bare(s) => Value::from(s),
            FieldValue::Number(n) => Value::from(n),
        };
        map.insert(key.into(), value);
    }
    map
}

/// Logs a connection refused before it could be described, as ztunnel's `log_early_deny`:
/// level `WARN`, message `connection failed`, only addresses, direction and the error.
pub fn emit_refused(src_addr: SocketAddr, dst_addr: SocketAddr, direction: Direction, error: &str) {
    tracing::event!(
        target: "access",
        parent: None,
        tracing::Level::WARN,
        src.addr = %src_addr,
        dst.addr = %dst_addr,
        direction = direction_str(direction),
        error,
        "connection failed"
    );
}

// === helpers ===

enum FieldValue {
    /// Recorded as `&str`: quoted (Debug-escaped) in text, a string in JSON.
    Str(String),
    /// Recorded via `Display`: bare in text, a string in JSON.
    Bare(String),
    /// Recorded as `u64`: bare in text, a number in JSON.
    Number(u64),
}

/// The fields of [`AccessRecord::emit`], in order, without the absent ones.
fn fields(r: &AccessRecord) -> Vec<(&'static str, FieldValue)> {
    use FieldValue::{Bare, Number, Str};
    let opt = |v: &Option<String>| v.clone().map(Str);
    [
        ("src.addr", Some(Bare(r.src_addr.to_string()))),
        ("src.workload", opt(&r.src_workload)),
        ("src.namespace", opt(&r.src_namespace)),
        ("src.identity", opt(&r.src_identity)),
        ("dst.addr", Some(Bare(r.dst_addr.to_string()))),
        (
            "dst.hbone_addr",
            r.dst_hbone_addr.map(|a| Bare(a.to_string())),
        ),
        ("dst.service", opt(&r.dst_service)),
        ("dst.workload", opt(&r.dst_workload)),
        ("dst.namespace", opt(&r.dst_namespace)),
        ("dst.identity", opt(&r.dst_identity)),
        ("direction", Some(Str(direction_str(r.direction).into()))),
        ("bytes_sent", Some(Number(r.bytes_sent))),
        ("bytes_recv", Some(Number(r.bytes_recv))),
        ("duration", Some(Str(r.duration_text()))),
        ("error", opt(&r.error)),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect()
}

fn direction_str(d: Direction) -> &'static str {
    match d {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}
