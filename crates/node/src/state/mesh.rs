//! The maps behind [`super::ProxyState`]: workloads by uid, services by key, policies by name,
//! and the indices the data path looks addresses up in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::security::Authorization;

use ambit_xds::wds::{Service, Workload};

/// Most addresses remembered as "the control plane does not know it"; past this the memory is
/// dropped (lookups then wait once more), so a scan of random addresses cannot grow it forever.
const MAX_NOT_FOUND: usize = 10_000;

/// Workloads, services and policies with their indices. See the [module docs](super).
#[derive(Debug, Default)]
pub struct MeshState {
    workloads: HashMap<String, Arc<Workload>>,
    services: HashMap<String, Arc<Service>>,
    policies: BTreeMap<String, Arc<Authorization>>,
    /// The same policies compiled for evaluation (kept in step with `policies`).
    policy_index: ambit_authz::PolicyIndex,
    /// WDS resource name → what it named, so removals find their object whatever the naming.
    resources: HashMap<String, Named>,
    /// The reverse of `resources`: the resource name each object arrived under.
    names: HashMap<Named, String>,
    workload_by_ip: HashMap<IpAddr, String>,
    service_by_vip: HashMap<IpAddr, String>,
    /// Service key → uids of workloads that list it.
    endpoints: HashMap<String, BTreeSet<String>>,
    /// Addresses the control plane said it does not know (on-demand lookups).
    not_found: HashSet<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Named {
    Workload(String),
    Service(String),
}

impl MeshState {
    /// Inserts or replaces the workload of resource `name`.
    pub fn insert_workload(&mut self, name: &str, workload: Workload) {
        self.remove(name);
        let uid = workload.uid.clone();
        // A workload may be renamed between resources; the uid is the identity that counts.
        self.remove_workload(&uid);
        if !workload.host_network {
            for ip in &workload.addresses {
                self.workload_by_ip.insert(*ip, uid.clone());
                self.not_found.remove(ip);
            }
        }
        for key in workload.services.keys() {
            self.endpoints
                .entry(key.clone())
                .or_default()
                .insert(uid.clone());
        }
        self.name(name, Named::Workload(uid.clone()));
        self.workloads.insert(uid, Arc::new(workload));
    }

    /// Inserts or replaces the service of resource `name`.
    pub fn insert_service(&mut self, name: &str, service: Service) {
        self.remove(name);
        let key = service.key();
        self.remove_service(&key);
        for vip in &service.vips {
            self.service_by_vip.insert(*vip, key.clone());
            self.not_found.remove(vip);
        }
        self.name(name, Named::Service(key.clone()));
        self.services.insert(key, Arc::new(service));
    }

    pub fn insert_policy(&mut self, name: &str, policy: Authorization) {
        self.remove_policy(name);
        self.policy_index.insert(&policy, false);
        self.policies.insert(name.to_owned(), Arc::new(policy));
    }

    pub fn remove_policy(&mut self, name: &str) -> bool {
        let Some(old) = self.policies.remove(name) else {
            return false;
        };
        self.policy_index
            .remove(&format!("{}/{}", old.namespace, old.name));
        true
    }

    /// The policies compiled for [`authorize`](crate::proxy::authorize).
    pub fn policy_index(&self) -> &ambit_authz::PolicyIndex {
        &self.policy_index
    }

    /// Removes what the address resource `name` named. Returns whether anything was removed.
    pub fn remove(&mut self, name: &str) -> bool {
        match self.resources.get(name).cloned() {
            Some(Named::Workload(uid)) => self.remove_workload(&uid),
            Some(Named::Service(key)) => self.remove_service(&key),
            None => false,
        }
    }

    /// Remembers that the control plane does not know `ip`.
    pub fn mark_not_found(&mut self, ip: IpAddr) {
        if self.not_found.len() >= MAX_NOT_FOUND {
            self.not_found.clear();
        }
        self.not_found.insert(ip);
    }

    pub fn is_not_found(&self, ip: IpAddr) -> bool {
        self.not_found.contains(&ip)
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.workloads.get(self.workload_by_ip.get(&ip)?).cloned()
    }

    pub fn workload(&self, uid: &str) -> Option<Arc<Workload>> {
        self.workloads.get(uid).cloned()
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<Arc<Service>> {
        self.services.get(self.service_by_vip.get(&ip)?).cloned()
    }

    pub fn service(&self, key: &str) -> Option<Arc<Service>> {
        self.services.get(key).cloned()
    }

    /// Workloads that list the service `key`, in uid order.
    pub fn endpoints(&self, key: &str) -> Vec<Arc<Workload>> {
        self.endpoints
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|uid| self.workloads.get(uid).cloned())
            .collect()
    }

    pub fn workloads_on(&self, node: &str) -> Vec<Arc<Workload>> {
        let mut out: Vec<_> = self
            .workloads
            .values()
            .filter(|w| w.is_on(node))
            .cloned()
            .collect();
        out.sort_by(|a, b| a.uid.cmp(&b.uid));
        out
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads.values()
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Arc<Authorization>> {
        self.policies.values()
    }

    fn name(&mut self, name: &str, named: Named) {
        self.names.insert(named.clone(), name.to_owned());
        self.resources.insert(name.to_owned(), named);
    }

    fn unname(&mut self, named: &Named) {
        if let Some(name) = self.names.remove(named) {
            self.resources.remove(&name);
        }
    }

    fn remove_workload(&mut self, uid: &str) -> bool {
        let Some(old) = self.workloads.remove(uid) else {
            return false;
        };
        for ip in &old.addresses {
            if self.workload_by_ip.get(ip).map(String::as_str) == Some(uid) {
                self.workload_by_ip.remove(ip);
            }
        }
        for key in old.services.keys() {
            if let Some(set) = self.endpoints.get_mut(key) {
                set.remove(uid);
                if set.is_empty() {
                    self.endpoints.remove(key);
                }
            }
        }
        self.unname(&Named::Workload(uid.to_owned()));
        true
    }

    fn remove_service(&mut self, key: &str) -> bool {
        let Some(old) = self.services.remove(key) else {
            return false;
        };
        for vip in &old.vips {
            if self.service_by_vip.get(vip).map(String::as_str) == Some(key) {
                self.service_by_vip.remove(vip);
            }
        }
        self.unname(&Named::Service(key.to_owned()));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_xds::wds::PortMapping;

    fn workload(uid: &str, ip: &str) -> Workload {
        let mut w = crate::state::testing::test_workload(uid, ip);
        w.services.insert(
            "ns/svc".to_owned(),
            vec![PortMapping {
                service_port: 80,
                target_port: 8080,
            }],
        );
        w
    }

    #[test]
    fn replacing_a_workload_moves_its_index_entries() {
        let mut m = MeshState::default();
        m.insert_workload("a", workload("a", "10.0.0.1"));
        m.insert_workload("a", workload("a", "10.0.0.2"));
        assert!(m.workload_by_ip("10.0.0.1".parse().unwrap()).is_none());
        assert_eq!(
            m.workload_by_ip("10.0.0.2".parse().unwrap()).unwrap().uid,
            "a"
        );
        assert_eq!(m.endpoints("ns/svc").len(), 1);
        assert!(m.remove("a"));
        assert!(m.workload_by_ip("10.0.0.2".parse().unwrap()).is_none());
        assert!(m.endpoints("ns/svc").is_empty());
        assert!(!m.remove("a"));
    }

    #[test]
    fn an_address_taken_over_is_not_dropped_by_its_old_owner() {
        let mut m = MeshState::default();
        m.insert_workload("a", workload("a", "10.0.0.1"));
        m.insert_workload("b", workload("b", "10.0.0.1"));
        m.remove("a");
        assert_eq!(
            m.workload_by_ip("10.0.0.1".parse().unwrap()).unwrap().uid,
            "b"
        );
    }
}
