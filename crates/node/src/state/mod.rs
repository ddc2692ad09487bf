//! The node proxy's view of the mesh: workloads, services and policies, indexed for the data
//! path, plus read-only snapshots for the admin server's `/config_dump`.
//!
//! [`ProxyState`] ([`proxy_state`]) is filled by the WDS [`handler`] (or once from a local file) and read by
//! every connection. Lookups take a read lock for a few hash probes and never await while
//! holding it; updates bump a version that listeners and on-demand lookups watch.
//!
//! Invariants:
//! - The indices always agree with the maps: replacing or removing a workload drops its old
//!   addresses first, and an address index entry is removed only by the workload that owns it.
//! - A resource that failed to decode never enters the state (see [`ambit_xds::wds`]).

pub mod handler;
mod mesh;
mod pod;
pub mod proxy_state;
mod snapshot;
#[cfg(test)]
pub(crate) mod testing;
mod upstream;

pub use ambit_xds::wds::{DecodeError, PortMapping, Protocol, Service, Workload};

pub use self::mesh::MeshState;
pub use self::pod::PodInfo;
pub use self::proxy_state::{NodeInfo, ProxyState};
pub use self::upstream::{ResolveError, Upstream};
