//! The workload certificates a node proxy speaks with, and the TLS configs built from them.
//!
//! [`Certificates`] wraps the identity crate's [`CertificateManager`] with the mesh roots and
//! trust domains, and hands out rustls configs: a client config per outbound connection (the
//! source workload's certificate, the destination's expected identity) and a server config per
//! destination identity (cached until its certificate changes).
//!
//! Invariants: the proxy presents a workload's certificate, never one of its own; a config is
//! only built from a certificate the manager returned, which is never expired.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ambit_identity::grpc::CaClient;
use ambit_identity::manager::{CertificateManager, CertificateSigner, ManagerConfig};
use ambit_identity::tls::{self, FixedCert, TlsError};
use ambit_identity::{
    CertificateStatus, LocalSigner, ManagerError, SignError, SpiffeId, SystemClock, TrustDomain,
    WorkloadCertificate,
};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ServerConfig};

/// How often certificates nobody fetched lately are checked for refresh.
const REFRESH_PERIOD: Duration = Duration::from_secs(30);

/// Where CSRs go: the control plane's CA over gRPC, or an in-process CA.
#[derive(Debug, Clone)]
pub enum NodeSigner {
    Ca(CaClient),
    Local(LocalSigner),
}

/// Why a certificate or TLS config is unavailable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    #[error("no certificate for {0}")]
    Fetch(SpiffeId, #[source] ManagerError),
    #[error("cannot build the TLS configuration")]
    Tls(#[from] TlsError),
}

/// Certificates per workload identity plus the trust they are checked against. Cheap to clone.
#[derive(Clone)]
pub struct Certificates {
    manager: CertificateManager<NodeSigner>,
    roots: Arc<[CertificateDer<'static>]>,
    trust_domains: Vec<TrustDomain>,
    servers: Arc<Mutex<HashMap<SpiffeId, ServerEntry>>>,
}

/// A server config and the certificate it was built with.
struct ServerEntry {
    cert: Arc<WorkloadCertificate>,
    config: Arc<ServerConfig>,
}

// === impl NodeSigner ===

impl CertificateSigner for NodeSigner {
    async fn sign(&self, csr_pem: String, identity: &SpiffeId) -> Result<Vec<String>, SignError> {
        match self {
            Self::Ca(client) => client.sign(csr_pem, identity).await,
            Self::Local(local) => local.sign(csr_pem, identity).await,
        }
    }
}

// === impl Certificates ===

impl Certificates {
    /// Certificates from `signer`, checked against `roots`; peers are accepted from
    /// `trust_domains`. Spawns the background refresher (needs a tokio runtime).
    pub fn new(
        signer: NodeSigner,
        roots: Vec<CertificateDer<'static>>,
        trust_domains: Vec<TrustDomain>,
    ) -> Self {
        let manager =
            CertificateManager::new(signer, Arc::new(SystemClock), ManagerConfig::default());
        // The refresher holds a weak reference and ends when the manager is dropped.
        drop(manager.spawn_refresher(REFRESH_PERIOD));
        Self {
            manager,
            roots: roots.into(),
            trust_domains,
            servers: Arc::default(),
        }
    }

    /// A valid certificate for `identity` (cached, or issued now).
    pub async fn fetch(&self, identity: &SpiffeId) -> Result<Arc<WorkloadCertificate>, CertError> {
        self.manager
            .fetch(identity)
            .await
            .map_err(|e| CertError::Fetch(identity.clone(), e))
    }

    /// A client config presenting `cert` and accepting only a server named in `expected`.
    pub fn client_config(
        &self,
        cert: &WorkloadCertificate,
        expected: Vec<SpiffeId>,
    ) -> Result<Arc<ClientConfig>, CertError> {
        Ok(tls::client_config(cert, &self.roots, expected)?)
    }

    /// A server config presenting `identity`'s certificate and requiring a client certificate
    /// from a trusted trust domain. Reused while the certificate stays the same.
    pub async fn server_config(&self, identity: &SpiffeId) -> Result<Arc<ServerConfig>, CertError> {
        let cert = self.fetch(identity).await?;
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = servers.get(identity)
            && Arc::ptr_eq(&entry.cert, &cert)
        {
            return Ok(entry.config.clone());
        }
        let resolver = Arc::new(FixedCert::system(cert.clone()));
        let config = tls::server_config(resolver, &self.roots, self.trust_domains.clone())?;
        servers.insert(
            identity.clone(),
            ServerEntry {
                cert,
                config: config.clone(),
            },
        );
        Ok(config)
    }

    /// Forgets `identity` (its last workload left the node).
    pub fn forget(&self, identity: &SpiffeId) {
        self.manager.forget(identity);
        self.servers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(identity);
    }

    /// Every identity's certificate state, for `/config_dump`.
    pub fn snapshot(&self) -> Vec<CertificateStatus> {
        self.manager.snapshot()
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("manager", &self.manager)
            .field("roots", &self.roots.len())
            .field("trust_domains", &self.trust_domains)
            .finish_non_exhaustive()
    }
}
