//! Reaching the control plane over gRPC: TLS channels and the CA client.
//!
//! [`CaClient`] is the node proxy's [`CertificateSigner`]: it calls
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` with a bearer token and names the
//! workload identity it wants in the request metadata (`ImpersonatedIdentity`), exactly as
//! ztunnel does, so it works against istiod as well as `ambit control`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::ca::IstioCertificateRequest;
use ambit_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use hyper_util::rt::TokioIo;
use prost_types::{Struct, Value, value::Kind};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Request};

use crate::manager::{CertificateSigner, SignError};
use crate::spiffe::SpiffeId;

/// Request metadata key naming the identity a node proxy asks for.
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";

/// How long one gRPC call to the CA may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors building a channel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    #[error("{0:?} is not a valid endpoint address")]
    BadAddress(String),
    #[error("{0:?} is not a valid TLS server name")]
    BadServerName(String),
}

/// A lazily connecting channel to `addr` (`host:port`) over TLS with `config`, verifying the
/// server as `server_name` (e.g. `istiod.istio-system.svc`).
pub fn tls_channel(
    addr: &str,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<Channel, ChannelError> {
    let endpoint = endpoint(addr)?;
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| ChannelError::BadServerName(server_name.to_owned()))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let connect = tower::service_fn(move |uri: Uri| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let authority = uri
                .authority()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_default();
            let tcp = tokio::net::TcpStream::connect(authority).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    Ok(endpoint.connect_with_connector_lazy(connect))
}

/// A lazily connecting plaintext channel to `addr` (`host:port`), for loopback use only.
pub fn plaintext_channel(addr: &str) -> Result<Channel, ChannelError> {
    Ok(endpoint(addr)?.connect_lazy())
}

fn endpoint(addr: &str) -> Result<Endpoint, ChannelError> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| e.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true))
        .map_err(|_| ChannelError::BadAddress(addr.to_owned()))
}

/// The gRPC CA client.
#[derive(Clone)]
pub struct CaClient {
    client: IstioCertificateServiceClient<Channel>,
    token: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    ttl: Duration,
}

impl CaClient {
    /// Calls the CA on `channel`; `token` is read on every call (projected tokens rotate).
    pub fn new(
        channel: Channel,
        token: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            client: IstioCertificateServiceClient::new(channel),
            token: Arc::new(token),
            ttl: Duration::from_secs(24 * 3600),
        }
    }

    /// The lifetime asked for (the CA may clamp it).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

impl fmt::Debug for CaClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaClient")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl CertificateSigner for CaClient {
    async fn sign(&self, csr_pem: String, identity: &SpiffeId) -> Result<Vec<String>, SignError> {
        let metadata = Struct {
            fields: [(
                IMPERSONATED_IDENTITY.to_owned(),
                Value {
                    kind: Some(Kind::StringValue(identity.to_string())),
                },
            )]
            .into(),
        };
        let mut request = Request::new(IstioCertificateRequest {
            csr: csr_pem,
            validity_duration: i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX),
            metadata: Some(metadata),
        });
        request.set_timeout(CALL_TIMEOUT);
        if let Some(token) = (self.token)() {
            let value = format!("Bearer {token}").parse().map_err(|_| {
                SignError::Refused("the bearer token is not a valid header value".to_owned())
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut client = self.client.clone();
        match client.create_certificate(request).await {
            Ok(response) => Ok(response.into_inner().cert_chain),
            Err(status) => Err(match status.code() {
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Unknown
                | Code::Internal
                | Code::ResourceExhausted => {
                    SignError::Unavailable(format!("{:?}: {}", status.code(), status.message()))
                }
                code => SignError::Refused(format!("{code:?}: {}", status.message())),
            }),
        }
    }
}
