//! Rows from L4 counters (metrics, or access logs read as counters): one per connection kind,
//! from the destination's proxy when it counted it.

use std::collections::{BTreeMap, HashSet};

use super::{Endpoint, Inventory, Origin, Row, Status};
use crate::admin::{TcpMetrics, TrafficCounters, TrafficKey};

/// One row per connection kind, from the destination's proxy when it counted it.
pub(super) fn rows(
    origin: Origin,
    inventory: &Inventory,
    metrics: &TcpMetrics,
    warnings: &mut Vec<String>,
) -> Vec<Row> {
    // A node proxy counts outbound (reporter="source") only for its enrolled pods and inbound
    // (reporter="destination") only for them too: the fallback when no dump names a workload.
    let mut reported_enrolled = HashSet::new();
    let mut kinds: BTreeMap<TrafficKey, [Option<TrafficCounters>; 2]> = BTreeMap::new();
    for (key, counters) in &metrics.traffic {
        let from_destination = key.reporter == "destination";
        if from_destination {
            reported_enrolled.insert((&key.destination_namespace, &key.destination_workload));
        } else {
            reported_enrolled.insert((&key.source_namespace, &key.source_workload));
        }
        let kind = TrafficKey {
            reporter: String::new(),
            ..key.clone()
        };
        kinds.entry(kind).or_default()[usize::from(from_destination)] = Some(*counters);
    }
    let mut inferred = false;
    let mut enrolled = |namespace: &String, workload: &String| {
        inventory
            .enrolled_by_name(namespace, workload)
            .unwrap_or_else(|| {
                inferred = true;
                reported_enrolled.contains(&(namespace, workload))
            })
    };
    let mut rows = Vec::new();
    for (kind, [by_source, by_destination]) in kinds {
        let Some(counters) = by_destination.or(by_source) else {
            continue;
        };
        let known = |w: &str| w != "unknown" && !w.is_empty();
        let source = Endpoint {
            address: None,
            workload: known(&kind.source_workload)
                .then(|| format!("{}/{}", kind.source_namespace, kind.source_workload)),
            identity: known(&kind.source_principal).then(|| kind.source_principal.clone()),
            enrolled: known(&kind.source_workload)
                && enrolled(&kind.source_namespace, &kind.source_workload),
        };
        let destination = Endpoint {
            address: None,
            workload: known(&kind.destination_workload).then(|| {
                format!(
                    "{}/{}",
                    kind.destination_namespace, kind.destination_workload
                )
            }),
            identity: known(&kind.destination_principal)
                .then(|| kind.destination_principal.clone()),
            enrolled: known(&kind.destination_workload)
                && enrolled(&kind.destination_namespace, &kind.destination_workload),
        };
        let policy = &kind.connection_security_policy;
        let inbound = by_destination.is_some();
        let evidence = match origin {
            Origin::AccessLog => {
                let tunnel = if policy == "mutual_tls" {
                    "through"
                } else {
                    "without"
                };
                let side = if inbound { "inbound" } else { "outbound" };
                format!("{tunnel} an HBONE tunnel (logged {side})")
            }
            _ => {
                let reporter = if inbound { "destination" } else { "source" };
                format!("connection_security_policy={policy} (reporter={reporter})")
            }
        };
        let (status, why) = if policy == "mutual_tls" {
            (Status::Mtls, "")
        } else if source.workload.is_none() || destination.workload.is_none() {
            (Status::LeavesMesh, "")
        } else if source.enrolled && destination.enrolled {
            (Status::Plaintext, "; both ends are enrolled")
        } else if source.enrolled || destination.enrolled {
            (Status::NotEnrolled, "; one end is not enrolled")
        } else {
            (Status::NotEnrolled, "")
        };
        rows.push(Row {
            origin,
            source,
            destination,
            mtls: status == Status::Mtls,
            status,
            connections: counters.opened,
            bytes: counters.sent + counters.received,
            detail: format!("{evidence}{why}"),
            cleartext_matches: Vec::new(),
        });
    }
    if inferred {
        let what = match origin {
            Origin::AccessLog => "access logs",
            _ => "metrics",
        };
        warnings.push(format!(
            "some workloads in the {what} are in no config dump: their enrollment was \
             inferred from which proxy reported them; pass --admin for every node"
        ));
    }
    rows
}
