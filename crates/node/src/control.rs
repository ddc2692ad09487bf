//! The node proxy's WDS client.
//!
//! The node proxy follows `ambit control` or istiod exactly as ztunnel does: delta ADS on one
//! stream subscribed to `istio.workload.Address` and `istio.security.Authorization` (wildcard,
//! plus on-demand names), with the node's bearer token, read from its file on every (re)connect
//! so a rotated token is picked up. The channel itself is the identity crate's
//! ([`ControlPlaneEndpoint::channel`]), shared with the capture agent.

use ambit_identity::{ControlPlaneEndpoint, ControlPlaneError};
use ambit_xds::client::{ClientConfig, ClientHandle, Subscription, XdsClient, ztunnel_node};

use crate::config::NodeConfig;
use crate::state::handler::WdsHandler;

/// Starts the WDS client feeding `handler`.
pub(crate) fn start_wds(
    config: &NodeConfig,
    endpoint: &ControlPlaneEndpoint,
    handler: WdsHandler,
) -> Result<ClientHandle, ControlPlaneError> {
    let channel = endpoint.channel()?;
    // ztunnel's shape, so a stock istiod serves WDS to it; the node's name stands for the pod's.
    let node = ztunnel_node(&config.node_name, &config.node_name, &config.cluster_id);
    let client_config = ClientConfig::new(node)
        .subscribe(ambit_proto::ADDRESS_TYPE_URL, Subscription::Wildcard)
        .subscribe(ambit_proto::AUTHORIZATION_TYPE_URL, Subscription::Wildcard);
    let connect = move || std::future::ready(Ok(channel.clone()));
    Ok(XdsClient::new(connect, client_config, handler)
        .with_bearer_token(endpoint.bearer_token())
        .start())
}
