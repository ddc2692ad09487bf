//! The Ambit node proxy: ztunnel's role.
//!
//! Carries every TCP connection of enrolled pods over HBONE (HTTP/2 CONNECT inside mutual TLS
//! 1.3) between node proxies, enforces authorization at the destination, and makes every
//! connection visible through access logs and Istio's metrics.
//!
//! Invariants:
//! - The source pod's certificate is presented on the data path, never the proxy's own.
//! - No byte reaches an application before the peer's identity is verified and authorized.
//! - Configuration comes only from the control plane (or a local file); on losing it the proxy
//!   keeps serving its last known state and cached certificates.
//!
//! Where things are (data path):
//!
//! - [`app`]: the run, start to exit: the proxy, its servers, shutdown on SIGTERM, SIGINT or
//!   `/quitquitquit`, and the drain (what the binaries call).
//! - [`config`]: [`NodeConfig`], what `ambit node` is told.
//! - [`proxy`]: [`NodeProxy`] (start, drain), the listeners, the outbound and inbound
//!   passthrough paths, and [`proxy::authorize`], where policy is decided.
//! - [`hbone`]: HBONE client, connection pool, the 15008 server, tunnel streams and headers.
//! - [`socket`], [`scope`], [`drain`], [`conn`]: what every path shares: how sockets are made
//!   (in which network namespace), graceful shutdown, and what is known about a connection.
//! - [`inpod`]: in-pod mode: the ZDS client and the listener sets inside each pod's network
//!   namespace.
//! - [`state`]: [`ProxyState`], the mesh as WDS (or [`local_config`]) describes it, and the
//!   JSON snapshots behind `/config_dump`.
//! - [`certs`]: workload certificates and the TLS configs built from them.
//! - [`control`]: the WDS client (the channel to the control plane is `ambit_identity`'s).
//! - [`telemetry`], [`admin`]: access logs, metrics, and the admin/stats/readiness servers.

pub mod admin;
pub mod app;
pub mod telemetry;

// Data path.
pub mod certs;
pub mod config;
pub mod conn;
pub mod control;
mod copy;
pub mod drain;
/// Fuzz target bodies: built for `cargo fuzz` and this crate's tests only.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz;
pub mod hbone;
pub mod inpod;
pub mod local_config;
pub mod proxy;
pub mod scope;
pub mod socket;
pub mod state;

pub use config::NodeConfig;
pub use proxy::{AdminView, NodeProxy, StartError};
pub use state::ProxyState;
