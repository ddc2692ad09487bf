//! A small hand-written metrics registry, rendered in Prometheus text exposition format 0.0.4.
//!
//! It holds exactly what the node proxy exports and the charts' dashboards read:
//!
//! - Istio's standard L4 counters (`istio_tcp_connections_opened_total`,
//!   `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total`,
//!   `istio_tcp_received_bytes_total`), keyed by ztunnel's label set in ztunnel's order, with
//!   `"unknown"` for anything the mesh does not know (Istio's `DefaultedUnknown`);
//! - `istio_build{component="ztunnel",tag}`;
//! - `ambit_certificate_expiry_seconds{identity}` and `ambit_xds_connection_state{target}`;
//! - process metrics read from `/proc/self` at scrape time.
//!
//! Cost on the data path: one mutex-guarded map lookup when a connection opens (and one more
//! when it closes with a response flag); everything else is an atomic add on counters the
//! connection already holds. Scrapes sort nothing: the maps are ordered.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use super::exposition::{family, sample};
use super::{ConnectionInfo, Direction, SecurityPolicy, ServiceInfo};

/// The `tag` of `istio_build` unless [`Metrics::with_build_tag`] says otherwise.
pub const DEFAULT_BUILD_TAG: &str = env!("CARGO_PKG_VERSION");

/// Istio's `response_flags` label: why a connection ended, as far as the proxy is concerned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ResponseFlags {
    /// `-`: nothing to report.
    #[default]
    None,
    /// `DENY`: an authorization policy denied the connection.
    Deny,
    /// `CONNECT`: the upstream connection could not be established.
    ConnectFailure,
}

impl ResponseFlags {
    /// The label value, as ztunnel writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Deny => "DENY",
            Self::ConnectFailure => "CONNECT",
        }
    }
}

/// The node proxy's metrics; shared behind an `Arc` by every connection and the stats server.
#[derive(Debug)]
pub struct Metrics {
    build_tag: String,
    traffic: Mutex<BTreeMap<TrafficLabels, Arc<TrafficCounters>>>,
    certificate_expiry: Mutex<BTreeMap<String, u64>>,
    xds_state: Mutex<BTreeMap<String, bool>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry whose `istio_build` tag is this crate's version.
    pub fn new() -> Self {
        Self::with_build_tag(DEFAULT_BUILD_TAG)
    }

    /// A registry whose `istio_build` carries `tag` (ztunnel puts the Istio version there).
    pub fn with_build_tag(tag: impl Into<String>) -> Self {
        Self {
            build_tag: tag.into(),
            traffic: Mutex::default(),
            certificate_expiry: Mutex::default(),
            xds_state: Mutex::default(),
        }
    }

    /// Records when the certificate held for `identity` (a SPIFFE id) expires.
    pub fn set_certificate_expiry(&self, identity: &str, not_after: SystemTime) {
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        lock(&self.certificate_expiry).insert(identity.to_owned(), secs);
    }

    /// Forgets `identity` (its last workload left the node).
    pub fn remove_certificate_expiry(&self, identity: &str) {
        lock(&self.certificate_expiry).remove(identity);
    }

    /// Records whether the xDS stream to `target` (e.g. `istiod.istio-system.svc:15012`) is up.
    pub fn set_xds_connection_state(&self, target: &str, connected: bool) {
        lock(&self.xds_state).insert(target.to_owned(), connected);
    }

    /// Certificates known to the registry: (identity, expiry in Unix seconds), by identity.
    pub fn certificate_expiries(&self) -> Vec<(String, u64)> {
        lock(&self.certificate_expiry)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// xDS targets known to the registry and whether each is connected, by target.
    pub fn xds_connection_states(&self) -> Vec<(String, bool)> {
        lock(&self.xds_state)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Connections opened and closed so far, over all label sets.
    pub fn connection_totals(&self) -> (u64, u64) {
        lock(&self.traffic).values().fold((0, 0), |(o, c), t| {
            (
                o + t.opened.load(Ordering::Relaxed),
                c + t.closed.load(Ordering::Relaxed),
            )
        })
    }

    /// Everything, in Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        self.render_traffic(&mut out);
        family(
            &mut out,
            "istio_build",
            "Istio component build info",
            "gauge",
        );
        sample(
            &mut out,
            "istio_build",
            &[("component", "ztunnel"), ("tag", &self.build_tag)],
            1,
        );
        family(
            &mut out,
            "ambit_certificate_expiry_seconds",
            "Unix time at which the certificate held for a workload identity expires",
            "gauge",
        );
        for (identity, secs) in lock(&self.certificate_expiry).iter() {
            let name = "ambit_certificate_expiry_seconds";
            sample(&mut out, name, &[("identity", identity)], *secs);
        }
        family(
            &mut out,
            "ambit_xds_connection_state",
            "Whether the xDS stream to the control plane is connected (1) or not (0)",
            "gauge",
        );
        for (target, up) in lock(&self.xds_state).iter() {
            let name = "ambit_xds_connection_state";
            sample(&mut out, name, &[("target", target)], u64::from(*up));
        }
        super::process::render(&mut out);
        out
    }

    /// The counters of one label set, created on first use.
    pub(crate) fn traffic(&self, labels: &TrafficLabels) -> Arc<TrafficCounters> {
        let mut map = lock(&self.traffic);
        if let Some(counters) = map.get(labels) {
            return counters.clone();
        }
        let counters = Arc::new(TrafficCounters::new(labels.clone()));
        map.insert(labels.clone(), counters.clone());
        counters
    }

    fn render_traffic(&self, out: &mut String) {
        let map = lock(&self.traffic);
        // (name, help, the value of a label set's sample if that family has one)
        type Family = (
            &'static str,
            &'static str,
            fn(&TrafficCounters) -> Option<u64>,
        );
        let families: [Family; 4] = [
            (
                "istio_tcp_connections_opened_total",
                "The total number of TCP connections opened",
                |t| t.opened_family().then(|| t.opened.load(Ordering::Relaxed)),
            ),
            (
                "istio_tcp_connections_closed_total",
                "The total number of TCP connections closed",
                |t| Some(t.closed.load(Ordering::Relaxed)).filter(|c| *c > 0),
            ),
            (
                "istio_tcp_received_bytes_total",
                "The size of total bytes received during request in case of a TCP connection",
                |t| {
                    t.opened_family()
                        .then(|| t.received.load(Ordering::Relaxed))
                },
            ),
            (
                "istio_tcp_sent_bytes_total",
                "The size of total bytes sent during response in case of a TCP connection",
                |t| t.opened_family().then(|| t.sent.load(Ordering::Relaxed)),
            ),
        ];
        for (name, help, value) in families {
            family(out, name, help, "counter");
            for counters in map.values() {
                if let Some(v) = value(counters) {
                    sample(out, name, &counters.labels.pairs(), v);
                }
            }
        }
    }
}

// === impl TrafficLabels ===

/// Istio's L4 label set, in ztunnel's order; every value already defaulted to `"unknown"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct TrafficLabels {
    values: [String; LABEL_NAMES.len()],
}

const LABEL_NAMES: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// Index of `response_flags` in [`LABEL_NAMES`].
const RESPONSE_FLAGS: usize = 21;

impl TrafficLabels {
    pub(crate) fn from_connection(info: &ConnectionInfo) -> Self {
        let (src, dst) = (&info.src, &info.dst);
        let no_service = ServiceInfo::default();
        let svc = info.dst_service.as_ref().unwrap_or(&no_service);
        let reporter = match info.direction {
            Direction::Outbound => "source",
            Direction::Inbound => "destination",
        };
        let policy = match info.security {
            SecurityPolicy::MutualTls => "mutual_tls",
            SecurityPolicy::Unknown => "unknown",
        };
        let v = [
            reporter,
            &src.workload,
            &src.app,
            &src.version,
            &src.namespace,
            &src.identity,
            &src.app,
            &src.version,
            &src.cluster,
            &svc.hostname,
            &svc.namespace,
            &svc.name,
            &dst.workload,
            &dst.app,
            &dst.version,
            &dst.namespace,
            &dst.identity,
            &dst.app,
            &dst.version,
            &dst.cluster,
            "tcp",
            ResponseFlags::None.as_str(),
            policy,
        ];
        Self {
            values: v.map(|s| if s.is_empty() { "unknown" } else { s }.to_owned()),
        }
    }

    /// The same label set with another `response_flags`.
    pub(crate) fn with_flags(&self, flags: ResponseFlags) -> Self {
        let mut labels = self.clone();
        labels.values[RESPONSE_FLAGS] = flags.as_str().to_owned();
        labels
    }

    fn pairs(&self) -> Vec<(&'static str, &str)> {
        LABEL_NAMES
            .iter()
            .zip(&self.values)
            .map(|(n, v)| (*n, v.as_str()))
            .collect()
    }
}

/// The four counters of one label set.
#[derive(Debug)]
pub(crate) struct TrafficCounters {
    labels: TrafficLabels,
    pub(crate) opened: AtomicU64,
    pub(crate) closed: AtomicU64,
    /// Server → client bytes (Istio: "sent during response").
    pub(crate) sent: AtomicU64,
    /// Client → server bytes (Istio: "received during request").
    pub(crate) received: AtomicU64,
}

impl TrafficCounters {
    fn new(labels: TrafficLabels) -> Self {
        Self {
            labels,
            opened: AtomicU64::new(0),
            closed: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
        }
    }

    pub(crate) fn labels(&self) -> &TrafficLabels {
        &self.labels
    }

    /// Whether a connection ever opened with these labels. Like ztunnel's families, the open and
    /// byte counters exist only for label sets seen at open, the closed counter only once a
    /// connection closed with them (a `DENY` set has a close but no open).
    fn opened_family(&self) -> bool {
        self.opened.load(Ordering::Relaxed) > 0
    }
}

// === rendering helpers ===

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave a map half-updated in a way that
    // matters for counters, so keep serving rather than propagate the poison.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
