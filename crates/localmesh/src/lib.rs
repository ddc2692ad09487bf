//! A mesh on one machine, with no Kubernetes: the harness of `ambit demo`, of the namespace
//! end-to-end tests and of the data-path benchmarks.
//!
//! - [`topology`]: pods as network namespaces, each with an `eth0` on one bridge (the "wire"),
//!   built with iproute2 inside namespaces this process creates: nothing on the host changes.
//! - [`userns`]: re-running the current program inside a user namespace when it is not root,
//!   so all of the above needs no privileges.
//!
//! Invariant: everything created here is torn down when its owner is dropped (pods' holder
//! processes are killed; namespaces vanish with their last holder).

pub mod cluster;
pub mod http;
pub mod mesh;
pub mod process;
pub mod topology;
pub mod userns;
pub mod workloads;

pub use cluster::{Cluster, Namespace, Pod};
pub use mesh::{LocalMesh, MeshError, Options};
