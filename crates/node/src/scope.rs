//! The network namespace a listener set serves, as its connection handlers see it.
//!
//! Shared mode has one [`Scope`], the proxy's own namespace. In-pod mode has one per pod: a
//! connection accepted by a pod's listener opens every socket it needs (to the application, to
//! a peer's 15008, to a destination outside the mesh) through that pod's factory, so it leaves
//! from the namespace it arrived in. Inside a pod that is what lets the pod's redirection rules
//! recognise (by mark) and skip the proxy's own sockets, and what makes the destination see the
//! pod's own address.
//!
//! Invariant: a pooled HBONE connection belongs to one scope (`PoolKey::netns`), so a tunnel of
//! pod A never rides a connection dialed from pod B's namespace.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::socket::SocketFactory;

/// Where a listener set's connections come from and go out of. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Scope {
    /// Creates every socket of this scope's connections.
    pub(crate) factory: Arc<dyn SocketFactory>,
    /// The inode of a pod's network namespace; `None` for the proxy's own.
    pub(crate) netns: Option<u64>,
    /// This scope's own listener addresses: a connection to one of them is a loop.
    own: Vec<SocketAddr>,
}

impl Scope {
    /// The proxy's own namespace.
    pub(crate) fn shared(factory: Arc<dyn SocketFactory>, own: Vec<SocketAddr>) -> Self {
        Self {
            factory,
            netns: None,
            own,
        }
    }

    /// A pod's namespace, identified by its inode.
    pub(crate) fn pod(factory: Arc<dyn SocketFactory>, netns: u64, own: Vec<SocketAddr>) -> Self {
        Self {
            factory,
            netns: Some(netns),
            own,
        }
    }

    /// Whether `addr` is one of this scope's own listeners (a redirect loop). An unspecified
    /// listener address stands for every address of the namespace.
    pub(crate) fn is_own(&self, addr: SocketAddr) -> bool {
        self.own.iter().any(|own| {
            own.port() == addr.port() && (own.ip() == addr.ip() || own.ip().is_unspecified())
        })
    }

    pub(crate) fn own(&self) -> &[SocketAddr] {
        &self.own
    }
}
