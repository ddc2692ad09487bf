//! The client task: connect, stream, hand updates to the handler, back off, repeat.
//!
//! Its log lines are ztunnel's, so an operator's reading of a ztunnel's xDS log carries over:
//! every line has the target `xds::client` ([`TARGET`]) and is written inside a span `xds` with
//! the connection attempt's number, counting from 1 and failed attempts included, so text lines
//! read `xds::client:xds{id=5}`. Per connection, `Stream established` (info); per response,
//! `received response` with `type_url`, `size` (resources) and `removes` (removed names), at
//! info as ztunnel up to 1.29 logs it (1.30 moved it to debug), then `sending response` with
//! `type_url`, `nonce` and `type` (`Ack` at debug, `Nack` at error with the `error`); per
//! on-demand name, `received on demand request <type_url>/<name>` (info); when a connection
//! ends, `XDS client connection error: …, retrying in …` (could not connect) or `XDS client
//! error: …, retrying in …` (the stream failed), at warn.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::error::Error as _;
use std::fmt;
use std::future::Future;
use std::hash::BuildHasher as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_proto::envoy::config::core::v3::Node;
use ambit_proto::envoy::service::discovery::v3 as xds;
use ambit_proto::google::rpc;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tracing::{Instrument as _, debug, error, info, info_span, warn};
use xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

use super::{BoxError, ClientConfig, Command, Handler, MAX_RESPONSE_BYTES, Subscription, Update};
use super::{Resource, TokenSource};
use crate::client::on_demand::OnDemand;
use crate::resource::WILDCARD;

/// The target of the client's log lines: ztunnel's (its `xds::client` module), so a filter
/// such as `RUST_LOG=info,xds::client=debug` reads the same for both.
pub(crate) const TARGET: &str = "xds::client";

/// Requests (ACKs, subscriptions) queued for the server before the client waits for it.
const REQUEST_QUEUE: usize = 16;

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of a NACK.
const INVALID_ARGUMENT: i32 = 3;

/// Why a stream ended, for the logs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Error {
    #[error("cannot connect to the xDS server")]
    Connect(#[source] BoxError),
    #[error("the bearer token is not valid header text")]
    Token(#[source] tonic::metadata::errors::InvalidMetadataValue),
    #[error("the xDS server refused the stream")]
    Refused(#[source] tonic::Status),
    #[error("the xDS stream failed")]
    Stream(#[source] tonic::Status),
    #[error("the xDS server closed the stream")]
    Closed,
}

/// How a session ended.
enum Exit {
    Shutdown,
    Failed(Error),
}

/// The client task's state.
pub(super) struct Worker<C> {
    connect: C,
    node: Node,
    backoff_initial: Duration,
    backoff_max: Duration,
    handler: Arc<dyn Handler>,
    bearer_token: Option<TokenSource>,
    commands: mpsc::UnboundedReceiver<Command>,
    connected: watch::Sender<bool>,
    types: BTreeMap<String, TypeState>,
    /// The bounds of each type's on-demand names: how many, and for how long unused.
    on_demand: (usize, Duration),
    /// The handler accepted an update on the current connection: the next backoff restarts.
    healthy: bool,
    /// Connection attempts so far (the `id` of the `xds` span).
    attempts: u64,
}

/// What the client asked for and holds of one type.
#[derive(Debug)]
struct TypeState {
    wildcard: bool,
    /// Names of the configuration, kept for the client's life.
    names: BTreeSet<String>,
    /// Names asked for at run time, bounded and forgotten when unused.
    on_demand: OnDemand,
    /// Canonical name → version, of updates the handler accepted.
    known: HashMap<String, String>,
    /// A first request for this type went out on the current stream.
    requested: bool,
    /// The handler accepted an update of this type on the current stream.
    synced: bool,
}

/// The live stream's request side.
struct Session {
    tx: mpsc::Sender<xds::DeltaDiscoveryRequest>,
    /// Sent with the stream's first request only.
    node: Option<Node>,
}

// === impl Worker ===

impl<C, Fut> Worker<C>
where
    C: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Channel, BoxError>> + Send + 'static,
{
    pub(super) fn new(
        connect: C,
        config: ClientConfig,
        handler: Arc<dyn Handler>,
        bearer_token: Option<TokenSource>,
        commands: mpsc::UnboundedReceiver<Command>,
        connected: watch::Sender<bool>,
    ) -> Self {
        let on_demand = (config.on_demand_max, config.on_demand_ttl);
        let mut types: BTreeMap<String, TypeState> = BTreeMap::new();
        for (type_url, subscription) in config.subscriptions {
            let state = types
                .entry(type_url)
                .or_insert_with(|| TypeState::new(on_demand));
            match subscription {
                Subscription::Wildcard => state.wildcard = true,
                Subscription::Names(names) => state.names.extend(names),
            }
        }
        Self {
            connect,
            node: config.node,
            backoff_initial: config.backoff_initial,
            backoff_max: config.backoff_max.max(config.backoff_initial),
            handler,
            bearer_token,
            commands,
            connected,
            types,
            on_demand,
            healthy: false,
            attempts: 0,
        }
    }

    /// Runs until shut down.
    pub(super) async fn run(mut self) {
        let mut delay = self.backoff_initial;
        loop {
            self.attempts += 1;
            let span = info_span!(target: TARGET, "xds", id = self.attempts);
            let exit = self.session().instrument(span.clone()).await;
            self.set_connected(false);
            let error = match exit {
                Exit::Shutdown => break,
                Exit::Failed(error) => error,
            };
            if std::mem::take(&mut self.healthy) {
                delay = self.backoff_initial;
            }
            let pause = jitter(delay);
            span.in_scope(|| log_lost(&error, pause));
            let waited = self
                .or_command(None, tokio::time::sleep(pause))
                .instrument(span)
                .await;
            if waited.is_none() {
                break;
            }
            delay = delay.saturating_mul(2).min(self.backoff_max);
        }
        info!(target: TARGET, "xDS client stopped");
    }

    /// One connection, from connect to the end of its stream.
    async fn session(&mut self) -> Exit {
        let channel = match self.or_command(None, (self.connect)()).await {
            None => return Exit::Shutdown,
            Some(Err(error)) => return Exit::Failed(Error::Connect(error)),
            Some(Ok(channel)) => channel,
        };
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE.max(self.types.len()));
        let mut session = Session {
            tx,
            node: Some(self.node.clone()),
        };
        let now = Instant::now();
        for (type_url, state) in &mut self.types {
            state.requested = false;
            state.synced = false;
            state.on_demand.expire(now);
            if let Some(request) = state.first_request(type_url) {
                // Cannot fail: the queue has room for one request per type.
                let request = session.stamp(request);
                let _ = session.tx.try_send(request);
            }
        }

        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = self.bearer_token.as_ref().and_then(|token| token()) {
            match MetadataValue::try_from(format!("Bearer {token}")) {
                Ok(value) => {
                    request.metadata_mut().insert("authorization", value);
                }
                Err(error) => return Exit::Failed(Error::Token(error)),
            }
        }
        let mut client = AggregatedDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(MAX_RESPONSE_BYTES);
        let call = client.delta_aggregated_resources(request);
        let mut inbound = match self.or_command(Some(&mut session), call).await {
            None => return Exit::Shutdown,
            Some(Err(status)) => return Exit::Failed(Error::Refused(status)),
            Some(Ok(response)) => response.into_inner(),
        };
        self.set_connected(true);
        info!(target: TARGET, "Stream established");

        let mut sweep = tokio::time::interval(self.sweep_every());
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(response)) => {
                        let (reply, unsubscribe) = self.on_response(response);
                        for request in std::iter::once(reply).chain(unsubscribe) {
                            if session.tx.send(request).await.is_err() {
                                return Exit::Failed(Error::Closed);
                            }
                        }
                    }
                    Ok(None) => return Exit::Failed(Error::Closed),
                    Err(status) => return Exit::Failed(Error::Stream(status)),
                },
                command = self.commands.recv() => match command {
                    Some(Command::Subscribe { type_url, names }) => {
                        self.subscribe(type_url, names, Some(&mut session)).await;
                    }
                    Some(Command::Shutdown) | None => return Exit::Shutdown,
                },
                _ = sweep.tick() => {
                    if self.sweep(&mut session).await.is_err() {
                        return Exit::Failed(Error::Closed);
                    }
                }
            }
        }
    }

    /// How often on-demand names are checked for expiry: as often as the shortest-lived type
    /// needs.
    fn sweep_every(&self) -> Duration {
        self.types
            .values()
            .map(|state| state.on_demand.sweep_every())
            .min()
            .unwrap_or(Duration::from_secs(60))
    }

    /// Forgets the on-demand names unused for their time to live, unsubscribing them on the
    /// live stream. `Err` when the stream is ending.
    async fn sweep(&mut self, session: &mut Session) -> Result<(), ()> {
        let now = Instant::now();
        for (type_url, state) in &mut self.types {
            let expired = state.on_demand.expire(now);
            if expired.is_empty() || !state.requested {
                continue;
            }
            debug!(target: TARGET, type_url, names = expired.len(), "forgetting unused on demand names");
            let request = xds::DeltaDiscoveryRequest {
                type_url: type_url.clone(),
                resource_names_unsubscribe: expired,
                ..Default::default()
            };
            let request = session.stamp(request);
            session.tx.send(request).await.map_err(|_| ())?;
        }
        Ok(())
    }

    /// Awaits `future` while serving handle commands; `None` when asked to shut down.
    async fn or_command<F: Future>(
        &mut self,
        mut session: Option<&mut Session>,
        future: F,
    ) -> Option<F::Output> {
        tokio::pin!(future);
        loop {
            tokio::select! {
                output = &mut future => return Some(output),
                command = self.commands.recv() => match command {
                    Some(Command::Subscribe { type_url, names }) => {
                        self.subscribe(type_url, names, session.as_deref_mut()).await;
                    }
                    Some(Command::Shutdown) | None => return None,
                },
            }
        }
    }

    /// Applies a response and returns the ACK or NACK for it, and the request unsubscribing the
    /// on-demand names the response reported absent (forgotten, see [`OnDemand`]).
    fn on_response(
        &mut self,
        response: xds::DeltaDiscoveryResponse,
    ) -> (
        xds::DeltaDiscoveryRequest,
        Option<xds::DeltaDiscoveryRequest>,
    ) {
        let type_url = response.type_url.clone();
        let nonce = response.nonce.clone();
        info!(
            target: TARGET,
            type_url,
            size = response.resources.len(),
            removes = response.removed_resources.len(),
            "received response"
        );
        let mut absent = Vec::new();
        let error_detail = match self.apply(response, &mut absent) {
            Ok(()) => {
                debug!(target: TARGET, type_url, nonce, "type" = ?Signal::Ack, "sending response");
                None
            }
            Err(message) => {
                error!(
                    target: TARGET,
                    type_url,
                    nonce,
                    "type" = ?Signal::Nack,
                    error = message,
                    "sending response"
                );
                Some(rpc::Status {
                    code: INVALID_ARGUMENT,
                    message,
                    details: Vec::new(),
                })
            }
        };
        let unsubscribe = (!absent.is_empty()).then(|| xds::DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            resource_names_unsubscribe: absent,
            ..Default::default()
        });
        let reply = xds::DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            error_detail,
            ..Default::default()
        };
        (reply, unsubscribe)
    }

    /// Hands a response to the handler; on success records what it holds, and forgets (adding
    /// them to `absent`) the on-demand names the response removed.
    fn apply(
        &mut self,
        response: xds::DeltaDiscoveryResponse,
        absent: &mut Vec<String>,
    ) -> Result<(), String> {
        let Some(state) = self.types.get_mut(&response.type_url) else {
            return Err(format!("not subscribed to type {:?}", response.type_url));
        };
        let mut versions = Vec::with_capacity(response.resources.len());
        let mut upserts = Vec::with_capacity(response.resources.len());
        for resource in response.resources {
            if resource.name.is_empty() {
                return Err("a resource has no name".to_owned());
            }
            let Some(body) = resource.resource else {
                return Err(format!("resource {:?} has no body", resource.name));
            };
            versions.push((resource.name.clone(), resource.version));
            upserts.push(Resource {
                name: resource.name,
                aliases: resource.aliases,
                body,
            });
        }
        let removals = response.removed_resources;
        let update = Update {
            upserts,
            removals: removals.clone(),
            initial: !state.synced,
        };
        self.handler.handle(&response.type_url, update)?;
        state.synced = true;
        self.healthy = true;
        for name in &removals {
            state.known.remove(name);
            if state.on_demand.forget(name) {
                absent.push(name.clone());
            }
        }
        state.known.extend(versions);
        Ok(())
    }

    /// Remembers more names of a type and, when a stream is up, asks for them on it.
    async fn subscribe(
        &mut self,
        type_url: String,
        names: Vec<String>,
        session: Option<&mut Session>,
    ) {
        let on_demand = self.on_demand;
        let state = self
            .types
            .entry(type_url.clone())
            .or_insert_with(|| TypeState::new(on_demand));
        let now = Instant::now();
        let mut added = Vec::new();
        let mut evicted = Vec::new();
        for name in names {
            if name == WILDCARD {
                if !std::mem::replace(&mut state.wildcard, true) {
                    added.push(name);
                }
            } else if !state.names.contains(&name) {
                let (new, dropped) = state.on_demand.ask(&name, now);
                evicted.extend(dropped);
                if new {
                    added.push(name);
                }
            }
        }
        // A batch larger than the cap evicts some of its own names: those are neither asked
        // for nor unsubscribed.
        let asked: BTreeSet<String> = added.iter().cloned().collect();
        added.retain(|name| name == WILDCARD || state.on_demand.contains(name));
        evicted.retain(|name| !asked.contains(name));
        for name in &added {
            info!(target: TARGET, "received on demand request {type_url}/{name}");
        }
        let Some(session) = session.filter(|_| !added.is_empty() || !evicted.is_empty()) else {
            return;
        };
        let request = if state.requested {
            xds::DeltaDiscoveryRequest {
                type_url,
                resource_names_subscribe: added,
                resource_names_unsubscribe: evicted,
                ..Default::default()
            }
        } else {
            match state.first_request(&type_url) {
                Some(request) => request,
                None => return,
            }
        };
        // Fails only when the stream is ending; the names are remembered for the next one.
        let request = session.stamp(request);
        let _ = session.tx.send(request).await;
    }

    fn set_connected(&self, connected: bool) {
        if self.connected.send_replace(connected) != connected {
            self.handler.on_connection_state(connected);
        }
    }
}

// === impl TypeState ===

impl TypeState {
    fn new((max, ttl): (usize, Duration)) -> Self {
        Self {
            wildcard: false,
            names: BTreeSet::new(),
            on_demand: OnDemand::new(max, ttl),
            known: HashMap::new(),
            requested: false,
            synced: false,
        }
    }

    /// The request opening this type on a new stream, or `None` while there is nothing to ask
    /// for (a named subscription without names: an empty list would mean "everything").
    fn first_request(&mut self, type_url: &str) -> Option<xds::DeltaDiscoveryRequest> {
        let names: Vec<String> = self
            .names
            .iter()
            .cloned()
            .chain(self.on_demand.names())
            .collect();
        let subscribe: Vec<String> = match (self.wildcard, names.is_empty()) {
            // Legacy wildcard: understood by every server, istiod included.
            (true, true) => Vec::new(),
            (true, false) => std::iter::once(WILDCARD.to_owned()).chain(names).collect(),
            (false, true) => return None,
            (false, false) => names,
        };
        self.requested = true;
        Some(xds::DeltaDiscoveryRequest {
            type_url: type_url.to_owned(),
            resource_names_subscribe: subscribe,
            initial_resource_versions: self
                .known
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            ..Default::default()
        })
    }
}

// === impl Session ===

impl Session {
    /// Puts the node on the stream's first request.
    fn stamp(&mut self, mut request: xds::DeltaDiscoveryRequest) -> xds::DeltaDiscoveryRequest {
        request.node = self.node.take();
        request
    }
}

/// What a reply to a response says, named as ztunnel's log names it (`type=Ack`, `type=Nack`).
#[derive(Debug)]
enum Signal {
    Ack,
    Nack,
}

/// Logs why a connection ended and when the next attempt comes, with ztunnel's wording.
fn log_lost(error: &Error, pause: Duration) {
    match error {
        Error::Connect(_) => warn!(
            target: TARGET,
            "XDS client connection error: {}, retrying in {pause:?}",
            Chain(error)
        ),
        _ => warn!(
            target: TARGET,
            "XDS client error: {}, retrying in {pause:?}",
            Chain(error)
        ),
    }
}

/// A delay in `[delay / 2, delay]`, so clients cut off together do not return together.
fn jitter(delay: Duration) -> Duration {
    // `RandomState` is seeded randomly per instance; one hash is all the randomness needed.
    let random = RandomState::new().hash_one(0u8);
    let fraction = (random >> 11) as f64 / (1u64 << 53) as f64;
    delay.mul_f64(0.5 + fraction / 2.0)
}

/// Displays an error with its sources: `a: b: c`.
struct Chain<'a>(&'a Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
