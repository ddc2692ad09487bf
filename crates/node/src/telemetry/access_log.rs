//! ztunnel-shaped access logs: one `connection complete` event per connection, target `access`.
//!
//! The node proxy does not format log lines itself: it emits a `tracing` event whose fields are
//! those of ztunnel's (`src/proxy/metrics.rs`), in its order and with its value types, and the
//! binary's formatter (`ambit_logging`) prints it as ztunnel does. In text (one line; a TAB,
//! `⇥` here, between the time, level, target, message and fields):
//!
//! ```text
//! 2026-03-01T12:34:56.789012Z⇥info⇥access⇥connection complete⇥src.addr=10.0.0.1:41234
//!   src.workload="sleep" src.namespace="default" src.identity="spiffe://cluster.local/ns/default/sa/sleep"
//!   dst.addr=10.0.0.2:15008 dst.hbone_addr=10.0.0.2:8080 dst.service="httpbin.default.svc.cluster.local"
//!   dst.workload="httpbin" dst.namespace="default" dst.identity="spiffe://cluster.local/ns/default/sa/httpbin"
//!   direction="outbound" bytes_sent=120 bytes_recv=560 duration="12ms"
//! ```
//!
//! and with `--log-format json` one object with `level`, `time`, `scope` and the same keys. The
//! field value types do the quoting: names and identities are recorded as `&str` (quoted in text,
//! strings in JSON), addresses via `Display` (bare in text), byte counts as `u64` (bare in text,
//! numbers in JSON). Unknown fields are `None` and so left out entirely, as ztunnel does;
//! identities are shown only for mutual TLS connections, so a log line never claims an identity
//! that was not proven on the wire. A connection that ended in error is logged at `error` with
//! `error="…"` last. The fields are those of ztunnel up to 1.30: the `src.cluster` and
//! `dst.cluster` of 1.31 are not written.
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

/// How the binary formats log lines (`--log-format`), as `/config_dump` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// ztunnel's text lines: TAB-separated columns, `key=value` fields after the message.
    #[default]
    Text,
    /// ztunnel's JSON: one object per line, `level`, `time`, `scope`, then the fields.
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

fn direction_str(d: Direction) -> &'static str {
    match d {
        Direction::Outbound => "outbound",
        Direction::Inbound => "inbound",
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}
