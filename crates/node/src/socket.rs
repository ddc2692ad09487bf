//! Sockets: where listeners are bound and outbound connections are made from.
//!
//! Everything that creates a socket goes through a [`SocketFactory`], so the same listener and
//! connection code runs inside each pod's network namespace (in-pod mode:
//! [`crate::inpod::NetnsSocketFactory`] creates sockets in the namespace and marks them) while
//! shared mode uses [`DefaultSocketFactory`] in the proxy's own namespace.
//!
//! Listeners set `SO_REUSEPORT`, so a new proxy process can bind beside a draining one and take
//! over new connections without a gap.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Backlog of every listener.
const BACKLOG: i32 = 1024;

/// Creates the proxy's sockets. See the [module docs](self).
pub trait SocketFactory: Send + Sync + fmt::Debug + 'static {
    /// A listener on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`.
    fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener>;

    /// An unconnected socket for reaching `dst`.
    fn connect_socket(&self, dst: SocketAddr) -> io::Result<TcpSocket>;
}

/// Sockets in the proxy's own network namespace, optionally marked (`SO_MARK`, so capture rules
/// can skip the proxy's own traffic; needs `CAP_NET_ADMIN`).
#[derive(Debug, Clone, Default)]
pub struct DefaultSocketFactory {
    pub mark: Option<u32>,
}

impl SocketFactory for DefaultSocketFactory {
    fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        listen_on(socket, addr)
    }

    fn connect_socket(&self, dst: SocketAddr) -> io::Result<TcpSocket> {
        let socket = if dst.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(mark) = self.mark {
            SockRef::from(&socket).set_mark(mark)?;
        }
        socket.set_nodelay(true)?;
        Ok(socket)
    }
}

/// Makes a fresh TCP `socket` a listener on `addr`, as every factory's listeners are: address
/// and port reuse, IPv6-only for IPv6 addresses, non-blocking, registered with the runtime.
pub(crate) fn listen_on(socket: Socket, addr: SocketAddr) -> io::Result<TcpListener> {
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Connects to `dst` through `factory` within `timeout`.
pub(crate) async fn connect(
    factory: &dyn SocketFactory,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    connect_from(factory, None, dst, timeout).await
}

/// [`connect`] from source address `local` (any port) when it is an address of the factory's
/// namespace; from the address routing chooses when it is not (or `None`).
pub(crate) async fn connect_from(
    factory: &dyn SocketFactory,
    local: Option<IpAddr>,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let socket = factory.connect_socket(dst)?;
    if let Some(ip) = local.filter(|ip| ip.is_ipv4() == dst.is_ipv4())
        && let Err(e) = socket.bind(SocketAddr::new(ip, 0))
    {
        if e.kind() != io::ErrorKind::AddrNotAvailable {
            return Err(e);
        }
        tracing::debug!(%ip, %dst, "source address is not local; connecting from the routed one");
    }
    match tokio::time::timeout(timeout, socket.connect(dst)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer from {dst} within {timeout:?}"),
        )),
    }
}

/// The destination a redirected connection was addressed to (`SO_ORIGINAL_DST`), or `None` if
/// it was not redirected (then the local address is where it was sent).
pub(crate) fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let sock = SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let orig = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let orig = orig.ok()?.as_socket()?;
    // IPv4-mapped addresses are the IPv4 destination.
    Some(SocketAddr::new(orig.ip().to_canonical(), orig.port()))
}

/// A peer or local address in canonical form (IPv4-mapped IPv6 → IPv4).
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_listeners_share_a_port_and_unredirected_sockets_have_no_original_dst() {
        let factory = DefaultSocketFactory::default();
        let first = factory.listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = factory
            .listen(addr)
            .expect("SO_REUSEPORT lets a second listener bind");
        assert_eq!(second.local_addr().unwrap(), addr);

        let client = connect(&factory, addr, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(original_dst(&client), None);
    }
}
