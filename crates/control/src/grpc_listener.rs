//! The gRPC listeners (WDS on 15010, WDS and CA over TLS on 15012) as streams of bounded
//! connections for tonic.
//!
//! Both accept through an [`Acceptor`] ([`ambit_app::Limits::GRPC`]: a cap on connections
//! open at once, each cut after 120 s without traffic, an accept loop that pauses when
//! descriptors run out); the HTTP/2 keepalive that [`grpc_server`] sets makes a live peer
//! answer pings well within that. Each TLS handshake runs in its own task with a deadline, so a
//! client that stalls mid-handshake holds nothing but its own task and its place under the cap,
//! and never delays other clients' connections.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ambit_app::{Acceptor, Conn};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::Connected;
use tracing::debug;

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server pings an HTTP/2 connection, and how long it waits for the answer.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection is asked to go away after this long (istiod's default), so clients spread
/// over control-plane replicas; its streams get the grace period to finish.
const MAX_CONNECTION_AGE: Duration = Duration::from_secs(30 * 60);
const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(10);
/// Streams one connection may have open: an ADS stream and a few CA calls.
const MAX_STREAMS: u32 = 100;

/// A tonic server with the keepalive, connection age and stream bounds of both gRPC ports.
pub(crate) fn grpc_server() -> Server {
    Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_connection_age(MAX_CONNECTION_AGE)
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE)
        .max_concurrent_streams(MAX_STREAMS)
}

/// A plaintext connection that tonic can serve.
#[derive(Debug)]
pub(crate) struct PlainConn(Conn<TcpStream>);

/// A server-side TLS connection that tonic can serve.
#[derive(Debug)]
pub(crate) struct TlsConn(TlsStream<Conn<TcpStream>>);

/// Accepts on `acceptor` forever, yielding its connections.
pub(crate) fn plain_incoming(acceptor: Acceptor) -> ReceiverStream<io::Result<PlainConn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (conn, _peer) = acceptor.accept().await;
            if tx.send(Ok(PlainConn(conn))).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Accepts on `acceptor` forever, yielding completed TLS connections.
pub(crate) fn tls_incoming(
    acceptor: Acceptor,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<io::Result<TlsConn>> {
    let (tx, rx) = mpsc::channel(64);
    let tls = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = acceptor.accept().await;
            if tx.is_closed() {
                return;
            }
            let (tls, tx) = (tls.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsConn(tls))).await;
                    }
                    Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

impl Connected for PlainConn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl Connected for TlsConn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

/// Forwards the I/O traits to the wrapped connection.
macro_rules! forward_io {
    ($conn:ty) => {
        impl AsyncRead for $conn {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.0).poll_read(cx, buf)
            }
        }

        impl AsyncWrite for $conn {
            fn poll_write(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.0).poll_write(cx, buf)
            }

            fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                Pin::new(&mut self.0).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
            ) -> Poll<io::Result<()>> {
                Pin::new(&mut self.0).poll_shutdown(cx)
            }

            fn poll_write_vectored(
                mut self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[io::IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.0.is_write_vectored()
            }
        }
    };
}

forward_io!(PlainConn);
forward_io!(TlsConn);
