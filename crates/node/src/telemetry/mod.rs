//! What the node proxy tells the world about each connection: Istio's standard L4 metrics and
//! ztunnel-shaped access log lines.
//!
//! The data path describes a connection once with a [`ConnectionInfo`] and calls
//! [`Telemetry::open`]; the returned [`ConnectionGuard`] counts bytes and, when finished (or
//! dropped), records the close: `istio_tcp_connections_closed_total`, the byte counters and one
//! `connection complete` access log line.
//!
//! Costs on the data path: [`Telemetry::open`] takes one short mutex-guarded map lookup (the
//! counters of the connection's label set, kept for its lifetime); [`ConnectionGuard::add_sent`]
//! and [`ConnectionGuard::add_recv`] are plain integer adds on the guard; the byte counters reach
//! the shared metrics when the connection finishes, and its access log line is queued for the
//! access log's own thread ([`access_log::flush`] waits for what is queued; it runs when the
//! last handle of a [`Telemetry`] goes).
//!
//! Invariants: every opened connection is closed exactly once in the metrics and logged exactly
//! once, even if the data path forgets to finish it (dropping the guard records it with error
//! `connection dropped`); a log line names a peer identity only for mutual TLS connections.
//!
//! OWNER: telemetry helper. The data path only uses the items declared in this file.

pub mod access_log;
mod exposition;
pub mod metrics;
mod process;
#[cfg(test)]
mod tests;

pub use access_log::LogFormat;
pub use metrics::{Metrics, ResponseFlags};

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use access_log::AccessRecord;
use metrics::{TrafficCounters, TrafficLabels};

/// Which side of the mesh this proxy is on for the connection (Istio's `reporter` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Reported by the source's node proxy (`reporter="source"`, `direction="outbound"`).
    Outbound,
    /// Reported by the destination's node proxy (`reporter="destination"`, `direction="inbound"`).
    Inbound,
}

/// Istio's `connection_security_policy` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecurityPolicy {
    MutualTls,
    Unknown,
}

/// One side of a connection as the mesh knows it (empty fields when unknown).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PeerInfo {
    pub workload: String,
    pub namespace: String,
    /// SPIFFE id, e.g. `spiffe://cluster.local/ns/x/sa/y`.
    pub identity: String,
    /// Canonical name / revision (`app`, `version` labels).
    pub app: String,
    pub version: String,
    pub cluster: String,
}

/// The destination service, if the connection was addressed to one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ServiceInfo {
    /// Hostname, e.g. `exporter.prometheus.svc.cluster.local`.
    pub hostname: String,
    pub name: String,
    pub namespace: String,
}

/// Everything known about a connection when it opens.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub direction: Direction,
    pub src_addr: SocketAddr,
    pub src: PeerInfo,
    /// The address the application asked for (original destination).
    pub dst_addr: SocketAddr,
    /// The HBONE tunnel endpoint (`<pod ip>:15008`) when the connection went over HBONE.
    /// ztunnel's access log calls this `dst.addr` and the original destination `dst.hbone_addr`;
    /// see [`access_log`].
    pub dst_hbone_addr: Option<SocketAddr>,
    pub dst_service: Option<ServiceInfo>,
    pub dst: PeerInfo,
    pub security: SecurityPolicy,
}

/// Shared telemetry sinks of one node proxy.
#[derive(Debug, Clone)]
pub struct Telemetry {
    metrics: Arc<Metrics>,
    format: LogFormat,
    _flush: Arc<FlushWhenLast>,
}

/// Flushes the access log when the last handle of a [`Telemetry`] goes (its proxy is gone: the
/// process may be about to exit), so that the last lines are written.
#[derive(Debug)]
struct FlushWhenLast;

/// A connection in flight; see the [module docs](self).
#[derive(Debug)]
pub struct ConnectionGuard {
    telemetry: Telemetry,
    info: ConnectionInfo,
    counters: Arc<TrafficCounters>,
    opened: Instant,
    bytes_sent: u64,
    bytes_recv: u64,
    finished: bool,
}

/// The error recorded for a guard dropped without [`ConnectionGuard::finish`].
pub const DROPPED: &str = "connection dropped";

// === impl Telemetry ===

impl Telemetry {
    /// Telemetry writing into `metrics`; `format` is the binary's `--log-format` (reported in
    /// `/config_dump`; the events themselves are the same in both formats).
    pub fn new(metrics: Arc<Metrics>, format: LogFormat) -> Self {
        Self {
            metrics,
            format,
            _flush: Arc::new(FlushWhenLast),
        }
    }

    /// The shared metrics registry (for the stats server and the certificate/xDS code).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The log format the binary was started with.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// Records a connection opening (`istio_tcp_connections_opened_total`) and returns the guard
    /// that records its close.
    pub fn open(&self, info: ConnectionInfo) -> ConnectionGuard {
        let counters = self.metrics.traffic(&TrafficLabels::from_connection(&info));
        counters.opened.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            telemetry: self.clone(),
            info,
            counters,
            opened: Instant::now(),
            bytes_sent: 0,
            bytes_recv: 0,
            finished: false,
        }
    }

    /// Logs a connection refused before it was opened (no workload found, no certificate, …)
    /// the way ztunnel logs an early deny: `WARN access: connection failed` with the addresses,
    /// direction and error. Metrics are not touched; a connection the data path could describe
    /// and then denied should go through [`Telemetry::open`] and
    /// [`ConnectionGuard::finish_with_flags`] instead.
    pub fn log_refused(&self, info: &ConnectionInfo, error: impl std::fmt::Display) {
        access_log::submit(access_log::Entry::Refused {
            src: info.src_addr,
            dst: info.dst_addr,
            direction: info.direction,
            error: error.to_string(),
        });
    }

    /// A summary for `/config_dump`: connection totals, certificate expiries, xDS state.
    pub fn summary(&self) -> serde_json::Value {
        let (opened, closed) = self.metrics.connection_totals();
        let certificates: serde_json::Map<_, _> = self
            .metrics
            .certificate_expiries()
            .into_iter()
            .map(|(id, expiry)| (id, serde_json::Value::from(expiry)))
            .collect();
        let xds: serde_json::Map<_, _> = self
            .metrics
            .xds_connection_states()
            .into_iter()
            .map(|(target, up)| (target, serde_json::Value::from(up)))
            .collect();
        serde_json::json!({
            "connections": {
                "opened": opened,
                "closed": closed,
                "active": opened.saturating_sub(closed),
            },
            "certificateExpiry": certificates,
            "xdsConnected": xds,
            "logFormat": self.format.as_str(),
        })
    }
}

// === impl ConnectionGuard ===

impl ConnectionGuard {
    /// Counts `n` bytes sent by the workload this proxy acts for: the client's bytes toward the
    /// server when outbound, the server's bytes toward the client when inbound. This is the
    /// access log's `bytes_sent`.
    pub fn add_sent(&mut self, n: u64) {
        self.bytes_sent += n;
    }

    /// Counts `n` bytes received by the workload this proxy acts for (the access log's
    /// `bytes_recv`); see [`Self::add_sent`].
    pub fn add_recv(&mut self, n: u64) {
        self.bytes_recv += n;
    }

    /// What the connection was opened with.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }

    /// Records the close: `istio_tcp_connections_closed_total`, the byte counters and one
    /// `connection complete` access log line (at `ERROR` when `error` is set, as ztunnel does).
    pub fn finish(mut self, error: Option<String>) {
        self.record(ResponseFlags::None, error);
    }

    /// [`Self::finish`] with Istio's `response_flags` on the close counter (`DENY` for a policy
    /// denial, `CONNECT` when the upstream could not be reached), like ztunnel's
    /// `record_with_flag`.
    pub fn finish_with_flags(mut self, flags: ResponseFlags, error: Option<String>) {
        self.record(flags, error);
    }

    fn record(&mut self, flags: ResponseFlags, error: Option<String>) {
        if self.finished {
            return;
        }
        self.finished = true;
        let metrics = &self.telemetry.metrics;
        let closed = match flags {
            ResponseFlags::None => self.counters.clone(),
            flags => metrics.traffic(&self.counters.labels().with_flags(flags)),
        };
        closed.closed.fetch_add(1, Ordering::Relaxed);

        // Istio's byte counters are from the server's side: "received" is request bytes (client
        // to server), "sent" is response bytes, whichever proxy reports them.
        let (request, response) = match self.info.direction {
            Direction::Outbound => (self.bytes_sent, self.bytes_recv),
            Direction::Inbound => (self.bytes_recv, self.bytes_sent),
        };
        self.counters.received.fetch_add(request, Ordering::Relaxed);
        self.counters.sent.fetch_add(response, Ordering::Relaxed);

        access_log::submit(access_log::Entry::Complete(AccessRecord::new(
            &self.info,
            self.bytes_sent,
            self.bytes_recv,
            self.opened.elapsed(),
            error,
        )));
    }
}

impl Drop for FlushWhenLast {
    fn drop(&mut self) {
        access_log::flush();
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.record(ResponseFlags::None, Some(DROPPED.to_owned()));
        }
    }
}
