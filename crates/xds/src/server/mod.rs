//! The delta ADS server: serves a [`Store`] to any number of xDS clients.
//!
//! The control plane fills a [`Store`] and hands an [`AdsServer`] (as a service for a tonic
//! server, from [`AdsServer::into_service`]) to its gRPC server on 15012 (TLS + bearer token)
//! and 15010 (plaintext, local use). Each `DeltaAggregatedResources` stream gets its own task
//! that waits for the store to change and sends its client one `DeltaDiscoveryResponse` per
//! type with only what changed for that client.
//!
//! # Memory
//!
//! The store holds each resource once, already encoded; responses share those buffers and
//! reach HTTP/2 in small chunks ([`AdsService`]). An up-to-date wildcard client costs its
//! stream a position in the store's change log rather than a record per resource. So a client
//! costs the server a few kilobytes once synced, whatever the size of the mesh.
//!
//! # Invariants
//!
//! - A stream is authenticated ([`Authenticator`]) before anything is read from or sent to it.
//! - A stream's outbound queue is bounded ([`OUTBOUND_QUEUE`]); a stream that cannot send does
//!   not compute diffs, and when it can, it diffs against the latest store state. A slow client
//!   therefore costs one diff's worth of memory, however many generations it missed, plus the
//!   change log behind it up to a bound, past which it lets go of the log, plus at most a few
//!   HTTP/2 frames of body waiting for it.
//! - A NACK is logged and counted, never fatal; a malformed or oversized request ends only its
//!   own stream, with a gRPC status.
//! - State-of-the-world ADS (`StreamAggregatedResources`) is refused as unimplemented: Istio's
//!   ambient mode uses the delta protocol only.

mod ads;
mod grpc;
mod log;
mod store;
mod stream;
mod subscription;
mod wire;

pub use self::ads::{
    AdsServer, AllowAll, AuthFuture, Authenticator, ClientId, MAX_REQUEST_BYTES, OUTBOUND_QUEUE,
    ServerStats,
};
pub use self::grpc::AdsService;
pub use self::store::Store;
pub use crate::Resource;
