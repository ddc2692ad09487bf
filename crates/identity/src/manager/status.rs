//! What the manager reports about itself: errors from [`fetch`](super::CertificateManager::fetch)
//! and the per-identity status a `/config_dump` shows.

use std::error::Error;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::cert::ChainError;
use super::signer::SignError;
use crate::spiffe::SpiffeId;

/// Why no certificate could be returned for an identity.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ManagerError {
    #[error("cannot create a key or CSR for {identity}")]
    Csr {
        identity: SpiffeId,
        #[source]
        source: rcgen::Error,
    },
    #[error("the CA did not sign for {identity}")]
    Sign {
        identity: SpiffeId,
        #[source]
        source: Arc<SignError>,
    },
    #[error("the CA did not answer for {identity} within {timeout:?}")]
    Timeout {
        identity: SpiffeId,
        timeout: Duration,
    },
    #[error("the CA returned an unacceptable certificate for {identity}")]
    Rejected {
        identity: SpiffeId,
        #[source]
        source: ChainError,
    },
    /// No valid certificate and the CA is being backed off; `last_error` is why it failed.
    #[error("no valid certificate for {identity}; next CA attempt in {retry_in:?}")]
    Unavailable {
        identity: SpiffeId,
        retry_in: Duration,
        #[source]
        last_error: Option<Arc<ManagerError>>,
    },
    #[error("certificate issuance for {identity} was abandoned")]
    Aborted { identity: SpiffeId },
}

/// The state of one identity's certificate, for `/config_dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateStatus {
    pub identity: SpiffeId,
    pub state: CertificateState,
    pub serial: Option<String>,
    pub not_before: Option<SystemTime>,
    pub not_after: Option<SystemTime>,
    /// When the next refresh is due (jittered between 50% and 60% of the lifetime).
    pub refresh_at: Option<SystemTime>,
    /// A CSR is in flight (first issuance or refresh).
    pub refreshing: bool,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// The last failure with its causes, while failures persist.
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateState {
    /// A valid certificate is served (possibly while a refresh is in flight or failing).
    Available,
    /// No valid certificate yet; the first CSR is in flight.
    Pending,
    /// No valid certificate; the last attempt failed with this error (and its causes).
    Failed(String),
    /// The certificate expired and no refresh has been attempted since (nothing fetched it and
    /// no refresher runs).
    Expired,
}

/// `err` and its sources, `: `-separated, for logs and status.
pub(super) fn error_chain(err: &dyn Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
