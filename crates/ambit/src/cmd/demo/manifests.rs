//! The demo's cluster on paper: which `127.<block>.y.z` address every component and pod gets,
//! and the files the control plane reads (Kubernetes manifests, bootstrap tokens) and the node
//! proxies present (their tokens).
//!
//! Addresses in the block `127.N.0.0/16`: the control plane is `.0.1`, node `k`'s proxy is
//! `.0.(k+1)` and node `k`'s pods are `127.N.k.*`, so an address says where it lives.

use std::collections::hash_map::RandomState;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ambit_proto::ports;
use anyhow::Context;

/// The trust domain every identity of the demo belongs to.
pub(super) const TRUST_DOMAIN: &str = "cluster.local";
/// The DNS name the node proxies expect on the control plane's TLS certificate.
pub(super) const CONTROL_PLANE_NAME: &str = "istiod.istio-system.svc";

/// One pod of the demo, as its manifest describes it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pod {
    pub(super) name: &'static str,
    pub(super) namespace: &'static str,
    pub(super) app: &'static str,
    pub(super) service_account: &'static str,
    pub(super) node: &'static str,
    pub(super) ip: Ipv4Addr,
    /// The port the workload serves on, if it serves anything.
    pub(super) port: Option<u16>,
}

/// One node's proxy and the addresses of its servers.
#[derive(Debug, Clone, Copy)]
pub(super) struct NodeAddrs {
    pub(super) name: &'static str,
    pub(super) ip: Ipv4Addr,
}

/// Where everything of one demo listens.
#[derive(Debug, Clone)]
pub(super) struct Layout {
    pub(super) block: u8,
    pub(super) control: Ipv4Addr,
    pub(super) nodes: [NodeAddrs; 2],
    /// `prometheus/prometheus-0` on node-a: scrapes `node-exporter` every second.
    pub(super) prometheus: Pod,
    /// `prometheus/node-exporter` on node-b: serves `/metrics`.
    pub(super) node_exporter: Pod,
    /// `default/client` on node-a: sends a line to `server` every second.
    pub(super) client: Pod,
    /// `default/server` on node-b: echoes lines back.
    pub(super) server: Pod,
}

/// The files written for one demo, all inside its temporary directory.
#[derive(Debug, Clone)]
pub(super) struct Files {
    pub(super) manifests: PathBuf,
    pub(super) bootstrap_tokens: PathBuf,
    pub(super) ca: PathBuf,
    /// One token file per node, in the order of [`Layout::nodes`].
    pub(super) node_tokens: [PathBuf; 2],
}

// === impl Layout ===

impl Layout {
    pub(super) fn new(block: u8) -> Self {
        let ip = |c, d| Ipv4Addr::new(127, block, c, d);
        let pod = |name, namespace, app, service_account, node, ip, port| Pod {
            name,
            namespace,
            app,
            service_account,
            node,
            ip,
            port,
        };
        Self {
            block,
            control: ip(0, 1),
            nodes: [
                NodeAddrs {
                    name: "node-a",
                    ip: ip(0, 2),
                },
                NodeAddrs {
                    name: "node-b",
                    ip: ip(0, 3),
                },
            ],
            prometheus: pod(
                "prometheus-0",
                "prometheus",
                "prometheus",
                "prometheus",
                "node-a",
                ip(1, 1),
                None,
            ),
            client: pod(
                "client",
                "default",
                "client",
                "client",
                "node-a",
                ip(1, 2),
                None,
            ),
            node_exporter: pod(
                "node-exporter",
                "prometheus",
                "node-exporter",
                "node-exporter",
                "node-b",
                ip(2, 1),
                Some(9100),
            ),
            server: pod(
                "server",
                "default",
                "server",
                "server",
                "node-b",
                ip(2, 2),
                Some(8080),
            ),
        }
    }

    /// `127.N.0.0/16`.
    pub(super) fn cidr(&self) -> String {
        format!("127.{}.0.0/16", self.block)
    }

    pub(super) fn pods(&self) -> [Pod; 4] {
        [
            self.prometheus,
            self.node_exporter,
            self.client,
            self.server,
        ]
    }

    pub(super) fn control_tls(&self) -> SocketAddr {
        SocketAddr::from((self.control, ports::XDS_TLS))
    }

    pub(super) fn control_monitoring(&self) -> SocketAddr {
        SocketAddr::from((self.control, ports::MONITORING))
    }

    /// The node proxy `pod` runs on (whose SOCKS5 listener it uses).
    pub(super) fn node_of(&self, pod: &Pod) -> NodeAddrs {
        self.nodes
            .into_iter()
            .find(|n| n.name == pod.node)
            .unwrap_or(self.nodes[0])
    }

    /// Every address the demo binds, with what binds it: checked before anything starts, so a
    /// second demo on the same block fails with one clear message.
    pub(super) fn listeners(&self) -> Vec<(String, SocketAddr)> {
        let mut all = vec![
            ("control plane TLS".to_owned(), self.control_tls()),
            (
                "control plane monitoring".to_owned(),
                self.control_monitoring(),
            ),
        ];
        for node in self.nodes {
            for (what, addr) in [
                ("SOCKS5", node.socks5()),
                ("admin", node.admin()),
                ("stats", node.stats()),
                ("readiness", node.readiness()),
            ] {
                all.push((format!("{} {what}", node.name), addr));
            }
        }
        for pod in self.pods() {
            all.push((format!("{} HBONE", pod.name), pod.hbone()));
            if let Some(addr) = pod.addr() {
                all.push((pod.name.to_owned(), addr));
            }
        }
        all
    }
}

impl NodeAddrs {
    pub(super) fn socks5(&self) -> SocketAddr {
        SocketAddr::from((self.ip, ports::SOCKS5))
    }

    pub(super) fn admin(&self) -> SocketAddr {
        SocketAddr::from((self.ip, ports::ADMIN))
    }

    pub(super) fn stats(&self) -> SocketAddr {
        SocketAddr::from((self.ip, ports::STATS))
    }

    pub(super) fn readiness(&self) -> SocketAddr {
        SocketAddr::from((self.ip, ports::READINESS))
    }
}

impl Pod {
    /// The address the workload serves on.
    pub(super) fn addr(&self) -> Option<SocketAddr> {
        self.port.map(|port| SocketAddr::from((self.ip, port)))
    }

    /// Where the node proxy accepts HBONE for this pod (enrolled pods only).
    pub(super) fn hbone(&self) -> SocketAddr {
        SocketAddr::from((self.ip, ports::HBONE))
    }

    pub(super) fn identity(&self) -> String {
        format!(
            "spiffe://{TRUST_DOMAIN}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    fn manifest(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\n\
             metadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\n\
             spec: {{serviceAccountName: {sa}, nodeName: {node}, containers: [{{name: {app}}}]}}\n\
             status: {{podIP: {ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n",
            name = self.name,
            ns = self.namespace,
            app = self.app,
            sa = self.service_account,
            node = self.node,
            ip = self.ip,
        )
    }
}

// === files ===

/// Writes the manifests and tokens under `dir`; the CA directory is left for the control plane
/// to create.
pub(super) fn write(layout: &Layout, dir: &Path) -> anyhow::Result<Files> {
    let files = Files {
        manifests: dir.join("manifests"),
        bootstrap_tokens: dir.join("bootstrap-tokens"),
        ca: dir.join("ca"),
        node_tokens: layout.nodes.map(|n| dir.join(format!("{}.token", n.name))),
    };
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    std::fs::create_dir(&files.manifests)
        .with_context(|| format!("cannot create {}", files.manifests.display()))?;
    for (namespace, enrolled) in [("prometheus", true), ("default", false)] {
        let labels = if enrolled {
            ", labels: {istio.io/dataplane-mode: ambient}"
        } else {
            ""
        };
        let mut yaml =
            format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {namespace}{labels}}}\n");
        for pod in layout.pods().iter().filter(|p| p.namespace == namespace) {
            yaml.push_str("---\n");
            yaml.push_str(&pod.manifest());
        }
        write(&files.manifests.join(format!("{namespace}.yaml")), &yaml)?;
    }
    let mut lines = String::new();
    for (node, path) in layout.nodes.iter().zip(&files.node_tokens) {
        let token = format!("{}-{}", node.name, random_hex());
        let _ = writeln!(lines, "{token} {}", node.name);
        write(path, &format!("{token}\n"))?;
    }
    write(&files.bootstrap_tokens, &lines)?;
    Ok(files)
}

/// 32 hex digits that differ from run to run. The std hasher's per-process random keys are
/// enough for tokens that live as long as one demo on loopback; no other RNG is needed.
fn random_hex() -> String {
    let word = || {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(u64::from(std::process::id()));
        hasher.finish()
    };
    format!("{:016x}{:016x}", word(), word())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_and_in_the_block() {
        let layout = Layout::new(42);
        let listeners = layout.listeners();
        let mut addrs: Vec<_> = listeners.iter().map(|(_, a)| *a).collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), listeners.len());
        assert!(addrs.iter().all(|a| a.to_string().starts_with("127.42.")));
        assert_eq!(layout.node_of(&layout.node_exporter).name, "node-b");
    }

    #[test]
    fn only_the_prometheus_namespace_is_enrolled() {
        let dir = tempfile::tempdir().unwrap();
        let files = write(&Layout::new(42), dir.path()).unwrap();
        let read = |name: &str| std::fs::read_to_string(files.manifests.join(name)).ok();
        let enrolled = read("prometheus.yaml").unwrap_or_default();
        let plain = read("default.yaml").unwrap_or_default();
        assert!(enrolled.contains("istio.io/dataplane-mode: ambient"));
        assert!(enrolled.contains("name: node-exporter") && enrolled.contains("podIP: 127.42.2.1"));
        assert!(!plain.contains("dataplane-mode"));
        assert!(plain.contains("name: client") && plain.contains("name: server"));
        let tokens = std::fs::read_to_string(&files.bootstrap_tokens).unwrap_or_default();
        assert_eq!(tokens.lines().count(), 2);
        assert_ne!(random_hex(), random_hex());
    }
}
