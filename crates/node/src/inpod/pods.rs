//! The pods served in their own network namespaces, and each pod's listener set.
//!
//! A pod added over ZDS gets three listeners bound inside its namespace through a
//! [`NetnsSocketFactory`]: outbound (`127.0.0.1:15001`), inbound passthrough (`0.0.0.0:15006`)
//! and HBONE (`0.0.0.0:15008`). They run the same handlers as shared mode's listeners, with the
//! pod's [`Scope`], so every socket a connection opens leaves from the pod's namespace.
//!
//! Invariants:
//! - A pod is recorded only once all three listeners are bound and serving; a failed bind
//!   leaves nothing behind (and an earlier listener set of the same uid untouched).
//! - Removing a pod closes its listeners before returning, aborts its connections (its
//!   namespace is going away) and takes its pooled HBONE connections out of the pool.
//! - The registry lock is never held across an await.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use ambit_netns::Netns;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::info;

use super::socket::NetnsSocketFactory;
use crate::config::InPodConfig;
use crate::drain::Drain;
use crate::hbone::server;
use crate::proxy::inputs::Inputs;
use crate::proxy::listeners::{Listeners, accept_loop};
use crate::scope::Scope;
use crate::socket::SocketFactory;
use crate::state::PodInfo;

/// Why a pod's listeners could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PodError {
    #[error("cannot bind the {what} listener on {addr} in the pod's network namespace")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no such pod is served")]
    UnknownUid,
}

/// Whether the pod was confirmed by the capture agent since the ZDS connection began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PodState {
    /// Added or kept on the current connection (or no connection came since): served.
    Serving,
    /// Served, but not yet named since the agent reconnected: forgotten at `SnapshotSent`
    /// unless the replay names it.
    Unconfirmed,
}

/// One served pod, for `/config_dump` and tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InPodStatus {
    /// The Kubernetes pod UID the capture agent keys it by.
    pub uid: String,
    #[serde(flatten)]
    pub info: PodInfo,
    /// Inode of the pod's network namespace.
    pub netns_inode: u64,
    pub outbound: SocketAddr,
    pub inbound_passthrough: SocketAddr,
    pub hbone: SocketAddr,
    pub state: PodState,
}

/// The registry of in-pod mode. See the [module docs](self).
#[derive(Debug, Default)]
pub(crate) struct InPod {
    pods: Mutex<BTreeMap<String, Pod>>,
    connected: AtomicBool,
}

/// A served pod: its namespace (kept open while served) and its listener set's signals.
#[derive(Debug)]
struct Pod {
    info: PodInfo,
    netns: Netns,
    addrs: PodAddrs,
    state: PodState,
    drain: Drain,
}

/// Where a pod's listeners are bound, inside its namespace.
#[derive(Debug, Clone, Copy)]
struct PodAddrs {
    outbound: SocketAddr,
    inbound_passthrough: SocketAddr,
    hbone: SocketAddr,
}

/// What [`InPod::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    New,
    /// Same uid, same namespace: nothing to bind.
    Again,
    /// Same uid, new namespace (a new sandbox): the old listener set was closed.
    Replaced,
}

impl InPod {
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// A new ZDS connection began: every pod awaits confirmation by the replay.
    pub(crate) fn begin_replay(&self) {
        for pod in self.lock().values_mut() {
            pod.state = PodState::Unconfirmed;
        }
    }

    /// Serves pod `uid` in `netns`, or confirms it if it is already served there.
    pub(crate) async fn add(
        &self,
        inputs: &Arc<Inputs>,
        config: &InPodConfig,
        uid: &str,
        info: PodInfo,
        netns: Netns,
    ) -> Result<Added, PodError> {
        if let Some(pod) = self.lock().get_mut(uid)
            && pod.netns == netns
        {
            pod.state = PodState::Serving;
            pod.info = info;
            return Ok(Added::Again);
        }
        let pod = Pod::serve(inputs, config, info, netns)?;
        info!(
            uid,
            pod = %pod.info.name,
            namespace = %pod.info.namespace,
            netns = pod.netns.inode(),
            "in-pod listeners opened"
        );
        let old = self.lock().insert(uid.to_owned(), pod);
        match old {
            Some(old) => {
                old.stop(inputs, uid).await;
                Ok(Added::Replaced)
            }
            None => Ok(Added::New),
        }
    }

    /// Confirms pod `uid` without a namespace (the agent no longer holds it).
    pub(crate) fn keep(&self, uid: &str) -> Result<(), PodError> {
        let mut pods = self.lock();
        let pod = pods.get_mut(uid).ok_or(PodError::UnknownUid)?;
        pod.state = PodState::Serving;
        Ok(())
    }

    /// Stops serving pod `uid`; `false` if it was not served.
    pub(crate) async fn remove(&self, inputs: &Inputs, uid: &str) -> bool {
        let pod = self.lock().remove(uid);
        match pod {
            Some(pod) => {
                pod.stop(inputs, uid).await;
                true
            }
            None => false,
        }
    }

    /// The replay is complete: stops every pod it did not name. Returns how many.
    pub(crate) async fn forget_unconfirmed(&self, inputs: &Inputs) -> usize {
        let stale: Vec<(String, Pod)> = {
            let mut pods = self.lock();
            let uids: Vec<String> = pods
                .iter()
                .filter(|(_, p)| p.state == PodState::Unconfirmed)
                .map(|(uid, _)| uid.clone())
                .collect();
            uids.into_iter()
                .filter_map(|uid| pods.remove(&uid).map(|p| (uid, p)))
                .collect()
        };
        let count = stale.len();
        for (uid, pod) in stale {
            pod.stop(inputs, &uid).await;
        }
        count
    }

    pub(crate) fn statuses(&self) -> Vec<InPodStatus> {
        self.lock()
            .iter()
            .map(|(uid, pod)| InPodStatus {
                uid: uid.clone(),
                info: pod.info.clone(),
                netns_inode: pod.netns.inode(),
                outbound: pod.addrs.outbound,
                inbound_passthrough: pod.addrs.inbound_passthrough,
                hbone: pod.addrs.hbone,
                state: pod.state,
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Pod>> {
        // Nothing panics under this lock; a poisoned map is still consistent.
        self.pods.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Pod {
    /// Binds the pod's listener set inside `netns` and starts serving it.
    fn serve(
        inputs: &Arc<Inputs>,
        config: &InPodConfig,
        info: PodInfo,
        netns: Netns,
    ) -> Result<Self, PodError> {
        let factory = NetnsSocketFactory::new(netns.clone(), config.mark);
        let any = Ipv4Addr::UNSPECIFIED;
        let outbound = bind(
            &factory,
            "outbound",
            (Ipv4Addr::LOCALHOST, config.outbound_port).into(),
        )?;
        let passthrough = bind(
            &factory,
            "inbound passthrough",
            (any, config.inbound_passthrough_port).into(),
        )?;
        let hbone = bind(
            &factory,
            "HBONE",
            (any, inputs.config.listeners.hbone_port).into(),
        )?;
        let addrs = PodAddrs {
            outbound: outbound.1,
            inbound_passthrough: passthrough.1,
            hbone: hbone.1,
        };
        // HBONE arrives direct and is never a loop; the other two are.
        let own = vec![addrs.outbound, addrs.inbound_passthrough];
        let socks5 = inputs.config.listeners.socks5.map(|a| a.port());
        let scope = Arc::new(Scope::pod(
            Arc::new(factory),
            netns.inode(),
            info.clone(),
            own,
            inputs.config.listeners.hbone_port,
            socks5,
        ));
        let drain = inputs.drain.child();
        Listeners::from_bound(Some(outbound.0), Some(passthrough.0), None)
            .serve(inputs, &scope, &drain);
        let i = inputs.clone();
        accept_loop(
            "HBONE",
            hbone.0,
            &drain,
            drain.stop_accepting.clone(),
            move |s, p| server::serve(i.clone(), scope.clone(), s, p),
        );
        Ok(Self {
            info,
            netns,
            addrs,
            state: PodState::Serving,
            drain,
        })
    }

    /// Closes the listeners, aborts the connections and evicts the pooled ones.
    async fn stop(self, inputs: &Inputs, uid: &str) {
        self.drain.abort().await;
        inputs.pool.evict_netns(self.netns.inode());
        info!(uid, pod = %self.info.name, namespace = %self.info.namespace, "in-pod listeners closed");
    }
}

/// A listener on `addr` in the factory's namespace, and where it is bound.
fn bind(
    factory: &NetnsSocketFactory,
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), PodError> {
    let listener = factory
        .listen(addr)
        .map_err(|source| PodError::Bind { what, addr, source })?;
    // Port 0 becomes the kernel's choice; otherwise the two are the same.
    let bound = listener.local_addr().unwrap_or(addr);
    Ok((listener, bound))
}
