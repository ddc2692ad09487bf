//! The node proxy's certificate cache: one key and certificate per workload identity.
//!
//! The node proxy asks [`CertificateManager::fetch`] for the certificate of the identity it is
//! about to speak for (the source workload's on outbound, the destination's on inbound).
//!
//! Model:
//! - **Coalescing.** Each identity has at most one CSR in flight; every concurrent `fetch`
//!   waits for that one. The CSR runs in its own task, so a caller giving up (a dropped
//!   connection) does not cancel it for the others.
//! - **Refresh.** After each issuance a refresh point is drawn uniformly in 50–60% of the
//!   certificate's lifetime (jitter spreads a node's CSRs). Past it, `fetch` still returns the
//!   current certificate at once and starts the refresh in the background. Identities nobody
//!   fetches are refreshed by [`CertificateManager::refresh_due`], which
//!   [`CertificateManager::spawn_refresher`] calls periodically.
//! - **Failure.** A failed attempt backs the identity off exponentially (1 s doubling to 60 s by
//!   default). Meanwhile a still-valid certificate keeps being served; without one, `fetch`
//!   fails fast with [`ManagerError::Unavailable`] instead of hammering the CA.
//! - **Each issuance uses a fresh ECDSA P-256 key**, generated in process and held only by
//!   rustls afterwards.
//!
//! Invariants: `fetch` never returns an expired certificate; a certificate is accepted only if
//! it names the requested identity and carries our key (see [`WorkloadCertificate`]); all time
//! comes from the manager's [`Clock`].

mod cert;
mod entry;
mod signer;
mod status;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use cert::{ChainError, WorkloadCertificate};
pub use signer::{CertificateSigner, LocalSigner, SignError};
pub use status::{CertificateState, CertificateStatus, ManagerError};

use self::cert::PendingKey;
use self::entry::{Entry, Outcome};
use self::status::error_chain;
use crate::clock::Clock;
use crate::spiffe::SpiffeId;

/// Tuning of a [`CertificateManager`].
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Earliest refresh point, as a fraction of the certificate's lifetime.
    pub refresh_min: f64,
    /// Latest refresh point, as a fraction of the certificate's lifetime.
    pub refresh_max: f64,
    /// Wait after the first failure; doubles with each further failure.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// How long one CSR may take before it counts as failed.
    pub sign_timeout: Duration,
}

/// Certificates for the workload identities a node proxy speaks for. Cheap to clone (shared).
pub struct CertificateManager<S> {
    inner: Arc<Inner<S>>,
}

struct Inner<S> {
    signer: S,
    clock: Arc<dyn Clock>,
    config: ManagerConfig,
    entries: Mutex<HashMap<SpiffeId, Entry>>,
    generations: AtomicU64,
}

/// A running CSR. Its outcome is recorded in the entry *before* waiters are told, so a waiter
/// never observes a stale in-flight mark. Dropped unfinished (a panicking signer, runtime
/// shutdown), it records and announces [`ManagerError::Aborted`] instead.
struct IssueTask<S: CertificateSigner> {
    inner: Arc<Inner<S>>,
    identity: SpiffeId,
    generation: u64,
    tx: watch::Sender<Option<Outcome>>,
    done: bool,
}

// === impl ManagerConfig ===

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            refresh_min: 0.5,
            refresh_max: 0.6,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            sign_timeout: Duration::from_secs(10),
        }
    }
}

// === impl CertificateManager ===

impl<S: CertificateSigner> CertificateManager<S> {
    pub fn new(signer: S, clock: Arc<dyn Clock>, config: ManagerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                signer,
                clock,
                config,
                entries: Mutex::new(HashMap::new()),
                generations: AtomicU64::new(0),
            }),
        }
    }

    /// A valid certificate for `identity`: the cached one, or a newly issued one. Concurrent
    /// calls for one identity share one CSR. Never returns an expired certificate.
    pub async fn fetch(
        &self,
        identity: &SpiffeId,
    ) -> Result<Arc<WorkloadCertificate>, ManagerError> {
        let rx = {
            let mut entries = self.inner.lock();
            let now = self.inner.clock.now();
            let entry = entries
                .entry(identity.clone())
                .or_insert_with(|| Entry::new(self.inner.next_generation()));
            if let Some(cert) = entry.valid(now).cloned() {
                if entry.refresh_due(now) && entry.can_attempt(now) {
                    tracing::debug!(%identity, "refreshing certificate in the background");
                    self.inner.start(identity, entry);
                }
                return Ok(cert);
            }
            if let Some(rx) = &entry.inflight {
                rx.clone()
            } else if let Some(retry_at) = entry.retry_at.filter(|t| now < *t) {
                return Err(ManagerError::Unavailable {
                    identity: identity.clone(),
                    retry_in: retry_at.duration_since(now).unwrap_or_default(),
                    last_error: entry.last_error.clone().map(Arc::new),
                });
            } else {
                self.inner.start(identity, entry)
            }
        };
        wait(identity, rx).await
    }

    /// The cached certificate for `identity` if it is still valid; never contacts the CA. For
    /// synchronous callers such as a rustls certificate resolver.
    pub fn cached(&self, identity: &SpiffeId) -> Option<Arc<WorkloadCertificate>> {
        let now = self.inner.clock.now();
        self.inner.lock().get(identity)?.valid(now).cloned()
    }

    /// Drops `identity` (its workload left the node). An in-flight CSR finishes unobserved.
    /// Returns whether the identity was known.
    pub fn forget(&self, identity: &SpiffeId) -> bool {
        self.inner.lock().remove(identity).is_some()
    }

    /// Starts a CSR for every identity past its refresh point (or without a valid certificate)
    /// whose backoff allows it, and waits for those and any already in flight. Returns how many
    /// CSRs it waited for.
    pub async fn refresh_due(&self) -> usize {
        let pending: Vec<_> = {
            let mut entries = self.inner.lock();
            let now = self.inner.clock.now();
            let mut pending = Vec::new();
            for (identity, entry) in entries.iter_mut() {
                if let Some(rx) = &entry.inflight {
                    pending.push((identity.clone(), rx.clone()));
                } else if (entry.valid(now).is_none() || entry.refresh_due(now))
                    && entry.can_attempt(now)
                {
                    pending.push((identity.clone(), self.inner.start(identity, entry)));
                }
            }
            pending
        };
        let count = pending.len();
        for (identity, rx) in pending {
            // Outcomes are recorded by the task; here we only wait for them.
            let _ = wait(&identity, rx).await;
        }
        count
    }

    /// Runs [`Self::refresh_due`] every `period` until the manager is dropped or the handle is
    /// aborted.
    pub fn spawn_refresher(&self, period: Duration) -> JoinHandle<()> {
        let inner: Weak<Inner<S>> = Arc::downgrade(&self.inner);
        // `interval` panics on a zero period.
        let period = period.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(inner) = inner.upgrade() else { break };
                CertificateManager { inner }.refresh_due().await;
            }
        })
    }

    /// Every known identity's state, sorted by identity.
    pub fn snapshot(&self) -> Vec<CertificateStatus> {
        let entries = self.inner.lock();
        let now = self.inner.clock.now();
        let mut out: Vec<_> = entries
            .iter()
            .map(|(identity, entry)| entry.status(identity, now))
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }
}

impl<S> Clone for CertificateManager<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S> fmt::Debug for CertificateManager<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateManager")
            .field("identities", &self.inner.lock().len())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

async fn wait(identity: &SpiffeId, mut rx: watch::Receiver<Option<Outcome>>) -> Outcome {
    let aborted = || ManagerError::Aborted {
        identity: identity.clone(),
    };
    match rx.wait_for(Option::is_some).await {
        Ok(outcome) => outcome.clone().unwrap_or_else(|| Err(aborted())),
        Err(_) => Err(aborted()),
    }
}

// === impl Inner ===

impl<S> Inner<S> {
    fn lock(&self) -> MutexGuard<'_, HashMap<SpiffeId, Entry>> {
        // No code panics while holding the lock, but if it did the map is still consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed)
    }
}

impl<S: CertificateSigner> Inner<S> {
    /// Marks `entry` in flight and spawns its CSR task.
    fn start(
        self: &Arc<Self>,
        identity: &SpiffeId,
        entry: &mut Entry,
    ) -> watch::Receiver<Option<Outcome>> {
        let (tx, rx) = watch::channel(None);
        entry.inflight = Some(rx.clone());
        let task = IssueTask {
            inner: Arc::clone(self),
            identity: identity.clone(),
            generation: entry.generation,
            tx,
            done: false,
        };
        tokio::spawn(task.run());
        rx
    }

    async fn issue(&self, identity: &SpiffeId) -> Outcome {
        let csr_error = |source| ManagerError::Csr {
            identity: identity.clone(),
            source,
        };
        let key = PendingKey::generate().map_err(csr_error)?;
        let csr = key.csr_pem(identity).map_err(csr_error)?;
        let timeout = self.config.sign_timeout;
        let chain = match tokio::time::timeout(timeout, self.signer.sign(csr, identity)).await {
            Ok(Ok(chain)) => chain,
            Ok(Err(e)) => {
                return Err(ManagerError::Sign {
                    identity: identity.clone(),
                    source: Arc::new(e),
                });
            }
            Err(_) => {
                return Err(ManagerError::Timeout {
                    identity: identity.clone(),
                    timeout,
                });
            }
        };
        let cert = key
            .into_certificate(identity, &chain, self.clock.now())
            .map_err(|source| ManagerError::Rejected {
                identity: identity.clone(),
                source,
            })?;
        Ok(Arc::new(cert))
    }

    /// Records the outcome of the CSR task of `generation`, unless the identity was forgotten.
    fn complete(&self, identity: &SpiffeId, generation: u64, outcome: &Outcome) {
        let mut entries = self.lock();
        let Some(entry) = entries
            .get_mut(identity)
            .filter(|e| e.generation == generation)
        else {
            return;
        };
        let now = self.clock.now();
        entry.inflight = None;
        match outcome {
            Ok(cert) => {
                let refresh_at = self.refresh_point(cert);
                tracing::info!(%identity, serial = cert.serial(), not_after = %crate::x509::rfc3339(cert.not_after()), "certificate issued");
                entry.current = Some(Arc::clone(cert));
                entry.refresh_at = Some(refresh_at);
                entry.failures = 0;
                entry.retry_at = None;
                entry.last_error = None;
            }
            Err(err) => {
                entry.failures = entry.failures.saturating_add(1);
                let backoff = self.backoff(entry.failures);
                entry.retry_at = now.checked_add(backoff);
                entry.last_error = Some(err.clone());
                tracing::warn!(%identity, error = %error_chain(err), retry_in = ?backoff, serving_valid_cert = entry.valid(now).is_some(), "certificate issuance failed");
            }
        }
    }

    /// A point drawn uniformly between `refresh_min` and `refresh_max` of the lifetime.
    fn refresh_point(&self, cert: &WorkloadCertificate) -> SystemTime {
        let lifetime = cert
            .not_after()
            .duration_since(cert.not_before())
            .unwrap_or_default();
        let (lo, hi) = (self.config.refresh_min, self.config.refresh_max);
        let uniform = crate::random_bytes::<8>()
            .map_or(0.5, |b| u64::from_le_bytes(b) as f64 / u64::MAX as f64);
        let fraction = (lo + (hi - lo) * uniform).clamp(0.0, 1.0);
        let offset =
            Duration::try_from_secs_f64(lifetime.as_secs_f64() * fraction).unwrap_or(lifetime / 2);
        cert.not_before()
            .checked_add(offset)
            .unwrap_or(cert.not_after())
    }

    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.config
            .initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.config.max_backoff)
    }
}

// === impl IssueTask ===

impl<S: CertificateSigner> IssueTask<S> {
    async fn run(mut self) {
        let outcome = self.inner.issue(&self.identity).await;
        self.finish(outcome);
    }

    fn finish(&mut self, outcome: Outcome) {
        self.done = true;
        self.inner
            .complete(&self.identity, self.generation, &outcome);
        self.tx.send_replace(Some(outcome));
    }
}

impl<S: CertificateSigner> Drop for IssueTask<S> {
    fn drop(&mut self) {
        if !self.done {
            let identity = self.identity.clone();
            self.finish(Err(ManagerError::Aborted { identity }));
        }
    }
}
