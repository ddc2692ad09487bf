//! Decoding WDS resources into the data path's types: `istio.workload.Address` into a
//! [`Workload`] or a [`Service`], `istio.security.Authorization` into its message.
//!
//! Decoding happens here and only here, for every consumer (the node proxy, its local-config
//! file, the capture agent): a resource either becomes a typed value or is [`Rejected`] as a
//! whole, with the field at fault; it is never half-applied or silently skipped. Nothing
//! downstream re-checks strings.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_identity::{SpiffeId, TrustDomain};
use ambit_proto::security::Authorization;
use ambit_proto::workload::{self as pb, address};
use prost::Message;

use super::error::{DecodeError, Rejected};
use super::types::{PortMapping, Protocol, Service, Workload};
use crate::Resource;

/// What one `istio.workload.Address` resource holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Address {
    Workload(Box<Workload>),
    Service(Service),
}

/// Decodes an `istio.workload.Address` resource. `default_td` is the trust domain of a
/// workload whose resource names none.
pub fn decode_address(resource: &Resource, default_td: &TrustDomain) -> Result<Address, Rejected> {
    let decoded = pb::Address::decode(resource.body.value.as_slice())
        .map_err(|e| DecodeError::Protobuf(e.to_string()))
        .and_then(|a| match a.r#type {
            Some(address::Type::Workload(w)) => {
                Workload::from_proto(w, default_td).map(|w| Address::Workload(Box::new(w)))
            }
            Some(address::Type::Service(s)) => Service::from_proto(s).map(Address::Service),
            None => Err(DecodeError::Empty),
        });
    decoded.map_err(|error| rejected(resource, error))
}

/// Decodes an `istio.security.Authorization` resource.
pub fn decode_authorization(resource: &Resource) -> Result<Authorization, Rejected> {
    Authorization::decode(resource.body.value.as_slice())
        .map_err(|e| rejected(resource, DecodeError::Protobuf(e.to_string())))
}

fn rejected(resource: &Resource, error: DecodeError) -> Rejected {
    Rejected {
        resource: resource.name.clone(),
        error,
    }
}

// === impl Workload ===

impl Workload {
    /// Parses a WDS workload. `default_td` is used when the resource names no trust domain.
    pub fn from_proto(w: pb::Workload, default_td: &TrustDomain) -> Result<Self, DecodeError> {
        if w.uid.is_empty() {
            return Err(DecodeError::NoUid);
        }
        let addresses = ips(w.addresses.iter().map(Vec::as_slice), "addresses")?;
        let protocol = match pb::TunnelProtocol::try_from(w.tunnel_protocol) {
            Ok(pb::TunnelProtocol::Hbone) => Protocol::Hbone,
            Ok(pb::TunnelProtocol::None) => Protocol::Tcp,
            Err(_) => return Err(DecodeError::UnknownProtocol(w.tunnel_protocol)),
        };
        let trust_domain = if w.trust_domain.is_empty() {
            default_td.clone()
        } else {
            TrustDomain::new(w.trust_domain.clone()).map_err(|source| DecodeError::Identity {
                field: "trust_domain",
                source,
            })?
        };
        let service_account = if w.service_account.is_empty() {
            "default".to_owned()
        } else {
            w.service_account.clone()
        };
        let identity = SpiffeId::new(trust_domain, w.namespace.clone(), service_account).map_err(
            |source| DecodeError::Identity {
                field: "namespace/service_account",
                source,
            },
        )?;
        let services = w
            .services
            .iter()
            .map(|(key, list)| Ok((key.clone(), ports(&list.ports, "services.ports")?)))
            .collect::<Result<BTreeMap<_, _>, DecodeError>>()?;
        let workload_type = match pb::WorkloadType::try_from(w.workload_type) {
            Ok(pb::WorkloadType::Cronjob) => "cronjob",
            Ok(pb::WorkloadType::Pod) => "pod",
            Ok(pb::WorkloadType::Job) => "job",
            _ => "deployment",
        };
        let locality = w.locality.unwrap_or_default();
        Ok(Self {
            workload_name: if w.workload_name.is_empty() {
                w.name.clone()
            } else {
                w.workload_name
            },
            uid: w.uid,
            name: w.name,
            namespace: w.namespace,
            addresses,
            network: w.network,
            protocol,
            identity,
            node: w.node,
            canonical_name: w.canonical_name,
            canonical_revision: w.canonical_revision,
            workload_type,
            services,
            authorization_policies: w.authorization_policies,
            healthy: w.status == pb::WorkloadStatus::Healthy as i32,
            cluster_id: w.cluster_id,
            host_network: w.network_mode == pb::NetworkMode::HostNetwork as i32,
            region: locality.region,
            zone: locality.zone,
        })
    }
}

// === impl Service ===

impl Service {
    pub fn from_proto(s: pb::Service) -> Result<Self, DecodeError> {
        if s.hostname.is_empty() {
            return Err(DecodeError::NoHostname);
        }
        let vips = ips(
            s.addresses.iter().map(|a| a.address.as_slice()),
            "addresses.address",
        )?;
        Ok(Self {
            ports: ports(&s.ports, "ports")?,
            name: s.name,
            namespace: s.namespace,
            hostname: s.hostname,
            vips,
            subject_alt_names: s.subject_alt_names,
        })
    }
}

/// An IPv4 or IPv6 address from its wire bytes (4 or 16); IPv4-mapped IPv6 is the IPv4
/// address.
pub fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::from(b).to_canonical()),
        _ => None,
    }
}

fn ips<'a>(
    all: impl Iterator<Item = &'a [u8]>,
    field: &'static str,
) -> Result<Vec<IpAddr>, DecodeError> {
    all.enumerate()
        .map(|(index, b)| {
            ip_from_bytes(b).ok_or(DecodeError::BadAddress {
                field,
                index,
                len: b.len(),
            })
        })
        .collect()
}

fn ports(ports: &[pb::Port], field: &'static str) -> Result<Vec<PortMapping>, DecodeError> {
    let port = |port: u32| u16::try_from(port).map_err(|_| DecodeError::BadPort { field, port });
    ports
        .iter()
        .map(|p| {
            Ok(PortMapping {
                service_port: port(p.service_port)?,
                target_port: port(p.target_port)?,
            })
        })
        .collect()
}
