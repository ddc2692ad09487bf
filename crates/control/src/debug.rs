//! The JSON views behind `/debug/…` and `ambit config`, and the `/metrics` text.
//!
//! Field names here are Ambit's own (this is an inspection API, not a wire contract); they
//! mirror what `istioctl ztunnel-config` shows so the output reads familiarly.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use ambit_model::{ClusterState, MeshSnapshot};
use ambit_proto::workload::{TunnelProtocol, Workload, WorkloadStatus};
use ambit_xds::server::ServerStats;
use serde_json::{Value, json};

use crate::ca_service::CaStats;

/// `/debug/workloads`: every served workload, plus pods not served and why.
pub(crate) fn workloads(snapshot: &MeshSnapshot) -> Value {
    let served: Vec<Value> = snapshot.workloads.values().map(workload).collect();
    let skipped: Vec<Value> = snapshot
        .pods
        .iter()
        .filter_map(|p| {
            p.skipped
                .as_ref()
                .map(|why| json!({"namespace": p.namespace, "name": p.name, "reason": why}))
        })
        .collect();
    json!({"workloads": served, "skipped": skipped})
}

fn workload(w: &Workload) -> Value {
    let protocol =
        TunnelProtocol::try_from(w.tunnel_protocol).map_or("UNKNOWN", |p| p.as_str_name());
    let status = WorkloadStatus::try_from(w.status).map_or("UNKNOWN", |s| s.as_str_name());
    let services: Vec<&String> = w.services.keys().collect();
    json!({
        "uid": w.uid,
        "name": w.name,
        "namespace": w.namespace,
        "addresses": w.addresses.iter().map(|a| ip_string(a)).collect::<Vec<_>>(),
        "node": w.node,
        "protocol": protocol,
        "identity": format!("spiffe://{}/ns/{}/sa/{}", w.trust_domain, w.namespace, w.service_account),
        "workloadName": w.workload_name,
        "canonicalName": w.canonical_name,
        "canonicalRevision": w.canonical_revision,
        "status": status,
        "services": services,
    })
}

/// `/debug/pods`: every pod with its enrollment decision.
pub(crate) fn pods(snapshot: &MeshSnapshot) -> Value {
    let pods: Vec<Value> = snapshot
        .pods
        .iter()
        .map(|p| {
            json!({
                "namespace": p.namespace,
                "name": p.name,
                "enrolled": p.enrollment.is_enrolled(),
                "reason": p.enrollment.reason(),
                "skipped": p.skipped,
            })
        })
        .collect();
    json!({"pods": pods})
}

/// `/debug/services`.
pub(crate) fn services(snapshot: &MeshSnapshot) -> Value {
    let services: Vec<Value> = snapshot
        .services
        .values()
        .map(|s| {
            let endpoints = snapshot.workloads.values().filter(|w| w.services.contains_key(&format!("{}/{}", s.namespace, s.hostname))).count();
            json!({
                "name": s.name,
                "namespace": s.namespace,
                "hostname": s.hostname,
                "vips": s.addresses.iter().map(|a| ip_string(&a.address)).collect::<Vec<_>>(),
                "ports": s.ports.iter().map(|p| json!({"port": p.service_port, "targetPort": p.target_port})).collect::<Vec<_>>(),
                "subjectAltNames": s.subject_alt_names,
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({"services": services})
}

/// `/debug/policies`: the security objects as read.
pub(crate) fn policies(state: &ClusterState) -> Value {
    let authz: Vec<Value> = state
        .authorization_policies
        .iter()
        .map(|((ns, name), p)| {
            json!({
                "kind": "AuthorizationPolicy",
                "namespace": ns,
                "name": name,
                "action": p.spec.action.clone().unwrap_or_else(|| "ALLOW".to_owned()),
                "selector": p.spec.selector.as_ref().map(|s| &s.match_labels),
                "rules": p.spec.rules.len(),
            })
        })
        .collect();
    let peer: Vec<Value> = state
        .peer_authentications
        .iter()
        .map(|((ns, name), p)| {
            json!({
                "kind": "PeerAuthentication",
                "namespace": ns,
                "name": name,
                "mode": p.spec.mtls.as_ref().and_then(|m| m.mode.clone()).unwrap_or_else(|| "UNSET".to_owned()),
                "selector": p.spec.selector.as_ref().map(|s| &s.match_labels),
                "portLevelMtls": p.spec.port_level_mtls.iter().map(|(k, v)| (k.clone(), json!(v.mode))).collect::<serde_json::Map<_, _>>(),
            })
        })
        .collect();
    json!({"policies": authz.into_iter().chain(peer).collect::<Vec<_>>()})
}

/// `/metrics`, in Prometheus text format.
pub(crate) fn metrics(xds: &ServerStats, ca: &CaStats, snapshot: &MeshSnapshot) -> String {
    let mut out = String::new();
    let enrolled = snapshot
        .workloads
        .values()
        .filter(|w| w.tunnel_protocol == TunnelProtocol::Hbone as i32)
        .count();
    let gauges: [(&str, &str, u64); 3] = [
        (
            "ambit_xds_connected_clients",
            "WDS streams currently open.",
            xds.connected_clients(),
        ),
        (
            "ambit_workloads",
            "Workloads served over WDS.",
            snapshot.workloads.len() as u64,
        ),
        (
            "ambit_workloads_enrolled",
            "Workloads served with the HBONE tunnel protocol.",
            enrolled as u64,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    let counters: [(&str, &str, u64); 6] = [
        (
            "ambit_xds_pushes_total",
            "WDS responses sent.",
            xds.pushes_total(),
        ),
        (
            "ambit_xds_nacks_total",
            "WDS responses rejected by clients.",
            xds.nacks_total(),
        ),
        (
            "ambit_xds_pushed_bytes_total",
            "Encoded bytes of WDS responses sent.",
            xds.bytes_pushed_total(),
        ),
        (
            "ambit_ca_certificates_issued_total",
            "Workload certificates issued.",
            ca.issued.load(Ordering::Relaxed),
        ),
        (
            "ambit_ca_requests_denied_total",
            "Certificate requests refused by authorization.",
            ca.denied.load(Ordering::Relaxed),
        ),
        (
            "ambit_ca_requests_failed_total",
            "Certificate requests that failed (bad CSR, CA error).",
            ca.failed.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP istio_build Build information.\n# TYPE istio_build gauge\nistio_build{{component=\"pilot\",tag=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    out
}

fn ip_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .map(|b| IpAddr::from(b).to_string())
            .unwrap_or_default(),
        16 => <[u8; 16]>::try_from(bytes)
            .map(|b| IpAddr::from(b).to_string())
            .unwrap_or_default(),
        _ => format!("<{} bytes>", bytes.len()),
    }
}
