//! The node proxy's run, start to exit (what `ambit node` and `ambit-node` call): start the
//! data path ([`NodeProxy`]), then the stats, readiness and admin servers on ztunnel's ports,
//! wait for SIGTERM, SIGINT or `POST /quitquitquit`, and drain open connections for at most
//! [`NodeConfig::drain_deadline`] before returning.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_app::{Reason, Shutdown};
use anyhow::Context;
use tracing::info;

use crate::admin::{self, Admin, LogControl, Server};
use crate::config::NodeConfig;
use crate::proxy::NodeProxy;

/// Everything a node proxy's run needs.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub proxy: NodeConfig,
    /// `GET /stats/prometheus` (ztunnel's `:15020`); `None`: not served.
    pub stats_addr: Option<SocketAddr>,
    /// `GET /healthz/ready` (`:15021`); `None`: not served.
    pub readiness_addr: Option<SocketAddr>,
    /// The admin server (`127.0.0.1:15000`, loopback only); `None`: not served.
    pub admin_addr: Option<SocketAddr>,
    /// What the admin server's `/logging` reads and changes.
    pub logging: LogControl,
}

/// Runs the node proxy until `shutdown` (or `POST /quitquitquit`), then drains it. SIGTERM
/// and SIGINT are watched from the start: one that comes while the proxy starts gives the
/// start up.
///
/// # Errors
/// When the proxy or one of its servers cannot start; nothing is left running then.
pub async fn run(config: AppConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut stop = shutdown
        .watch()
        .context("cannot watch SIGTERM and SIGINT")?;
    let (node_name, drain_deadline) = (config.proxy.node_name.clone(), config.proxy.drain_deadline);
    let (proxy, servers) = match stop.or_stop(start(config, &shutdown)).await {
        Ok(started) => started?,
        Err(reason) => {
            info!("{reason} while starting; stopping");
            return Ok(());
        }
    };
    let addrs: Vec<SocketAddr> = servers.iter().map(Server::local_addr).collect();
    info!(node = %node_name, servers = ?addrs, "node proxy started");

    match stop.wait().await {
        Reason::Requested => info!("/quitquitquit: draining"),
        other => info!("{other}: draining"),
    }
    let aborted = proxy.drain(drain_deadline).await;
    for server in &servers {
        server.abort();
    }
    info!(aborted, "drained; exiting");
    Ok(())
}

/// Starts the data path, then its stats, readiness and admin servers (whose `/quitquitquit`
/// asks `shutdown`).
async fn start(config: AppConfig, shutdown: &Shutdown) -> anyhow::Result<(NodeProxy, Vec<Server>)> {
    let AppConfig {
        proxy,
        stats_addr,
        readiness_addr,
        admin_addr,
        logging,
    } = config;
    let telemetry = proxy.telemetry.clone();
    let proxy = NodeProxy::start(proxy)
        .await
        .context("cannot start the node proxy")?;
    let mut servers = Vec::new();
    if let Some(addr) = stats_addr {
        servers.push(admin::serve_stats(addr, telemetry.metrics().clone()).await?);
    }
    if let Some(addr) = readiness_addr {
        let view = proxy.admin_view();
        servers.push(admin::serve_readiness(addr, Arc::new(move || view.readiness())).await?);
    }
    if let Some(addr) = admin_addr {
        let view = proxy.admin_view();
        let admin = Admin {
            telemetry,
            config_dump: Arc::new(move || view.config_dump()),
            logging,
            shutdown: shutdown.trigger(),
        };
        servers.push(admin::serve_admin(addr, admin).await?);
    }
    Ok((proxy, servers))
}
