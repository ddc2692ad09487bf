//! Typed workloads and services: what the data path knows about an address, parsed once from
//! the wire (`istio.workload.Workload` / `istio.workload.Service`).
//!
//! Parsing happens here and only here: addresses become [`IpAddr`]s, the identity becomes a
//! [`SpiffeId`], enums become Rust enums. A resource that does not parse is refused as a whole
//! (the handler NACKs it); nothing downstream re-checks strings.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_identity::{SpiffeId, SpiffeIdError, TrustDomain};
use ambit_proto::workload as pb;
use serde::{Serialize, Serializer};

/// How a workload accepts traffic from the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Protocol {
    /// HTTP/2 CONNECT over mutual TLS to `<ip>:15008`.
    #[serde(rename = "HBONE")]
    Hbone,
    /// Plain TCP: the workload is not in the mesh.
    #[serde(rename = "TCP")]
    Tcp,
}

/// One endpoint of the mesh (a pod).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(rename = "workloadIps")]
    pub addresses: Vec<IpAddr>,
    pub network: String,
    pub protocol: Protocol,
    #[serde(serialize_with = "display")]
    pub identity: SpiffeId,
    pub node: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    /// `deployment`, `cronjob`, `pod` or `job`: the `k8s.<type>.name` key of `Baggage`.
    pub workload_type: &'static str,
    pub workload_name: String,
    /// Services this workload backs (`namespace/hostname`) and their port mappings.
    pub services: BTreeMap<String, Vec<PortMapping>>,
    pub authorization_policies: Vec<String>,
    pub healthy: bool,
    pub cluster_id: String,
    /// The workload shares its node's address: never looked up by IP.
    pub host_network: bool,
    pub region: String,
    pub zone: String,
}

/// A service port and the port the workload listens on for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub service_port: u16,
    /// 0 when the service names a port the workload must resolve (use the service's mapping).
    pub target_port: u16,
}

/// A group of workloads behind virtual IPs and a hostname.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<PortMapping>,
    /// Identities allowed to serve the service besides each endpoint's own.
    pub subject_alt_names: Vec<String>,
}

/// Why a WDS resource was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("not a valid protobuf message: {0}")]
    Protobuf(String),
    #[error("the Address resource holds neither a workload nor a service")]
    Empty,
    #[error("workload has no uid")]
    NoUid,
    #[error("address {index} is {len} bytes long, not 4 (IPv4) or 16 (IPv6)")]
    BadAddress { index: usize, len: usize },
    #[error("unknown tunnel protocol {0}")]
    UnknownProtocol(i32),
    #[error("invalid identity")]
    Identity(#[source] SpiffeIdError),
    #[error("port {port} of {what} is out of range")]
    BadPort { what: &'static str, port: u32 },
    #[error("service has no hostname")]
    NoHostname,
}

// === impl Workload ===

impl Workload {
    /// Parses a WDS workload. `default_td` is used when the resource names no trust domain.
    pub fn from_proto(w: pb::Workload, default_td: &TrustDomain) -> Result<Self, DecodeError> {
        if w.uid.is_empty() {
            return Err(DecodeError::NoUid);
        }
        let addresses = w
            .addresses
            .iter()
            .enumerate()
            .map(|(index, b)| {
                ip_from_bytes(b).ok_or(DecodeError::BadAddress {
                    index,
                    len: b.len(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let protocol = match pb::TunnelProtocol::try_from(w.tunnel_protocol) {
            Ok(pb::TunnelProtocol::Hbone) => Protocol::Hbone,
            Ok(pb::TunnelProtocol::None) => Protocol::Tcp,
            Err(_) => return Err(DecodeError::UnknownProtocol(w.tunnel_protocol)),
        };
        let trust_domain = if w.trust_domain.is_empty() {
            default_td.clone()
        } else {
            TrustDomain::new(w.trust_domain.clone()).map_err(DecodeError::Identity)?
        };
        let service_account = if w.service_account.is_empty() {
            "default".to_owned()
        } else {
            w.service_account.clone()
        };
        let identity = SpiffeId::new(trust_domain, w.namespace.clone(), service_account)
            .map_err(DecodeError::Identity)?;
        let services = w
            .services
            .iter()
            .map(|(key, list)| Ok((key.clone(), ports(&list.ports, "workload")?)))
            .collect::<Result<_, DecodeError>>()?;
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

    /// Whether this workload runs on `node`.
    pub fn is_on(&self, node: &str) -> bool {
        !node.is_empty() && self.node == node
    }

    /// The workload's port for `service_port` of the service `service_key`, if it backs it.
    pub fn target_port(&self, service_key: &str, service_port: u16) -> Option<u16> {
        self.services
            .get(service_key)?
            .iter()
            .find(|p| p.service_port == service_port)
            .map(|p| p.target_port)
    }
}

// === impl Service ===

impl Service {
    pub fn from_proto(s: pb::Service) -> Result<Self, DecodeError> {
        if s.hostname.is_empty() {
            return Err(DecodeError::NoHostname);
        }
        let vips = s
            .addresses
            .iter()
            .enumerate()
            .map(|(index, a)| {
                ip_from_bytes(&a.address).ok_or(DecodeError::BadAddress {
                    index,
                    len: a.address.len(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            ports: ports(&s.ports, "service")?,
            name: s.name,
            namespace: s.namespace,
            hostname: s.hostname,
            vips,
            subject_alt_names: s.subject_alt_names,
        })
    }

    /// `namespace/hostname`: the service's WDS resource name and the key of a workload's
    /// `services` map.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.hostname)
    }

    /// The service's own mapping of `port`, if it exposes it.
    pub fn port(&self, port: u16) -> Option<PortMapping> {
        self.ports.iter().copied().find(|p| p.service_port == port)
    }
}

/// An IPv4 or IPv6 address from its wire bytes.
pub fn ip_from_bytes(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::from(b).to_canonical()),
        _ => None,
    }
}

fn ports(ports: &[pb::Port], what: &'static str) -> Result<Vec<PortMapping>, DecodeError> {
    let port = |port: u32| u16::try_from(port).map_err(|_| DecodeError::BadPort { what, port });
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

#[cfg(test)]
impl Workload {
    /// An HBONE pod `uid` at `ip` in namespace `ns`, service account `x`, on node `n`.
    pub(crate) fn for_test(uid: &str, ip: &str) -> Self {
        Self {
            uid: uid.into(),
            name: uid.into(),
            namespace: "ns".into(),
            addresses: ip.parse().into_iter().collect(),
            network: String::new(),
            protocol: Protocol::Hbone,
            identity: "spiffe://td/ns/ns/sa/x"
                .parse()
                .expect("valid test identity"),
            node: "n".into(),
            canonical_name: uid.into(),
            canonical_revision: "v1".into(),
            workload_type: "deployment",
            workload_name: uid.into(),
            services: BTreeMap::new(),
            authorization_policies: vec![],
            healthy: true,
            cluster_id: String::new(),
            host_network: false,
            region: String::new(),
            zone: String::new(),
        }
    }
}

fn display<T: std::fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn td() -> TrustDomain {
        TrustDomain::new("cluster.local").unwrap()
    }

    fn pod() -> pb::Workload {
        pb::Workload {
            uid: "Kubernetes//Pod/ns/a".into(),
            name: "a".into(),
            namespace: "ns".into(),
            addresses: vec![vec![10, 0, 0, 1]],
            service_account: "sa".into(),
            tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
            ..pb::Workload::default()
        }
    }

    #[test]
    fn a_pod_becomes_a_typed_workload() {
        let w = Workload::from_proto(pod(), &td()).unwrap();
        assert_eq!(w.identity.as_str(), "spiffe://cluster.local/ns/ns/sa/sa");
        assert_eq!(w.addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(w.protocol, Protocol::Hbone);
        assert_eq!(w.workload_name, "a", "defaults to the pod name");
        assert!(w.healthy);
    }

    #[test]
    fn bad_resources_are_refused_with_the_reason() {
        type Mutation = fn(&mut pb::Workload);
        let cases: [(Mutation, &str); 4] = [
            (|w| w.uid.clear(), "no uid"),
            (|w| w.addresses = vec![vec![1, 2, 3]], "3 bytes"),
            (|w| w.tunnel_protocol = 7, "unknown tunnel protocol 7"),
            (|w| w.service_account = "bad/sa".into(), "invalid identity"),
        ];
        for (mutate, expected) in cases {
            let mut w = pod();
            mutate(&mut w);
            let err = Workload::from_proto(w, &td()).unwrap_err().to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    #[test]
    fn ipv4_mapped_ipv6_is_canonical() {
        let mapped = "::ffff:10.0.0.1".parse::<std::net::Ipv6Addr>().unwrap();
        assert_eq!(
            ip_from_bytes(&mapped.octets()),
            Some("10.0.0.1".parse().unwrap())
        );
    }
}
