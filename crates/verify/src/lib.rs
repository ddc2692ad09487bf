//! Proof that enrolled traffic is mutual TLS: the library behind `ambit verify`.
//!
//! Two kinds of evidence are gathered and judged ([`report`]):
//!
//! - **the wire**: packets captured on the pods' interfaces with a packet socket of our own
//!   ([`capture`], no tcpdump: it also runs as root of a user namespace), written to and read
//!   back from a pcap file ([`pcap`]), put back together into TCP connections and classified
//!   direction by direction as TLS records or plaintext ([`flows`]);
//! - **the node proxies**: their `/config_dump` (which workloads exist, which are enrolled,
//!   their identities), their Istio L4 metrics and their access logs ([`admin`]).
//!
//! [`run::gather`] is `ambit verify`'s whole run without its flags.
//!
//! The report lists every kind of connection with its source and destination, identities,
//! whether it was mutual TLS and how many bytes it carried; it fails when an enrolled workload's
//! connection crossed the wire in plaintext. Flows to or from addresses that are not workloads
//! (node addresses such as the kubelet's, the outside world) are named as leaving the mesh and
//! never counted as secure.

pub mod admin;
pub mod capture;
pub mod flows;
pub mod pcap;
pub mod report;
pub mod run;

/// Fuzz target bodies: built for `cargo fuzz` and this crate's tests only.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz;

#[cfg(test)]
mod testing;
