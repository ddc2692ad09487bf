//! The `wds` target: delta-xDS responses from the control plane, through the one WDS decoder
//! ([`ambit_xds::wds`]) into the node proxy's state and its authorization index.
//!
//! Input: `DeltaDiscoveryResponse` messages, each length-delimited (a varint length, then the
//! message), as the xDS client receives them one after another on a stream. Each is turned
//! into an update as the client does (a resource without a name or body refuses the whole
//! response) and handed to the real [`WdsHandler`] of a [`ProxyState`]. Invariants checked:
//! - nothing panics, on any sequence of responses;
//! - an update is refused exactly when one of its resources does not decode (or its type is
//!   not WDS's, which the refusal names), and the refusal names every such resource; each
//!   decode error names its field; the resources that decode are applied;
//! - the state's address index only ever answers with a workload that has that address;
//! - a workload listing a policy the state does not hold is denied (fail closed), and every
//!   workload can be authorized without a panic;
//! - removing every name that was ever upserted leaves no workload, service or address behind.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_identity::{SpiffeId, TrustDomain};
use ambit_proto::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use ambit_xds::Resource;
use ambit_xds::client::{Handler, Update};
use ambit_xds::wds::{DecodeError, decode_address, decode_authorization};
use prost::Message;

use crate::conn::ConnInfo;
use crate::proxy::authorize::authorize;
use crate::state::handler::WdsHandler;
use crate::state::{NodeInfo, ProxyState, Workload};

/// The body of the `wds` target.
pub fn wds(data: &[u8]) {
    let trust_domain = TrustDomain::new("cluster.local").unwrap_or_else(|e| panic!("{e}"));
    let node = NodeInfo {
        node_name: "node-a".to_owned(),
        cluster_id: "Kubernetes".to_owned(),
        trust_domain: trust_domain.clone(),
    };
    let state = ProxyState::new(node, None);
    let handler = WdsHandler::new(state.clone());
    let mut names = BTreeSet::new();
    let mut addresses = BTreeSet::new();
    let mut buf = data;
    while let Ok(response) = DeltaDiscoveryResponse::decode_length_delimited(&mut buf) {
        let Some(update) = update(&response) else {
            continue;
        };
        let known_type = [
            ambit_proto::ADDRESS_TYPE_URL,
            ambit_proto::AUTHORIZATION_TYPE_URL,
        ]
        .contains(&response.type_url.as_str());
        let refused = if known_type {
            refusals(&response.type_url, &update, &trust_domain, &mut addresses)
        } else {
            Vec::new()
        };
        names.extend(update.upserts.iter().map(|r| r.name.clone()));
        match handler.handle(&response.type_url, update) {
            Ok(()) => assert!(known_type && refused.is_empty(), "accepted {refused:?}"),
            Err(message) if !known_type => {
                assert!(
                    message.contains(&response.type_url),
                    "{message:?} names no type"
                );
            }
            Err(message) => {
                assert!(!refused.is_empty(), "refused for nothing: {message}");
                for name in &refused {
                    assert!(
                        message.contains(name.as_str()),
                        "{message:?} does not name {name:?}"
                    );
                }
            }
        }
        check_state(&state, &addresses);
    }
    state.update(|mesh| {
        for name in &names {
            mesh.remove(name);
        }
        assert_eq!(
            mesh.workloads().count(),
            0,
            "workloads left after removing every name"
        );
        assert_eq!(
            mesh.services().count(),
            0,
            "services left after removing every name"
        );
        for ip in &addresses {
            assert!(mesh.workload_by_ip(*ip).is_none(), "{ip} still indexed");
            assert!(
                mesh.service_by_vip(*ip).is_none(),
                "{ip} still indexed as a VIP"
            );
        }
    });
}

/// The update the xDS client hands its handler, or `None` when it refuses the response whole.
fn update(response: &DeltaDiscoveryResponse) -> Option<Update> {
    let upserts = response
        .resources
        .iter()
        .map(|r| {
            let body = r.resource.clone()?;
            (!r.name.is_empty()).then(|| Resource {
                name: r.name.clone(),
                aliases: r.aliases.clone(),
                body,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Update {
        upserts,
        removals: response.removed_resources.clone(),
        initial: false,
    })
}

/// The resources of `update` that do not decode, checking that each error names its field;
/// collects the addresses of those that do.
fn refusals(
    type_url: &str,
    update: &Update,
    trust_domain: &TrustDomain,
    addresses: &mut BTreeSet<IpAddr>,
) -> Vec<String> {
    let mut refused = Vec::new();
    for resource in &update.upserts {
        let error = if type_url == ambit_proto::ADDRESS_TYPE_URL {
            match decode_address(resource, trust_domain) {
                Ok(ambit_xds::wds::Address::Workload(w)) => {
                    addresses.extend(w.addresses.iter().copied());
                    None
                }
                Ok(ambit_xds::wds::Address::Service(s)) => {
                    addresses.extend(s.vips.iter().copied());
                    None
                }
                Err(rejected) => Some(rejected),
            }
        } else {
            decode_authorization(resource).err()
        };
        if let Some(rejected) = error {
            assert_eq!(rejected.resource, resource.name);
            assert!(rejected.to_string().starts_with(&resource.name));
            if !matches!(rejected.error, DecodeError::Protobuf(_)) {
                let text = rejected.error.to_string();
                assert!(text.contains("field `"), "{text:?} names no field");
            }
            refused.push(resource.name.clone());
        }
    }
    refused
}

fn check_state(state: &ProxyState, addresses: &BTreeSet<IpAddr>) {
    let workloads: Vec<Arc<Workload>> = state.read(|mesh| {
        for ip in addresses {
            if let Some(w) = mesh.workload_by_ip(*ip) {
                assert!(
                    w.addresses.contains(ip) && !w.host_network,
                    "{ip} → {}",
                    w.uid
                );
            }
            if let Some(s) = mesh.service_by_vip(*ip) {
                assert!(s.vips.contains(ip), "{ip} → {}", s.key());
            }
        }
        mesh.workloads().cloned().collect()
    });
    let peer: SpiffeId = "spiffe://cluster.local/ns/default/sa/client"
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    for workload in workloads {
        let dst = workload
            .addresses
            .first()
            .copied()
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let conn = ConnInfo {
            src_identity: Some(peer.clone()),
            src_ip: IpAddr::from([10, 0, 0, 1]),
            dst: SocketAddr::new(dst, 8080),
            dst_workload: workload.clone(),
        };
        let decision = authorize(state, &conn);
        let missing = state.read(|mesh| {
            workload
                .authorization_policies
                .iter()
                .any(|name| mesh.policy_index().get(name).is_none())
        });
        if missing {
            assert!(
                decision.is_err(),
                "{} lists a missing policy, yet is allowed",
                workload.uid
            );
        }
    }
}

#[cfg(test)]
mod tests;
