//! The mesh's workloads, as the node proxies' config dumps describe them, looked up by address
//! (for captured flows) and by name (for metric labels).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::admin::{ConfigDump, Workload};

/// Every workload named by any config dump, once.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    workloads: Vec<Workload>,
    by_ip: HashMap<IpAddr, usize>,
    by_name: BTreeMap<(String, String), Vec<usize>>,
}

impl Inventory {
    /// Merges the workloads of several dumps; a workload several proxies know (same uid) is
    /// kept once. Host-network workloads are left out of the address index: their address is
    /// their node's, which is not the mesh.
    pub fn new<'a>(dumps: impl IntoIterator<Item = &'a ConfigDump>) -> Self {
        let mut inventory = Self::default();
        let mut seen = std::collections::HashSet::new();
        for workload in dumps.into_iter().flat_map(|d| &d.workloads) {
            if !seen.insert(workload.uid.clone()) {
                continue;
            }
            let index = inventory.workloads.len();
            if !workload.host_network {
                for ip in &workload.addresses {
                    inventory.by_ip.entry(*ip).or_insert(index);
                }
            }
            inventory
                .by_name
                .entry((workload.namespace.clone(), workload.workload_name.clone()))
                .or_default()
                .push(index);
            inventory.workloads.push(workload.clone());
        }
        inventory
    }

    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty()
    }

    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    /// The workload that owns `ip`, if any.
    pub fn at(&self, ip: IpAddr) -> Option<&Workload> {
        self.by_ip.get(&ip).map(|i| &self.workloads[*i])
    }

    /// Whether the workload `namespace/workload_name` (Istio's metric labels) is enrolled;
    /// `None` when no dump names it.
    pub fn enrolled_by_name(&self, namespace: &str, workload_name: &str) -> Option<bool> {
        let key = (namespace.to_owned(), workload_name.to_owned());
        let pods = self.by_name.get(&key)?;
        Some(pods.iter().any(|i| self.workloads[*i].is_enrolled()))
    }
}
