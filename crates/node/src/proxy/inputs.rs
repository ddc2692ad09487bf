//! [`Inputs`]: what every connection handler of one proxy shares (configuration, the mesh
//! state, telemetry, the HBONE pool, the drain signals), handed to each as an `Arc`.

use std::sync::Arc;

use ambit_xds::client::ClientHandle;

use crate::config::NodeConfig;
use crate::drain::Drain;
use crate::hbone::pool::Pool;
use crate::scope::Scope;
use crate::state::ProxyState;
use crate::telemetry::Telemetry;

/// Everything a connection handler needs, shared by all of them.
#[derive(Debug)]
pub(crate) struct Inputs {
    pub(crate) config: NodeConfig,
    pub(crate) state: ProxyState,
    pub(crate) telemetry: Telemetry,
    pub(crate) pool: Pool,
    /// The proxy's own network namespace: its factory and shared listener addresses.
    pub(crate) shared: Arc<Scope>,
    pub(crate) xds: Option<ClientHandle>,
    pub(crate) drain: Drain,
}
