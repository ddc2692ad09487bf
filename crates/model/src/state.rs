//! The cluster as last seen by a source: every object of the kinds the mesh reads, by key.
//!
//! Sources apply and delete objects here; the translation reads it. It holds no derived state,
//! so a translation is always a pure function of what the sources reported.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::istio::{AuthorizationPolicy, PeerAuthentication};
use crate::objects::{Kind, Object, ObjectError, ObjectKey};

/// Namespaced objects are stored by `(namespace, name)`.
pub type NsName = (String, String);

/// Every object the mesh reads, by kind and key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterState {
    pub namespaces: BTreeMap<String, Namespace>,
    pub pods: BTreeMap<NsName, Pod>,
    pub services: BTreeMap<NsName, Service>,
    pub endpoint_slices: BTreeMap<NsName, EndpointSlice>,
    pub service_accounts: BTreeMap<NsName, ServiceAccount>,
    pub authorization_policies: BTreeMap<NsName, AuthorizationPolicy>,
    pub peer_authentications: BTreeMap<NsName, PeerAuthentication>,
    /// What changed since the last [`take_dirty`](Self::take_dirty), for incremental
    /// translation. Not part of the state's value (equality ignores it).
    dirty: Dirty,
}

/// The namespaces whose translation may have changed.
#[derive(Debug, Clone, Default)]
pub struct Dirty {
    /// Namespaces with a changed object (a Namespace object marks its own name).
    pub namespaces: std::collections::BTreeSet<String>,
    /// Everything must be translated again (a policy changed: root-namespace policies select
    /// workloads in every namespace).
    pub all: bool,
}

impl PartialEq for Dirty {
    fn eq(&self, _other: &Self) -> bool {
        true
    }
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        !self.all && self.namespaces.is_empty()
    }

    fn mark(&mut self, key: &ObjectKey) {
        match key.kind {
            Kind::Namespace => {
                self.namespaces.insert(key.name.clone());
            }
            Kind::AuthorizationPolicy | Kind::PeerAuthentication => self.all = true,
            _ => {
                self.namespaces.insert(key.namespace.clone());
            }
        }
    }
}

impl ClusterState {
    /// Inserts or replaces an object. Returns whether anything changed.
    pub fn apply(&mut self, object: Object) -> Result<bool, ObjectError> {
        let key = object.key()?;
        let changed = self.apply_keyed(&key, object);
        if changed {
            self.dirty.mark(&key);
        }
        Ok(changed)
    }

    fn apply_keyed(&mut self, key: &ObjectKey, object: Object) -> bool {
        let nn = (key.namespace.clone(), key.name.clone());
        fn put<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, k: K, v: V) -> bool {
            if map.get(&k) == Some(&v) {
                return false;
            }
            map.insert(k, v);
            true
        }
        match object {
            Object::Namespace(o) => put(&mut self.namespaces, nn.1, o),
            Object::Pod(o) => put(&mut self.pods, nn, *o),
            Object::Service(o) => put(&mut self.services, nn, *o),
            Object::EndpointSlice(o) => put(&mut self.endpoint_slices, nn, *o),
            Object::ServiceAccount(o) => put(&mut self.service_accounts, nn, o),
            Object::AuthorizationPolicy(o) => put(&mut self.authorization_policies, nn, *o),
            Object::PeerAuthentication(o) => put(&mut self.peer_authentications, nn, o),
        }
    }

    /// Removes an object. Returns whether it was there.
    pub fn delete(&mut self, key: &ObjectKey) -> bool {
        let removed = self.delete_keyed(key);
        if removed {
            self.dirty.mark(key);
        }
        removed
    }

    fn delete_keyed(&mut self, key: &ObjectKey) -> bool {
        let nn = (key.namespace.clone(), key.name.clone());
        match key.kind {
            Kind::Namespace => self.namespaces.remove(&key.name).is_some(),
            Kind::Pod => self.pods.remove(&nn).is_some(),
            Kind::Service => self.services.remove(&nn).is_some(),
            Kind::EndpointSlice => self.endpoint_slices.remove(&nn).is_some(),
            Kind::ServiceAccount => self.service_accounts.remove(&nn).is_some(),
            Kind::AuthorizationPolicy => self.authorization_policies.remove(&nn).is_some(),
            Kind::PeerAuthentication => self.peer_authentications.remove(&nn).is_some(),
        }
    }

    /// What changed since the last call (and forgets it).
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// The keys of every stored object, for sources that replace their whole view at once.
    pub fn keys(&self) -> Vec<ObjectKey> {
        fn keyed<'a, V: 'a>(
            kind: Kind,
            map: impl Iterator<Item = (&'a NsName, &'a V)> + 'a,
        ) -> impl Iterator<Item = ObjectKey> + 'a {
            map.map(move |((ns, name), _)| ObjectKey {
                kind,
                namespace: ns.clone(),
                name: name.clone(),
            })
        }
        let namespaces = self.namespaces.keys().map(|name| ObjectKey {
            kind: Kind::Namespace,
            namespace: String::new(),
            name: name.clone(),
        });
        namespaces
            .chain(keyed(Kind::Pod, self.pods.iter()))
            .chain(keyed(Kind::Service, self.services.iter()))
            .chain(keyed(Kind::EndpointSlice, self.endpoint_slices.iter()))
            .chain(keyed(Kind::ServiceAccount, self.service_accounts.iter()))
            .chain(keyed(
                Kind::AuthorizationPolicy,
                self.authorization_policies.iter(),
            ))
            .chain(keyed(
                Kind::PeerAuthentication,
                self.peer_authentications.iter(),
            ))
            .collect()
    }

    /// Number of stored objects of every kind.
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.pods.len()
            + self.services.len()
            + self.endpoint_slices.len()
            + self.service_accounts.len()
            + self.authorization_policies.len()
            + self.peer_authentications.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, label: &str) -> Object {
        Object::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ns", "labels": {"app": label}}}))
        .unwrap()
    }

    #[test]
    fn apply_reports_changes_and_delete_removes() {
        let mut state = ClusterState::default();
        assert!(state.apply(pod("a", "x")).unwrap());
        assert!(
            !state.apply(pod("a", "x")).unwrap(),
            "same object again is no change"
        );
        assert!(
            state.apply(pod("a", "y")).unwrap(),
            "a label change is a change"
        );
        assert_eq!(state.len(), 1);
        let key = ObjectKey {
            kind: Kind::Pod,
            namespace: "ns".into(),
            name: "a".into(),
        };
        assert_eq!(state.keys(), vec![key.clone()]);
        assert!(state.delete(&key));
        assert!(!state.delete(&key));
        assert!(state.is_empty());
    }
}
