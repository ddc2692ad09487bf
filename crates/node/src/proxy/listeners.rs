//! The listener set of one network namespace, and the accept loop every listener runs.
//!
//! In shared mode there is one [`Listeners`] set, in the proxy's own namespace. In-pod mode
//! (`crate::inpod`) opens one set per pod through a [`SocketFactory`] that binds inside the
//! pod's namespace, and serves it with the same [`accept_loop`] and handlers, each connection
//! carrying its set's [`Scope`].
//!
//! Each accepted connection runs as a task of the drain tracker; an accept loop ends when its
//! set stops accepting (the proxy drains, or a pod leaves), dropping (closing) its listener.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::error::StartError;
use super::inputs::Inputs;
use super::{outbound, passthrough};
use crate::config::ListenerConfig;
use crate::drain::Drain;
use crate::scope::Scope;
use crate::socket::{SocketFactory, canonical};

/// Bound but not yet serving listeners of one network namespace.
#[derive(Debug)]
pub struct Listeners {
    outbound: Option<TcpListener>,
    passthrough: Option<TcpListener>,
    socks5: Option<TcpListener>,
}

/// Where a listener set is bound (`None`: disabled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BoundAddrs {
    pub outbound: Option<SocketAddr>,
    pub inbound_passthrough: Option<SocketAddr>,
    pub socks5: Option<SocketAddr>,
}

impl Listeners {
    /// Binds every listener `config` enables, through `factory`.
    pub fn bind(factory: &dyn SocketFactory, config: &ListenerConfig) -> Result<Self, StartError> {
        let bind = |what, addr: Option<SocketAddr>| {
            addr.map(|addr| {
                factory
                    .listen(addr)
                    .map_err(|source| StartError::Bind { what, addr, source })
            })
            .transpose()
        };
        Ok(Self {
            outbound: bind("outbound", config.outbound)?,
            passthrough: bind("inbound passthrough", config.inbound_passthrough)?,
            socks5: bind("SOCKS5", config.socks5)?,
        })
    }

    /// A set of listeners bound elsewhere (a pod's, by `crate::inpod`).
    pub(crate) fn from_bound(
        outbound: Option<TcpListener>,
        passthrough: Option<TcpListener>,
        socks5: Option<TcpListener>,
    ) -> Self {
        Self {
            outbound,
            passthrough,
            socks5,
        }
    }

    pub fn addrs(&self) -> BoundAddrs {
        let addr = |l: &Option<TcpListener>| l.as_ref().and_then(|l| l.local_addr().ok());
        BoundAddrs {
            outbound: addr(&self.outbound),
            inbound_passthrough: addr(&self.passthrough),
            socks5: addr(&self.socks5),
        }
    }

    /// Starts the accept loops; connections open their sockets through `scope` and stop with
    /// `drain`.
    pub(crate) fn serve(self, inputs: &Arc<Inputs>, scope: &Arc<Scope>, drain: &Drain) {
        let stop = drain.stop_accepting.clone();
        if let Some(listener) = self.outbound {
            let (i, sc) = (inputs.clone(), scope.clone());
            accept_loop("outbound", listener, drain, stop.clone(), move |s, p| {
                outbound::serve_redirected(i.clone(), sc.clone(), s, p)
            });
        }
        if let Some(listener) = self.passthrough {
            let (i, sc) = (inputs.clone(), scope.clone());
            accept_loop(
                "inbound passthrough",
                listener,
                drain,
                stop.clone(),
                move |s, p| passthrough::serve(i.clone(), sc.clone(), s, p),
            );
        }
        if let Some(listener) = self.socks5 {
            let (i, sc) = (inputs.clone(), scope.clone());
            accept_loop("SOCKS5", listener, drain, stop, move |s, p| {
                outbound::serve_socks5(i.clone(), sc.clone(), s, p)
            });
        }
    }
}

impl BoundAddrs {
    pub(crate) fn all(&self) -> Vec<SocketAddr> {
        [self.outbound, self.inbound_passthrough, self.socks5]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Accepts on `listener` until `stop`, running `handle` for each connection as a tracked task
/// that ends when the drain forces it.
pub(crate) fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    drain: &Drain,
    stop: CancellationToken,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let drain = drain.clone();
    let listeners = drain.listeners.clone();
    listeners.spawn(async move {
        let addr = listener.local_addr().ok();
        info!(listener = name, ?addr, "listening");
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    // Boxed so that the task holds the connection's future once: moved into
                    // the `select!` unboxed, it would be stored twice for the connection's life.
                    let connection = Box::pin(handle(stream, canonical(peer)));
                    let force = drain.force.clone();
                    drain.tracker.spawn(async move {
                        tokio::select! {
                            () = connection => {}
                            () = force.cancelled() => {}
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        info!(listener = name, ?addr, "listener closed");
    });
}
