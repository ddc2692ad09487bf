//! Where the control plane learns about the cluster.
//!
//! - [`dir`]: a directory of Kubernetes manifests, polled for changes — the embedded default for
//!   `ambit demo`, tests and single-host meshes.
//! - [`kube`]: the Kubernetes API, through watchers on the same kinds.
//!
//! Both write typed objects into one [`SharedState`](crate::SharedState), so the translation
//! cannot tell them apart.

pub mod dir;
pub mod kube;
