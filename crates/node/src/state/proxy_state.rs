//! [`ProxyState`]: the shared handle every connection reads the mesh through (a read lock for a
//! few hash probes, never held across an await) and the WDS handler writes it through (each
//! update bumps a version that listeners and on-demand lookups watch).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use ambit_identity::TrustDomain;
use ambit_proto::security::Authorization;
use tokio::sync::watch;

use ambit_xds::wds::Workload;

use super::mesh::MeshState;
use super::pod::PodInfo;
use crate::certs::Certificates;
use crate::drain::ConnectionCounts;

/// Who this proxy is, as far as the state cares.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub node_name: String,
    pub cluster_id: String,
    pub trust_domain: TrustDomain,
}

/// Shared, cheaply cloneable handle on the proxy's state.
#[derive(Debug, Clone)]
pub struct ProxyState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    node: NodeInfo,
    mesh: RwLock<MeshState>,
    /// Bumped after every applied change.
    version: watch::Sender<u64>,
    certificates: Option<Certificates>,
    connections: Arc<ConnectionCounts>,
    /// The first complete view of the mesh has been applied.
    synced: AtomicBool,
}

impl ProxyState {
    /// An empty state. `certificates` is shown in snapshots; `None` when the proxy has no CA.
    pub fn new(node: NodeInfo, certificates: Option<Certificates>) -> Self {
        Self {
            inner: Arc::new(Inner {
                node,
                mesh: RwLock::new(MeshState::default()),
                version: watch::channel(0).0,
                certificates,
                connections: Arc::new(ConnectionCounts::default()),
                synced: AtomicBool::new(false),
            }),
        }
    }

    pub fn node(&self) -> &NodeInfo {
        &self.inner.node
    }

    pub fn certificates(&self) -> Option<&Certificates> {
        self.inner.certificates.as_ref()
    }

    /// Counts of connections in flight, by listener.
    pub fn connections(&self) -> &Arc<ConnectionCounts> {
        &self.inner.connections
    }

    /// Whether the first complete view of the mesh (WDS's initial response, or the local file)
    /// has been applied: the proxy is ready to serve.
    pub fn is_synced(&self) -> bool {
        self.inner.synced.load(Ordering::Acquire)
    }

    pub(crate) fn mark_synced(&self) {
        self.inner.synced.store(true, Ordering::Release);
    }

    /// Reads the mesh under the lock. `f` must not block.
    pub fn read<T>(&self, f: impl FnOnce(&MeshState) -> T) -> T {
        f(&self.read_lock())
    }

    /// Changes the mesh under the lock and tells watchers. `f` must not block.
    pub fn update<T>(&self, f: impl FnOnce(&mut MeshState) -> T) -> T {
        let out = f(&mut self.write_lock());
        self.inner.version.send_modify(|v| *v = v.wrapping_add(1));
        out
    }

    /// Resolves when the state changes after this call (for listeners and lookups).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// The workload owning `ip`, if any.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.read(|m| m.workload_by_ip(ip))
    }

    /// The workload owning `ip` if it runs on this node.
    pub fn local_workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.workload_by_ip(ip)
            .filter(|w| w.is_on(&self.inner.node.node_name))
    }

    /// The workload of a pod handed over ZDS: the one on this node with the pod's name,
    /// namespace and service account (ztunnel's `find_by_info`). Never looked up by address.
    pub fn pod_workload(&self, pod: &PodInfo) -> Option<Arc<Workload>> {
        if pod.name.is_empty() {
            // The capture agent sent no WorkloadInfo: nothing to speak for.
            return None;
        }
        let node = &self.inner.node.node_name;
        self.read(|m| {
            m.workloads_on(node).into_iter().find(|w| {
                w.name == pod.name
                    && w.namespace == pod.namespace
                    && w.identity.service_account() == pod.service_account
            })
        })
    }

    /// [`Self::pod_workload`], waiting up to `deadline` for WDS to send it: the capture agent
    /// may hand a pod over before the control plane has served it (ztunnel waits the same way,
    /// 5 s by default, rather than refuse at once).
    pub async fn wait_for_pod(&self, pod: &PodInfo, deadline: Duration) -> Option<Arc<Workload>> {
        if pod.name.is_empty() {
            return None;
        }
        // Subscribed before looking, so a change between the two is not missed.
        let mut changes = self.subscribe();
        let until = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(w) = self.pod_workload(pod) {
                return Some(w);
            }
            match tokio::time::timeout_at(until, changes.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Every workload running on this node.
    pub fn local_workloads(&self) -> Vec<Arc<Workload>> {
        self.read(|m| m.workloads_on(&self.inner.node.node_name))
    }

    /// The authorization policies as received.
    pub fn policies(&self) -> Vec<Arc<Authorization>> {
        self.read(|m| m.policies().cloned().collect())
    }

    fn read_lock(&self) -> RwLockReadGuard<'_, MeshState> {
        // Nothing panics while holding the lock; if something did, the maps are still whole.
        self.inner
            .mesh
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_lock(&self) -> RwLockWriteGuard<'_, MeshState> {
        self.inner
            .mesh
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// An empty state of node `n` in cluster `c`, trust domain `td`, for the state modules' tests.
#[cfg(test)]
pub(crate) fn test_state() -> ProxyState {
    ProxyState::new(
        NodeInfo {
            node_name: "n".into(),
            cluster_id: "c".into(),
            trust_domain: ambit_identity::TrustDomain::new("td").expect("valid trust domain"),
        },
        None,
    )
}
