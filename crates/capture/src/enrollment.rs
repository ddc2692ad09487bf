//! Which pods are enrolled in the mesh: the agent captures a pod only when a source says so.
//!
//! An [`Enrollment`] answers "is this pod enrolled, and as which service account" and bumps a
//! watch whenever an answer may have changed, so the agent reconciles running pods without
//! waiting for a new CNI event. It also lists every enrolled pod with its addresses, so the
//! agent can find the network namespace of an enrolled pod whose CNI ADD it never saw (see
//! [`crate::discovery`]). Two sources exist:
//!
//! - [`StaticEnrollment`]: an in-memory set changed by method calls (tests, the demo);
//! - [`ControlPlaneEnrollment`]: the control plane's decision for every pod on this node, known
//!   from the moment the pod's object exists (before it has an IP).
//!
//! At CNI ADD the agent asks [`Enrollment::decide`], which may answer "not known yet": the
//! agent then waits a bounded time for the source and fails the ADD if it still cannot decide,
//! so a pod never starts uncaptured because its decision was late.

mod control_plane;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

use tokio::sync::watch;

pub use control_plane::{ControlPlaneEnrollment, ControlPlaneEnrollmentConfig};

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

/// The answer for one pod at CNI ADD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Enrolled(Enrolled),
    /// Not carried by the mesh; why (e.g. `istio.io/dataplane-mode=none` on the pod).
    NotEnrolled(String),
    /// The source cannot answer yet; why.
    Unknown(String),
}

/// A source of enrollment decisions.
pub trait Enrollment: Send + Sync + 'static {
    /// `Some` when `pod` is enrolled.
    fn enrolled(&self, pod: &PodName) -> Option<Enrolled>;

    /// The decision for a pod at CNI ADD; `uid` is the runtime's `K8S_POD_UID`, when it passed
    /// one, so an answer about an earlier pod of the same name is not taken for this one. A
    /// source that knows every pod answers from [`Enrollment::enrolled`].
    fn decide(&self, pod: &PodName, uid: Option<&str>) -> Decision {
        let _ = uid;
        match self.enrolled(pod) {
            Some(enrolled) => Decision::Enrolled(enrolled),
            None => Decision::NotEnrolled("not enrolled".to_owned()),
        }
    }

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

    fn decide(&self, pod: &PodName, uid: Option<&str>) -> Decision {
        (**self).decide(pod, uid)
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
