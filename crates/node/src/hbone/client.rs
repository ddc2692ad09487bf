//! The client side of HBONE: TCP to `<destination ip>:15008`, TLS 1.3 as the source workload,
//! HTTP/2, then CONNECT streams.
//!
//! Invariant: no stream is opened before the TLS handshake has verified that the server holds
//! a certificate for one of the expected SPIFFE identities (the client config's verifier does
//! that; this module refuses to go on without ALPN `h2` either).

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ambit_identity::tls::{self as id_tls, ALPN_H2};
use bytes::Bytes;
use h2::client::{Connection, SendRequest};
use http::{Method, Request, StatusCode, Version};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::stream::{H2Stream, Lease};
use super::wire::ReadAhead;
use super::{HboneError, SEND_AHEAD, client_builder};
use crate::socket::{self, SocketFactory};

/// A freshly opened HBONE connection: the request handle and the connection to drive.
pub(crate) type Connected = (SendRequest<Bytes>, Connection<TlsStream<ReadAhead>, Bytes>);

/// What one CONNECT carries.
#[derive(Debug, Clone)]
pub(crate) struct ConnectRequest {
    /// The original destination, as `:authority`.
    pub(crate) target: SocketAddr,
    pub(crate) forwarded: Option<http::HeaderValue>,
    pub(crate) baggage: Option<http::HeaderValue>,
}

/// Where one HBONE connection goes and leaves from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dial {
    /// The peer's HBONE address.
    pub(crate) addr: SocketAddr,
    /// The source address to leave from, if the namespace has it (see [`socket::connect_from`]).
    pub(crate) local: Option<IpAddr>,
}

/// Opens a connection to `dial.addr`, presenting and verifying what `tls` says.
pub(crate) async fn connect(
    factory: &dyn SocketFactory,
    dial: Dial,
    tls: Arc<ClientConfig>,
    connect_timeout: Duration,
    handshake_timeout: Duration,
    max_streams: usize,
) -> Result<Connected, HboneError> {
    let addr = dial.addr;
    let tcp = socket::connect_from(factory, dial.local, addr, connect_timeout)
        .await
        .map_err(|source| HboneError::Connect { addr, source })?;
    let name = ServerName::IpAddress(addr.ip().into());
    let handshake = TlsConnector::from(tls).connect(name, ReadAhead::new(tcp));
    let tls = match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            return Err(HboneError::Tls {
                addr,
                failure: id_tls::classify_io(&error),
                reason: handshake_reason(&error),
                error,
            });
        }
        Err(_) => {
            return Err(HboneError::TlsTimeout {
                addr,
                timeout: handshake_timeout,
            });
        }
    };
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
        return Err(HboneError::NoH2 { addr });
    }
    let mut tls = tls;
    tls.get_mut().1.set_buffer_limit(Some(SEND_AHEAD));
    let handshake = client_builder(max_streams).handshake::<_, Bytes>(tls);
    match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(Ok(connected)) => Ok(connected),
        Ok(Err(source)) => Err(HboneError::H2Handshake { addr, source }),
        Err(_) => Err(HboneError::TlsTimeout {
            addr,
            timeout: handshake_timeout,
        }),
    }
}

/// Opens one CONNECT stream on `sender` and waits for a 200.
pub(crate) async fn send_connect(
    sender: &mut SendRequest<Bytes>,
    request: &ConnectRequest,
    timeout: Duration,
    lease: Option<Lease>,
) -> Result<H2Stream, HboneError> {
    let exchange = async {
        poll_fn(|cx| sender.poll_ready(cx))
            .await
            .map_err(HboneError::Request)?;
        let (response, send) = sender
            .send_request(build(request), false)
            .map_err(HboneError::Request)?;
        let response = response.await.map_err(HboneError::Request)?;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Status(response.status()));
        }
        Ok(H2Stream::new(send, response.into_body(), lease))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| HboneError::ResponseTimeout(timeout))?
}

/// A handshake error in words: our verifiers' refusals carry their own explanation.
pub(crate) fn handshake_reason(error: &std::io::Error) -> String {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
        rustls_error
    {
        if let Some(mismatch) = other.0.downcast_ref::<id_tls::IdentityMismatch>() {
            return mismatch.to_string();
        }
        if let Some(untrusted) = other.0.downcast_ref::<id_tls::UntrustedPeer>() {
            return untrusted.to_string();
        }
    }
    error.to_string()
}

fn build(request: &ConnectRequest) -> Request<()> {
    let mut req = Request::new(());
    *req.method_mut() = Method::CONNECT;
    *req.version_mut() = Version::HTTP_2;
    // An `ip:port` (`[v6]:port`) is always a valid authority-form URI.
    if let Ok(uri) = request.target.to_string().parse() {
        *req.uri_mut() = uri;
    }
    let headers = req.headers_mut();
    if let Some(v) = &request.forwarded {
        headers.insert(http::header::FORWARDED, v.clone());
    }
    if let Some(v) = &request.baggage {
        headers.insert(super::headers::BAGGAGE, v.clone());
    }
    headers.insert(super::headers::TRACEPARENT, super::headers::traceparent());
    req
}
