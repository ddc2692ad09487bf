//! The capture agent: istio-cni's role in ambient mode.
//!
//! For each enrolled pod on the node, the agent installs redirection rules inside the pod's
//! network namespace ([`rules`]) and hands the namespace to the node proxy over ZDS ([`zds`]);
//! the node proxy then opens its listeners inside it. Pods become known through the CNI plugin
//! ([`plugin`]), which the container runtime runs for every pod sandbox; whether a pod is
//! enrolled comes from an [`enrollment`] source (the control plane's decision per pod in
//! production, known before the pod has an IP). The [`agent`] ties them together, marks each
//! captured pod (`ambient.istio.io/redirection: enabled`) through a [`marker`] (the Kubernetes
//! API or a manifest directory) so the control plane advertises it over HBONE, and keeps its
//! pods across restarts; it finds the namespaces of pods that ran before it through
//! [`discovery`]. [`install`] puts the plugin on the node: the binary into the CNI bin folder
//! and the plugin into the node's CNI configuration.
//!
//! [`app::run`] is the agent's whole run, start to exit, that `ambit cni` calls.
//!
//! ```text
//! runtime ─CNI─► plugin ─unix socket─► agent ─nft/iptables─► pod netns
//!                                        ├──ZDS (netns fd)──► node proxy
//!                                        └──mark──► API server / manifests
//! control plane ─pods─► enrollment ─┘
//! ```

pub mod agent;
pub mod app;
pub mod discovery;
pub mod enrollment;
pub mod install;
pub mod marker;
pub mod plugin;
pub mod rules;
pub mod zds;

/// Fuzz target bodies: built for `cargo fuzz` and this crate's tests only.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz {
    pub use crate::install::fuzz::conflist;
    pub use crate::plugin::fuzz::cni;
    pub use crate::zds::fuzz::zds_agent;
}

pub use agent::{Agent, AgentConfig, AgentError, CniPod, DiscoveryConfig, PodStatus};
pub use enrollment::{
    ControlPlaneEnrollment, Decision, Enrolled, Enrollment, PodName, StaticEnrollment,
};
pub use marker::{MarkError, NoMarker, PodMarker};
pub use rules::{Backend, BackendChoice, Rules, RulesError};
pub use zds::{AckState, Zds, ZdsConfig, ZdsError, ZdsPod};
