//! The Ambit control plane: istiod's ambient-mode subset.
//!
//! Sources (the Kubernetes API or a directory of manifests) fill a [`SharedState`]; a translator
//! turns it into Istio's WDS resources and hands them to the delta-xDS server; the CA service
//! signs workload certificates for node proxies entitled to them.
//!
//! [`app::run`] is the whole run, start to exit, that `ambit control` calls.
//!
//! Invariants:
//! - The served state only changes through the translation of the sources' objects; a bad
//!   manifest or a hostile client never removes what is already served.
//! - A certificate is issued for identity X only to a caller entitled to X (its own identity,
//!   or a node proxy on whose node a pod of X runs).

pub mod app;
pub mod auth;
pub mod ca_bootstrap;
pub mod ca_service;
mod debug;
mod grpc_listener;
mod http;
pub mod readiness;
mod resources;
pub mod root_publisher;
mod run;
mod shared;
mod snapshot_view;
pub mod source;
pub mod token_review;

pub use readiness::Readiness;
pub use run::{BoundAddrs, ControlConfig, ControlPlane, SourceConfig, StartError};
pub use shared::SharedState;
