//! HBONE: TCP tunneled as HTTP/2 CONNECT streams inside mutual TLS 1.3, to port 15008.
//!
//! - `client`: opens a tunnel connection to a destination workload as a source workload.
//! - `pool`: shares those connections between tunnels with the same identities and address.
//! - `server`: the inbound side, each workload's 15008: TLS as the workload, HTTP/2, one
//!   authorized CONNECT stream per tunnel to the application.
//! - `stream`: one CONNECT stream as a flow-controlled reader and writer.
//! - `headers`: `Forwarded`, `Baggage`, `Traceparent`, in ztunnel's formats.
//!
//! Both sides share the HTTP/2 settings below, which bound what one peer can make us hold: at most
//! [`MAX_CONCURRENT_STREAMS`] streams per connection, a 4 MiB connection receive window, 256 KiB
//! of queued send data per stream and 16 KiB of headers.

pub(crate) mod client;
pub(crate) mod headers;
pub(crate) mod pool;
pub(crate) mod server;
pub(crate) mod stream;
pub(crate) mod wire;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ambit_identity::tls::HandshakeFailure;
use http::StatusCode;

use crate::certs::CertError;

/// Streams one peer may have open on one connection (advertised by our server, honoured by our
/// pool).
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Receive window of one stream.
const STREAM_WINDOW: u32 = 1024 * 1024;
/// Receive window of one connection (shared by its streams).
const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;
/// Largest frame we accept.
const MAX_FRAME: u32 = 256 * 1024;
/// Largest header block we accept; a CONNECT needs well under 1 KiB.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Encrypted bytes rustls may hold before a write waits for the socket: one large HTTP/2 DATA
/// frame is sealed and handed to the kernel in one vectored write (rustls's default, 64 KiB,
/// split a 256 KiB frame into four).
pub(crate) const SEND_AHEAD: usize = 512 * 1024;
/// Data queued per stream before the writer waits.
const MAX_SEND_BUFFER: usize = 256 * 1024;
/// Streams a peer may open and reset before we accept them, before the connection is closed as
/// abusive (HTTP/2 rapid reset).
const MAX_PENDING_ACCEPT_RESETS: usize = 20;

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HboneError {
    #[error("no certificate for the source workload")]
    Certificate(#[from] CertError),
    #[error("cannot connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// `reason` is the refusal in words (e.g. which identity the peer had); `error` the raw
    /// handshake error it came from.
    #[error("TLS handshake with {addr} failed ({failure:?}): {reason}")]
    Tls {
        addr: SocketAddr,
        failure: HandshakeFailure,
        reason: String,
        error: io::Error,
    },
    #[error("TLS handshake with {addr} did not finish within {timeout:?}")]
    TlsTimeout { addr: SocketAddr, timeout: Duration },
    #[error("{addr} did not negotiate HTTP/2 (ALPN h2)")]
    NoH2 { addr: SocketAddr },
    #[error("HTTP/2 handshake with {addr} failed")]
    H2Handshake {
        addr: SocketAddr,
        #[source]
        source: h2::Error,
    },
    #[error("the CONNECT request failed")]
    Request(#[source] h2::Error),
    #[error("no answer to CONNECT within {0:?}")]
    ResponseTimeout(Duration),
    #[error("the destination answered CONNECT with {0}")]
    Status(StatusCode),
}

impl HboneError {
    /// Whether a new connection might succeed where a pooled one failed (the peer is going
    /// away or refused the stream before processing it).
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Request(e) => {
                e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::REFUSED_STREAM)
            }
            _ => false,
        }
    }
}

/// The HTTP/2 client settings of HBONE connections.
pub(crate) fn client_builder(max_streams: usize) -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .initial_max_send_streams(max_streams)
        .enable_push(false);
    builder
}

/// The HTTP/2 server settings of the 15008 listener.
pub(crate) fn server_builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(1024));
    builder
}
