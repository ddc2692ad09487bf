//! `istio.v1.auth.IstioCertificateService/CreateCertificate`: the CA as node proxies call it.
//!
//! Every call is authenticated (bearer token) and authorized before the CSR is even parsed:
//! - a node proxy may ask for identity X (request metadata `ImpersonatedIdentity`) only if a
//!   pod running as X's service account is scheduled on the node proxy's node;
//! - a workload, or a node proxy asking for itself, gets only its own identity.
//!
//! The certificate names the identity decided here, never what the CSR asks for.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ambit_identity::{CaError, CertificateAuthority, SpiffeId};
use ambit_proto::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use ambit_proto::ca::{IstioCertificateRequest, IstioCertificateResponse};
use prost_types::value::Kind;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::SharedState;
use crate::auth::{Authenticator, Caller, bearer_token};

/// Request metadata key under which a node proxy names the identity it asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// Largest request accepted: a CSR is a few hundred bytes; 64 KiB leaves room for RSA and
/// metadata while refusing floods.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The CA service.
#[derive(Debug, Clone)]
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    authenticator: Arc<dyn Authenticator>,
    state: SharedState,
    node_proxy_account: (String, String),
    stats: Arc<CaStats>,
}

/// Counters of the CA service, for `/metrics`.
#[derive(Debug, Default)]
pub struct CaStats {
    pub issued: AtomicU64,
    pub denied: AtomicU64,
    pub failed: AtomicU64,
}

impl CaService {
    pub fn new(
        ca: Arc<CertificateAuthority>,
        authenticator: Arc<dyn Authenticator>,
        state: SharedState,
    ) -> Self {
        Self {
            ca,
            authenticator,
            state,
            node_proxy_account: ("istio-system".to_owned(), "ztunnel".to_owned()),
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<CaStats> {
        self.stats.clone()
    }

    pub fn into_service(self) -> IstioCertificateServiceServer<CaService> {
        IstioCertificateServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// The identity `caller` may have, given what it asked for.
    fn authorize(&self, caller: &Caller, requested: Option<SpiffeId>) -> Result<SpiffeId, Status> {
        let trust_domain = self.ca.trust_domain().clone();
        match (caller, requested) {
            (Caller::NodeProxy { node }, Some(identity)) => {
                if identity.trust_domain() != &trust_domain {
                    return Err(Status::permission_denied(format!(
                        "node proxy on node {node:?} may not request identity {identity}: trust domain is not {trust_domain}"
                    )));
                }
                if self.pod_on_node(node, identity.namespace(), identity.service_account()) {
                    Ok(identity)
                } else {
                    Err(Status::permission_denied(format!(
                        "node proxy on node {node:?} may not request identity {identity}: no pod with service account {}/{} is scheduled on that node",
                        identity.namespace(),
                        identity.service_account()
                    )))
                }
            }
            (Caller::NodeProxy { .. }, None) => {
                let (ns, sa) = &self.node_proxy_account;
                SpiffeId::new(trust_domain, ns, sa)
                    .map_err(|e| Status::internal(format!("node proxy identity: {e}")))
            }
            (Caller::Workload { identity }, None) => Ok(identity.clone()),
            (Caller::Workload { identity }, Some(other)) if &other == identity => Ok(other),
            (Caller::Workload { identity }, Some(other)) => {
                Err(Status::permission_denied(format!(
                    "{identity} may not request identity {other}: only node proxies may request other identities"
                )))
            }
        }
    }

    fn pod_on_node(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.state.read(|s| {
            s.pods
                .range((namespace.to_owned(), String::new())..)
                .take_while(|((ns, _), _)| ns == namespace)
                .any(|(_, pod)| {
                    let Some(spec) = pod.spec.as_ref() else {
                        return false;
                    };
                    let sa = spec
                        .service_account_name
                        .as_deref()
                        .filter(|s| !s.is_empty())
                        .unwrap_or("default");
                    let finished = pod
                        .status
                        .as_ref()
                        .and_then(|s| s.phase.as_deref())
                        .is_some_and(|p| p == "Succeeded" || p == "Failed");
                    spec.node_name.as_deref() == Some(node) && sa == service_account && !finished
                })
        })
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let token = bearer_token(request.metadata())?;
        let caller = self.authenticator.authenticate(token).await?;
        let request = request.into_inner();
        let requested = impersonated_identity(&request)?;
        let identity = self.authorize(&caller, requested).inspect_err(|e| {
            self.stats.denied.fetch_add(1, Ordering::Relaxed);
            warn!(?caller, reason = e.message(), "certificate request denied");
        })?;
        let ttl = u64::try_from(request.validity_duration)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
        let chain = self
            .ca
            .sign(request.csr.as_bytes(), &identity, ttl)
            .map_err(|e| {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                warn!(?caller, %identity, error = %e, "certificate request failed");
                ca_status(&identity, e)
            })?;
        self.stats.issued.fetch_add(1, Ordering::Relaxed);
        info!(?caller, %identity, serial = chain.serial(), "issued a workload certificate");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain.into_cert_chain(),
            root_cert: None,
        }))
    }
}

fn impersonated_identity(request: &IstioCertificateRequest) -> Result<Option<SpiffeId>, Status> {
    let Some(value) = request
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(Kind::StringValue(s)) if s.is_empty() => Ok(None),
        Some(Kind::StringValue(s)) => s.parse::<SpiffeId>().map(Some).map_err(|e| {
            Status::invalid_argument(format!(
                "metadata {IMPERSONATED_IDENTITY} {s:?} is not a SPIFFE id: {e}"
            ))
        }),
        _ => Err(Status::invalid_argument(format!(
            "metadata {IMPERSONATED_IDENTITY} must be a string"
        ))),
    }
}

fn ca_status(identity: &SpiffeId, e: CaError) -> Status {
    let message = format!("cannot issue a certificate for {identity}: {e}");
    match e {
        CaError::Expired { .. } => Status::unavailable(message),
        CaError::Generate(_) => Status::internal(message),
        _ => Status::invalid_argument(message),
    }
}
