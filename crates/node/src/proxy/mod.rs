//! The node proxy as a whole: start-up, the listeners, and drain.
//!
//! [`NodeProxy::start`] builds the certificate source, fills the state (WDS client or local
//! file), binds every listener of the proxy's own network namespace ([`Listeners`]) before
//! returning, and starts the per-workload HBONE listeners (`workload_listeners`) that follow
//! the state — or, in in-pod mode, the ZDS client ([`crate::inpod`]) that opens a listener set
//! inside each pod's network namespace instead. Connections run as tasks tracked by the
//! [`crate::drain`] signals, share the proxy's [`inputs`], and open their sockets in the
//! namespace they arrived in ([`crate::scope`]).
//!
//! Data path, shared mode:
//!
//! ```text
//! app ─► 15001 (SO_ORIGINAL_DST) or 15080 (SOCKS5) ─► outbound ─► HBONE pool ══► <pod ip>:15008
//! <pod ip>:15008 ─► HBONE server (TLS as the pod, HTTP/2, CONNECT) ─► authorize ─► app
//! plaintext ─► 15006 ─► passthrough ─► authorize ─► app
//! ```

mod admin_view;
pub mod authorize;
mod error;
pub(crate) mod inputs;
pub(crate) mod listeners;
pub(crate) mod outbound;
pub(crate) mod passthrough;
pub(crate) mod socks5;
mod workload_listeners;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ambit_identity::control_plane::read_roots;
use ambit_identity::{CaConfig, CertificateAuthority, ControlPlaneError, LocalSigner};
use ambit_xds::client::ClientHandle;
use tracing::info;

pub use self::admin_view::AdminView;
pub use self::error::StartError;
use self::inputs::Inputs;
pub use self::listeners::{BoundAddrs, Listeners};
use crate::certs::{Certificates, NodeSigner};
use crate::config::{CertificateSource, ConfigSource, NodeConfig};
use crate::control;
use crate::drain::Drain;
use crate::hbone::pool::Pool;
use crate::inpod::{InPod, InPodStatus};
use crate::local_config::LocalConfig;
use crate::scope::Scope;
use crate::socket::{DefaultSocketFactory, SocketFactory};
use crate::state::handler::WdsHandler;
use crate::state::{NodeInfo, ProxyState};
use crate::telemetry::Telemetry;

/// A running node proxy. Dropping it aborts everything at once; prefer [`NodeProxy::drain`].
#[derive(Debug)]
pub struct NodeProxy {
    inputs: Arc<Inputs>,
    addrs: BoundAddrs,
    hbone: Arc<Mutex<BTreeMap<IpAddr, SocketAddr>>>,
    /// The pods served in their own namespaces; `None` in shared mode.
    inpod: Option<Arc<InPod>>,
}

impl NodeProxy {
    /// Starts a proxy with sockets from [`DefaultSocketFactory`].
    pub async fn start(config: NodeConfig) -> Result<Self, StartError> {
        Self::start_with(config, Arc::new(DefaultSocketFactory::default())).await
    }

    /// Starts a proxy creating its shared-mode sockets with `factory`. Every listener of the
    /// configuration is bound when this returns; HBONE listeners on workload addresses follow
    /// the state (shared mode) or pods arrive over ZDS (in-pod mode, `config.inpod`).
    pub async fn start_with(
        config: NodeConfig,
        factory: Arc<dyn SocketFactory>,
    ) -> Result<Self, StartError> {
        let certificates = certificates(&config)?;
        let state = ProxyState::new(
            NodeInfo {
                node_name: config.node_name.clone(),
                cluster_id: config.cluster_id.clone(),
                trust_domain: config.trust_domain.clone(),
            },
            certificates,
        );
        let xds = match &config.source {
            ConfigSource::LocalFile(path) => {
                let local = LocalConfig::load(path)?;
                let name = path.display().to_string();
                state.update(|mesh| local.apply(state.node(), &name, mesh))?;
                state.mark_synced();
                None
            }
            ConfigSource::ControlPlane(endpoint) => Some(control::start_wds(
                &config,
                endpoint,
                WdsHandler::new(state.clone()),
            )?),
        };
        let listeners = Listeners::bind(factory.as_ref(), &config.listeners)?;
        let addrs = listeners.addrs();
        let drain = Drain::default();
        let inputs = Arc::new(Inputs {
            pool: Pool::new(
                config.pool.max_streams_per_connection,
                config.pool.idle_timeout,
                drain.force.clone(),
            ),
            telemetry: config.telemetry.clone(),
            state,
            shared: Arc::new(Scope::shared(
                factory,
                addrs.all(),
                config.listeners.hbone_port,
            )),
            xds,
            drain,
            config,
        });
        let inpod: Option<Arc<InPod>> = inputs.config.inpod.is_some().then(Arc::default);
        listeners.serve(&inputs, &inputs.shared, &inputs.drain);
        let hbone = Arc::new(Mutex::default());
        // In-pod mode binds 15008 inside each pod instead; certificates are prefetched alike.
        let per_workload = inpod.is_none();
        workload_listeners::spawn(inputs.clone(), hbone.clone(), per_workload);
        if let (Some(pods), Some(config)) = (&inpod, &inputs.config.inpod) {
            crate::inpod::spawn(inputs.clone(), pods.clone(), config.clone());
        }
        spawn_metrics_sync(&inputs);
        info!(node = %inputs.config.node_name, ?addrs, "node proxy started");
        Ok(Self {
            inputs,
            addrs,
            hbone,
            inpod,
        })
    }

    /// The addresses the shared-mode listeners are bound to.
    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// The HBONE listeners currently bound, one per local workload address.
    pub fn hbone_addrs(&self) -> Vec<SocketAddr> {
        let bound = self.hbone.lock().unwrap_or_else(PoisonError::into_inner);
        bound.values().copied().collect()
    }

    pub fn state(&self) -> &ProxyState {
        &self.inputs.state
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.inputs.telemetry
    }

    /// Proxied connections in flight.
    pub fn open_connections(&self) -> usize {
        self.inputs.state.connections().total()
    }

    /// Outbound HBONE connections pooled and the tunnels they carry.
    pub fn pool_stats(&self) -> (usize, usize) {
        self.inputs.pool.stats()
    }

    /// Whether the proxy has a complete view of the mesh and is accepting (readiness).
    pub fn is_ready(&self) -> bool {
        self.admin_view().readiness().is_ok()
    }

    /// A read-only view for the admin server (`/config_dump`, `/healthz/ready`).
    pub fn admin_view(&self) -> AdminView {
        AdminView {
            inputs: self.inputs.clone(),
            hbone: self.hbone.clone(),
            inpod: self.inpod.clone(),
        }
    }

    /// The pods served in their own network namespaces (in-pod mode; empty otherwise).
    pub fn inpod_pods(&self) -> Vec<InPodStatus> {
        self.inpod
            .as_ref()
            .map(|pods| pods.statuses())
            .unwrap_or_default()
    }

    /// Whether the ZDS connection to the capture agent is up (`None` outside in-pod mode).
    pub fn zds_connected(&self) -> Option<bool> {
        self.inpod.as_ref().map(|pods| pods.is_connected())
    }

    /// Whether the WDS stream is up (`None` without a control plane).
    pub fn control_plane_connected(&self) -> Option<bool> {
        self.inputs.xds.as_ref().map(ClientHandle::connected)
    }

    /// Stops accepting (every listener closes at once), lets open connections finish for up
    /// to `deadline`, then aborts the rest; stops the WDS client. Returns how many
    /// connections were aborted.
    pub async fn drain(&self, deadline: Duration) -> usize {
        let aborted = self
            .inputs
            .drain
            .run(deadline, self.inputs.state.connections())
            .await;
        if let Some(xds) = &self.inputs.xds {
            xds.shutdown();
        }
        // Every connection has ended and queued its access log line: write them before the
        // process may exit.
        let _ = tokio::task::spawn_blocking(crate::telemetry::access_log::flush).await;
        aborted
    }

    /// Drains with the configured deadline.
    pub async fn shutdown(&self) -> usize {
        self.drain(self.inputs.config.drain_deadline).await
    }
}

impl Drop for NodeProxy {
    fn drop(&mut self) {
        self.inputs.drain.stop_accepting.cancel();
        self.inputs.drain.force.cancel();
        if let Some(xds) = &self.inputs.xds {
            xds.shutdown();
        }
    }
}

/// The certificate source of `config`, or `None` when HBONE is off.
fn certificates(config: &NodeConfig) -> Result<Option<Certificates>, StartError> {
    let td = vec![config.trust_domain.clone()];
    Ok(match &config.certificates {
        CertificateSource::None => None,
        CertificateSource::ControlPlane(endpoint) => {
            let Some(tls) = &endpoint.tls else {
                return Err(ControlPlaneError::CaNeedsTls {
                    addr: endpoint.addr.clone(),
                }
                .into());
            };
            let roots = read_roots(&tls.root_cert_file)?;
            let client = endpoint.ca_client()?;
            Some(Certificates::new(NodeSigner::Ca(client), roots, td))
        }
        CertificateSource::LocalCa(dir) => {
            let ca = CertificateAuthority::load_or_init(
                dir,
                &CaConfig::new(config.trust_domain.clone()),
            )
            .map_err(|source| StartError::LocalCa {
                dir: dir.display().to_string(),
                source,
            })?;
            let roots = ca.roots().to_vec();
            let signer = NodeSigner::Local(LocalSigner::new(Arc::new(ca)));
            Some(Certificates::new(signer, roots, td))
        }
    })
}

/// Keeps the telemetry's certificate-expiry and control-plane gauges current.
fn spawn_metrics_sync(inputs: &Arc<Inputs>) {
    const PERIOD: Duration = Duration::from_secs(5);
    let inputs = Arc::downgrade(inputs);
    tokio::spawn(async move {
        let mut known: Vec<String> = Vec::new();
        let mut ticks = tokio::time::interval(PERIOD);
        loop {
            ticks.tick().await;
            let Some(inputs) = inputs.upgrade() else {
                return;
            };
            if inputs.drain.force.is_cancelled() {
                return;
            }
            let metrics = inputs.telemetry.metrics();
            if let Some(xds) = &inputs.xds
                && let ConfigSource::ControlPlane(endpoint) = &inputs.config.source
            {
                metrics.set_xds_connection_state(&endpoint.addr, xds.connected());
            }
            let statuses = inputs
                .state
                .certificates()
                .map(Certificates::snapshot)
                .unwrap_or_default();
            let mut current = Vec::with_capacity(statuses.len());
            for status in statuses {
                if let Some(not_after) = status.not_after {
                    metrics.set_certificate_expiry(status.identity.as_str(), not_after);
                    current.push(status.identity.to_string());
                }
            }
            for gone in known.iter().filter(|id| !current.contains(id)) {
                metrics.remove_certificate_expiry(gone);
            }
            known = current;
        }
    });
}
