//! [`Acceptor`]: a listener that holds at most so many connections at once and never spins.
//!
//! - A connection is accepted only once a place under [`Limits::max_connections`] is free; the
//!   place is released when the [`Conn`] is dropped. Clients beyond the cap wait in the kernel's
//!   backlog and are served as places free up.
//! - A failed accept never ends the loop and is never retried at once: when the process or the
//!   system is out of descriptors or memory (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) the
//!   listener stays readable, so an immediate retry would spin a core; the loop pauses instead,
//!   10 ms doubling up to 1 s while accepts keep failing, and logs a warning.
//! - Every connection idles out after [`Limits::idle_timeout`] without traffic (see [`Conn`]).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::conn::Conn;

/// The first pause after a failed accept; it doubles while accepts keep failing.
const BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// The longest pause between accepts that fail.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

// Linux errno values of an exhausted process or system (descriptors, buffers, memory).
const ENOMEM: i32 = 12;
const ENFILE: i32 = 23;
const EMFILE: i32 = 24;
const ENOBUFS: i32 = 105;

/// The bounds of one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; the next one waits in the kernel's backlog.
    pub max_connections: usize,
    /// How long a client has to send a request head (HTTP/1.1 ports).
    pub header_timeout: Duration,
    /// How long a connection may move no byte in either direction.
    pub idle_timeout: Duration,
}

impl Limits {
    /// An admin, metrics or readiness port: a few local readers, scrapers and probes.
    pub const HTTP: Self = Self {
        max_connections: 64,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
    };

    /// A gRPC port that every node proxy and capture agent of a cluster stays connected to.
    /// The idle timeout is well above the server's HTTP/2 keepalive interval, so a live peer
    /// (which answers pings) never reaches it.
    pub const GRPC: Self = Self {
        max_connections: 4096,
        header_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(120),
    };
}

/// A listener bounded by [`Limits`]. See the [module docs](self).
#[derive(Debug)]
pub struct Acceptor {
    name: &'static str,
    listener: TcpListener,
    places: Arc<Semaphore>,
    idle: Duration,
}

impl Acceptor {
    /// Accepts on `listener` (named `name` in logs) within `limits`.
    pub fn new(name: &'static str, listener: TcpListener, limits: &Limits) -> Self {
        Self {
            name,
            listener,
            places: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            idle: limits.idle_timeout,
        }
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The next connection, once a place under the cap is free. Never fails: a failed accept
    /// is logged and retried after a pause (see the [module docs](self)).
    pub async fn accept(&self) -> (Conn<TcpStream>, SocketAddr) {
        // The semaphore is never closed; were it, waiting for ever is still within the cap.
        let Ok(place) = self.places.clone().acquire_owned().await else {
            return std::future::pending().await;
        };
        let mut pause = BACKOFF_FIRST;
        loop {
            match self.listener.accept().await {
                Ok((tcp, peer)) => return (Conn::new(tcp, self.idle, Some(place)), peer),
                Err(e) => {
                    if exhausted(&e) {
                        warn!(server = self.name, error = %e, ?pause, "accept failed: out of resources; pausing");
                    } else {
                        debug!(server = self.name, error = %e, "accept failed");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// Whether `e` says the process or the system ran out of something an accept needs.
fn exhausted(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_is_told_from_a_passing_error() {
        for errno in [EMFILE, ENFILE, ENOBUFS, ENOMEM] {
            assert!(exhausted(&io::Error::from_raw_os_error(errno)), "{errno}");
        }
        // ECONNABORTED: one client gave up; the next accept may well work.
        assert!(!exhausted(&io::Error::from_raw_os_error(103)));
        assert!(!exhausted(&io::Error::other("not from the kernel")));
    }
}
