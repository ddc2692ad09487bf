//! A mesh on one machine, with no Kubernetes: `ambit demo`, and the harness of the namespace
//! end-to-end tests and of the data-path benchmarks; the one way to run a local mesh.
//!
//! - [`cluster`]: the namespaces and pods a local mesh has, as manifests for the control plane.
//! - [`mesh`]: [`LocalMesh`], the composition: the control plane, and per node a capture agent
//!   and an in-pod node proxy, as processes of the `ambit` binary ([`process`]); pods created in
//!   the order a kubelet and container runtime create them.
//! - [`demo`]: `ambit demo`, a [`LocalMesh`] with two namespaces' applications ([`workloads`])
//!   and the FLOWS table and verdict read from the node proxies' metrics.
//! - [`topology`]: pods as network namespaces, each with an `eth0` on one bridge (the "wire"),
//!   built with iproute2 inside namespaces this process creates: nothing on the host changes.
//! - [`ztunnel`]: a stock ztunnel (given by the caller) as some nodes' proxy, each in a network
//!   namespace of its own, for side-by-side measurements.
//! - [`userns`]: re-running the current program inside a user namespace when it is not root,
//!   so all of the above needs no privileges.
//!
//! Invariant: everything created here is torn down when its owner is dropped (pods' holder
//! processes are killed; namespaces vanish with their last holder).

pub mod cluster;
pub mod demo;
pub mod http;
pub mod mesh;
pub mod process;
pub mod topology;
pub mod userns;
pub mod workloads;
pub mod ztunnel;

pub use cluster::{Cluster, Namespace, Pod};
pub use mesh::{LocalMesh, MeshError, Options};
