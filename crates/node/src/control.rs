//! Reaching the control plane: gRPC channels, the WDS client and the CA signer.
//!
//! The node proxy talks to `ambit control` or istiod exactly as ztunnel does: delta ADS on one
//! stream subscribed to `istio.workload.Address` and `istio.security.Authorization` (wildcard,
//! plus on-demand names), and `IstioCertificateService/CreateCertificate` naming each workload
//! identity in `ImpersonatedIdentity`. Both carry the node's bearer token, read from its file
//! on every (re)connect so a rotated token is picked up.

use std::path::{Path, PathBuf};

use ambit_identity::grpc::{CaClient, ChannelError, plaintext_channel, tls_channel};
use ambit_identity::tls::{TlsError, control_plane_client_config};
use ambit_proto::envoy::config::core::v3::Node;
use ambit_xds::client::{ClientConfig, ClientHandle, Subscription, XdsClient};
use prost_types::{Struct, Value, value::Kind};
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
pub(crate) fn channel(endpoint: &ControlPlaneEndpoint) -> Result<Channel, ControlError> {
    Ok(match &endpoint.tls {
        None => plaintext_channel(&endpoint.addr)?,
        Some(tls) => {
            let roots = read_roots(&tls.root_cert_file)?;
            let config = control_plane_client_config(&roots)?;
            tls_channel(&endpoint.addr, &tls.server_name, config)?
        }
    })
}

/// A token source reading `path` afresh on every call; `None` when unreadable or empty.
pub(crate) fn token_reader(path: Option<PathBuf>) -> impl Fn() -> Option<String> + Send + Sync {
    move || {
        let path = path.as_deref()?;
        read_token(path)
    }
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
    let Some(tls) = &endpoint.tls else {
        return Err(ControlError::CaNeedsTls {
            addr: endpoint.addr.clone(),
        });
    };
    let token = token_reader(Some(tls.token_file.clone()));
    Ok(CaClient::new(channel(endpoint)?, token))
}

/// Starts the WDS client feeding `handler`.
pub(crate) fn start_wds(
    config: &NodeConfig,
    endpoint: &ControlPlaneEndpoint,
    handler: WdsHandler,
) -> Result<ClientHandle, ControlError> {
    let channel = channel(endpoint)?;
    let client_config = ClientConfig::new(node(config))
        .subscribe(ambit_proto::ADDRESS_TYPE_URL, Subscription::Wildcard)
        .subscribe(ambit_proto::AUTHORIZATION_TYPE_URL, Subscription::Wildcard);
    let connect = move || std::future::ready(Ok(channel.clone()));
    let token = token_reader(endpoint.tls.as_ref().map(|t| t.token_file.clone()));
    Ok(XdsClient::new(connect, client_config, handler)
        .with_bearer_token(token)
        .start())
}

/// The xDS `Node` of this proxy, in ztunnel's shape so istiod recognises it.
fn node(config: &NodeConfig) -> Node {
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    Node {
        id: format!(
            "ztunnel~0.0.0.0~{}.istio-system~istio-system.svc.cluster.local",
            config.node_name
        ),
        cluster: config.cluster_id.clone(),
        metadata: Some(Struct {
            fields: [
                ("NODE_NAME".to_owned(), text(&config.node_name)),
                ("CLUSTER_ID".to_owned(), text(&config.cluster_id)),
            ]
            .into(),
        }),
        ..Node::default()
    }
}
