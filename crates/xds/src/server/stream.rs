//! One `DeltaAggregatedResources` stream, from first request to last response.
//!
//! The task reads requests (subscriptions, ACKs, NACKs), wakes on store changes, and sends a
//! response whenever a type has something new *and* the outbound queue has room. Diffs are
//! computed at that moment, from the latest store state, so pushes coalesce under back-pressure.
//!
//! # Invariants
//!
//! - The store's read lock is taken for in-memory work only and released before anything is
//!   sent; a permit is reserved first, so `send` never waits.
//! - A response shares the store's encoded resources ([`EncodedResponse`]); what a stream keeps
//!   between pushes is its subscriptions, which for an up-to-date wildcard client is a position
//!   in the change log, not a copy of the names it holds.
//! - A stream that cannot send (its queue is full: the client is not reading) lets go of the
//!   change log once it lags too far behind ([`TypeSubscription::release_if_behind`]), so it
//!   pins no more than that. A stream that can send catches up instead, however big the change.
//! - Per-stream state is bounded: at most [`MAX_TYPES`] type URLs and [`MAX_TRACKED_NAMES`]
//!   names per type; a client going beyond gets `RESOURCE_EXHAUSTED` on its own stream.
//! - The stream ends when the client half-closes, goes away, or sends something malformed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ambit_proto::envoy::service::discovery::v3 as xds;
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use super::ads::{ClientId, ServerStats};
use super::store::Store;
use super::subscription::{Delta, TypeSubscription};
use super::wire::{EncodedResponse, ResponseFields};

/// Type URLs one stream may subscribe to. Istio's ambient mode uses two.
pub(crate) const MAX_TYPES: usize = 64;

/// Names one stream may track per type (subscribed plus held).
pub(crate) const MAX_TRACKED_NAMES: usize = 1 << 20;

/// How long a stream ending with an error waits for room to tell its client why.
const ERROR_GRACE: Duration = Duration::from_secs(5);

/// Response nonces, unique across the process's streams.
static NONCES: AtomicU64 = AtomicU64::new(1);

/// What a stream hands its response body: a response, or the status ending the call. Boxed, so
/// the queue's slots stay small.
pub(crate) type Outgoing = Result<Box<EncodedResponse>, Box<Status>>;

type Outbound = mpsc::Sender<Outgoing>;

/// The state of one stream.
#[derive(Debug)]
pub(crate) struct AdsStream {
    client: ClientId,
    store: Store,
    stats: Arc<ServerStats>,
    /// In first-request order; few enough that a linear search wins.
    types: Vec<(String, TypeSubscription)>,
    /// Where the next push looks first, so a busy type cannot starve the others.
    cursor: usize,
    node_seen: bool,
}

// === impl AdsStream ===

impl AdsStream {
    pub(crate) fn new(client: ClientId, store: Store, stats: Arc<ServerStats>) -> Self {
        Self {
            client,
            store,
            stats,
            types: Vec::new(),
            cursor: 0,
            node_seen: false,
        }
    }

    /// Serves the stream until it ends.
    pub(crate) async fn run<S>(mut self, mut requests: S, tx: Outbound)
    where
        S: Stream<Item = Result<xds::DeltaDiscoveryRequest, Status>> + Unpin + Send,
    {
        let _connected = self.stats.connect();
        let mut generations = self.store.subscribe();
        info!("xDS client connected");
        let error = loop {
            let work = self.has_work();
            tokio::select! {
                request = requests.next() => match request {
                    Some(Ok(request)) => {
                        if let Err(status) = self.on_request(request) {
                            break Some(status);
                        }
                    }
                    Some(Err(status)) => break Some(request_error(status)),
                    None => break None,
                },
                // Only wakes the loop: the push arm does the work. Cannot fail while this
                // stream holds a `Store`, but a closed channel must not spin the loop.
                changed = generations.changed() => {
                    if changed.is_err() {
                        break None;
                    }
                    if tx.capacity() == 0 {
                        self.release_if_behind();
                    }
                }
                permit = tx.reserve(), if work => match permit {
                    Ok(permit) => self.push(permit),
                    Err(_) => break None,
                },
                () = tx.closed() => break None,
            }
        };
        match error {
            Some(status) if matches!(status.code(), Code::Cancelled | Code::Unavailable) => {
                info!(reason = status.message(), "xDS client went away");
            }
            Some(status) => {
                warn!(code = ?status.code(), error = status.message(), "xDS stream failed");
                // The client may not read any more; do not wait for it forever.
                let _ = tokio::time::timeout(ERROR_GRACE, tx.send(Err(Box::new(status)))).await;
            }
            None => info!("xDS client disconnected"),
        }
    }

    fn on_request(&mut self, request: xds::DeltaDiscoveryRequest) -> Result<(), Status> {
        if request.type_url.is_empty() {
            return Err(Status::invalid_argument(
                "DeltaDiscoveryRequest has an empty type_url",
            ));
        }
        if let Some(node) = request.node.as_ref().filter(|_| !self.node_seen) {
            self.node_seen = true;
            tracing::Span::current().record("node", node.id.as_str());
            debug!(node = %node.id, cluster = %node.cluster, "xDS client identified its node");
        }
        let type_url = request.type_url.as_str();
        if !request.response_nonce.is_empty() {
            let nonce = request.response_nonce.as_str();
            match &request.error_detail {
                Some(error) => {
                    self.stats.nacked();
                    warn!(
                        client = %self.client,
                        type_url,
                        nonce,
                        code = error.code,
                        error = %error.message,
                        "xDS client rejected a push (NACK)"
                    );
                }
                None => debug!(type_url, nonce, "ACK"),
            }
        }
        let state = self.store.read();
        let current = state.get(type_url);
        let tracked = match self.types.iter_mut().find(|(t, _)| t == type_url) {
            Some((_, subscription)) => {
                subscription.update(
                    current,
                    &request.resource_names_subscribe,
                    &request.resource_names_unsubscribe,
                );
                subscription.tracked()
            }
            None => {
                if self.types.len() >= MAX_TYPES {
                    return Err(Status::resource_exhausted(format!(
                        "a stream may subscribe to at most {MAX_TYPES} type URLs"
                    )));
                }
                if current.resources.is_empty() {
                    debug!(type_url, "subscribed to a type with no resources (yet)");
                }
                let subscription = TypeSubscription::new(&request, current);
                let tracked = subscription.tracked();
                self.types.push((request.type_url, subscription));
                tracked
            }
        };
        if tracked > MAX_TRACKED_NAMES {
            return Err(Status::resource_exhausted(format!(
                "a stream may track at most {MAX_TRACKED_NAMES} names per type URL"
            )));
        }
        Ok(())
    }

    fn release_if_behind(&mut self) {
        let state = self.store.read();
        for (type_url, subscription) in &mut self.types {
            if subscription.release_if_behind(state.get(type_url)) {
                debug!(
                    type_url,
                    "client is not reading; let go of the change log behind it"
                );
            }
        }
    }

    fn has_work(&self) -> bool {
        let state = self.store.read();
        self.types
            .iter()
            .any(|(type_url, subscription)| subscription.has_work(state.get(type_url)))
    }

    /// Sends the next type's diff, if any type has one.
    fn push(&mut self, permit: mpsc::Permit<'_, Outgoing>) {
        let Some(response) = self.next_response() else {
            return;
        };
        if let Ok(response) = &response {
            let summary = response.summary();
            self.stats.pushed(summary);
            debug!(
                type_url = %summary.type_url,
                nonce = %summary.nonce,
                resources = summary.resources,
                removed = summary.removed,
                "push"
            );
        }
        permit.send(response.map(Box::new).map_err(Box::new));
    }

    fn next_response(&mut self) -> Option<Result<EncodedResponse, Status>> {
        let state = self.store.read();
        let count = self.types.len();
        for step in 0..count {
            let index = (self.cursor + step) % count;
            let (type_url, subscription) = &mut self.types[index];
            let current = state.get(type_url);
            if !subscription.has_work(current) {
                continue;
            }
            if let Some(delta) = subscription.diff(current) {
                self.cursor = index + 1;
                return Some(response(type_url, current.generation, delta));
            }
        }
        None
    }
}

fn response(type_url: &str, generation: u64, delta: Delta) -> Result<EncodedResponse, Status> {
    let nonce = NONCES.fetch_add(1, Ordering::Relaxed);
    EncodedResponse::new(ResponseFields {
        system_version_info: generation.to_string(),
        type_url: type_url.to_owned(),
        nonce: format!("{nonce:x}"),
        resources: delta.resources,
        removed: delta.removed,
    })
}

/// The status a stream ends with when reading a request failed.
fn request_error(status: Status) -> Status {
    match status.code() {
        // tonic reports undecodable bytes as INTERNAL; the fault is the client's.
        Code::Internal => Status::invalid_argument(format!(
            "malformed DeltaDiscoveryRequest: {}",
            status.message()
        )),
        _ => status,
    }
}
