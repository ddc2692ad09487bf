//! Translation: [`ClusterState`] → the WDS resources of Istio's ambient mode.
//!
//! A pure function of the cluster state and the mesh settings, recomputed as a whole on every
//! (debounced) change; the xDS layer diffs the result so clients receive only what changed.
//!
//! Resource names follow istiod, so a stock ztunnel sees the names it expects:
//! workloads are named by their uid (`<cluster>//Pod/<namespace>/<name>`), services by
//! `<namespace>/<hostname>`.

mod service;
mod workload;

use std::collections::BTreeMap;

use ambit_identity::TrustDomain;
use ambit_proto::workload::{Address, Service, Workload, address};

use crate::enroll::Enrollment;
use crate::state::ClusterState;

/// Mesh-wide settings the translation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    pub trust_domain: TrustDomain,
    /// Istio's `CLUSTER_ID`; part of every workload uid.
    pub cluster_id: String,
    /// DNS suffix of services: `<name>.<namespace>.svc.<domain_suffix>`.
    pub domain_suffix: String,
    /// Network name for addresses; empty for a single flat network.
    pub network: String,
    /// Policies here apply mesh-wide.
    pub root_namespace: String,
}

impl MeshConfig {
    /// Istio's defaults: trust domain and DNS suffix `cluster.local`, cluster `Kubernetes`, root
    /// namespace `istio-system`.
    pub fn istio_defaults() -> Self {
        Self {
            // The literal is a valid trust domain; the spiffe tests parse it too.
            trust_domain: TrustDomain::new("cluster.local").expect("valid trust domain"),
            cluster_id: "Kubernetes".to_owned(),
            domain_suffix: "cluster.local".to_owned(),
            network: String::new(),
            root_namespace: "istio-system".to_owned(),
        }
    }
}

/// Everything the control plane serves, plus what it chose not to serve and why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshSnapshot {
    /// By workload uid.
    pub workloads: BTreeMap<String, Workload>,
    /// By `<namespace>/<hostname>`.
    pub services: BTreeMap<String, Service>,
    /// Every pod seen, with its enrollment decision or why it is not served.
    pub pods: Vec<PodReport>,
}

/// How one pod was treated, for `ambit config workloads` and `/debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    pub enrollment: Enrollment,
    /// Set when the pod is not served as a workload at all (no IP yet, finished, bad address).
    pub skipped: Option<String>,
}

impl MeshSnapshot {
    /// The `istio.workload.Address` resources by resource name.
    pub fn addresses(&self) -> impl Iterator<Item = (&str, Address)> + '_ {
        let workloads = self.workloads.iter().map(|(name, w)| {
            (
                name.as_str(),
                Address {
                    r#type: Some(address::Type::Workload(w.clone())),
                },
            )
        });
        let services = self.services.iter().map(|(name, s)| {
            (
                name.as_str(),
                Address {
                    r#type: Some(address::Type::Service(s.clone())),
                },
            )
        });
        workloads.chain(services)
    }
}

/// Computes the mesh from the cluster state.
pub fn translate(state: &ClusterState, config: &MeshConfig) -> MeshSnapshot {
    let services = service::services(state, config);
    let mut snapshot = MeshSnapshot {
        services,
        ..MeshSnapshot::default()
    };
    for pod in state.pods.values() {
        let report = workload::workload(state, config, pod, &snapshot.services);
        if let Ok(w) = &report.1 {
            snapshot.workloads.insert(w.uid.clone(), w.clone());
        }
        snapshot.pods.push(report.0);
    }
    snapshot
}

/// Istio's workload uid for a pod.
pub fn pod_uid(cluster_id: &str, namespace: &str, name: &str) -> String {
    format!("{cluster_id}//Pod/{namespace}/{name}")
}
