//! Workload identity for the Ambit mesh: SPIFFE ids, the certificate authority, the node
//! proxy's certificate cache, and the TLS 1.3 configurations that carry identities on the wire.
//!
//! Where each piece sits:
//!
//! - [`spiffe`]: [`SpiffeId`] and [`TrustDomain`], parsed once at the edge
//!   (`spiffe://<td>/ns/<ns>/sa/<sa>`, Istio's form).
//! - [`ca`]: the control plane's [`CertificateAuthority`]: Istio's plug-in CA files, CSR
//!   verification, issuance of chains exactly as `IstioCertificateService/CreateCertificate`
//!   returns them (leaf first, root last).
//! - [`manager`]: the node proxy's [`CertificateManager`]: one key and certificate per workload
//!   identity, coalesced issuance, refresh at half-life, backoff while the CA fails, validation of
//!   what the CA returns. It talks to the CA through a [`CertificateSigner`]: the control
//!   plane's CA over gRPC ([`grpc::CaClient`]) or an in-process CA ([`LocalSigner`]).
//! - [`control_plane`]: the channel to the control plane that the node proxy and the capture
//!   agent share: [`ControlPlaneEndpoint`] (address, TLS against the mesh root certificate, the
//!   bearer token re-read on every use) and the gRPC channels ([`grpc`]) built from it.
//! - [`tls`]: rustls client and server configs for HBONE mTLS: TLS 1.3 only, X25519MLKEM768
//!   preferred, chains checked against the mesh roots and peers checked by SPIFFE id (never DNS
//!   name), with failures classified by [`tls::classify`].
//! - [`inspect`]: human-readable summaries of PEM files for `ambit ca inspect`.
//! - [`clock`]: wall-clock time as a dependency, so tests can issue certificates in the past.
//!
//! Invariants kept by this crate:
//!
//! - **The identity in a certificate is never the requester's choice.** The CA takes it only from
//!   its caller's authenticated `identity` argument and ignores the CSR's subject and SANs; the
//!   manager rejects a returned certificate whose SPIFFE id or public key is not what it asked
//!   for.
//! - **An expired certificate is never presented.** The manager never hands one out, and serves a
//!   still-valid one while a refresh is failing.
//! - **Private keys never leave the process and are never logged.** Workload keys are generated
//!   in memory and only ever handed to rustls as a signing key; no accessor returns key bytes,
//!   and `Debug` impls elide them. The only key written to disk is the CA key, with mode 0600.
//! - **A TLS peer is accepted only by SPIFFE id**, after full chain validation against the mesh
//!   roots: a client requires the exact expected identity, a server requires a client
//!   certificate from a trusted trust domain.

pub mod ca;
pub mod clock;
pub mod control_plane;
pub mod grpc;
pub mod inspect;
pub mod manager;
mod provider;
pub mod spiffe;
pub mod tls;
mod x509;

pub use ca::{CaConfig, CaError, CaPem, CertificateAuthority, IssuedChain};
pub use clock::{Clock, ManualClock, SystemClock};
pub use control_plane::{ControlPlaneEndpoint, ControlPlaneError, ControlPlaneTls};
pub use manager::{
    CertificateManager, CertificateSigner, CertificateState, CertificateStatus, LocalSigner,
    ManagerConfig, ManagerError, SignError, WorkloadCertificate,
};
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use x509::{CertIdentityError, rfc3339};

/// `N` bytes from the system's secure random generator, or `None` if it failed.
fn random_bytes<const N: usize>() -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    aws_lc_rs::rand::fill(&mut buf).ok()?;
    Some(buf)
}
