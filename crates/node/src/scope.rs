//! The network namespace a listener set serves, as its connection handlers see it.
//!
//! Shared mode has one [`Scope`], the proxy's own namespace. In-pod mode has one per pod: a
//! connection accepted by a pod's listener opens every socket it needs (to the application, to
//! a peer's 15008, to a destination outside the mesh) through that pod's factory, so it leaves
//! from the namespace it arrived in. Inside a pod that is what lets the pod's redirection rules
//! recognise (by mark) and skip the proxy's own sockets, and what makes the destination see the
//! pod's own address.
//!
//! Invariants:
//! - A pooled HBONE connection belongs to one scope (`PoolKey::netns`), so a tunnel of pod A
//!   never rides a connection dialed from pod B's namespace.
//! - A pod's scope names the pod as the capture agent handed it over ZDS ([`PodInfo`]): in-pod
//!   connections speak for that pod's workload and no other, whatever address they carry
//!   ([`Scope::source_workload`], [`Scope::destination_workload`]). A pod that adds a
//!   neighbour's address to its interface still speaks only as itself.
//! - A tunnel never targets one of the proxy's own ports in the scope's namespace
//!   ([`Scope::is_reserved_port`], ztunnel's `illegal_ports`): HBONE inside HBONE, or the
//!   proxy's admin and metrics servers reached through a workload's address, are refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::ports;

use crate::socket::SocketFactory;
use crate::state::{PodInfo, ProxyState, Workload};

/// How long a pod's connection waits for WDS to send the pod's workload: the capture agent may
/// hand a pod over before the control plane has served it (ztunnel waits 5 s too).
const POD_WORKLOAD_WAIT: Duration = Duration::from_secs(5);

/// Where a listener set's connections come from and go out of. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Scope {
    /// Creates every socket of this scope's connections.
    pub(crate) factory: Arc<dyn SocketFactory>,
    /// The inode of a pod's network namespace; `None` for the proxy's own.
    pub(crate) netns: Option<u64>,
    /// The pod this scope serves (in-pod mode), as the capture agent named it.
    pub(crate) pod: Option<PodInfo>,
    /// This scope's own listener addresses: a connection to one of them is a loop.
    own: Vec<SocketAddr>,
    /// Ports a tunnel may not target in this namespace: the proxy's own.
    reserved: Vec<u16>,
}

impl Scope {
    /// The proxy's own namespace, with its listeners at `own` and HBONE on `hbone_port`. The
    /// admin, metrics and readiness servers live in this namespace too, so their ports are
    /// reserved beside the listeners'.
    pub(crate) fn shared(
        factory: Arc<dyn SocketFactory>,
        own: Vec<SocketAddr>,
        hbone_port: u16,
    ) -> Self {
        let servers = [ports::ADMIN, ports::STATS, ports::READINESS];
        let reserved = reserved(&own, hbone_port, &servers);
        Self {
            factory,
            netns: None,
            pod: None,
            own,
            reserved,
        }
    }

    /// A pod's namespace, identified by its inode, serving `pod`; `socks5_port` is the
    /// proxy's SOCKS5 port if it has one (reserved in every scope, as ztunnel does).
    pub(crate) fn pod(
        factory: Arc<dyn SocketFactory>,
        netns: u64,
        pod: PodInfo,
        own: Vec<SocketAddr>,
        hbone_port: u16,
        socks5_port: Option<u16>,
    ) -> Self {
        let reserved = reserved(&own, hbone_port, socks5_port.as_slice());
        Self {
            factory,
            netns: Some(netns),
            pod: Some(pod),
            own,
            reserved,
        }
    }

    /// Whether `addr` is one of this scope's own listeners (a redirect loop). An unspecified
    /// listener address stands for every address of the namespace.
    pub(crate) fn is_own(&self, addr: SocketAddr) -> bool {
        self.own.iter().any(|own| {
            own.port() == addr.port() && (own.ip() == addr.ip() || own.ip().is_unspecified())
        })
    }

    /// Whether a tunnel to `port` of a workload in this namespace would reach the proxy
    /// itself.
    pub(crate) fn is_reserved_port(&self, port: u16) -> bool {
        self.reserved.contains(&port)
    }

    /// The local workload a connection from `src` in this scope speaks for (outbound): in a
    /// pod's namespace the pod's workload, whatever `src` is; in the proxy's own, the local
    /// workload owning `src` (shared mode knows workloads only by address).
    pub(crate) async fn source_workload(
        &self,
        state: &ProxyState,
        src: IpAddr,
    ) -> Option<Arc<Workload>> {
        match &self.pod {
            Some(pod) => state.wait_for_pod(pod, POD_WORKLOAD_WAIT).await,
            None => state.local_workload_by_ip(src),
        }
    }

    /// The local workload a connection to `dst` in this scope reaches (inbound): in a pod's
    /// namespace the pod's workload, and only if `dst` is one of its addresses; in the proxy's
    /// own, the local workload owning `dst`.
    pub(crate) async fn destination_workload(
        &self,
        state: &ProxyState,
        dst: IpAddr,
    ) -> Option<Arc<Workload>> {
        match &self.pod {
            Some(pod) => state
                .wait_for_pod(pod, POD_WORKLOAD_WAIT)
                .await
                .filter(|w| w.addresses.contains(&dst)),
            None => state.local_workload_by_ip(dst),
        }
    }

    pub(crate) fn own(&self) -> &[SocketAddr] {
        &self.own
    }
}

fn reserved(own: &[SocketAddr], hbone_port: u16, extra: &[u16]) -> Vec<u16> {
    let mut ports: Vec<u16> = own.iter().map(SocketAddr::port).collect();
    ports.push(hbone_port);
    ports.extend_from_slice(extra);
    ports.retain(|p| *p != 0);
    ports.sort_unstable();
    ports.dedup();
    ports
}
