//! Sockets inside a pod's network namespace.
//!
//! Only the `socket()` call has to happen inside the namespace (a socket belongs to the
//! namespace it was created in, whichever thread binds, connects or polls it later), so it is
//! the one step sent to the namespace's worker thread ([`Netns::run_io`]); options, `bind`,
//! `listen` and the connect happen on the caller's thread.
//!
//! That hop would make every new connection wait for the namespace's thread, so upstream
//! sockets are made ahead of need: the factory keeps a stock of [`STOCK`] unconnected sockets
//! per address family, made in one hop and given exactly the mark and options a socket made on
//! demand gets, and refills it from tokio's blocking pool once it falls below half. A
//! connection takes one from the stock without a hop; only the first of a family (a family's
//! stock is started by its first use, so a pod without IPv6 holds no IPv6 sockets) and those
//! of a burst that outruns the refill make their own. Listeners are made on demand.
//!
//! Invariant: every socket made here carries the mark, so the pod's redirection rules let the
//! proxy's own traffic through instead of sending it back to the proxy.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use ambit_netns::Netns;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket};
use tracing::debug;

use crate::socket::{SocketFactory, listen_on};

/// Unconnected upstream sockets kept ready per address family.
const STOCK: usize = 8;

/// Creates sockets inside a pod's network namespace, each marked (`SO_MARK`; needs
/// `CAP_NET_ADMIN`). See the [module docs](self).
#[derive(Debug, Clone)]
pub struct NetnsSocketFactory {
    netns: Netns,
    mark: u32,
    stock: Arc<Stock>,
}

/// Ready upstream sockets, one shelf per address family.
#[derive(Debug, Default)]
struct Stock {
    v4: Shelf,
    v6: Shelf,
}

#[derive(Debug, Default)]
struct Shelf {
    sockets: Mutex<Vec<Socket>>,
    /// A refill is under way (at most one per shelf).
    refilling: AtomicBool,
}

impl NetnsSocketFactory {
    /// Sockets in `netns`, marked with `mark`.
    pub fn new(netns: Netns, mark: u32) -> Self {
        Self {
            netns,
            mark,
            stock: Arc::default(),
        }
    }

    /// A marked TCP socket of `domain`, created inside the namespace.
    fn socket(&self, domain: Domain) -> io::Result<Socket> {
        let socket = self
            .netns
            .run_io(move || Socket::new(domain, Type::STREAM, Some(Protocol::TCP)))?;
        socket.set_mark(self.mark)?;
        Ok(socket)
    }

    /// Starts refilling `domain`'s shelf in the background, unless a refill is under way or
    /// there is no runtime to run it on.
    fn refill(&self, domain: Domain) {
        let shelf = self.stock.shelf(domain);
        if shelf.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            shelf.refilling.store(false, Ordering::Release);
            return;
        };
        let (netns, mark) = (self.netns.clone(), self.mark);
        // Weak: a pod that is gone does not wait for its refill, and the refill drops what it
        // made.
        let stock = Arc::downgrade(&self.stock);
        runtime.spawn_blocking(move || refill(&netns, mark, domain, &stock));
    }

    /// How many sockets of `domain` are ready.
    #[cfg(test)]
    fn stocked(&self, domain: Domain) -> usize {
        self.stock.shelf(domain).lock().len()
    }
}

impl SocketFactory for NetnsSocketFactory {
    fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        listen_on(self.socket(Domain::for_address(addr))?, addr)
    }

    fn connect_socket(&self, dst: SocketAddr) -> io::Result<TcpSocket> {
        let domain = Domain::for_address(dst);
        let (ready, left) = {
            let mut sockets = self.stock.shelf(domain).lock();
            (sockets.pop(), sockets.len())
        };
        if left < STOCK / 2 {
            self.refill(domain);
        }
        let socket = match ready {
            Some(socket) => socket,
            None => upstream(self.socket(domain)?)?,
        };
        Ok(TcpSocket::from_std_stream(socket.into()))
    }
}

// === impl Stock ===

impl Stock {
    fn shelf(&self, domain: Domain) -> &Shelf {
        if domain == Domain::IPV6 {
            &self.v6
        } else {
            &self.v4
        }
    }
}

impl Shelf {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Socket>> {
        // Nothing panics under this lock; the list is consistent whatever happens.
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Fills `domain`'s shelf of `stock` up to [`STOCK`] with sockets made in `netns`, then lets
/// the next refill start. A connection that took a socket meanwhile found a refill under way and
/// left the work to it, so the shelf is looked at once more after the flag is cleared, and
/// filled again if it is not full: a refill ends with a full shelf (or a failure).
fn refill(netns: &Netns, mark: u32, domain: Domain, stock: &Weak<Stock>) {
    loop {
        let filled = fill(netns, mark, domain, stock);
        let Some(stock) = stock.upgrade() else {
            return;
        };
        let shelf = stock.shelf(domain);
        shelf.refilling.store(false, Ordering::Release);
        let full = shelf.lock().len() >= STOCK;
        // After a failure, connections make their own sockets (and say why) until one of
        // them starts the next refill.
        if !filled || full || shelf.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
    }
}

/// One hop per round, up to two rounds (the second covers what connections took during the
/// first); false if sockets could not be made.
fn fill(netns: &Netns, mark: u32, domain: Domain, stock: &Weak<Stock>) -> bool {
    const ROUNDS: usize = 2;
    for _ in 0..ROUNDS {
        let missing = match stock.upgrade() {
            Some(stock) => STOCK.saturating_sub(stock.shelf(domain).lock().len()),
            None => return true,
        };
        if missing == 0 {
            break;
        }
        let made = match make(netns, mark, domain, missing) {
            Ok(made) => made,
            Err(e) => {
                debug!(error = %e, "cannot stock upstream sockets");
                return false;
            }
        };
        let Some(stock) = stock.upgrade() else {
            return true;
        };
        let mut sockets = stock.shelf(domain).lock();
        let room = STOCK.saturating_sub(sockets.len());
        sockets.extend(made.into_iter().take(room));
    }
    true
}

/// `count` upstream sockets of `domain` made in `netns` in one hop, each as
/// [`NetnsSocketFactory::connect_socket`] makes one on demand.
fn make(netns: &Netns, mark: u32, domain: Domain, count: usize) -> io::Result<Vec<Socket>> {
    let made = netns.run_io(move || {
        (0..count)
            .map(|_| Socket::new(domain, Type::STREAM, Some(Protocol::TCP)))
            .collect::<io::Result<Vec<_>>>()
    })?;
    made.into_iter()
        .map(|socket| {
            socket.set_mark(mark)?;
            upstream(socket)
        })
        .collect()
}

/// A marked socket made ready to connect upstream: no Nagle delay, non-blocking.
fn upstream(socket: Socket) -> io::Result<Socket> {
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use socket2::SockRef;

    use super::*;

    /// A new network namespace with its loopback up. Needs root; fails loudly without.
    fn netns_with_loopback() -> Netns {
        let netns = Netns::create().expect("this test needs root: cannot create a netns");
        let mut ip = std::process::Command::new("ip");
        ip.args(["link", "set", "lo", "up"]);
        let up = netns.output(ip).unwrap();
        assert!(up.status.success(), "ip link set lo up: {up:?}");
        netns
    }

    /// Needs root (a new network namespace and `SO_MARK`); fails loudly without.
    #[tokio::test]
    async fn sockets_live_in_the_namespace_and_carry_the_mark() {
        let netns = netns_with_loopback();
        let factory = NetnsSocketFactory::new(netns, 0x539);
        // Port 1 on the host's loopback may be anything; inside a new namespace it is free.
        let listener = factory.listen("127.0.0.1:1".parse().unwrap()).unwrap();
        assert_eq!(SockRef::from(&listener).mark().unwrap(), 0x539);
        let socket = factory
            .connect_socket("127.0.0.1:1".parse().unwrap())
            .unwrap();
        assert_eq!(SockRef::from(&socket).mark().unwrap(), 0x539);
        let (client, accepted) = tokio::join!(
            socket.connect("127.0.0.1:1".parse().unwrap()),
            listener.accept()
        );
        let (client, accepted) = (client.unwrap(), accepted.unwrap().0);
        assert_eq!(client.peer_addr().unwrap(), accepted.local_addr().unwrap());
        // The host's own loopback does not know this listener.
        assert!(
            std::net::TcpStream::connect("127.0.0.1:1").is_err(),
            "the listener leaked into the host's namespace"
        );
    }

    /// Needs root (a new network namespace and `SO_MARK`); fails loudly without.
    #[tokio::test]
    async fn connections_outlast_the_stock_and_it_refills() {
        let netns = netns_with_loopback();
        let factory = NetnsSocketFactory::new(netns, 0x539);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let listener = factory.listen(addr).unwrap();
        assert_eq!(factory.stocked(Domain::IPV4), 0, "stocked before any use");

        // The first connection of a family makes its own socket and starts the stock.
        let first = factory.connect_socket(addr).unwrap();
        assert_eq!(SockRef::from(&first).mark().unwrap(), 0x539);
        ambit_testkit::eventually!(observe = factory.stocked(Domain::IPV4), |n| n == STOCK);

        // Three stocks' worth, faster than refills can always keep up: every one is marked and
        // reaches the listener that exists only inside the namespace.
        let mut open = Vec::new();
        for i in 0..3 * STOCK {
            let socket = factory.connect_socket(addr).unwrap();
            assert_eq!(SockRef::from(&socket).mark().unwrap(), 0x539, "socket {i}");
            assert!(SockRef::from(&socket).tcp_nodelay().unwrap(), "socket {i}");
            let (client, accepted) = tokio::join!(socket.connect(addr), listener.accept());
            let (client, accepted) = (client.unwrap(), accepted.unwrap().0);
            assert_eq!(client.peer_addr().unwrap(), accepted.local_addr().unwrap());
            open.push((client, accepted));
        }
        // Taken below half, the stock is made whole again.
        while factory.stocked(Domain::IPV4) >= STOCK / 2 {
            drop(factory.connect_socket(addr).unwrap());
        }
        ambit_testkit::eventually!(observe = factory.stocked(Domain::IPV4), |n| n == STOCK);
        // No IPv6 connection was asked for: no IPv6 sockets are held.
        assert_eq!(factory.stocked(Domain::IPV6), 0);

        // Once stocked, a connection does not wait for a refill to find a socket.
        let socket = factory.connect_socket(addr).unwrap();
        assert_eq!(factory.stocked(Domain::IPV4), STOCK - 1);
        assert_eq!(SockRef::from(&socket).mark().unwrap(), 0x539);
        let (client, accepted) = tokio::join!(socket.connect(addr), listener.accept());
        assert_eq!(
            client.unwrap().peer_addr().unwrap(),
            accepted.unwrap().0.local_addr().unwrap()
        );
    }
}
