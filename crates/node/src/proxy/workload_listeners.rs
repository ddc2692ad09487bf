//! Shared mode's HBONE listeners: one `<workload ip>:15008` per local workload address.
//!
//! Why per workload address: the TLS server must present the *destination* workload's
//! certificate, and rustls picks the certificate before any HTTP/2 byte (so before the CONNECT
//! authority) is seen. Binding on each workload's own address makes the local address of the
//! accepted socket name the destination, exactly as in-pod mode does with one 15008 per pod
//! network namespace, and as ztunnel does. On a real node in shared mode the pod addresses
//! must be local (or the proxy must run in-pod); on loopback each test workload has its own
//! `127.x.y.z` address, so this works without privileges.
//!
//! The set follows the state: a listener is bound when a local HBONE workload appears and
//! closed when it goes. A bind failure is logged once per address and retried on the next
//! change. Certificates of identities new on the node are fetched ahead of the first
//! connection; those whose last local workload left are forgotten by the certificate cache.
//!
//! In in-pod mode the HBONE listeners live inside each pod's namespace (`crate::inpod`), so
//! this set binds nothing and only keeps the certificates of local identities current.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use ambit_identity::SpiffeId;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::inputs::Inputs;
use super::listeners::accept_loop;
use crate::hbone::server;
use crate::state::Protocol;

/// Starts following the state; `bound` mirrors the listeners open at any time. Without
/// `listen`, only certificates follow the state.
pub(crate) fn spawn(
    inputs: Arc<Inputs>,
    bound: Arc<Mutex<BTreeMap<IpAddr, SocketAddr>>>,
    listen: bool,
) {
    tokio::spawn(async move {
        let stop = inputs.drain.stop_accepting.clone();
        let mut changes = inputs.state.subscribe();
        let mut set = Set {
            inputs,
            listen,
            bound,
            open: HashMap::new(),
            failed: BTreeSet::new(),
            identities: BTreeSet::new(),
        };
        loop {
            set.reconcile();
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                () = stop.cancelled() => break,
            }
        }
        set.close_all();
    });
}

struct Set {
    inputs: Arc<Inputs>,
    /// Shared mode: bind the listeners (in-pod mode only prefetches certificates).
    listen: bool,
    bound: Arc<Mutex<BTreeMap<IpAddr, SocketAddr>>>,
    open: HashMap<IpAddr, CancellationToken>,
    failed: BTreeSet<IpAddr>,
    identities: BTreeSet<SpiffeId>,
}

impl Set {
    fn reconcile(&mut self) {
        let local = self.inputs.state.local_workloads();
        let wanted: BTreeSet<IpAddr> = local
            .iter()
            .filter(|w| self.listen && w.protocol == Protocol::Hbone && !w.host_network)
            .flat_map(|w| w.addresses.iter().copied())
            .collect();
        let stale: Vec<IpAddr> = self
            .open
            .keys()
            .filter(|ip| !wanted.contains(ip))
            .copied()
            .collect();
        for ip in stale {
            if let Some(token) = self.open.remove(&ip) {
                token.cancel();
            }
            self.bound().remove(&ip);
            info!(%ip, "local workload left: HBONE listener closed");
        }
        self.failed.retain(|ip| wanted.contains(ip));
        for ip in wanted {
            if !self.open.contains_key(&ip) {
                self.bind(ip);
            }
        }
        // Only enrolled (HBONE) workloads get certificates: a pod outside the mesh has no
        // identity on the data path, so the node proxy never asks the CA for one.
        self.forget_departed(
            local
                .iter()
                .filter(|w| w.protocol == Protocol::Hbone)
                .map(|w| w.identity.clone())
                .collect(),
        );
    }

    fn bind(&mut self, ip: IpAddr) {
        let addr = SocketAddr::new(ip, self.inputs.config.listeners.hbone_port);
        let scope = &self.inputs.shared;
        match scope.factory.listen(addr) {
            Ok(listener) => {
                let addr = listener.local_addr().unwrap_or(addr);
                let token = self.inputs.drain.stop_accepting.child_token();
                let (inputs, scope) = (self.inputs.clone(), scope.clone());
                accept_loop(
                    "HBONE",
                    listener,
                    &self.inputs.drain,
                    token.clone(),
                    move |s, p| server::serve(inputs.clone(), scope.clone(), s, p),
                );
                self.open.insert(ip, token);
                self.bound().insert(ip, addr);
                self.failed.remove(&ip);
            }
            Err(e) => {
                if self.failed.insert(ip) {
                    warn!(%addr, error = %e, "cannot bind the HBONE listener of a local workload");
                }
            }
        }
    }

    /// Fetches certificates for identities new on this node (so the first connection does not
    /// wait for the CA) and drops those of identities no local workload has any more.
    fn forget_departed(&mut self, current: BTreeSet<SpiffeId>) {
        if let Some(certs) = self.inputs.state.certificates() {
            for gone in self.identities.difference(&current) {
                certs.forget(gone);
            }
            for new in current.difference(&self.identities) {
                let (certs, id) = (certs.clone(), new.clone());
                // Failures are logged and retried by the manager; a connection fetches again.
                tokio::spawn(async move { drop(certs.fetch(&id).await) });
            }
        }
        self.identities = current;
    }

    fn close_all(&mut self) {
        for (_, token) in self.open.drain() {
            token.cancel();
        }
        self.bound().clear();
    }

    fn bound(&self) -> std::sync::MutexGuard<'_, BTreeMap<IpAddr, SocketAddr>> {
        self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
