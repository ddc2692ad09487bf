//! Typed workloads and services: what the data path knows about an address, as
//! [`super::decode`] makes them from the wire (`istio.workload.Workload` /
//! `istio.workload.Service`): addresses are [`IpAddr`]s, the identity a [`SpiffeId`], enums
//! Rust enums.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_identity::SpiffeId;
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

// === impl Workload ===

impl Workload {
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

fn display<T: std::fmt::Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}
