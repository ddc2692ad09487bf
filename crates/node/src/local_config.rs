//! A static mesh from a file, for running without a control plane (ztunnel's `LOCAL_XDS_PATH`).
//!
//! The file is YAML (or JSON, which YAML reads too) with ztunnel's field names:
//!
//! ```yaml
//! workloads:
//! - name: echo
//!   namespace: demo
//!   serviceAccount: echo
//!   workloadIps: [10.0.0.2]
//!   protocol: HBONE          # or TCP
//!   node: node-a
//!   services:
//!     demo/echo.demo.svc.cluster.local: {80: 8080}
//! services:
//! - name: echo
//!   namespace: demo
//!   hostname: echo.demo.svc.cluster.local
//!   vips: [/10.96.0.10]      # `<network>/<ip>` or a bare ip
//!   ports: {80: 8080}
//! ```
//!
//! Each entry becomes the same `istio.workload` message WDS would carry and goes through the
//! same decoding ([`ambit_xds::wds`]), so a file and a control plane cannot disagree on
//! what a field means. Unknown fields are refused, naming the path to them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use ambit_proto::workload as pb;
use ambit_xds::wds::{DecodeError, Service, Workload};
use serde::Deserialize;

use crate::state::{MeshState, NodeInfo};

/// Why the local config could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalConfigError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: {what} {index}")]
    Invalid {
        path: String,
        what: &'static str,
        index: usize,
        #[source]
        source: DecodeError,
    },
    #[error("{path}: {what} {index}: {value:?} is not an IP address")]
    BadIp {
        path: String,
        what: &'static str,
        index: usize,
        value: String,
    },
}

/// The file's top level.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    #[serde(default)]
    pub workloads: Vec<LocalWorkload>,
    #[serde(default)]
    pub services: Vec<LocalService>,
}

/// One workload, with ztunnel's local-config field names.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalWorkload {
    /// Defaults to `<clusterId>//Pod/<namespace>/<name>` (Istio's form).
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub workload_ips: Vec<String>,
    /// `HBONE` or `TCP` (default).
    pub protocol: String,
    pub node: String,
    pub trust_domain: String,
    pub network: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub workload_name: String,
    /// `deployment` (default), `cronjob`, `pod` or `job`.
    pub workload_type: String,
    /// `Healthy` (default) or `Unhealthy`.
    pub status: String,
    pub cluster_id: String,
    /// `namespace/hostname` → service port → target port.
    pub services: BTreeMap<String, BTreeMap<u32, u32>>,
    pub authorization_policies: Vec<String>,
}

/// One service, with ztunnel's local-config field names.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalService {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    /// `<network>/<ip>` or `<ip>`.
    pub vips: Vec<String>,
    /// Service port → target port.
    pub ports: BTreeMap<u32, u32>,
    pub subject_alt_names: Vec<String>,
}

impl LocalConfig {
    /// Reads and parses `path`.
    pub fn load(path: &Path) -> Result<Self, LocalConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| LocalConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| LocalConfigError::Syntax {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses YAML or JSON text.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Decodes every entry as WDS would and replaces `mesh`'s content with them. Nothing is
    /// applied unless every entry is valid. `path` names the file in errors.
    pub fn apply(
        self,
        node: &NodeInfo,
        path: &str,
        mesh: &mut MeshState,
    ) -> Result<(), LocalConfigError> {
        let mut workloads = Vec::with_capacity(self.workloads.len());
        for (index, w) in self.workloads.into_iter().enumerate() {
            let proto = w
                .into_proto(node)
                .map_err(|value| LocalConfigError::BadIp {
                    path: path.to_owned(),
                    what: "workload",
                    index,
                    value,
                })?;
            let name = proto.uid.clone();
            let workload = Workload::from_proto(proto, &node.trust_domain).map_err(|source| {
                LocalConfigError::Invalid {
                    path: path.to_owned(),
                    what: "workload",
                    index,
                    source,
                }
            })?;
            workloads.push((name, workload));
        }
        let mut services = Vec::with_capacity(self.services.len());
        for (index, s) in self.services.into_iter().enumerate() {
            let proto = s.into_proto().map_err(|value| LocalConfigError::BadIp {
                path: path.to_owned(),
                what: "service",
                index,
                value,
            })?;
            let service =
                Service::from_proto(proto).map_err(|source| LocalConfigError::Invalid {
                    path: path.to_owned(),
                    what: "service",
                    index,
                    source,
                })?;
            services.push(service);
        }
        *mesh = MeshState::default();
        for (name, w) in workloads {
            mesh.insert_workload(&name, w);
        }
        for s in services {
            let name = s.key();
            mesh.insert_service(&name, s);
        }
        Ok(())
    }
}

impl LocalWorkload {
    /// The WDS message this entry stands for; `Err(ip)` names an unparsable address.
    fn into_proto(self, node: &NodeInfo) -> Result<pb::Workload, String> {
        let cluster_id = if self.cluster_id.is_empty() {
            node.cluster_id.clone()
        } else {
            self.cluster_id
        };
        let uid = if self.uid.is_empty() {
            format!("{cluster_id}//Pod/{}/{}", self.namespace, self.name)
        } else {
            self.uid
        };
        let tunnel_protocol = match self.protocol.to_ascii_uppercase().as_str() {
            "HBONE" => pb::TunnelProtocol::Hbone as i32,
            "" | "TCP" | "NONE" => pb::TunnelProtocol::None as i32,
            // Out of range on purpose: decoding names the bad value.
            _ => -1,
        };
        let workload_type = match self.workload_type.to_ascii_lowercase().as_str() {
            "cronjob" => pb::WorkloadType::Cronjob,
            "pod" => pb::WorkloadType::Pod,
            "job" => pb::WorkloadType::Job,
            _ => pb::WorkloadType::Deployment,
        };
        let status = if self.status.eq_ignore_ascii_case("unhealthy") {
            pb::WorkloadStatus::Unhealthy
        } else {
            pb::WorkloadStatus::Healthy
        };
        Ok(pb::Workload {
            uid,
            name: self.name,
            namespace: self.namespace,
            addresses: self
                .workload_ips
                .iter()
                .map(|ip| parse_ip(ip).map(ip_bytes))
                .collect::<Result<_, _>>()?,
            network: self.network,
            tunnel_protocol,
            trust_domain: self.trust_domain,
            service_account: self.service_account,
            node: self.node,
            canonical_name: self.canonical_name,
            canonical_revision: self.canonical_revision,
            workload_type: workload_type as i32,
            workload_name: self.workload_name,
            services: self
                .services
                .into_iter()
                .map(|(key, ports)| {
                    (
                        key,
                        pb::PortList {
                            ports: proto_ports(ports),
                        },
                    )
                })
                .collect(),
            authorization_policies: self.authorization_policies,
            status: status as i32,
            cluster_id,
            ..pb::Workload::default()
        })
    }
}

impl LocalService {
    fn into_proto(self) -> Result<pb::Service, String> {
        let addresses = self
            .vips
            .iter()
            .map(|vip| {
                let (network, ip) = vip.rsplit_once('/').unwrap_or(("", vip.as_str()));
                Ok(pb::NetworkAddress {
                    network: network.to_owned(),
                    address: ip_bytes(parse_ip(ip)?),
                })
            })
            .collect::<Result<_, String>>()?;
        Ok(pb::Service {
            name: self.name,
            namespace: self.namespace,
            hostname: self.hostname,
            addresses,
            ports: proto_ports(self.ports),
            subject_alt_names: self.subject_alt_names,
            ..pb::Service::default()
        })
    }
}

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse().map_err(|_| text.to_owned())
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn proto_ports(ports: BTreeMap<u32, u32>) -> Vec<pb::Port> {
    ports
        .into_iter()
        .map(|(service_port, target_port)| pb::Port {
            service_port,
            target_port,
        })
        .collect()
}

#[cfg(test)]
mod tests;
