//! The translation's output as xDS resources: names, aliases and encoded bodies.
//!
//! Workloads and services are also reachable under the `<network>/<ip>` names a node proxy
//! uses for on-demand lookups of an address it has not seen (ztunnel's form), as aliases.

use std::net::IpAddr;

use ambit_model::{MeshConfig, MeshSnapshot};
use ambit_proto::workload::{Address, address};
use ambit_xds::server::Resource;
use prost::Message;

/// Every `istio.workload.Address` resource of the snapshot.
pub(crate) fn addresses(snapshot: &MeshSnapshot, mesh: &MeshConfig) -> Vec<Resource> {
    snapshot
        .addresses()
        .map(|(name, addr)| resource(name, &addr, mesh))
        .collect()
}

fn resource(name: &str, addr: &Address, mesh: &MeshConfig) -> Resource {
    let ips: Vec<&[u8]> = match &addr.r#type {
        Some(address::Type::Workload(w)) => w.addresses.iter().map(Vec::as_slice).collect(),
        Some(address::Type::Service(s)) => {
            s.addresses.iter().map(|a| a.address.as_slice()).collect()
        }
        None => Vec::new(),
    };
    let aliases = ips
        .into_iter()
        .filter_map(ip)
        .map(|ip| format!("{}/{ip}", mesh.network));
    let body = prost_types::Any {
        type_url: ambit_proto::ADDRESS_TYPE_URL.to_owned(),
        value: addr.encode_to_vec(),
    };
    Resource::new(name, body).with_aliases(aliases)
}

fn ip(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}
