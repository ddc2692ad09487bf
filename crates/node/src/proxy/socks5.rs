//! SOCKS5 as the 15080 listener speaks it (as ztunnel has): outbound capture for hosts without
//! redirection, and for loopback tests. The listener's handler is
//! [`super::outbound::serve_socks5`]; this module is the protocol.
//!
//! RFC 1928, the subset a mesh needs: method "no authentication" only, command CONNECT only,
//! destinations by IPv4 or IPv6 address (a name would need DNS the mesh does not do here).
//! The reply is sent once the upstream is connected (HBONE tunnel established or TCP
//! connected), so a refused destination is a SOCKS failure, not an accepted-then-closed stream.
//! The client is identified by its source address, exactly as on 15001.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_V6: u8 = 4;

/// RFC 1928 reply codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Reply {
    Succeeded = 0,
    GeneralFailure = 1,
    NotAllowed = 2,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

/// Why a SOCKS5 handshake failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Socks5Error {
    #[error("SOCKS5 handshake I/O")]
    Io(#[from] std::io::Error),
    #[error("not SOCKS version 5 (got {0})")]
    Version(u8),
    #[error("the client offers no method without authentication")]
    NoAcceptableMethod,
    #[error("command {0} is not CONNECT")]
    Command(u8),
    #[error("address type {0} is not an IP address")]
    AddressType(u8),
    #[error("no SOCKS5 request within {0:?}")]
    Timeout(Duration),
}

/// Reads the greeting and the request; answers the greeting. Returns the destination.
pub(crate) async fn handshake<S>(stream: &mut S) -> Result<SocketAddr, Socks5Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let [version, methods] = read_array(stream).await?;
    if version != VERSION {
        return Err(Socks5Error::Version(version));
    }
    let mut offered = vec![0u8; usize::from(methods)];
    stream.read_exact(&mut offered).await?;
    if !offered.contains(&NO_AUTH) {
        stream.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(Socks5Error::NoAcceptableMethod);
    }
    stream.write_all(&[VERSION, NO_AUTH]).await?;

    let [version, command, _reserved, atyp] = read_array(stream).await?;
    if version != VERSION {
        return Err(Socks5Error::Version(version));
    }
    if command != CONNECT {
        return Err(Socks5Error::Command(command));
    }
    let ip = match atyp {
        ATYP_V4 => IpAddr::from(Ipv4Addr::from(read_array::<4, _>(stream).await?)),
        ATYP_V6 => IpAddr::from(Ipv6Addr::from(read_array::<16, _>(stream).await?)),
        other => return Err(Socks5Error::AddressType(other)),
    };
    let port = u16::from_be_bytes(read_array(stream).await?);
    Ok(SocketAddr::new(ip.to_canonical(), port))
}

/// Sends a reply. The bound address is reported as `0.0.0.0:0`: clients of a transparent
/// proxy have no use for it.
pub(crate) async fn reply<S>(stream: &mut S, code: Reply) -> std::io::Result<()>
where
    S: AsyncWrite + Unpin,
{
    stream
        .write_all(&[VERSION, code as u8, 0, ATYP_V4, 0, 0, 0, 0, 0, 0])
        .await
}

impl Socks5Error {
    /// The reply owed to the client, if the handshake got far enough to owe one.
    pub(crate) fn reply(&self) -> Option<Reply> {
        match self {
            Self::Command(_) => Some(Reply::CommandNotSupported),
            // Domain names (type 3) included: the mesh resolves no names here.
            Self::AddressType(_) => Some(Reply::AddressTypeNotSupported),
            _ => None,
        }
    }
}

async fn read_array<const N: usize, S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    stream.read_exact(&mut buf).await?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(client_bytes: &[u8]) -> (Result<SocketAddr, Socks5Error>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(client_bytes).await.unwrap();
        let result = handshake(&mut server).await;
        drop(server);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        (result, answer)
    }

    #[tokio::test]
    async fn connect_by_ipv4_and_ipv6() {
        let (dst, answer) = run(&[5, 2, 2, 0, 5, 1, 0, 1, 10, 0, 0, 7, 0x1f, 0x90]).await;
        assert_eq!(dst.unwrap(), "10.0.0.7:8080".parse().unwrap());
        assert_eq!(answer, [5, 0], "no authentication chosen");

        let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
        v6.extend_from_slice(&"fd00::7".parse::<Ipv6Addr>().unwrap().octets());
        v6.extend_from_slice(&443u16.to_be_bytes());
        let (dst, _) = run(&v6).await;
        assert_eq!(dst.unwrap(), "[fd00::7]:443".parse().unwrap());
    }

    #[tokio::test]
    async fn unsupported_requests_are_refused() {
        let (result, answer) = run(&[5, 1, 2]).await;
        assert!(matches!(result, Err(Socks5Error::NoAcceptableMethod)));
        assert_eq!(answer, [5, 0xff]);

        let (result, _) = run(&[5, 1, 0, 5, 2, 0, 1, 10, 0, 0, 7, 0, 80]).await;
        assert!(matches!(result, Err(Socks5Error::Command(2))));
        assert_eq!(
            result.unwrap_err().reply(),
            Some(Reply::CommandNotSupported)
        );

        let (result, _) = run(&[5, 1, 0, 5, 1, 0, 3, 3, b'a', b'b', b'c', 0, 80]).await;
        assert_eq!(
            result.unwrap_err().reply(),
            Some(Reply::AddressTypeNotSupported)
        );

        let (result, _) = run(&[4, 1, 0]).await;
        assert!(matches!(result, Err(Socks5Error::Version(4))));
    }
}
