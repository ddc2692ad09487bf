//! One identity's bookkeeping: current certificate, refresh point, in-flight CSR, backoff.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::watch;

use super::cert::WorkloadCertificate;
use super::status::{CertificateState, CertificateStatus, ManagerError, error_chain};
use crate::spiffe::SpiffeId;

/// What one issuance ended with, as the manager's waiters receive it.
pub(super) type Outcome = Result<Arc<WorkloadCertificate>, ManagerError>;

/// One identity's state. `generation` tells a CSR task whether its identity was forgotten (and
/// perhaps re-added) while it ran.
pub(super) struct Entry {
    pub(super) generation: u64,
    pub(super) current: Option<Arc<WorkloadCertificate>>,
    pub(super) refresh_at: Option<SystemTime>,
    pub(super) inflight: Option<watch::Receiver<Option<Outcome>>>,
    pub(super) failures: u32,
    pub(super) retry_at: Option<SystemTime>,
    pub(super) last_error: Option<ManagerError>,
}

impl Entry {
    pub(super) fn new(generation: u64) -> Self {
        Self {
            generation,
            current: None,
            refresh_at: None,
            inflight: None,
            failures: 0,
            retry_at: None,
            last_error: None,
        }
    }

    /// The current certificate, if it has not expired at `now`.
    pub(super) fn valid(&self, now: SystemTime) -> Option<&Arc<WorkloadCertificate>> {
        self.current.as_ref().filter(|cert| now < cert.not_after())
    }

    pub(super) fn refresh_due(&self, now: SystemTime) -> bool {
        self.refresh_at.is_some_and(|t| now >= t)
    }

    /// No CSR in flight and not backing off.
    pub(super) fn can_attempt(&self, now: SystemTime) -> bool {
        self.inflight.is_none() && self.retry_at.is_none_or(|t| now >= t)
    }

    pub(super) fn status(&self, identity: &SpiffeId, now: SystemTime) -> CertificateStatus {
        let state = match (self.valid(now), &self.inflight, &self.last_error) {
            (Some(_), _, _) => CertificateState::Available,
            (None, Some(_), _) => CertificateState::Pending,
            (None, None, Some(err)) => CertificateState::Failed(error_chain(err)),
            (None, None, None) if self.current.is_some() => CertificateState::Expired,
            (None, None, None) => CertificateState::Pending,
        };
        CertificateStatus {
            identity: identity.clone(),
            state,
            serial: self.current.as_ref().map(|c| c.serial().to_owned()),
            not_before: self.current.as_ref().map(|c| c.not_before()),
            not_after: self.current.as_ref().map(|c| c.not_after()),
            refresh_at: self.refresh_at,
            refreshing: self.inflight.is_some(),
            failures: self.failures,
            last_error: self.last_error.as_ref().map(|e| error_chain(e)),
        }
    }
}
