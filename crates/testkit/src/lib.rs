//! Test harness shared by Ambit's integration tests.
//!
//! Tests in this repository use real sockets, real TLS and (in later tiers) real network
//! namespaces. This crate holds the small pieces every such test needs:
//!
//! - [`eventually!`]: poll a condition until it holds or a deadline passes, instead of sleeping
//!   for a guessed duration. A timeout fails the test with the last observed value.
//! - [`corpus`]: replays a fuzz target's committed seeds (`fuzz/corpus/<target>/`) through its
//!   body as an ordinary test.
//! - [`LoopbackAddrs`]: distinct `127.x.y.z` addresses, so several "workloads" in one process
//!   are told apart by source address exactly as the node proxy's shared mode does.
//!
//! - [`shared_mesh`]: one mesh as Kubernetes manifests and the WDS every control-plane source must
//!   serve for it.
//!
//! Mesh builders (`Mesh::loopback()…`) join this crate as the control plane and node proxy land.

pub mod corpus;
mod eventually;
mod loopback;
pub mod shared_mesh;

pub use eventually::{DEFAULT_TIMEOUT, poll_until};
pub use loopback::LoopbackAddrs;
