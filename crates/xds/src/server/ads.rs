//! [`AdsServer`]: what is served ([`Store`]), who may connect ([`Authenticator`]) and what was
//! sent ([`ServerStats`]), shared by every stream; and the bounds every stream keeps.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tonic::Status;
use tonic::metadata::MetadataMap;

use super::store::Store;
use super::wire;

/// Largest request a client may send, in bytes. Requests carry subscriptions and
/// acknowledgements, so even a node proxy subscribing to thousands of names stays far below.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Responses a stream may have queued for its client before it stops computing new ones.
pub const OUTBOUND_QUEUE: usize = 2;

/// Serves a [`Store`] over delta ADS. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AdsServer {
    pub(super) store: Store,
    pub(super) authenticator: Arc<dyn Authenticator>,
    pub(super) stats: Arc<ServerStats>,
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

    pub(super) fn pushed(&self, response: &wire::Summary) {
        let bytes = u64::try_from(response.bytes).unwrap_or(u64::MAX);
        let resources = u64::try_from(response.resources).unwrap_or(u64::MAX);
        self.pushes_total.fetch_add(1, Ordering::Relaxed);
        self.bytes_pushed_total.fetch_add(bytes, Ordering::Relaxed);
        self.resources_pushed_total
            .fetch_add(resources, Ordering::Relaxed);
    }

    pub(super) fn nacked(&self) {
        self.nacks_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a stream as connected until the guard drops.
    pub(super) fn connect(self: &Arc<Self>) -> ConnectedGuard {
        self.connected_clients.fetch_add(1, Ordering::Relaxed);
        ConnectedGuard(self.clone())
    }
}

/// Keeps [`ServerStats::connected_clients`] right however a stream task ends.
#[derive(Debug)]
pub(super) struct ConnectedGuard(Arc<ServerStats>);

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.0.connected_clients.fetch_sub(1, Ordering::Relaxed);
    }
}
