//! Rows from captured flows: each flow's ends looked up among the workloads, judged, and
//! grouped by (source address, destination address and port, status).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ambit_proto::ports::HBONE;

use super::{Endpoint, Inventory, Origin, Row, Status};
use crate::admin::Workload;
use crate::flows::{Class, Flow};

/// Groups flows by (source address, destination address and port, status).
pub(super) fn rows(inventory: &Inventory, flows: &[Flow], find: &[String]) -> Vec<Row> {
    let mut rows: BTreeMap<(Endpoint, Endpoint, Status), Row> = BTreeMap::new();
    for flow in flows {
        let source = capture_endpoint(inventory.at(flow.client.ip()), flow.client, false);
        let destination = capture_endpoint(inventory.at(flow.server.ip()), flow.server, true);
        let (status, detail) = judge_flow(flow, &source, &destination);
        let matches: Vec<String> = find
            .iter()
            .filter(|n| flow.contains(n.as_bytes()))
            .cloned()
            .collect();
        let key = (source.clone(), destination.clone(), status);
        let row = rows.entry(key).or_insert_with(|| Row {
            origin: Origin::Capture,
            source,
            destination,
            mtls: status == Status::Mtls,
            status,
            connections: 0,
            bytes: 0,
            detail,
            cleartext_matches: Vec::new(),
        });
        row.connections += 1;
        row.bytes += flow.bytes();
        for m in matches {
            if !row.cleartext_matches.contains(&m) {
                row.cleartext_matches.push(m);
            }
        }
    }
    rows.into_values().collect()
}

fn capture_endpoint(workload: Option<&Workload>, addr: SocketAddr, with_port: bool) -> Endpoint {
    Endpoint {
        address: Some(if with_port {
            addr.to_string()
        } else {
            addr.ip().to_string()
        }),
        workload: workload.map(Workload::display_name),
        identity: workload.map(|w| w.identity.clone()),
        enrolled: workload.is_some_and(Workload::is_enrolled),
    }
}

fn judge_flow(flow: &Flow, source: &Endpoint, destination: &Endpoint) -> (Status, String) {
    let (up, down) = (flow.to_server.class, flow.to_client.class);
    let plaintext = match (up == Class::Plaintext, down == Class::Plaintext) {
        (true, true) => Some("plaintext both ways"),
        (true, false) => Some("the client sent plaintext"),
        (false, true) => Some("the server sent plaintext"),
        (false, false) => None,
    };
    if source.workload.is_none() || destination.workload.is_none() {
        let outside = match (&source.workload, &destination.workload) {
            (None, None) => "neither end is a workload of the mesh".to_owned(),
            (None, _) => format!("{} is not a workload", address(source)),
            _ => format!("{} is not a workload", address(destination)),
        };
        let carried = plaintext.unwrap_or(match (up, down) {
            (Class::Tls | Class::Empty, Class::Tls | Class::Empty) => "TLS or nothing",
            _ => "undetermined",
        });
        return (Status::LeavesMesh, format!("{outside} ({carried})"));
    }
    if !source.enrolled && !destination.enrolled {
        return (Status::NotEnrolled, "neither end is enrolled".into());
    }
    // Between an enrolled pod and one outside the mesh, plaintext is what Istio does (the
    // outside end cannot speak HBONE); it is a failure only when both ends are enrolled, as the
    // metrics and access-log rows judge it too.
    if let Some(what) = plaintext {
        if !(source.enrolled && destination.enrolled) {
            let outside = if source.enrolled {
                "destination"
            } else {
                "source"
            };
            return (
                Status::NotEnrolled,
                format!("{what}; the {outside} is not enrolled"),
            );
        }
        return (Status::Plaintext, what.to_owned());
    }
    let secure = |c: Class| matches!(c, Class::Tls | Class::Empty);
    match (up, down) {
        (Class::Empty, Class::Empty) => (Status::NoData, "no payload captured".into()),
        (u, d) if secure(u) && secure(d) => {
            if flow.server.port() == HBONE && destination.enrolled {
                (
                    Status::Mtls,
                    "TLS records both ways to the HBONE port".into(),
                )
            } else {
                let port = flow.server.port();
                (
                    Status::Tls,
                    format!("TLS to port {port}, not the mesh's HBONE"),
                )
            }
        }
        _ => (
            Status::Undetermined,
            format!("captured too little to tell (client: {up:?}, server: {down:?})"),
        ),
    }
}

fn address(end: &Endpoint) -> &str {
    end.address.as_deref().unwrap_or("?")
}
