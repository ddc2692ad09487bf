//! The `socks5` target: RFC 1928's greeting and CONNECT request, as the 15080 listener reads them.
//!
//! Invariants checked, for any bytes a client sends:
//! - nothing panics, and the handshake never waits on bytes that are there;
//! - it reads exactly the greeting and the request, never a byte of what follows (that is the
//!   application's first data, sent on through the tunnel);
//! - it answers the greeting with "no authentication" (`5 0`) or "no acceptable method"
//!   (`5 255`), and nothing else;
//! - a destination is a plain IP address (IPv4-mapped IPv6 is made IPv4); a refusal that owes
//!   the client a reply has one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::socks5::{Socks5Error, handshake};

/// The body of the `socks5` target.
pub fn socks5(data: &[u8]) {
    let mut client = Client {
        input: data,
        read: 0,
        written: Vec::new(),
    };
    let result = {
        let mut future = std::pin::pin!(handshake(&mut client));
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(result) = future.as_mut().poll(&mut cx) else {
            panic!("the handshake waits although every byte is there");
        };
        result
    };
    let Client { read, written, .. } = client;
    match result {
        Ok(dst) => {
            assert_eq!(written, [5, 0], "answer to an accepted greeting");
            assert_eq!(dst.ip(), dst.ip().to_canonical(), "{dst} is not canonical");
            let methods = usize::from(data[1]);
            let address = if data[2 + methods + 3] == 1 { 4 } else { 16 };
            assert_eq!(read, 2 + methods + 4 + address + 2, "read past the request");
        }
        Err(Socks5Error::NoAcceptableMethod) => assert_eq!(written, [5, 0xff]),
        Err(Socks5Error::Version(_)) if read == 2 => assert!(written.is_empty()),
        Err(error) => {
            assert!(written.is_empty() || written == [5, 0], "wrote {written:?}");
            assert!(!error.to_string().is_empty());
        }
    }
    assert!(read <= data.len());
}

/// A client whose bytes are all there: reads never wait, writes are kept.
struct Client<'a> {
    input: &'a [u8],
    read: usize,
    written: Vec<u8>,
}

impl AsyncRead for Client<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let rest = &self.input[self.read..];
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.read += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.written.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;

    /// The requests of the handshake's unit tests and of the SOCKS5 clients the tests use,
    /// each followed by application bytes.
    fn generated() -> Vec<(String, Vec<u8>)> {
        let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
        v6.extend_from_slice(
            &"fd00::7"
                .parse::<Ipv6Addr>()
                .unwrap_or(Ipv6Addr::LOCALHOST)
                .octets(),
        );
        v6.extend_from_slice(&443u16.to_be_bytes());
        v6.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let mut mapped = vec![5, 1, 0, 5, 1, 0, 4];
        mapped.extend_from_slice(&Ipv6Addr::from(0xffff_0a00_0007u128).octets());
        mapped.extend_from_slice(&80u16.to_be_bytes());
        vec![
            (
                "connect-v4".to_owned(),
                vec![5, 2, 2, 0, 5, 1, 0, 1, 10, 0, 0, 7, 0x1f, 0x90, b'h', b'i'],
            ),
            ("connect-v6".to_owned(), v6),
            ("connect-v4-mapped".to_owned(), mapped),
            ("no-method".to_owned(), vec![5, 1, 2]),
            (
                "bind".to_owned(),
                vec![5, 1, 0, 5, 2, 0, 1, 10, 0, 0, 7, 0, 80],
            ),
            (
                "domain".to_owned(),
                vec![5, 1, 0, 5, 1, 0, 3, 3, b'a', b'b', b'c', 0, 80],
            ),
            ("socks4".to_owned(), vec![4, 1, 0, 80, 10, 0, 0, 7, 0]),
        ]
    }

    #[test]
    fn seed_corpus() {
        ambit_testkit::corpus::run("socks5", generated(), socks5);
    }
}
