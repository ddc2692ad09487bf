//! The verdict: which connections of enrolled workloads were carried over mutual TLS.
//!
//! Evidence comes from two places, each giving its own rows:
//! - **capture**: flows seen on the wire ([`crate::flows`]), matched to workloads by address.
//!   A flow is mTLS when it went to an enrolled workload's HBONE port (15008) and both
//!   directions were TLS records (or empty). TLS 1.3 hides the client certificate, so "mutual"
//!   rests on what the HBONE port is: a listener that accepts no connection without one.
//! - **metrics**: the node proxies' `istio_tcp_*` counters, one row per connection kind,
//!   preferring what the destination's proxy counted; `connection_security_policy="mutual_tls"`
//!   is mTLS.
//! - **access logs**: the node proxies' `connection complete` lines, judged like metrics; a
//!   connection through an HBONE tunnel (`dst.hbone_addr`) is mTLS.
//!
//! Invariants:
//! - A flow whose other end is not a known workload (a node address such as the kubelet on
//!   10250, or anything outside the cluster) is listed as leaving the mesh: never counted as
//!   secure, never as a failure.
//! - The report fails ([`Verdict::passed`] false) iff a captured flow between an enrolled
//!   workload and another workload carried plaintext in either direction, or a metric (or an
//!   access log line) shows a connection between two enrolled workloads that was not
//!   `mutual_tls`.

mod capture;
mod inventory;
mod metrics;
mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::Serialize;

pub use inventory::Inventory;

use crate::admin::TcpMetrics;
use crate::flows::Flow;

/// Everything `ambit verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    /// What limits the evidence (no workloads known, incomplete captures, ...).
    pub warnings: Vec<String>,
    pub verdict: Verdict,
}

/// One kind of connection: captured flows with the same ends and status, or one metric label
/// set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub origin: Origin,
    pub source: Endpoint,
    pub destination: Endpoint,
    pub mtls: bool,
    pub status: Status,
    pub connections: u64,
    /// Bytes in both directions: on the wire (capture) or as the proxy counted (metrics).
    pub bytes: u64,
    pub detail: String,
    /// Strings asked for (`--find`) that appeared in the captured payload, in cleartext.
    pub cleartext_matches: Vec<String>,
}

/// Where a row's evidence comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Capture,
    Metrics,
    AccessLog,
}

/// One end of a row.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Endpoint {
    /// `ip` for a source, `ip:port` for a destination (capture only).
    pub address: Option<String>,
    /// `namespace/name` of the pod (capture) or workload (metrics), when known.
    pub workload: Option<String>,
    pub identity: Option<String>,
    pub enrolled: bool,
}

/// What a row says about its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Plaintext of an enrolled workload across the wire: the failure `verify` exists to find.
    Plaintext,
    /// HBONE: mutual TLS between the mesh's node proxies.
    Mtls,
    /// TLS, but not the mesh's (the application's own, or not to the HBONE port).
    Tls,
    /// One end is not a workload of the mesh.
    LeavesMesh,
    /// No end is enrolled, or (metrics) only one is.
    NotEnrolled,
    /// The connection carried no payload.
    NoData,
    /// Too little was captured to tell.
    Undetermined,
}

/// The summary, and whether it passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// No enrolled workload's connection crossed the wire in plaintext.
    pub passed: bool,
    /// Connections by evidence origin and status.
    pub connections: BTreeMap<Origin, BTreeMap<Status, u64>>,
    pub summary: String,
}

impl Status {
    pub fn is_failure(self) -> bool {
        self == Self::Plaintext
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Mtls => "mTLS",
            Self::Tls => "TLS (not HBONE)",
            Self::LeavesMesh => "leaves the mesh",
            Self::NotEnrolled => "not enrolled",
            Self::NoData => "no data",
            Self::Undetermined => "undetermined",
        }
    }

    /// How the verdict line counts connections of this status.
    fn counted_as(self) -> &'static str {
        match self {
            Self::Plaintext => "in plaintext",
            Self::Mtls => "over mTLS",
            Self::Tls => "TLS but not HBONE",
            Self::LeavesMesh => "leaving the mesh",
            Self::NotEnrolled => "not enrolled",
            Self::NoData => "without data",
            Self::Undetermined => "undetermined",
        }
    }
}

/// The evidence to judge.
#[derive(Debug, Clone, Copy, Default)]
pub struct Evidence<'a> {
    pub inventory: Option<&'a Inventory>,
    pub flows: Option<&'a [Flow]>,
    pub metrics: Option<&'a TcpMetrics>,
    /// Access log lines, as counters ([`crate::admin::parse_access_log`]).
    pub access_logs: Option<&'a TcpMetrics>,
    /// Strings to look for in captured cleartext.
    pub find: &'a [String],
}

impl Report {
    /// Judges the evidence.
    pub fn build(evidence: Evidence<'_>) -> Self {
        let empty = Inventory::default();
        let inventory = evidence.inventory.unwrap_or(&empty);
        let mut warnings = Vec::new();
        if inventory.is_empty() && evidence.flows.is_some() {
            warnings.push(
                "no workloads known (no config dump read): every captured flow counts as \
                 leaving the mesh; pass --admin"
                    .to_owned(),
            );
        }
        let mut rows = Vec::new();
        if let Some(flows) = evidence.flows {
            rows.extend(capture::rows(inventory, flows, evidence.find));
            let partial = flows
                .iter()
                .filter(|f| !f.to_server.complete || !f.to_client.complete)
                .count();
            if partial > 0 {
                warnings.push(format!(
                    "{partial} of {} captured flows were not seen from their first byte or \
                     have holes; they were judged on what was captured",
                    flows.len()
                ));
            }
        }
        for (origin, counters) in [
            (Origin::Metrics, evidence.metrics),
            (Origin::AccessLog, evidence.access_logs),
        ] {
            if let Some(counters) = counters {
                rows.extend(metrics::rows(origin, inventory, counters, &mut warnings));
            }
        }
        rows.sort_by(|a, b| {
            (a.origin, a.status, &a.source, &a.destination).cmp(&(
                b.origin,
                b.status,
                &b.source,
                &b.destination,
            ))
        });
        if !rows.is_empty() && !rows.iter().any(|r| r.status == Status::Mtls) {
            warnings.push(
                "no connection was seen over mTLS: is enrolled traffic flowing, and was the \
                 capture taken on the pods' own interfaces?"
                    .to_owned(),
            );
        }
        let verdict = Verdict::of(&rows);
        Self {
            rows,
            warnings,
            verdict,
        }
    }

    /// Whether the report passed: no enrolled workload's plaintext on the wire.
    pub fn passed(&self) -> bool {
        self.verdict.passed
    }

    /// The rows that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Row> {
        self.rows.iter().filter(|r| r.status.is_failure())
    }

    /// The report as text tables, one per origin, then warnings and the verdict line.
    pub fn render_text(&self) -> String {
        render::text(self)
    }
}

// === verdict ===

impl Verdict {
    fn of(rows: &[Row]) -> Self {
        let mut connections: BTreeMap<Origin, BTreeMap<Status, u64>> = BTreeMap::new();
        for row in rows {
            *connections
                .entry(row.origin)
                .or_default()
                .entry(row.status)
                .or_insert(0) += row.connections;
        }
        let tally = connections
            .iter()
            .map(|(origin, by_status)| {
                let counts: Vec<String> = by_status
                    .iter()
                    .map(|(status, n)| format!("{n} {}", status.counted_as()))
                    .collect();
                let origin = match origin {
                    Origin::Capture => "captured",
                    Origin::Metrics => "metrics",
                    Origin::AccessLog => "access logs",
                };
                format!("{origin}: {}", counts.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; ");
        let failures: Vec<&Row> = rows.iter().filter(|r| r.status.is_failure()).collect();
        let summary = if let Some(first) = failures.first() {
            let total: u64 = failures.iter().map(|r| r.connections).sum();
            format!(
                "FAIL: {total} connection(s) of enrolled workloads crossed the wire in \
                 plaintext, e.g. {} -> {} ({}) [{tally}]",
                render::name(&first.source),
                render::name(&first.destination),
                first.detail
            )
        } else if rows.is_empty() {
            "PASS (no evidence): no connections captured or counted".to_owned()
        } else {
            format!(
                "PASS: no connection of an enrolled workload crossed the wire in plaintext \
                 [{tally}]"
            )
        };
        Self {
            passed: failures.is_empty(),
            connections,
            summary,
        }
    }
}
