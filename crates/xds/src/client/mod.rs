//! The delta ADS client: keeps a node proxy subscribed to a control plane.
//!
//! [`XdsClient::spawn`] starts a task that holds one `DeltaAggregatedResources` stream to the
//! control plane (ours or a stock istiod), subscribes to the configured types, hands every
//! response to a [`Handler`] and ACKs or NACKs it by the handler's verdict. When the stream
//! breaks it reconnects with exponential backoff and jitter, telling the server which resource
//! versions it already holds (`initial_resource_versions`) so only the difference is resent.
//!
//! The caller owns the transport: `connect` builds a tonic [`Channel`] (TLS connector, SNI,
//! roots), and [`XdsClient::with_bearer_token`] adds `authorization: Bearer …` to each stream.
//! [`ztunnel_node`] is the `Node` to identify with when a stock istiod is to serve WDS.
//!
//! # Invariants
//!
//! - The client's record of what it holds changes only when the handler accepted an update, so
//!   a rejected update is offered again after a reconnect rather than silently assumed.
//! - The handler is called from one task, in stream order, never concurrently with itself.
//! - Names added with [`ClientHandle::subscribe`] survive reconnects while they are in use:
//!   at most [`ClientConfig::on_demand_max`] per type are kept, each until it has not been asked
//!   for within [`ClientConfig::on_demand_ttl`] or the server reports it absent; then it is
//!   unsubscribed and no longer sent (see `on_demand.rs`).

mod connection;
mod on_demand;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::envoy::config::core::v3::Node;
use prost_types::{Struct, Value, value::Kind};
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

pub use crate::Resource;

/// The error a `connect` closure may fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest response the client accepts, in bytes. A control plane's first response carries the
/// whole mesh (a few hundred bytes per workload), so this is far above tonic's 4 MiB default.
pub const MAX_RESPONSE_BYTES: usize = 128 * 1024 * 1024;

/// Receives what the control plane sends.
pub trait Handler: Send + Sync + 'static {
    /// Applies one response of `type_url`. `Err(message)` rejects it: the client NACKs with
    /// `message` (as `google.rpc.Status` code 3, `INVALID_ARGUMENT`) and keeps its old state.
    ///
    /// Called on the client's task: return promptly and never block on I/O.
    fn handle(&self, type_url: &str, update: Update) -> Result<(), String>;

    /// Told when the stream to the control plane comes up (`true`) or goes down (`false`).
    fn on_connection_state(&self, connected: bool) {
        let _ = connected;
    }
}

/// One response, as the handler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// Resources added or changed, by canonical name, with the subscribed aliases they answer.
    pub upserts: Vec<Resource>,
    /// Names removed, or subscribed names the server says do not exist.
    pub removals: Vec<String>,
    /// The first update of this type accepted on the current connection: together with what the
    /// handler already holds, it is the server's complete view (readiness can be signalled).
    pub initial: bool,
}

/// What to subscribe to and how to behave.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Who this client is; sent on the first request of each stream.
    pub node: Node,
    /// Type URLs and what to subscribe to of each.
    pub subscriptions: Vec<(String, Subscription)>,
    /// First reconnect delay (and the delay after a stream that worked).
    pub backoff_initial: Duration,
    /// Reconnect delays double up to this.
    pub backoff_max: Duration,
    /// On-demand names kept per type; one more forgets the one asked for longest ago.
    pub on_demand_max: usize,
    /// An on-demand name not asked for within this long is forgotten.
    pub on_demand_ttl: Duration,
}

/// What a client subscribes to of one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// Every resource of the type.
    Wildcard,
    /// Only these names (canonical names or aliases); more may be added on demand.
    Names(Vec<String>),
}

/// A client not started yet: add options, then [`XdsClient::start`].
pub struct XdsClient<C> {
    connect: C,
    config: ClientConfig,
    handler: Arc<dyn Handler>,
    bearer_token: Option<TokenSource>,
}

type TokenSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Controls a running client. Cloneable; the client stops on [`ClientHandle::shutdown`] or when
/// every handle has been dropped.
#[derive(Clone, Debug)]
#[must_use = "dropping every handle stops the client"]
pub struct ClientHandle {
    commands: mpsc::UnboundedSender<Command>,
    connected: watch::Receiver<bool>,
}

/// What a handle asks of the client task.
#[derive(Debug)]
enum Command {
    Subscribe {
        type_url: String,
        names: Vec<String>,
    },
    Shutdown,
}

/// An xDS `Node` in the shape a ztunnel sends, which a stock istiod needs before it serves WDS:
/// id `ztunnel~0.0.0.0~<pod_name>.istio-system~istio-system.svc.cluster.local`, `cluster_id`
/// as the cluster, and `NODE_NAME` and `CLUSTER_ID` in the metadata.
pub fn ztunnel_node(pod_name: &str, node_name: &str, cluster_id: &str) -> Node {
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    Node {
        id: format!("ztunnel~0.0.0.0~{pod_name}.istio-system~istio-system.svc.cluster.local"),
        cluster: cluster_id.to_owned(),
        metadata: Some(Struct {
            fields: [
                ("NODE_NAME".to_owned(), text(node_name)),
                ("CLUSTER_ID".to_owned(), text(cluster_id)),
            ]
            .into(),
        }),
        ..Node::default()
    }
}

// === impl ClientConfig ===

impl ClientConfig {
    /// A configuration without subscriptions, reconnecting after 200 ms up to 15 s, keeping
    /// up to 1024 on-demand names per type for 5 minutes after they were last asked for.
    pub fn new(node: Node) -> Self {
        Self {
            node,
            subscriptions: Vec::new(),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(15),
            on_demand_max: 1024,
            on_demand_ttl: Duration::from_secs(5 * 60),
        }
    }

    /// Adds a subscription, builder style.
    #[must_use]
    pub fn subscribe(mut self, type_url: impl Into<String>, subscription: Subscription) -> Self {
        self.subscriptions.push((type_url.into(), subscription));
        self
    }
}

// === impl XdsClient ===

impl<C, Fut> XdsClient<C>
where
    C: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Channel, BoxError>> + Send + 'static,
{
    /// Starts a client with default options; see [`XdsClient::new`].
    pub fn spawn(connect: C, config: ClientConfig, handler: impl Handler) -> ClientHandle {
        Self::new(connect, config, handler).start()
    }

    /// A client that opens each connection with `connect` and feeds `handler`.
    pub fn new(connect: C, config: ClientConfig, handler: impl Handler) -> Self {
        Self {
            connect,
            config,
            handler: Arc::new(handler),
            bearer_token: None,
        }
    }

    /// Sends `authorization: Bearer <token>` on each stream, asking `token` afresh on every
    /// (re)connect so rotated tokens are picked up; `None` sends no header.
    #[must_use]
    pub fn with_bearer_token(
        mut self,
        token: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.bearer_token = Some(Arc::new(token));
        self
    }

    /// Spawns the client task on the current tokio runtime.
    pub fn start(self) -> ClientHandle {
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (connected_tx, connected) = watch::channel(false);
        let worker = connection::Worker::new(
            self.connect,
            self.config,
            self.handler,
            self.bearer_token,
            commands_rx,
            connected_tx,
        );
        tokio::spawn(worker.run());
        ClientHandle {
            commands,
            connected,
        }
    }
}

impl<C> fmt::Debug for XdsClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XdsClient")
            .field("config", &self.config)
            .field("bearer_token", &self.bearer_token.is_some())
            .finish_non_exhaustive()
    }
}

// === impl Handler ===

impl<T: Handler + ?Sized> Handler for Arc<T> {
    fn handle(&self, type_url: &str, update: Update) -> Result<(), String> {
        (**self).handle(type_url, update)
    }

    fn on_connection_state(&self, connected: bool) {
        (**self).on_connection_state(connected);
    }
}

// === impl ClientHandle ===

impl ClientHandle {
    /// Subscribes to more names of a type (on-demand lookups), on the live stream and on later
    /// ones while the name is in use (see the [module docs](self)). Asking again for a name
    /// already subscribed sends nothing but keeps it in use. A name the server does not know
    /// comes back in [`Update::removals`], and is forgotten.
    pub fn subscribe<I>(&self, type_url: impl Into<String>, names: I)
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let names = names.into_iter().map(Into::into).collect();
        // Fails only when the client has stopped, which needs no subscription any more.
        let _ = self.commands.send(Command::Subscribe {
            type_url: type_url.into(),
            names,
        });
    }

    /// Whether a stream to the control plane is up right now.
    pub fn connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Watches the connection state.
    pub fn connection_state(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Stops the client: the stream is closed and no reconnect follows.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ztunnel_node_names_its_pod_node_and_cluster() {
        let node = ztunnel_node("ambit-cni-n1", "n1", "Kubernetes");
        assert_eq!(
            node.id,
            "ztunnel~0.0.0.0~ambit-cni-n1.istio-system~istio-system.svc.cluster.local"
        );
        assert_eq!(node.cluster, "Kubernetes");
        let fields = node.metadata.unwrap().fields;
        let text = |key: &str| match &fields[key].kind {
            Some(Kind::StringValue(s)) => s.clone(),
            other => panic!("{key} is {other:?}"),
        };
        assert_eq!(
            (text("NODE_NAME"), text("CLUSTER_ID")),
            ("n1".to_owned(), "Kubernetes".to_owned())
        );
        assert_eq!(fields.len(), 2);
    }
}
