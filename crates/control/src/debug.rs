//! The JSON views behind `/debug/…` and `ambit config`, and the `/metrics` text.
//!
//! Field names here are Ambit's own (this is an inspection API, not a wire contract); they
//! mirror what `istioctl ztunnel-config` shows so the output reads familiarly.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::Ordering;

use ambit_authz::{Connection, PolicyIndex};
use ambit_identity::SpiffeId;
use ambit_model::{ClusterState, MeshSnapshot};
use ambit_proto::security::{Action, Authorization, Scope};
use ambit_proto::workload::{TunnelProtocol, Workload, WorkloadStatus};
use ambit_xds::server::ServerStats;
use ambit_xds::wds::ip_from_bytes;
use hyper::StatusCode;
use serde_json::{Value, json};

use crate::ca_service::CaStats;
use crate::http::Reply;

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
    // One pass over the workloads: each lists the services it backs by the same key the
    // service map uses (`<namespace>/<hostname>`).
    let mut backing: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for key in snapshot.workloads.values().flat_map(|w| w.services.keys()) {
        *backing.entry(key.as_str()).or_default() += 1;
    }
    let services: Vec<Value> = snapshot
        .services
        .iter()
        .map(|(key, s)| {
            let endpoints = backing.get(key.as_str()).copied().unwrap_or(0);
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

/// `/debug/policies`: the security objects as read, the `istio.security.Authorization`
/// resources they became (served, and dry-run ones kept back), and every issue found.
pub(crate) fn policies(state: &ClusterState, snapshot: &MeshSnapshot) -> Value {
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
    let translated = |resources: &std::collections::BTreeMap<String, Authorization>,
                      dry_run: bool| {
        resources
            .iter()
            .map(move |(key, a)| authorization(key, a, dry_run))
            .collect::<Vec<_>>()
    };
    let mut authorizations = translated(&snapshot.authorizations, false);
    authorizations.extend(translated(&snapshot.dry_run_authorizations, true));
    let issues: Vec<Value> = snapshot
        .policy_issues
        .iter()
        .map(|i| {
            json!({
                "kind": i.kind.to_string(),
                "namespace": i.namespace,
                "name": i.name,
                "message": i.message,
            })
        })
        .collect();
    json!({
        "policies": authz.into_iter().chain(peer).collect::<Vec<_>>(),
        "authorizations": authorizations,
        "issues": issues,
    })
}

fn authorization(key: &str, a: &Authorization, dry_run: bool) -> Value {
    let scope = Scope::try_from(a.scope).map_or("UNKNOWN", |s| s.as_str_name());
    let action = Action::try_from(a.action).map_or("UNKNOWN", |s| s.as_str_name());
    json!({
        "name": key,
        "scope": scope,
        "action": action,
        "rules": a.rules.len(),
        "served": !dry_run,
        "dryRun": dry_run,
    })
}

/// `/debug/authorize?src=<spiffe id, or empty for plaintext>&src_ip=<ip>&dst=<workload uid or
/// ip>&port=<port>`: the decision the destination's node proxy would take, with every policy
/// considered (dry-run ones included) and whether it matched.
pub(crate) fn authorize(snapshot: &MeshSnapshot, query: Option<&str>) -> Reply {
    match authorize_json(snapshot, query.unwrap_or_default()) {
        Ok(value) => Reply::json(&value),
        Err(message) => Reply::text(
            StatusCode::BAD_REQUEST,
            format!(
                "{message}\nusage: /debug/authorize?src=<spiffe id, empty for plaintext>&src_ip=<ip>&dst=<workload uid or ip>&port=<port>\n"
            ),
        ),
    }
}

fn authorize_json(snapshot: &MeshSnapshot, query: &str) -> Result<Value, String> {
    let params = query_params(query)?;
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let src: Option<SpiffeId> = match param("src").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse().map_err(|e| format!("src {s:?}: {e}"))?),
    };
    let dst = param("dst").ok_or("dst is required")?;
    let port: u16 = param("port")
        .ok_or("port is required")?
        .parse()
        .map_err(|_| "port must be a number from 0 to 65535".to_owned())?;
    let dst_ip_given = dst.parse::<IpAddr>().ok();
    let workload = match dst_ip_given {
        Some(ip) => snapshot
            .workloads
            .values()
            .find(|w| w.addresses.iter().any(|a| ip_from_bytes(a) == Some(ip))),
        None => snapshot.workloads.get(dst),
    }
    .ok_or_else(|| format!("dst {dst:?} is no workload's uid or address"))?;
    let dst_ip =
        match dst_ip_given.or_else(|| workload.addresses.first().and_then(|a| ip_from_bytes(a))) {
            Some(ip) => ip,
            None => return Err(format!("workload {} has no address", workload.uid)),
        };
    let src_ip = match param("src_ip") {
        Some(ip) => ip
            .parse::<IpAddr>()
            .map_err(|_| format!("src_ip {ip:?} is not an IP address"))?,
        None => src
            .as_ref()
            .and_then(|id| {
                snapshot.workloads.values().find(|w| {
                    w.namespace == id.namespace()
                        && w.service_account == id.service_account()
                        && w.trust_domain == id.trust_domain().as_str()
                })
            })
            .and_then(|w| w.addresses.first().and_then(|a| ip_from_bytes(a)))
            .ok_or("src_ip is required (no workload has the src identity to take it from)")?,
    };
    let conn = Connection {
        src_ip,
        src_identity: src.as_ref(),
        dst_ip,
        dst_port: port,
    };
    let index = PolicyIndex::from_policies(
        snapshot.authorizations.values(),
        snapshot.dry_run_authorizations.values(),
    );
    let evaluated = snapshot.with_dry_run(workload);
    let trace = index.trace(&evaluated, &conn);
    let policies: Vec<Value> = trace
        .policies
        .iter()
        .map(|e| {
            json!({
                "policy": e.policy,
                "action": e.action.map(|a| a.to_string()),
                "scope": e.scope.map(|s| s.to_string()),
                "dryRun": e.dry_run,
                "found": e.action.is_some(),
                "matched": e.matched_rule.is_some(),
                "matchedRule": e.matched_rule,
                "warnings": e.warnings,
            })
        })
        .collect();
    let d = &trace.decision;
    Ok(json!({
        "connection": {
            "src": src.as_ref().map(SpiffeId::as_str),
            "srcIp": src_ip.to_string(),
            "dst": workload.uid,
            "dstIp": dst_ip.to_string(),
            "port": port,
        },
        "allowed": d.allowed,
        "policy": d.policy,
        "reason": d.to_string(),
        "dryRunDenials": d.dry_run_denials,
        "policies": policies,
    }))
}

/// `k=v&k=v` with percent-decoding (and `+` as space), as browsers and curl send it.
fn query_params(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = [bytes.next(), bytes.next()];
                let digits = hex
                    .iter()
                    .map(|d| d.and_then(|d| (d as char).to_digit(16)))
                    .collect::<Option<Vec<u32>>>();
                match digits.as_deref() {
                    Some([hi, lo]) => out.push((hi * 16 + lo) as u8),
                    _ => return Err(format!("bad percent-encoding in {s:?}")),
                }
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
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

/// A WDS address as text, or `<n bytes>` when it is not 4 or 16 bytes.
fn ip_string(bytes: &[u8]) -> String {
    ip_from_bytes(bytes).map_or_else(|| format!("<{} bytes>", bytes.len()), |ip| ip.to_string())
}
