//! The mesh model: Kubernetes objects in, Istio WDS resources out.
//!
//! Sources (the Kubernetes API, or a directory of manifests) feed typed [`Object`]s into a
//! [`ClusterState`]; the translation turns that state into the `istio.workload.Address` and
//! `istio.security.Authorization` resources the control plane serves. What runs locally is what
//! runs in a cluster: both sources share this one translation.
//!
//! Invariants:
//! - A workload's identity is derived from its pod's service account and the mesh trust domain,
//!   never from anything else in the manifest.
//! - Policy fields this version cannot enforce are kept (see [`istio`]) so the translation can fail
//!   closed on them rather than drop them.

pub mod enroll;
/// Fuzz target bodies: built for `cargo fuzz` and this crate's tests only.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz;
pub mod istio;
pub mod manifest;
pub mod manifest_dir;
pub mod objects;
pub mod state;
pub mod translate;

pub use objects::{Kind, Object, ObjectError, ObjectKey};
pub use state::ClusterState;
pub use translate::{
    AddressChanges, MeshConfig, MeshSnapshot, PodReport, PolicyIssue, retranslate, translate,
};
