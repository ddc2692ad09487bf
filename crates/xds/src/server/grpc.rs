//! The gRPC face of the server: `AggregatedDiscoveryService` over HTTP/2.
//!
//! Why not tonic's generated service: it encodes each response into one buffer per stream, and
//! that buffer keeps the capacity of the largest message the stream ever sent for as long as
//! the stream lives. For xDS that message is the first one, the whole mesh (megabytes), so every
//! connected node proxy would keep a private copy of the mesh in the server. Here requests are
//! still decoded by tonic's codec, but responses are written by [`ResponseBody`], which hands
//! HTTP/2 one chunk of about [`CHUNK`](super::wire::CHUNK) bytes at a time, built from buffers shared with the
//! store, and only when the connection asks for more. At most [`IN_FLIGHT`] bytes of a stream's
//! chunks sit in HTTP/2's buffers at once, so a client that reads slowly (or not at all) holds
//! that much of the server's memory, not a whole response (hyper would buffer up to 400 KB per
//! stream, and tonic does not let that be lowered).
//!
//! # Invariants
//!
//! - Nothing is read from or written to a stream before its client is authenticated.
//! - The wire behaviour is tonic's: `application/grpc`, uncompressed messages, the status in
//!   trailers (or trailers-only for a call refused up front), `UNIMPLEMENTED` for
//!   state-of-the-world ADS and unknown methods, and requests over [`MAX_REQUEST_BYTES`]
//!   refused by the decoder.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use ambit_proto::envoy::service::discovery::v3 as xds;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, HeaderName};
use hyper::body::{Body as HttpBody, Frame};
use tokio::sync::mpsc;
use tonic::Status;
use tonic::codec::{BufferSettings, Streaming};
use tonic::codegen::Service;
use tonic::metadata::MetadataMap;
use tonic::server::NamedService;
use tracing::Instrument as _;

use super::ads::{AdsServer, MAX_REQUEST_BYTES, OUTBOUND_QUEUE};
use super::stream::{AdsStream, Outgoing};
use super::wire::{CHUNK, EncodedResponse};

/// Body bytes of one stream that may be in HTTP/2's hands, not yet written to the connection.
const IN_FLIGHT: usize = 4 * CHUNK;

/// The gRPC service name, as routed by a tonic server.
const SERVICE: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// An [`AdsServer`] as a service for a tonic server's router (from
/// [`AdsServer::into_service`]).
#[derive(Clone, Debug)]
pub struct AdsService {
    server: AdsServer,
}

/// A stream's responses as an HTTP body: chunks of the queued responses, then the status.
#[derive(Debug)]
struct ResponseBody {
    rx: mpsc::Receiver<Outgoing>,
    /// The response being handed out.
    current: Option<Box<EncodedResponse>>,
    in_flight: Arc<InFlight>,
    /// The trailers went out.
    done: bool,
}

/// The body bytes a stream has handed to HTTP/2 and that are not yet gone.
#[derive(Debug, Default)]
struct InFlight {
    bytes: AtomicUsize,
    /// The body waiting for room.
    waker: Mutex<Option<Waker>>,
}

/// A body chunk, counted in flight until HTTP/2 drops it (written out, or the stream ended).
#[derive(Debug)]
struct Chunk {
    bytes: Vec<u8>,
    in_flight: Arc<InFlight>,
}

// === impl AdsService ===

impl AdsServer {
    /// The service to add to a tonic server, refusing requests larger than
    /// [`MAX_REQUEST_BYTES`].
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }
}

impl AdsService {
    pub(super) fn new(server: AdsServer) -> Self {
        Self { server }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let server = self.server.clone();
        Box::pin(async move {
            Ok(serve(server, request)
                .await
                .unwrap_or_else(Status::into_http))
        })
    }
}

async fn serve<B>(
    server: AdsServer,
    request: http::Request<B>,
) -> Result<http::Response<tonic::body::Body>, Status>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    match request.uri().path() {
        DELTA_PATH => {}
        SOTW_PATH => {
            return Err(Status::unimplemented(
                "state-of-the-world ADS is not served; use DeltaAggregatedResources (incremental xDS)",
            ));
        }
        other => return Err(Status::unimplemented(format!("unknown method {other}"))),
    }
    if let Some(encoding) = request
        .headers()
        .get("grpc-encoding")
        .filter(|encoding| encoding.as_bytes() != b"identity")
    {
        return Err(Status::unimplemented(format!(
            "requests compressed with {encoding:?} are not supported"
        )));
    }
    let (parts, body) = request.into_parts();
    let metadata = MetadataMap::from_headers(parts.headers);
    let client = server
        .authenticator
        .authenticate(&metadata)
        .await
        .inspect_err(|status| {
            tracing::info!(code = ?status.code(), reason = status.message(), "xDS stream refused");
        })?;
    let decoder =
        tonic_prost::ProstDecoder::<xds::DeltaDiscoveryRequest>::new(BufferSettings::default());
    let requests = Streaming::new_request(decoder, body, None, Some(MAX_REQUEST_BYTES));
    let span = tracing::info_span!("xds", client = %client, node = tracing::field::Empty);
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let stream = AdsStream::new(client, server.store.clone(), server.stats.clone());
    tokio::spawn(stream.run(requests, tx).instrument(span));
    let body = ResponseBody {
        rx,
        current: None,
        in_flight: Arc::default(),
        done: false,
    };
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    Ok(response)
}

// === impl ResponseBody ===

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            if let Some(current) = this.current.as_mut() {
                if this.in_flight.is_full(cx) {
                    return Poll::Pending;
                }
                if let Some(bytes) = current.next_chunk() {
                    let chunk = Chunk::new(bytes, &this.in_flight);
                    return Poll::Ready(Some(Ok(Frame::data(Bytes::from_owner(chunk)))));
                }
                this.current = None;
            }
            let status = match ready!(this.rx.poll_recv(cx)) {
                Some(Ok(response)) => {
                    this.current = Some(response);
                    continue;
                }
                Some(Err(status)) => *status,
                // The stream task ended without an error: the call succeeded.
                None => Status::ok(""),
            };
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers(&status)))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

// === impl InFlight ===

impl InFlight {
    /// Whether the stream must wait for room; if so, `cx` is woken when there is.
    fn is_full(&self, cx: &Context<'_>) -> bool {
        if self.bytes.load(Ordering::Acquire) < IN_FLIGHT {
            return false;
        }
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        // A chunk dropped before the waker was in place did not see it: look again.
        self.bytes.load(Ordering::Acquire) >= IN_FLIGHT
    }
}

// === impl Chunk ===

impl Chunk {
    fn new(bytes: Vec<u8>, in_flight: &Arc<InFlight>) -> Self {
        in_flight.bytes.fetch_add(bytes.len(), Ordering::AcqRel);
        Self {
            bytes,
            in_flight: in_flight.clone(),
        }
    }
}

impl AsRef<[u8]> for Chunk {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        self.in_flight
            .bytes
            .fetch_sub(self.bytes.len(), Ordering::AcqRel);
        let waiting = self
            .in_flight
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = waiting {
            waker.wake();
        }
    }
}

/// The trailers ending a call with `status`.
fn trailers(status: &Status) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    if status.add_header(&mut trailers).is_err() {
        // Only details or metadata that cannot be headers fail; the code always can.
        trailers.clear();
        trailers.insert(
            HeaderName::from_static("grpc-status"),
            HeaderValue::from(status.code() as i32),
        );
    }
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::wire::{Resources, ResponseFields};

    fn response(resources: usize, size: usize) -> Box<EncodedResponse> {
        let body = Bytes::from(vec![7u8; size]);
        let fields = ResponseFields {
            system_version_info: "1".into(),
            type_url: "type.test/Thing".into(),
            nonce: "1".into(),
            resources: Resources::Listed(vec![body; resources]),
            removed: Vec::new(),
        };
        Box::new(EncodedResponse::new(fields).expect("small enough"))
    }

    fn response_body() -> (mpsc::Sender<Outgoing>, ResponseBody) {
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let body = ResponseBody {
            rx,
            current: None,
            in_flight: Arc::default(),
            done: false,
        };
        (tx, body)
    }

    fn poll(body: &mut ResponseBody) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let mut cx = Context::from_waker(Waker::noop());
        Pin::new(body).poll_frame(&mut cx)
    }

    #[tokio::test]
    async fn a_client_that_does_not_read_holds_at_most_the_in_flight_bound() {
        let (tx, mut body) = response_body();
        tx.send(Ok(response(64, 4096))).await.expect("queued");
        let mut held = Vec::new();
        while let Poll::Ready(Some(Ok(frame))) = poll(&mut body) {
            held.push(frame.into_data().expect("data"));
        }
        let bytes: usize = held.iter().map(Bytes::len).sum();
        assert!(
            (IN_FLIGHT..IN_FLIGHT + 2 * CHUNK).contains(&bytes),
            "{bytes} bytes out"
        );
        assert!(bytes < 64 * 4096, "the response is not all out");

        // HTTP/2 writes (drops) what it holds: the body goes on where it stopped.
        held.clear();
        let mut total = bytes;
        loop {
            match poll(&mut body) {
                Poll::Ready(Some(Ok(frame))) if frame.is_data() => {
                    total += frame.into_data().map(|d| d.len()).unwrap_or(0);
                }
                Poll::Pending => panic!("stalled with nothing in flight"),
                _ => break,
            }
            if total > 64 * 4096 {
                break;
            }
        }
        assert!(total > 64 * 4096, "everything came out ({total} bytes)");
    }

    #[tokio::test]
    async fn the_call_ends_with_the_stream_status() {
        let (tx, mut body) = response_body();
        tx.send(Err(Box::new(Status::invalid_argument("bad request"))))
            .await
            .expect("queued");
        let trailers = match poll(&mut body) {
            Poll::Ready(Some(Ok(frame))) => frame.into_trailers().expect("trailers"),
            other => panic!("no trailers: {other:?}"),
        };
        assert_eq!(trailers["grpc-status"], "3");
        assert_eq!(trailers["grpc-message"], "bad%20request");
        assert!(matches!(poll(&mut body), Poll::Ready(None)));
        assert!(body.is_end_stream());

        let (tx, mut body) = response_body();
        drop(tx);
        let trailers = match poll(&mut body) {
            Poll::Ready(Some(Ok(frame))) => frame.into_trailers().expect("trailers"),
            other => panic!("no trailers: {other:?}"),
        };
        assert_eq!(trailers["grpc-status"], "0");
    }
}
