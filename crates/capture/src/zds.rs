//! The agent's side of ZDS: hands captured pods' network namespaces to the node proxy.
//!
//! [`Zds::bind`] listens on the seqpacket path; the node proxy connects and says
//! `ZdsHello{V1}`. The agent then replays every pod it has registered (`AddWorkload` with the
//! netns fd, or `KeepWorkload` for a pod whose netns it does not hold), sends `SnapshotSent`,
//! and afterwards forwards [`Zds::add`] and [`Zds::del`] as they happen. Every request waits
//! for the node proxy's `Ack`, at most [`ZdsConfig::ack_timeout`].
//!
//! Invariants:
//! - One task owns the registry and the connection, so requests, replays and reconnections are
//!   serialized: the node proxy sees each pod at most once per connection, in order.
//! - A pod stays registered from [`Zds::add`] until [`Zds::del`], connected or not, so a node
//!   proxy that connects later (or again) is told about every pod.
//! - At most one node proxy connection is active; a new one (after a valid hello) replaces it.
//! - A connection that times out, breaks, or sends anything but an `Ack` to a request is
//!   dropped; the node proxy reconnects and gets a replay.

#[cfg(any(test, fuzzing))]
pub(crate) mod fuzz;
mod server;

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ambit_netns::Netns;
use ambit_netns::seqpacket::SeqpacketListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Where to listen and how patient to be.
#[derive(Clone, Debug)]
pub struct ZdsConfig {
    /// The seqpacket socket path (Istio's default: `/var/run/ztunnel/ztunnel.sock`).
    pub path: PathBuf,
    /// How long a request waits for the node proxy's `Ack`.
    pub ack_timeout: Duration,
    /// How long a new connection may take to say hello.
    pub hello_timeout: Duration,
}

impl ZdsConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            ack_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(5),
        }
    }
}

/// A pod as the node proxy learns it.
#[derive(Clone, Debug)]
pub struct ZdsPod {
    /// The Kubernetes pod UID: the key of the pod in ZDS.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// The pod's network namespace; `None` when the agent does not hold it (replayed as
    /// `KeepWorkload`).
    pub netns: Option<Netns>,
}

/// What the node proxy last said about a registered pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AckState {
    /// Not confirmed yet: no node proxy has been told since the pod was registered.
    Pending,
    /// The node proxy acknowledged the pod.
    Acked,
    /// The node proxy answered with this error.
    Rejected(String),
}

/// Why a request did not reach an acknowledged end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZdsError {
    #[error("cannot listen on the ZDS socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no node proxy is connected; it will be told when it connects")]
    NotConnected,
    #[error("the node proxy rejected {what}: {error}")]
    Rejected { what: String, error: String },
    #[error("the node proxy did not acknowledge {what} within {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    #[error("the connection to the node proxy broke during {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the node proxy answered {what} with something other than an Ack")]
    Protocol { what: String },
    #[error("the ZDS server has stopped")]
    Stopped,
}

/// A handle to the ZDS server. Cheap to clone; the server stops on [`Zds::shutdown`] or when
/// every handle is gone.
#[derive(Clone, Debug)]
pub struct Zds {
    ops: mpsc::UnboundedSender<Op>,
    registry: Arc<Mutex<Registry>>,
    connected: watch::Receiver<bool>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

/// Registered pods and what the node proxy said about each. Written only by the server task.
#[derive(Debug, Default)]
struct Registry {
    pods: BTreeMap<String, Registered>,
}

#[derive(Debug)]
struct Registered {
    pod: ZdsPod,
    ack: AckState,
}

/// What a handle asks of the server task.
#[derive(Debug)]
enum Op {
    Add(ZdsPod, oneshot::Sender<Result<(), ZdsError>>),
    Del(String, oneshot::Sender<Result<(), ZdsError>>),
    Shutdown,
}

impl Zds {
    /// Listens on `config.path` (replacing a stale socket file) and starts serving on the
    /// current tokio runtime.
    pub fn bind(config: ZdsConfig) -> Result<Self, ZdsError> {
        if let Some(dir) = config.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ZdsError::Bind {
                path: config.path.clone(),
                source,
            })?;
        }
        let listener = SeqpacketListener::bind(&config.path).map_err(|source| ZdsError::Bind {
            path: config.path.clone(),
            source,
        })?;
        let (ops, ops_rx) = mpsc::unbounded_channel();
        let (connected_tx, connected) = watch::channel(false);
        let registry = Arc::new(Mutex::new(Registry::default()));
        let server = server::Server::new(config, listener, registry.clone(), connected_tx);
        let task = tokio::spawn(server.run(ops_rx));
        Ok(Self {
            ops,
            registry,
            connected,
            task: Arc::new(Mutex::new(Some(task))),
        })
    }

    /// Registers `pod` and, when a node proxy is connected, sends it `AddWorkload` and waits
    /// for the `Ack`. A pod added again replaces its earlier registration.
    ///
    /// [`ZdsError::NotConnected`] leaves the pod registered: it is replayed on connection.
    pub async fn add(&self, pod: ZdsPod) -> Result<(), ZdsError> {
        let (reply, result) = oneshot::channel();
        self.ops
            .send(Op::Add(pod, reply))
            .map_err(|_| ZdsError::Stopped)?;
        result.await.map_err(|_| ZdsError::Stopped)?
    }

    /// Forgets the pod `uid` and, when a node proxy is connected, sends it `DelWorkload` and
    /// waits for the `Ack`. Without a node proxy this succeeds: the next connection's snapshot
    /// does not name the pod, which tells the node proxy to drop it.
    pub async fn del(&self, uid: &str) -> Result<(), ZdsError> {
        let (reply, result) = oneshot::channel();
        self.ops
            .send(Op::Del(uid.to_owned(), reply))
            .map_err(|_| ZdsError::Stopped)?;
        result.await.map_err(|_| ZdsError::Stopped)?
    }

    /// Whether a node proxy is connected and has received the snapshot.
    pub fn connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Watches [`Zds::connected`].
    pub fn connection_state(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// What the node proxy last said about the pod `uid`; `None` when it is not registered.
    pub fn ack_state(&self, uid: &str) -> Option<AckState> {
        self.registry().pods.get(uid).map(|r| r.ack.clone())
    }

    /// Every registered pod's uid and ack state.
    pub fn pods(&self) -> Vec<(String, AckState)> {
        self.registry()
            .pods
            .iter()
            .map(|(uid, r)| (uid.clone(), r.ack.clone()))
            .collect()
    }

    /// Stops the server: closes the connection and removes the socket file before returning.
    pub async fn shutdown(&self) {
        let _ = self.ops.send(Op::Shutdown);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
