//! Delta xDS for Ambit: the incremental Aggregated Discovery Service, server and client.
//!
//! Istio's ambient mode distributes its configuration (WDS: `istio.workload.Address` and
//! `istio.security.Authorization` resources) over Envoy's *incremental* ADS protocol,
//! `envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`. This crate
//! implements that protocol once, generically over the resource type, for both ends:
//!
//! - [`server`]: a [`server::Store`] of resources per type URL, fed by the control plane, and an
//!   [`server::AdsServer`] that streams only what changed to each subscribed node proxy.
//! - [`client`]: an [`client::XdsClient`] that keeps one ADS stream to a control plane (ours or
//!   a stock istiod), reconnects with backoff, and hands each update to a [`client::Handler`].
//!
//! Resources are opaque to the protocol: a name, optional aliases and a `google.protobuf.Any`
//! body. [`wds`] is the one decoder of the bodies WDS carries (workloads, services,
//! authorizations), shared by the node proxy and the capture agent.
//!
//! # Invariants
//!
//! - A resource's version is a hash of its encoded body ([`Resource::version`]), so the same
//!   bytes always carry the same version, across server restarts and replicas; a client
//!   reconnecting with `initial_resource_versions` is never sent what it already has.
//! - One slow, misbehaving or malicious stream never blocks or ends another: no lock is held
//!   across an `.await`, outbound queues are bounded and pushes are coalesced.
//! - The server holds each resource once, encoded; a synced client costs it a few kilobytes
//!   (its connection and a position in the change log), not a copy of what it was sent.
//! - Nothing that arrives from the network is unwrapped; a bad request ends only its own stream
//!   with a gRPC status.

pub mod client;
mod resource;
pub mod server;
pub mod wds;

pub use resource::Resource;
