//! Reaching the control plane: gRPC channels, the WDS client and the CA signer.
//!
//! The node proxy talks to `ambit control` or istiod exactly as ztunnel does: delta ADS on one
//! stream subscribed to `istio.workload.Address` and `istio.security.Authorization` (wildcard,
//! plus on-demand names), and `IstioCertificateService/CreateCertificate` naming each workload
//! identity in `ImpersonatedIdentity`. Both carry the node's bearer token, read from its file
//! on every (re)connect so a rotated token is picked up.
//!
//! [`channel`] and [`bearer_token`] serve the capture agent's command too, which follows the same
//! control plane.

use std::path::Path;

use ambit_identity::grpc::{CaClient, ChannelError, plaintext_channel, tls_channel};
use ambit_identity::tls::{TlsError, control_plane_client_config};
use ambit_xds::client::{ClientConfig, ClientHandle, Subscription, XdsClient, ztunnel_node};
use tonic::transport::Channel;

use crate::certs::{RootsError, read_roots};
use crate::config::{ControlPlaneEndpoint, NodeConfig};
use crate::state::handler::WdsHandler;

/// Why the control plane cannot be set up (nothing here connects yet: channels are lazy).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("mesh root certificates")]
    Roots(#[from] RootsError),
    #[error("TLS towards the control plane")]
    Tls(#[from] TlsError),
    #[error("control plane address")]
    Channel(#[from] ChannelError),
    #[error("the CA is only served over TLS: {addr} has no TLS settings")]
    CaNeedsTls { addr: String },
}

/// A lazily connecting channel to `endpoint`.
pub fn channel(endpoint: &ControlPlaneEndpoint) -> Result<Channel, ControlError> {
    Ok(match &endpoint.tls {
        None => plaintext_channel(&endpoint.addr)?,
        Some(tls) => {
            let roots = read_roots(&tls.root_cert_file)?;
            let config = control_plane_client_config(&roots)?;
            tls_channel(&endpoint.addr, &tls.server_name, config)?
        }
    })
}

/// The bearer token for `endpoint`, read afresh from its token file on every call (projected
/// tokens rotate); `None` when unreadable or empty, and always over plaintext.
pub fn bearer_token(
    endpoint: &ControlPlaneEndpoint,
) -> impl Fn() -> Option<String> + Send + Sync + 'static {
    let path = endpoint.tls.as_ref().map(|tls| tls.token_file.clone());
    move || read_token(path.as_deref()?)
}

fn read_token(path: &Path) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => Some(text.trim().to_owned()).filter(|t| !t.is_empty()),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the bearer token");
            None
        }
    }
}

/// The CA client of `endpoint` (which must use TLS).
pub(crate) fn ca_client(endpoint: &ControlPlaneEndpoint) -> Result<CaClient, ControlError> {
    if endpoint.tls.is_none() {
        return Err(ControlError::CaNeedsTls {
            addr: endpoint.addr.clone(),
        });
    }
    Ok(CaClient::new(channel(endpoint)?, bearer_token(endpoint)))
}

/// Starts the WDS client feeding `handler`.
pub(crate) fn start_wds(
    config: &NodeConfig,
    endpoint: &ControlPlaneEndpoint,
    handler: WdsHandler,
) -> Result<ClientHandle, ControlError> {
    let channel = channel(endpoint)?;
    // ztunnel's shape, so a stock istiod serves WDS to it; the node's name stands for the pod's.
    let node = ztunnel_node(&config.node_name, &config.node_name, &config.cluster_id);
    let client_config = ClientConfig::new(node)
        .subscribe(ambit_proto::ADDRESS_TYPE_URL, Subscription::Wildcard)
        .subscribe(ambit_proto::AUTHORIZATION_TYPE_URL, Subscription::Wildcard);
    let connect = move || std::future::ready(Ok(channel.clone()));
    Ok(XdsClient::new(connect, client_config, handler)
        .with_bearer_token(bearer_token(endpoint))
        .start())
}
