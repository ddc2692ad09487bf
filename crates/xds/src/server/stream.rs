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

use super::subscription::{Delta, TypeSubscription};
use super::{ClientId, ServerStats, Store};

/// Type URLs one stream may subscribe to. Istio's ambient mode uses two.
pub(crate) const MAX_TYPES: usize = 64;

/// Names one stream may track per type (subscribed plus held).
pub(crate) const MAX_TRACKED_NAMES: usize = 1 << 20;

/// How long a stream ending with an error waits for room to tell its client why.
const ERROR_GRACE: Duration = Duration::from_secs(5);

/// Response nonces, unique across the process's streams.
static NONCES: AtomicU64 = AtomicU64::new(1);

type Outbound = mpsc::Sender<Result<xds::DeltaDiscoveryResponse, Status>>;

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
                let _ = tokio::time::timeout(ERROR_GRACE, tx.send(Err(status))).await;
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
        let tracked = match self.types.iter_mut().find(|(t, _)| t == type_url) {
            Some((_, subscription)) => {
                subscription.update(
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
                if self.store.len(type_url) == 0 {
                    debug!(type_url, "subscribed to a type with no resources (yet)");
                }
                let subscription = TypeSubscription::new(&request);
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

    fn has_work(&self) -> bool {
        let state = self.store.read();
        self.types
            .iter()
            .any(|(type_url, subscription)| subscription.has_work(state.get(type_url)))
    }

    /// Sends the next type's diff, if any type has one.
    fn push(&mut self, permit: mpsc::Permit<'_, Result<xds::DeltaDiscoveryResponse, Status>>) {
        let Some(response) = self.next_response() else {
            return;
        };
        self.stats.pushed(&response);
        debug!(
            type_url = %response.type_url,
            nonce = %response.nonce,
            resources = response.resources.len(),
            removed = response.removed_resources.len(),
            "push"
        );
        permit.send(Ok(response));
    }

    fn next_response(&mut self) -> Option<xds::DeltaDiscoveryResponse> {
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

fn response(type_url: &str, generation: u64, delta: Delta) -> xds::DeltaDiscoveryResponse {
    let nonce = NONCES.fetch_add(1, Ordering::Relaxed);
    xds::DeltaDiscoveryResponse {
        system_version_info: generation.to_string(),
        resources: delta.resources,
        type_url: type_url.to_owned(),
        removed_resources: delta.removed,
        nonce: format!("{nonce:x}"),
        ..Default::default()
    }
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
