//! Sockets inside a pod's network namespace.
//!
//! Only the `socket()` call has to happen inside the namespace (a socket belongs to the
//! namespace it was created in, whichever thread binds, connects or polls it later), so it is
//! the one step sent to the namespace's worker thread ([`Netns::run_io`]); options, `bind`,
//! `listen` and the connect happen on the caller's thread. That hop blocks the calling task
//! for the microseconds a `socket()` takes, on a thread that does nothing else.
//!
//! Invariant: every socket made here carries the mark, so the pod's redirection rules let the
//! proxy's own traffic through instead of sending it back to the proxy.

use std::io;
use std::net::SocketAddr;

use ambit_netns::Netns;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket};

use crate::proxy::socket::{SocketFactory, listen_on};

/// Creates sockets inside `netns`, each marked with `mark` (`SO_MARK`; needs `CAP_NET_ADMIN`).
#[derive(Debug, Clone)]
pub struct NetnsSocketFactory {
    pub netns: Netns,
    pub mark: u32,
}

impl NetnsSocketFactory {
    /// A marked TCP socket of `domain`, created inside the namespace.
    fn socket(&self, domain: Domain) -> io::Result<Socket> {
        let socket = self
            .netns
            .run_io(move || Socket::new(domain, Type::STREAM, Some(Protocol::TCP)))?;
        socket.set_mark(self.mark)?;
        Ok(socket)
    }
}

impl SocketFactory for NetnsSocketFactory {
    fn listen(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        listen_on(self.socket(Domain::for_address(addr))?, addr)
    }

    fn connect_socket(&self, dst: SocketAddr) -> io::Result<TcpSocket> {
        let socket = self.socket(Domain::for_address(dst))?;
        socket.set_tcp_nodelay(true)?;
        socket.set_nonblocking(true)?;
        Ok(TcpSocket::from_std_stream(socket.into()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use socket2::SockRef;

    use super::*;

    /// Needs root (a new network namespace and `SO_MARK`); fails loudly without.
    #[tokio::test]
    async fn sockets_live_in_the_namespace_and_carry_the_mark() {
        let netns = Netns::create().expect("this test needs root: cannot create a netns");
        let up = netns
            .output({
                let mut ip = std::process::Command::new("ip");
                ip.args(["link", "set", "lo", "up"]);
                ip
            })
            .unwrap();
        assert!(up.status.success(), "ip link set lo up: {up:?}");
        let factory = NetnsSocketFactory { netns, mark: 0x539 };
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
}
