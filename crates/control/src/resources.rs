//! The translation's output as xDS resources: names, aliases and encoded bodies.
//!
//! Workloads and services are also reachable under the `<network>/<ip>` names a node proxy
//! uses for on-demand lookups of an address it has not seen (ztunnel's form), as aliases.

use ambit_model::{MeshConfig, MeshSnapshot};
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
