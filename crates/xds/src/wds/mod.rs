//! The one WDS decoder: `istio.workload.Address` and `istio.security.Authorization` resources
//! into the data path's types, for every consumer (the node proxy's state and local-config file,
//! the capture agent's enrollment).
//!
//! - [`types`]: [`Workload`], [`Service`], [`PortMapping`], [`Protocol`].
//! - [`decode`]: [`decode_address`], [`decode_authorization`], [`ip_from_bytes`].
//! - [`error`]: [`DecodeError`] (the field at fault) and [`Rejected`] (the resource).
//!
//! Invariant: one behaviour for bad resources everywhere: a resource that does not decode is
//! rejected as a whole, with an error naming the resource and the field; the consumer leaves it
//! out, NACKs it, and applies the rest of the update. Nothing is silently skipped.

pub mod decode;
pub mod error;
pub mod types;

#[cfg(test)]
mod tests;

pub use decode::{Address, decode_address, decode_authorization, ip_from_bytes};
pub use error::{DecodeError, Rejected};
pub use types::{PortMapping, Protocol, Service, Workload};
