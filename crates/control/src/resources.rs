//! The translation's output as xDS resources: names, aliases and encoded bodies.
//!
//! Workloads and services are also reachable under the `<network>/<ip>` names a node proxy
//! uses for on-demand lookups of an address it has not seen (ztunnel's form), as aliases.

use ambit_model::enroll::enrollment;
use ambit_model::{ClusterState, MeshConfig, MeshSnapshot};
use ambit_proto::capture::PodEnrollment;
use ambit_xds::server::Resource;
use ambit_xds::wds::ip_from_bytes;
use prost::Message;

/// Every `istio.workload.Address` resource of the snapshot.
pub(crate) fn addresses(snapshot: &MeshSnapshot, mesh: &MeshConfig) -> Vec<Resource> {
    let workloads = snapshot.workloads.iter().map(|(name, w)| {
        let ips = w.addresses.iter().map(Vec::as_slice);
        resource(name, encode_oneof(WORKLOAD_TAG, w), ips, mesh)
    });
    let services = snapshot.services.iter().map(|(name, s)| {
        let ips = s.addresses.iter().map(|a| a.address.as_slice());
        resource(name, encode_oneof(SERVICE_TAG, s), ips, mesh)
    });
    workloads.chain(services).collect()
}

/// The `istio.workload.Address` resources of `names` (workload uids or service keys; names
/// the snapshot does not hold are skipped).
pub(crate) fn addresses_named(
    snapshot: &MeshSnapshot,
    mesh: &MeshConfig,
    names: &[String],
) -> Vec<Resource> {
    names
        .iter()
        .filter_map(|name| {
            if let Some(w) = snapshot.workloads.get(name) {
                let ips = w.addresses.iter().map(Vec::as_slice);
                Some(resource(name, encode_oneof(WORKLOAD_TAG, w), ips, mesh))
            } else {
                let s = snapshot.services.get(name)?;
                let ips = s.addresses.iter().map(|a| a.address.as_slice());
                Some(resource(name, encode_oneof(SERVICE_TAG, s), ips, mesh))
            }
        })
        .collect()
}

/// Field numbers of `Address.type` (`oneof { Workload workload = 1; Service service = 2; }`).
const WORKLOAD_TAG: u32 = 1;
const SERVICE_TAG: u32 = 2;

/// Encodes an `Address` holding `message` in its oneof without cloning the message into one:
/// the bytes are exactly `Address { type: Some(..) }.encode_to_vec()` (asserted in the tests).
fn encode_oneof(tag: u32, message: &impl Message) -> Vec<u8> {
    let mut buf = Vec::with_capacity(message.encoded_len() + 6);
    prost::encoding::message::encode(tag, message, &mut buf);
    buf
}

fn resource<'a>(
    name: &str,
    value: Vec<u8>,
    ips: impl Iterator<Item = &'a [u8]>,
    mesh: &MeshConfig,
) -> Resource {
    let aliases = ips
        .filter_map(ip_from_bytes)
        .map(|ip| format!("{}/{ip}", mesh.network));
    let body = prost_types::Any {
        type_url: ambit_proto::ADDRESS_TYPE_URL.to_owned(),
        value,
    };
    Resource::new(name, body).with_aliases(aliases)
}

/// Every `istio.security.Authorization` resource of the snapshot (dry-run policies are not in
/// it), named `<namespace>/<name>`.
pub(crate) fn authorizations(snapshot: &MeshSnapshot) -> Vec<Resource> {
    snapshot
        .authorizations
        .iter()
        .map(|(name, a)| {
            let body = prost_types::Any {
                type_url: ambit_proto::AUTHORIZATION_TYPE_URL.to_owned(),
                value: a.encode_to_vec(),
            };
            Resource::new(name, body)
        })
        .collect()
}

/// One `ambit.capture.PodEnrollment` per pod, named `<namespace>/<name>`, from the moment its
/// object exists: the capture agent decides at CNI ADD, before the pod has an IP, and a pod
/// without a resource is one it cannot decide yet. Finished pods are left out (a runtime
/// starts no sandbox for them).
pub(crate) fn pod_enrollments(state: &ClusterState) -> Vec<Resource> {
    state
        .pods
        .iter()
        .filter(|(_, pod)| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .map(|((namespace, name), pod)| {
            let decision = enrollment(pod, state.namespaces.get(namespace));
            let spec = pod.spec.as_ref();
            let status = pod.status.as_ref();
            let mut addresses: Vec<Vec<u8>> = status
                .and_then(|s| s.pod_ips.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|p| p.ip.parse::<std::net::IpAddr>().ok())
                .map(ip_octets)
                .collect();
            if addresses.is_empty()
                && let Some(ip) = status.and_then(|s| s.pod_ip.as_deref())
                && let Ok(ip) = ip.parse::<std::net::IpAddr>()
            {
                addresses.push(ip_octets(ip));
            }
            let message = PodEnrollment {
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                namespace: namespace.clone(),
                name: name.clone(),
                node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
                service_account: spec
                    .and_then(|s| s.service_account_name.clone())
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "default".to_owned()),
                enrolled: decision.is_enrolled(),
                reason: decision.reason().to_owned(),
                addresses,
            };
            let body = prost_types::Any {
                type_url: ambit_proto::POD_ENROLLMENT_TYPE_URL.to_owned(),
                value: message.encode_to_vec(),
            };
            Resource::new(format!("{namespace}/{name}"), body)
        })
        .collect()
}

fn ip_octets(ip: std::net::IpAddr) -> Vec<u8> {
    match ip {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use ambit_proto::workload::{Address, NetworkAddress, Service, Workload, address};
    use prost::Message;

    use super::*;

    #[test]
    fn oneof_encoding_matches_the_address_message() {
        let w = Workload {
            uid: "Kubernetes//Pod/ns/a".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            ..Workload::default()
        };
        let s = Service {
            hostname: "a.ns.svc.cluster.local".into(),
            addresses: vec![NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 1],
            }],
            ..Service::default()
        };
        let wrapped_w = Address {
            r#type: Some(address::Type::Workload(w.clone())),
        }
        .encode_to_vec();
        let wrapped_s = Address {
            r#type: Some(address::Type::Service(s.clone())),
        }
        .encode_to_vec();
        assert_eq!(encode_oneof(WORKLOAD_TAG, &w), wrapped_w);
        assert_eq!(encode_oneof(SERVICE_TAG, &s), wrapped_s);

        let mut snapshot = MeshSnapshot::default();
        snapshot.workloads.insert(w.uid.clone(), w);
        snapshot
            .services
            .insert("ns/a.ns.svc.cluster.local".into(), s);
        let resources = addresses(&snapshot, &MeshConfig::istio_defaults());
        assert_eq!(resources.len(), 2);
        assert_eq!(resources[0].aliases, ["/10.0.0.1"]);
        assert_eq!(resources[1].aliases, ["/10.96.0.1"]);
    }
}
