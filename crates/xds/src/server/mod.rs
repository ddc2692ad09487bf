//! The delta ADS server: serves a [`Store`] to any number of xDS clients.
//!
//! The control plane fills a [`Store`] and hands an [`AdsServer`] (as a service for a tonic
//! server, from [`AdsServer::into_service`]) to its gRPC server on 15012 (TLS + bearer token)
//! and 15010 (plaintext, local use). Each `DeltaAggregatedResources` stream gets its own task
//! that waits for the store to change and sends its client one `DeltaDiscoveryResponse` per
//! type with only what changed for that client.
//!
//! # Memory
//!
//! The store holds each resource once, already encoded; responses share those buffers and
//! reach HTTP/2 in small chunks ([`AdsService`]). An up-to-date wildcard client costs its
//! stream a position in the store's change log rather than a record per resource. So a client
//! costs the server a few kilobytes once synced, whatever the size of the mesh.
//!
//! # Invariants
//!
//! - A stream is authenticated ([`Authenticator`]) before anything is read from or sent to it.
//! - A stream's outbound queue is bounded ([`OUTBOUND_QUEUE`]); a stream that cannot send does
//!   not compute diffs, and when it can, it diffs against the latest store state. A slow client
//!   therefore costs one diff's worth of memory, however many generations it missed, plus the
//!   change log behind it up to a bound, past which it lets go of the log, plus at most a few
//!   HTTP/2 frames of body waiting for it.
//! - A NACK is logged and counted, never fatal; a malformed or oversized request ends only its
//!   own stream, with a gRPC status.
//! - State-of-the-world ADS (`StreamAggregatedResources`) is refused as unimplemented: Istio's
//!   ambient mode uses the delta protocol only.

mod grpc;
mod log;
mod store;
mod stream;
mod subscription;
mod wire;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::Status;
use tonic::metadata::MetadataMap;

pub use self::grpc::AdsService;
pub use self::store::Store;
pub use crate::Resource;

/// Largest request a client may send, in bytes. Requests carry subscriptions and
/// acknowledgements, so even a node proxy subscribing to thousands of names stays far below.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Responses a stream may have queued for its client before it stops computing new ones.
pub const OUTBOUND_QUEUE: usize = 2;

/// Serves a [`Store`] over delta ADS. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AdsServer {
    store: Store,
    authenticator: Arc<dyn Authenticator>,
    stats: Arc<ServerStats>,
}

/// Decides who may open an ADS stream. Called once per stream, before anything is served.
/// The future an [`Authenticator`] returns.
pub type AuthFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<ClientId, Status>> + Send + 'a>>;

pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    /// Checks the stream's request metadata (e.g. `authorization: Bearer …`), returning the
    /// client's identity for logs, or the status to end the stream with (usually
    /// `UNAUTHENTICATED` or `PERMISSION_DENIED`).
    ///
    /// Asynchronous because checking a token may need a call to another service (e.g. a
    /// Kubernetes TokenReview); it must not hold locks shared with other streams.
    fn authenticate<'a>(&'a self, request_metadata: &'a MetadataMap) -> AuthFuture<'a>;
}

/// Lets every stream in, as client `anonymous`. Only for the plaintext local port (15010).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

/// Who is on the other end of a stream, as the [`Authenticator`] established it (e.g. a node
/// name or a service account). Opaque: used in logs only.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientId(String);

/// Counters of an [`AdsServer`], shared by all its streams.
#[derive(Debug, Default)]
pub struct ServerStats {
    connected_clients: AtomicU64,
    pushes_total: AtomicU64,
    nacks_total: AtomicU64,
    bytes_pushed_total: AtomicU64,
    resources_pushed_total: AtomicU64,
}

// === impl AdsServer ===

impl AdsServer {
    /// A server of `store` that lets every client in (see [`AdsServer::with_authenticator`]).
    pub fn new(store: Store) -> Self {
        Self {
            store,
            authenticator: Arc::new(AllowAll),
            stats: Arc::default(),
        }
    }

    /// Requires each stream to pass `authenticator` first.
    #[must_use]
    pub fn with_authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.authenticator = authenticator;
        self
    }

    /// The server's counters.
    pub fn stats(&self) -> Arc<ServerStats> {
        self.stats.clone()
    }

    /// The store this server serves.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The service to add to a tonic server, refusing requests larger than
    /// [`MAX_REQUEST_BYTES`].
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }
}

// === impl AllowAll ===

impl Authenticator for AllowAll {
    fn authenticate<'a>(&'a self, _request_metadata: &'a MetadataMap) -> AuthFuture<'a> {
        Box::pin(std::future::ready(Ok(ClientId::new("anonymous"))))
    }
}

// === impl ClientId ===

impl ClientId {
    /// Wraps a display name.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The display name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl ServerStats ===

impl ServerStats {
    /// Streams open right now.
    pub fn connected_clients(&self) -> u64 {
        self.connected_clients.load(Ordering::Relaxed)
    }

    /// Responses sent, all streams and types.
    pub fn pushes_total(&self) -> u64 {
        self.pushes_total.load(Ordering::Relaxed)
    }

    /// Responses clients rejected.
    pub fn nacks_total(&self) -> u64 {
        self.nacks_total.load(Ordering::Relaxed)
    }

    /// Sum of the encoded sizes of all responses sent.
    pub fn bytes_pushed_total(&self) -> u64 {
        self.bytes_pushed_total.load(Ordering::Relaxed)
    }

    /// Resources sent (upserts; removals not counted), all responses.
    pub fn resources_pushed_total(&self) -> u64 {
        self.resources_pushed_total.load(Ordering::Relaxed)
    }

    fn pushed(&self, response: &wire::Summary) {
        let bytes = u64::try_from(response.bytes).unwrap_or(u64::MAX);
        let resources = u64::try_from(response.resources).unwrap_or(u64::MAX);
        self.pushes_total.fetch_add(1, Ordering::Relaxed);
        self.bytes_pushed_total.fetch_add(bytes, Ordering::Relaxed);
        self.resources_pushed_total
            .fetch_add(resources, Ordering::Relaxed);
    }

    fn nacked(&self) {
        self.nacks_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a stream as connected until the guard drops.
    fn connect(self: &Arc<Self>) -> ConnectedGuard {
        self.connected_clients.fetch_add(1, Ordering::Relaxed);
        ConnectedGuard(self.clone())
    }
}

/// Keeps [`ServerStats::connected_clients`] right however a stream task ends.
#[derive(Debug)]
struct ConnectedGuard(Arc<ServerStats>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.connected_clients.fetch_sub(1, Ordering::Relaxed);
    }
}
