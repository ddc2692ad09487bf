//! The workloads a node proxy knows, from its `/config_dump`.
//!
//! Read leniently: the dump is a JSON object with a `workloads` array (Ambit's and ztunnel's
//! shape: `name`, `namespace`, `workloadIps`, `protocol` "HBONE" or "TCP", `identity` or
//! `serviceAccount` + `trustDomain`); every other field and section is ignored, and a workload
//! entry that cannot be understood is listed in [`ConfigDump::skipped`] instead of failing the
//! whole dump.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::Value;

/// What one node proxy's dump says.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConfigDump {
    /// The node's name, if the dump says.
    pub node: Option<String>,
    pub workloads: Vec<Workload>,
    /// Workload entries that could not be read, and why.
    pub skipped: Vec<String>,
}

/// One workload (pod) as the node proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The owning workload's name (Istio's `*_workload` metric label), else the pod's name.
    pub workload_name: String,
    pub addresses: Vec<IpAddr>,
    pub protocol: Protocol,
    /// SPIFFE id, `spiffe://<trust domain>/ns/<ns>/sa/<sa>`.
    pub identity: String,
    pub node: String,
    /// Shares its node's address, so never identified by IP.
    pub host_network: bool,
}

/// How a workload takes traffic from the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Protocol {
    /// Enrolled: reached over HBONE (mutual TLS to port 15008).
    #[serde(rename = "HBONE")]
    Hbone,
    /// Not enrolled: plain TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// Something this reader does not know.
    Other(String),
}

impl ConfigDump {
    /// Parses the body of `/config_dump`.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        let value: Value = serde_json::from_str(text)?;
        Ok(Self::from_value(&value))
    }

    /// Reads a dump already parsed as JSON.
    pub fn from_value(value: &Value) -> Self {
        let node = value.get("node");
        let node_name = node.and_then(|n| str_field(n, "name"));
        let default_trust_domain = node
            .and_then(|n| str_field(n, "trustDomain"))
            .filter(|td| !td.is_empty())
            .unwrap_or_else(|| "cluster.local".to_owned());
        let mut dump = Self {
            node: node_name,
            ..Self::default()
        };
        let entries = value
            .get("workloads")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (index, entry) in entries.iter().enumerate() {
            match Workload::from_value(entry, &default_trust_domain) {
                Ok(w) => dump.workloads.push(w),
                Err(why) => dump.skipped.push(format!("workloads[{index}]: {why}")),
            }
        }
        dump
    }
}

impl Workload {
    /// Whether the workload is enrolled in the mesh.
    pub fn is_enrolled(&self) -> bool {
        self.protocol == Protocol::Hbone
    }

    /// `namespace/name`.
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn from_value(entry: &Value, default_trust_domain: &str) -> Result<Self, String> {
        if !entry.is_object() {
            return Err("not an object".into());
        }
        let name = str_field(entry, "name").ok_or("no name")?;
        let namespace = str_field(entry, "namespace").ok_or("no namespace")?;
        let uid = str_field(entry, "uid").unwrap_or_else(|| format!("{namespace}/{name}"));
        let workload_name = str_field(entry, "workloadName")
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| name.clone());
        let ips = entry
            .get("workloadIps")
            .or_else(|| entry.get("addresses"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let addresses = ips
            .iter()
            .map(|ip| {
                ip.as_str()
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .ok_or_else(|| format!("address {ip} of {namespace}/{name} is not an IP"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let protocol = match str_field(entry, "protocol").as_deref() {
            Some("HBONE") => Protocol::Hbone,
            Some("TCP") | Some("NONE") | None => Protocol::Tcp,
            Some(other) => Protocol::Other(other.to_owned()),
        };
        let identity = str_field(entry, "identity").unwrap_or_else(|| {
            let td = str_field(entry, "trustDomain")
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| default_trust_domain.to_owned());
            let sa = str_field(entry, "serviceAccount")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_owned());
            format!("spiffe://{td}/ns/{namespace}/sa/{sa}")
        });
        Ok(Self {
            uid,
            workload_name,
            addresses,
            protocol,
            identity,
            node: str_field(entry, "node").unwrap_or_default(),
            host_network: entry
                .get("hostNetwork")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            name,
            namespace,
        })
    }
}

fn str_field(value: &Value, key: &str) -> Option<String> {
    value.get(key).and_then(Value::as_str).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reads_ambit_and_ztunnel_shaped_workloads_and_skips_the_rest() {
        let dump = ConfigDump::parse(
            r#"{
              "node": {"name": "node-a", "trustDomain": "example.org"},
              "inpod": {"pods": ["whatever another section holds"]},
              "workloads": [
                {"uid": "u1", "name": "prometheus-0", "namespace": "prometheus",
                 "workloadIps": ["10.1.0.5"], "protocol": "HBONE",
                 "identity": "spiffe://cluster.local/ns/prometheus/sa/prometheus",
                 "workloadName": "prometheus", "node": "node-a", "someNewField": 3},
                {"name": "client", "namespace": "default", "workloadIps": ["fd00::7"],
                 "protocol": "TCP", "serviceAccount": "client"},
                {"name": "broken", "namespace": "x", "workloadIps": ["not-an-ip"]},
                "nonsense"
              ]
            }"#,
        )
        .unwrap();
        assert_eq!(dump.node.as_deref(), Some("node-a"));
        assert_eq!(dump.workloads.len(), 2);
        let p = &dump.workloads[0];
        assert!(p.is_enrolled());
        assert_eq!(p.workload_name, "prometheus");
        assert_eq!(p.addresses, vec!["10.1.0.5".parse::<IpAddr>().unwrap()]);
        let c = &dump.workloads[1];
        assert!(!c.is_enrolled());
        assert_eq!(c.identity, "spiffe://example.org/ns/default/sa/client");
        assert_eq!(c.workload_name, "client");
        assert_eq!(dump.skipped.len(), 2, "{:?}", dump.skipped);
        assert!(dump.skipped[0].contains("not-an-ip"));
    }

    #[test]
    fn a_dump_without_workloads_is_empty_not_an_error() {
        let dump = ConfigDump::parse(r#"{"config": {}}"#).unwrap();
        assert!(dump.workloads.is_empty());
        assert!(ConfigDump::parse("not json").is_err());
    }
}
