//! Which pods are enrolled in the mesh: the agent captures a pod only when a source says so.
//!
//! An [`Enrollment`] answers "is this pod enrolled, and as which service account" and bumps a
//! watch whenever an answer may have changed, so the agent reconciles running pods without
//! waiting for a new CNI event. It also lists every enrolled pod with its addresses, so the
//! agent can find the network namespace of an enrolled pod whose CNI ADD it never saw (see
//! [`crate::discovery`]). Two sources exist:
//!
//! - [`StaticEnrollment`]: an in-memory set changed by method calls (tests, the demo);
//! - [`WdsEnrollment`]: the control plane's WDS, where a pod is enrolled iff its `Workload` is
//!   on this node and speaks HBONE, exactly what the node proxy will serve.

mod wds;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

pub use wds::{WdsEnrollment, WdsEnrollmentConfig};

/// A pod by Kubernetes name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

impl PodName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for PodName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What enrollment tells the agent about a pod.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Enrolled {
    /// The pod's service account, passed to the node proxy in `WorkloadInfo`.
    pub service_account: String,
    /// The pod's addresses, when the source knows them: how the agent finds the network
    /// namespace of a running pod it has no CNI event for.
    pub ips: Vec<IpAddr>,
}

/// A source of enrollment decisions.
pub trait Enrollment: Send + Sync + 'static {
    /// `Some` when `pod` is enrolled.
    fn enrolled(&self, pod: &PodName) -> Option<Enrolled>;

    /// Every enrolled pod.
    fn enrolled_pods(&self) -> Vec<(PodName, Enrolled)>;

    /// A receiver whose value changes whenever [`Enrollment::enrolled`] or
    /// [`Enrollment::synced`] may answer differently.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Whether the source holds a complete view. Until it does, "not enrolled" may only mean
    /// "not heard of yet", so the agent un-captures nothing.
    fn synced(&self) -> bool {
        true
    }
}

/// Enrollment held in memory and changed by [`StaticEnrollment::enroll`] and
/// [`StaticEnrollment::unenroll`].
#[derive(Debug)]
pub struct StaticEnrollment {
    pods: Mutex<BTreeMap<PodName, Enrolled>>,
    version: watch::Sender<u64>,
}

impl StaticEnrollment {
    pub fn new() -> Self {
        Self {
            pods: Mutex::default(),
            version: watch::Sender::new(0),
        }
    }

    /// Enrolls `pod` with `service_account` (replacing an earlier enrollment).
    pub fn enroll(&self, pod: PodName, service_account: impl Into<String>) {
        self.enroll_with_ips(pod, service_account, Vec::new());
    }

    /// Enrolls `pod` with `service_account` and its addresses, as the control plane's
    /// `Workload` carries them (replacing an earlier enrollment).
    pub fn enroll_with_ips(
        &self,
        pod: PodName,
        service_account: impl Into<String>,
        ips: Vec<IpAddr>,
    ) {
        let enrolled = Enrolled {
            service_account: service_account.into(),
            ips,
        };
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pod, enrolled);
        self.version.send_modify(|v| *v += 1);
    }

    pub fn unenroll(&self, pod: &PodName) {
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(pod);
        self.version.send_modify(|v| *v += 1);
    }
}

impl Default for StaticEnrollment {
    fn default() -> Self {
        Self::new()
    }
}

impl Enrollment for StaticEnrollment {
    fn enrolled(&self, pod: &PodName) -> Option<Enrolled> {
        self.pods
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pod)
            .cloned()
    }

    fn enrolled_pods(&self) -> Vec<(PodName, Enrolled)> {
        let pods = self.pods.lock().unwrap_or_else(PoisonError::into_inner);
        pods.iter().map(|(n, e)| (n.clone(), e.clone())).collect()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }
}

impl<T: Enrollment + ?Sized> Enrollment for std::sync::Arc<T> {
    fn enrolled(&self, pod: &PodName) -> Option<Enrolled> {
        (**self).enrolled(pod)
    }

    fn enrolled_pods(&self) -> Vec<(PodName, Enrolled)> {
        (**self).enrolled_pods()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        (**self).changes()
    }

    fn synced(&self) -> bool {
        (**self).synced()
    }
}
