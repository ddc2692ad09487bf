//! rustls configurations for HBONE's mutual TLS, and what went wrong when a handshake fails.
//!
//! Both ends speak TLS 1.3 only, ALPN `h2`, with one [`provider`]: aws-lc-rs restricted to TLS
//! 1.3 suites and key exchange groups X25519MLKEM768 (post-quantum hybrid), then X25519, then
//! secp256r1. Two of our peers therefore always agree on X25519MLKEM768; a stock Istio peer
//! that lacks it falls back to X25519.
//!
//! Invariants:
//! - A peer is accepted only after its chain verifies against the mesh roots (webpki: issuer,
//!   signatures, validity at the real current time, key usage), and then only by SPIFFE id:
//!   DNS names and the TLS server name are ignored, as in Istio.
//! - The client accepts a server only if the leaf's SPIFFE id is one of the expected ids; the
//!   server accepts a client only with a certificate whose SPIFFE id is in a trusted trust
//!   domain. Refusals carry [`IdentityMismatch`] / [`UntrustedPeer`] so they are told apart
//!   from chain failures ([`classify`]).
//! - Session resumption is off on both sides: every connection runs the verifiers, so an
//!   identity check can never be skipped by a resumed session.

mod control;
mod verify;

pub use control::{control_plane_client_config, control_plane_server_config};

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::CertificateDer;
use rustls::server::{
    ClientHello, NoServerSessionStorage, ResolvesServerCert, WebPkiClientVerifier,
};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, CommonState, RootCertStore, ServerConfig,
};

use crate::clock::{Clock, SystemClock};
use crate::manager::WorkloadCertificate;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::x509::{self, CertIdentityError};

/// The ALPN protocol HBONE negotiates.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("no trusted root certificates")]
    NoRoots,
    #[error("a trusted root certificate is unusable")]
    BadRoot(#[source] rustls::Error),
    #[error("a client must expect at least one peer identity")]
    NoExpectedIdentity,
    #[error("a server must trust at least one trust domain")]
    NoTrustDomains,
    #[error("cannot build the TLS configuration")]
    Config(#[source] rustls::Error),
    #[error("cannot build the client certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// What kind of handshake failure a [`rustls::Error`] is, for tests, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The peer's chain is valid but it names an identity we do not accept.
    WrongIdentity,
    /// The peer's chain does not lead to a trusted root.
    UnknownIssuer,
    /// The peer's certificate (or one in its chain) is outside its validity period.
    Expired,
    /// The peer presented no certificate where one is required.
    NoCertificate,
    Other,
}

/// A server certificate was refused because it names none of the expected identities.
#[derive(Debug, Clone)]
pub struct IdentityMismatch {
    pub expected: Vec<SpiffeId>,
    pub actual: Result<SpiffeId, CertIdentityError>,
}

/// A client certificate was refused because its identity is not in a trusted trust domain.
#[derive(Debug, Clone)]
pub struct UntrustedPeer {
    pub trust_domains: Vec<TrustDomain>,
    pub actual: Result<SpiffeId, CertIdentityError>,
}

/// A server certificate resolver that always presents one workload certificate, unless it has
/// expired by `clock`.
#[derive(Debug)]
pub struct FixedCert {
    cert: Arc<WorkloadCertificate>,
    clock: Arc<dyn Clock>,
}

pub use crate::provider::provider;

/// A client config that presents `cert` and accepts a server only if its chain verifies
/// against `roots` and its SPIFFE id is one of `expected`.
///
/// The TLS server name passed to rustls is not checked against anything; use the destination
/// IP, as ztunnel does.
pub fn client_config(
    cert: &WorkloadCertificate,
    roots: &[CertificateDer<'static>],
    expected: Vec<SpiffeId>,
) -> Result<Arc<ClientConfig>, TlsError> {
    if expected.is_empty() {
        return Err(TlsError::NoExpectedIdentity);
    }
    let provider = provider();
    let verifier = verify::ServerIdentityVerifier::new(
        Arc::new(root_store(roots)?),
        expected,
        provider.signature_verification_algorithms,
    );
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
            cert.certified_key().clone(),
        )));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A server config that presents what `resolver` picks, requires a client certificate that
/// verifies against `roots`, and accepts it only if its SPIFFE id is in one of `trust_domains`.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    roots: &[CertificateDer<'static>],
    trust_domains: Vec<TrustDomain>,
) -> Result<Arc<ServerConfig>, TlsError> {
    if trust_domains.is_empty() {
        return Err(TlsError::NoTrustDomains);
    }
    let provider = provider();
    let chain_verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(roots)?), provider.clone())
            .build()
            .map_err(TlsError::Verifier)?;
    let verifier = verify::ClientIdentityVerifier::new(chain_verifier, trust_domains);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The SPIFFE id of the peer of a completed handshake. Our verifiers have already checked it;
/// `None` only if the handshake has not completed (or the peer sent no certificate).
pub fn peer_identity(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    x509::spiffe_id_of_der(leaf).ok()
}

/// Classifies a handshake error, whether raised by our verifiers or received as an alert.
///
/// On the receiving side of an alert, `certificate_unknown` is read as a wrong identity: it is
/// the alert rustls sends for our identity refusals.
pub fn classify(err: &rustls::Error) -> HandshakeFailure {
    match err {
        rustls::Error::InvalidCertificate(cert_err) => match cert_err {
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => HandshakeFailure::Expired,
            // A chain whose issuer name matches a trusted root but whose signature does not
            // verify is as untrusted as one naming an unknown issuer.
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                HandshakeFailure::UnknownIssuer
            }
            CertificateError::Other(other)
                if other.0.downcast_ref::<IdentityMismatch>().is_some()
                    || other.0.downcast_ref::<UntrustedPeer>().is_some() =>
            {
                HandshakeFailure::WrongIdentity
            }
            _ => HandshakeFailure::Other,
        },
        rustls::Error::NoCertificatesPresented => HandshakeFailure::NoCertificate,
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::UnknownCA => HandshakeFailure::UnknownIssuer,
            AlertDescription::CertificateExpired => HandshakeFailure::Expired,
            AlertDescription::CertificateRequired => HandshakeFailure::NoCertificate,
            AlertDescription::CertificateUnknown => HandshakeFailure::WrongIdentity,
            _ => HandshakeFailure::Other,
        },
        _ => HandshakeFailure::Other,
    }
}

/// [`classify`] for the `io::Error` that tokio-rustls returns, which wraps the rustls error.
pub fn classify_io(err: &io::Error) -> HandshakeFailure {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .map_or(HandshakeFailure::Other, classify)
}

fn root_store(roots: &[CertificateDer<'static>]) -> Result<RootCertStore, TlsError> {
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).map_err(TlsError::BadRoot)?;
    }
    Ok(store)
}

// === impl FixedCert ===

impl FixedCert {
    /// Presents `cert` until it expires by `clock`.
    pub fn new(cert: Arc<WorkloadCertificate>, clock: Arc<dyn Clock>) -> Self {
        Self { cert, clock }
    }

    /// Presents `cert` until it expires by the system clock.
    pub fn system(cert: Arc<WorkloadCertificate>) -> Self {
        Self::new(cert, Arc::new(SystemClock))
    }
}

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.cert.is_expired(&*self.clock) {
            tracing::warn!(identity = %self.cert.identity(), "not presenting an expired certificate");
            return None;
        }
        Some(self.cert.certified_key().clone())
    }
}

// === impl IdentityMismatch, UntrustedPeer ===

impl fmt::Display for IdentityMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let expected: Vec<&str> = self.expected.iter().map(SpiffeId::as_str).collect();
        match &self.actual {
            Ok(actual) => write!(f, "peer is {actual}, expected {}", expected.join(" or ")),
            Err(e) => write!(
                f,
                "peer names no usable identity ({e}), expected {}",
                expected.join(" or ")
            ),
        }
    }
}

impl std::error::Error for IdentityMismatch {}

impl fmt::Display for UntrustedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domains: Vec<&str> = self.trust_domains.iter().map(TrustDomain::as_str).collect();
        match &self.actual {
            Ok(actual) => write!(
                f,
                "peer {actual} is not in trust domain {}",
                domains.join(" or ")
            ),
            Err(e) => write!(
                f,
                "peer names no usable identity ({e}); trusted domains: {}",
                domains.join(", ")
            ),
        }
    }
}

impl std::error::Error for UntrustedPeer {}
