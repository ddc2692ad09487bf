//! The TCP connection under an HBONE connection's TLS, read ahead in large reads.
//!
//! rustls asks its transport for at most one TLS record's worth of bytes at a time (about
//! 4 KiB beyond what it holds, never more than one 16 KiB record), so a TLS stream read straight
//! from its socket makes one `recv` per few kilobytes: on a busy tunnel the receiving node proxy
//! spent most of its system calls there (221,181 `recvfrom` in 5 s at 4.6 Gbit/s, 13 KB each).
//! [`ReadAhead`] puts one buffer between the socket and rustls: one `recv` of up to
//! [`READ_AHEAD`] bytes, then rustls's small reads are served from memory.
//!
//! Memory: the buffer exists only while the socket has more data than rustls took. It is
//! allocated when a read needs the socket and released as soon as rustls has taken everything
//! in it after a `recv` that did not fill it (the socket had nothing more queued), so an idle
//! connection holds no read buffer. Writes go straight to the socket (vectored, as rustls
//! writes its records).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The largest read from the socket.
pub(crate) const READ_AHEAD: usize = 128 * 1024;

/// A TCP stream whose reads go through a read-ahead buffer (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct ReadAhead {
    tcp: TcpStream,
    /// Bytes read from the socket that the reader has not taken yet; `None` when there are none
    /// and the socket was drained by the last read.
    buf: Option<BytesMut>,
    /// Whether the last `recv` filled the buffer (the socket may hold more).
    last_full: bool,
}

impl ReadAhead {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            buf: None,
            last_full: false,
        }
    }

    /// Whether a read buffer is held now (for the idle-memory test).
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let buf = this
            .buf
            .get_or_insert_with(|| BytesMut::with_capacity(READ_AHEAD));
        if buf.is_empty() {
            // Reuses the allocation: nothing in it is still referenced.
            buf.clear();
            buf.reserve(READ_AHEAD);
            let n = match ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.tcp),
                cx,
                buf
            )) {
                Ok(n) => n,
                Err(e) => {
                    this.buf = None;
                    return Poll::Ready(Err(e));
                }
            };
            this.last_full = n >= READ_AHEAD;
            if n == 0 {
                this.buf = None;
                return Poll::Ready(Ok(()));
            }
        }
        let n = buf.len().min(out.remaining());
        out.put_slice(&buf[..n]);
        buf.advance(n);
        if buf.is_empty() && !this.last_full {
            this.buf = None;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ReadAhead {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    async fn pair() -> (ReadAhead, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (ReadAhead::new(client.unwrap()), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn small_reads_see_every_byte_in_order_and_the_end() {
        let (mut ahead, mut peer) = pair().await;
        let sent: Vec<u8> = (0..READ_AHEAD * 3 + 17).map(|i| (i % 251) as u8).collect();
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                peer.write_all(&sent).await.unwrap();
                peer.shutdown().await.unwrap();
            })
        };
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = ahead.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        writer.await.unwrap();
        assert_eq!(got, sent);
        assert!(!ahead.holds_buffer(), "a finished stream holds no buffer");
    }

    #[tokio::test]
    async fn a_drained_socket_leaves_no_buffer_behind() {
        let (mut ahead, mut peer) = pair().await;
        peer.write_all(b"hello").await.unwrap();
        let mut chunk = [0u8; 16];
        let n = ahead.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..n], b"hello");
        assert!(
            !ahead.holds_buffer(),
            "an idle connection keeps no read buffer"
        );
        // A read that takes part of what arrived keeps the rest for the next one.
        peer.write_all(b"0123456789").await.unwrap();
        let mut three = [0u8; 3];
        ahead.read_exact(&mut three).await.unwrap();
        assert_eq!(&three, b"012");
        assert!(ahead.holds_buffer());
        let mut rest = [0u8; 7];
        ahead.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"3456789");
        assert!(!ahead.holds_buffer());
    }
}
