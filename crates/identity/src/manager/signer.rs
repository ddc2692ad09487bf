//! How the certificate manager reaches a CA: [`CertificateSigner`], implemented by the gRPC
//! client of `IstioCertificateService` (elsewhere) and by [`LocalSigner`] for an in-process CA.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::ca::{CaError, CertificateAuthority, IssuedChain};
use crate::spiffe::SpiffeId;

/// Something that turns a CSR into a certificate chain for an identity.
pub trait CertificateSigner: Send + Sync + 'static {
    /// Asks the CA to sign `csr_pem` for `identity`. Returns PEM certificates, leaf first and
    /// root last, as `IstioCertificateResponse.cert_chain` does. The manager validates the
    /// answer; an implementation need not.
    fn sign(
        &self,
        csr_pem: String,
        identity: &SpiffeId,
    ) -> impl Future<Output = Result<Vec<String>, SignError>> + Send;
}

/// Why a signer produced no chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The CA could not be reached or did not answer (transient: retried with backoff).
    #[error("the certificate authority is unavailable: {0}")]
    Unavailable(String),
    /// The CA answered with a refusal.
    #[error("the certificate authority refused the request: {0}")]
    Refused(String),
    /// The in-process CA refused.
    #[error("the in-process certificate authority refused the request")]
    Local(#[source] CaError),
}

/// A signer backed by an in-process [`CertificateAuthority`].
#[derive(Debug, Clone)]
pub struct LocalSigner {
    ca: Arc<CertificateAuthority>,
    ttl: Option<Duration>,
}

impl LocalSigner {
    /// Signs with `ca`, asking for its default lifetime.
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        Self { ca, ttl: None }
    }

    /// Asks for `ttl` (the CA clamps it to its maximum).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.ca
    }
}

impl CertificateSigner for LocalSigner {
    async fn sign(&self, csr_pem: String, identity: &SpiffeId) -> Result<Vec<String>, SignError> {
        self.ca
            .sign(csr_pem.as_bytes(), identity, self.ttl)
            .map(IssuedChain::into_cert_chain)
            .map_err(SignError::Local)
    }
}

impl<S: CertificateSigner> CertificateSigner for Arc<S> {
    fn sign(
        &self,
        csr_pem: String,
        identity: &SpiffeId,
    ) -> impl Future<Output = Result<Vec<String>, SignError>> + Send {
        (**self).sign(csr_pem, identity)
    }
}
