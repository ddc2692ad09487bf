//! The capture agent: the set of pods on this node, and which of them are captured.
//!
//! Pods become known through CNI events ([`Agent::pod_added`], [`Agent::pod_deleted`],
//! [`Agent::pod_checked`]); whether one is enrolled comes from an [`Enrollment`]. The agent
//! keeps `captured == (netns known && enrolled)` true:
//!
//! - capturing installs the redirection rules in the pod's netns, then hands the netns to the
//!   node proxy over [`Zds`];
//! - un-capturing tells the node proxy first, then removes the rules.
//!
//! It reconciles on every CNI event, whenever the enrollment source reports a change, and
//! every [`AgentConfig::resync_interval`]: a running pod that becomes enrolled (a label
//! change) is captured without a restart, and one that leaves is released. An enrolled pod
//! the agent has no CNI event for (it ran before the agent, or its ADD was lost with the
//! agent's state) is found by its addresses in procfs and captured too (see [`DiscoveryConfig`]).
//!
//! ADD semantics: the agent decides from the pod's identity (namespace, name, uid from
//! `CNI_ARGS`) with [`Enrollment::decide`], waiting up to [`AgentConfig::decide_timeout`] for a
//! source that does not know the pod yet, and fails the ADD if it still cannot decide (the
//! runtime retries; the pod never starts uncaptured). A pod that is not enrolled (opted out with
//! `istio.io/dataplane-mode=none`, say) passes through. An ADD of an enrolled pod returns once
//! the rules are in place, the node proxy acknowledged the pod and the pod is marked
//! `ambient.istio.io/redirection: enabled` (see [`crate::marker`]); a failed mark fails the ADD.
//! When no node proxy is connected, the ADD fails as istio-cni's does ([`AgentError::NoNodeProxy`]):
//! the rules stay in place and the pod stays registered, unmarked, so the node proxy receives it
//! in its replay when it connects, and the runtime's retried ADD succeeds then. Only enrolled
//! pods wait: the node proxy's own dependencies (the control plane, DNS) run in excluded
//! namespaces. A rules failure or a node proxy rejection fails the ADD too. A pod is marked
//! only once the node proxy acknowledged it (a reconciliation follows every new connection).
//!
//! Invariants:
//! - One lock serializes every change to the pod set (events, reconciliation): a pod is never
//!   captured and released concurrently. Each step is bounded (rules commands, ZDS ack timeout).
//! - The state file is rewritten after every change; a restarted agent re-captures what it had
//!   captured (so the node proxy's replay is complete) before the enrollment source has synced.
//! - While the enrollment source is not synced, nothing is released.

mod discover;
mod events;
mod pods;
mod state;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use ambit_netns::NetnsError;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

use crate::enrollment::{Enrollment, PodName};
use crate::marker::{MarkError, NoMarker, PodMarker};
use crate::rules::{Rules, RulesError};
use crate::zds::{AckState, Zds, ZdsConfig, ZdsError};

pub use discover::DiscoveryConfig;
pub use state::StateError;

use discover::Discoverer;
use pods::Pod;
use state::StateStore;

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Where the pod records are kept across restarts.
    pub state_dir: PathBuf,
    /// The ZDS socket the node proxy connects to.
    pub zds: ZdsConfig,
    /// How the redirection rules are written.
    pub rules: Rules,
    /// How often every pod is reconciled even without a change (retries failed captures).
    pub resync_interval: Duration,
    /// Where to look for the namespaces of enrolled pods without a CNI event; `None` turns
    /// the search off.
    pub discovery: Option<DiscoveryConfig>,
    /// Where the host's file system is mounted when the agent runs in a container (`/host` in
    /// the DaemonSet). CNI events name a pod's namespace by its host path
    /// (`/var/run/netns/cni-…`); under this root the agent finds it at
    /// `/host/var/run/netns/cni-…`, and falls back to the path as given.
    pub host_root: Option<PathBuf>,
    /// How long an ADD waits for the enrollment source to know the pod before it fails (the
    /// runtime retries it). Below the plugin's timeout for the agent's answer.
    pub decide_timeout: Duration,
    /// Where captured pods are marked `ambient.istio.io/redirection: enabled`.
    pub marker: Arc<dyn PodMarker>,
}

impl AgentConfig {
    pub fn new(state_dir: impl Into<PathBuf>, zds: ZdsConfig, rules: Rules) -> Self {
        Self {
            state_dir: state_dir.into(),
            zds,
            rules,
            resync_interval: Duration::from_secs(60),
            discovery: Some(DiscoveryConfig::default()),
            host_root: None,
            decide_timeout: Duration::from_secs(5),
            marker: Arc::new(NoMarker),
        }
    }
}

/// A pod as a CNI event reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniPod {
    pub namespace: String,
    pub name: String,
    /// The Kubernetes pod UID, when the runtime passed it.
    pub uid: Option<String>,
    /// The pod sandbox's id.
    pub container_id: String,
    /// The pod's network namespace; DEL may come without one.
    pub netns: Option<PathBuf>,
    pub ips: Vec<IpAddr>,
}

/// One pod as the agent sees it, for status pages and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub netns: PathBuf,
    pub enrolled: bool,
    pub rules_installed: bool,
    /// The node proxy acknowledged the pod on its current connection or an earlier one.
    pub acked: bool,
    /// The pod's object carries `ambient.istio.io/redirection: enabled`, set by this agent.
    pub marked: bool,
    /// Why the capture is not confirmed, when it failed.
    pub error: Option<String>,
}

/// Why a CNI event could not be carried out.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    #[error("pod {pod}: the runtime passed no network namespace")]
    NoNetns { pod: PodName },
    #[error("pod {pod}: cannot open its network namespace")]
    Netns {
        pod: PodName,
        #[source]
        source: NetnsError,
    },
    #[error("pod {pod}: cannot install the redirection rules")]
    Rules {
        pod: PodName,
        #[source]
        source: RulesError,
    },
    #[error("pod {pod}: the node proxy did not take it")]
    Zds {
        pod: PodName,
        #[source]
        source: ZdsError,
    },
    /// The enrollment source could not say whether to capture the pod in time.
    #[error("pod {pod}: cannot decide whether to capture it: {reason}")]
    Undecided { pod: PodName, reason: String },
    /// The rules are in place, but no node proxy has acknowledged the pod yet.
    #[error("pod {pod}: no node proxy has taken it yet (rules in place; retry once it connects)")]
    NoNodeProxy { pod: PodName },
    #[error("pod {pod}: captured, but not marked for the control plane")]
    Mark {
        pod: PodName,
        #[source]
        source: MarkError,
    },
    #[error("pod {pod}: enrolled but not known to the agent")]
    Unknown { pod: PodName },
    #[error("pod {pod}: the redirection rules are not in place")]
    Check {
        pod: PodName,
        #[source]
        source: RulesError,
    },
    #[error("cannot start the ZDS server")]
    ZdsStart(#[source] ZdsError),
    #[error("cannot set up the state directory")]
    State(#[source] StateError),
}

/// The running agent. Cheap to clone; stops on [`Agent::shutdown`].
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

struct Inner {
    rules: Rules,
    zds: Zds,
    enrollment: Arc<dyn Enrollment>,
    store: StateStore,
    discovery: Option<Discoverer>,
    host_root: Option<PathBuf>,
    decide_timeout: Duration,
    marker: Arc<dyn PodMarker>,
    pods: tokio::sync::Mutex<BTreeMap<PodName, Pod>>,
    reconciler: Mutex<Option<JoinHandle<()>>>,
}

impl Agent {
    /// Starts the agent: binds the ZDS socket, loads the state file, re-captures the pods it
    /// had captured, and starts reconciling with `enrollment`.
    pub async fn start(
        config: AgentConfig,
        enrollment: Arc<dyn Enrollment>,
    ) -> Result<Self, AgentError> {
        let store = StateStore::new(&config.state_dir).map_err(AgentError::State)?;
        let zds = Zds::bind(config.zds).map_err(AgentError::ZdsStart)?;
        let inner = Arc::new(Inner {
            rules: config.rules,
            zds,
            enrollment,
            store,
            discovery: config.discovery.map(Discoverer::new),
            host_root: config.host_root,
            decide_timeout: config.decide_timeout,
            marker: config.marker,
            pods: tokio::sync::Mutex::default(),
            reconciler: Mutex::default(),
        });
        inner.restore().await;
        let changes = inner.enrollment.changes();
        let reconciler = tokio::spawn(reconcile_loop(
            Arc::downgrade(&inner),
            changes,
            inner.zds.connection_state(),
            config.resync_interval,
        ));
        *inner
            .reconciler
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reconciler);
        Ok(Self { inner })
    }

    /// CNI ADD: remembers the pod and captures it if it is enrolled. See the
    /// [module docs](self) for when this returns.
    pub async fn pod_added(&self, pod: CniPod) -> Result<(), AgentError> {
        self.inner.pod_added(pod).await
    }

    /// CNI DEL: releases and forgets the pod. Always succeeds; problems are logged.
    pub async fn pod_deleted(&self, pod: CniPod) -> Result<(), AgentError> {
        self.inner.pod_deleted(pod).await;
        Ok(())
    }

    /// CNI CHECK: for an enrolled pod, confirms that its rules are in place.
    pub async fn pod_checked(&self, pod: CniPod) -> Result<(), AgentError> {
        self.inner.pod_checked(pod).await
    }

    /// Brings every pod in line with enrollment now, looking for the namespaces of enrolled
    /// pods it does not know when a search is due (it also happens on its own).
    pub async fn reconcile(&self) {
        self.inner.reconcile_all().await;
    }

    /// Every known pod.
    pub async fn status(&self) -> Vec<PodStatus> {
        let pods = self.inner.pods.lock().await;
        pods.iter()
            .map(|(name, pod)| self.inner.status_of(name, pod))
            .collect()
    }

    /// The ZDS server, to watch the node proxy's connection.
    pub fn zds(&self) -> &Zds {
        &self.inner.zds
    }

    /// Stops reconciling and closes the ZDS socket (removing its file). Captured pods keep
    /// their rules, and the state file keeps them for the next agent.
    pub async fn shutdown(&self) {
        let reconciler = self
            .inner
            .reconciler
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = reconciler {
            task.abort();
            let _ = task.await;
        }
        // Wait for any event in flight to finish before the socket goes.
        let _pods = self.inner.pods.lock().await;
        self.inner.zds.shutdown().await;
    }
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("rules", &self.inner.rules)
            .field("zds", &self.inner.zds)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Reconciles the known pods, then looks for unknown enrolled ones. Returns when the next
    /// search for them is due, if one will be.
    async fn reconcile_all(&self) -> Option<Instant> {
        self.reconcile().await;
        self.discover().await
    }

    fn status_of(&self, name: &PodName, pod: &Pod) -> PodStatus {
        let ack = self.zds.ack_state(&pod.uid);
        let error = pod.error.clone().or(match &ack {
            Some(AckState::Rejected(error)) => Some(format!("the node proxy rejected it: {error}")),
            _ => None,
        });
        PodStatus {
            namespace: name.namespace.clone(),
            name: name.name.clone(),
            uid: pod.uid.clone(),
            netns: pod.netns_path.clone(),
            enrolled: self.enrollment.enrolled(name).is_some(),
            rules_installed: pod.rules_installed,
            acked: ack == Some(AckState::Acked),
            marked: pod.marked,
            error,
        }
    }
}

/// Reconciles on every enrollment change, every `interval`, and when a search for unknown pods
/// is due, until the agent is gone.
async fn reconcile_loop(
    agent: Weak<Inner>,
    mut changes: watch::Receiver<u64>,
    mut connection: watch::Receiver<bool>,
    interval: Duration,
) {
    let mut changes_open = true;
    let mut connection_open = true;
    loop {
        let search_due = match agent.upgrade() {
            Some(inner) => inner.reconcile_all().await,
            None => return,
        };
        let resync = Instant::now() + interval;
        let wake = search_due.map_or(resync, |due| due.min(resync));
        loop {
            tokio::select! {
                changed = changes.changed(), if changes_open => {
                    if changed.is_err() {
                        warn!("the enrollment source stopped; reconciling on the timer only");
                        changes_open = false;
                    }
                }
                // A node proxy that connected has acknowledged its replay: the pods it took can
                // be marked now (nothing else is retried on a connection).
                changed = connection.changed(), if connection_open => {
                    connection_open = changed.is_ok();
                    let connected = connection_open && *connection.borrow_and_update();
                    match agent.upgrade() {
                        Some(inner) if connected => inner.mark_taken().await,
                        Some(_) => {}
                        None => return,
                    }
                    continue;
                }
                () = tokio::time::sleep_until(wake) => {}
            }
            break;
        }
    }
}

/// An error and its causes on one line, for logs and the CNI plugin's reply.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
