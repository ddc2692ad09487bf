//! The mesh's own components, in this process: the control plane (WDS and CA over TLS with
//! bootstrap tokens, monitoring with `/debug/…`) and one node proxy per node (SOCKS5 capture,
//! HBONE on its pods' addresses, stats/readiness/admin servers), wired exactly as `ambit control`
//! and `ambit node` wire them, but on the demo's addresses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_control::{ControlConfig, ControlPlane, SourceConfig};
use ambit_identity::TrustDomain;
use ambit_identity::{ControlPlaneEndpoint, ControlPlaneTls};
use ambit_model::MeshConfig;
use ambit_node::admin::{self, Admin, LogControl};
use ambit_node::config::{CertificateSource, ConfigSource, ListenerConfig};
use ambit_node::telemetry::{LogFormat, Metrics, Telemetry};
use ambit_node::{NodeConfig, NodeProxy};
use anyhow::{Context, bail};
use tokio::sync::Notify;

use super::manifests::{self, Files, Layout, NodeAddrs, Pod};
use super::report::Flows;
use crate::logging::LogHandle;

/// How long start-up may take before the demo gives up (CA, certificates, first WDS push).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections may finish when the demo stops.
const DRAIN: Duration = Duration::from_secs(2);

/// The running control plane and node proxies.
#[derive(Debug)]
pub(super) struct Mesh {
    /// Kept only to be dropped last: the proxies never lose it while they run.
    control: ControlPlane,
    nodes: Vec<Node>,
    /// Notified by `POST /quitquitquit` on either node's admin server.
    pub(super) quit: Arc<Notify>,
}

/// One node's running proxy and its side servers.
#[derive(Debug)]
struct Node {
    addrs: NodeAddrs,
    proxy: NodeProxy,
    metrics: Arc<Metrics>,
    servers: Vec<admin::Server>,
}

impl Mesh {
    /// Starts the control plane, then each node's proxy, and waits until both proxies serve
    /// HBONE with certificates for their enrolled pods. Prints progress as it goes.
    pub(super) async fn start(
        layout: &Layout,
        files: &Files,
        log: &LogHandle,
        json_logs: bool,
    ) -> anyhow::Result<Self> {
        println!("starting control plane…");
        let control = start_control_plane(layout, files).await?;
        println!(
            "  WDS and CA over TLS on {} (bootstrap tokens for node-a, node-b), CA in {}",
            layout.control_tls(),
            files.ca.display()
        );

        println!("starting node proxies…");
        let quit = Arc::new(Notify::new());
        let mut nodes = Vec::new();
        for index in 0..layout.nodes.len() {
            nodes.push(Node::start(layout, index, files, log, json_logs, quit.clone()).await?);
        }
        let enrolled = [layout.prometheus, layout.node_exporter];
        for node in &nodes {
            let pods = node.wait_ready(&enrolled).await?;
            let addrs = node.addrs;
            println!(
                "  {} at {}: SOCKS5 {}",
                addrs.name,
                addrs.ip,
                addrs.socks5()
            );
            for pod in pods {
                println!(
                    "    HBONE on {} for {}, certificate {}",
                    pod.hbone(),
                    pod.name,
                    pod.identity()
                );
            }
        }
        println!("node proxies ready");
        Ok(Self {
            control,
            nodes,
            quit,
        })
    }

    /// The flows counted so far by every node's proxy.
    pub(super) fn flows(&self) -> Flows {
        Flows::from_metrics(
            self.nodes
                .iter()
                .map(|n| (n.addrs.name, n.metrics.render())),
        )
    }

    /// Drains the proxies, then stops the control plane; returns the final counts.
    pub(super) async fn stop(self) -> Flows {
        for node in &self.nodes {
            node.stop().await;
        }
        let flows = self.flows();
        drop(self.nodes);
        drop(self.control);
        flows
    }
}

/// Starts the control plane on the demo's addresses, serving `files`.
async fn start_control_plane(layout: &Layout, files: &Files) -> anyhow::Result<ControlPlane> {
    let trust_domain: TrustDomain = manifests::TRUST_DOMAIN
        .parse()
        .context("the demo's trust domain")?;
    let config = ControlConfig {
        source: SourceConfig::Dir {
            path: files.manifests.clone(),
            poll: Duration::from_millis(250),
        },
        mesh: MeshConfig {
            trust_domain,
            cluster_id: "Kubernetes".to_owned(),
            domain_suffix: "cluster.local".to_owned(),
            network: String::new(),
            root_namespace: "istio-system".to_owned(),
        },
        ca_dir: files.ca.clone(),
        bootstrap_tokens: Some(files.bootstrap_tokens.clone()),
        plaintext_addr: None,
        tls_addr: Some(layout.control_tls()),
        monitoring_addr: Some(layout.control_monitoring()),
        debounce: Duration::from_millis(50),
        serving_names: vec![
            manifests::CONTROL_PLANE_NAME.to_owned(),
            "istiod".to_owned(),
        ],
    };
    Ok(ControlPlane::start(config).await?)
}

impl Node {
    /// Starts node `index` of the layout: its proxy follows the control plane over TLS with
    /// the node's bootstrap token, then its stats, readiness and admin servers (whose
    /// `/quitquitquit` notifies `quit`).
    async fn start(
        layout: &Layout,
        index: usize,
        files: &Files,
        log: &LogHandle,
        json_logs: bool,
        quit: Arc<Notify>,
    ) -> anyhow::Result<Self> {
        let addrs = layout.nodes[index];
        let endpoint = ControlPlaneEndpoint::tls(
            layout.control_tls().to_string(),
            ControlPlaneTls {
                server_name: manifests::CONTROL_PLANE_NAME.to_owned(),
                root_cert_file: files.ca.join("root-cert.pem"),
                token_file: files.node_tokens[index].clone(),
            },
        );
        let metrics = Arc::new(Metrics::new());
        let format = if json_logs {
            LogFormat::Json
        } else {
            LogFormat::Text
        };
        let telemetry = Telemetry::new(metrics.clone(), format);
        let mut config = NodeConfig::new(
            addrs.name,
            manifests::TRUST_DOMAIN
                .parse()
                .context("the demo's trust domain")?,
            ConfigSource::ControlPlane(endpoint.clone()),
            CertificateSource::ControlPlane(endpoint),
        );
        config.listeners = ListenerConfig {
            outbound: None,
            inbound_passthrough: None,
            socks5: Some(addrs.socks5()),
            hbone_port: ambit_proto::ports::HBONE,
        };
        config.drain_deadline = DRAIN;
        config.telemetry = telemetry.clone();
        let proxy = NodeProxy::start(config)
            .await
            .with_context(|| format!("cannot start {}'s proxy", addrs.name))?;

        let view = proxy.admin_view();
        let (current, set) = (log.clone(), log.clone());
        let admin = Admin {
            telemetry,
            config_dump: Arc::new(move || view.config_dump()),
            logging: LogControl::new(move || current.current(), move |filter| set.set(filter)),
            shutdown: quit,
        };
        let view = proxy.admin_view();
        let servers = vec![
            admin::serve_stats(addrs.stats(), metrics.clone()).await?,
            admin::serve_readiness(addrs.readiness(), Arc::new(move || view.readiness())).await?,
            admin::serve_admin(addrs.admin(), admin).await?,
        ];
        Ok(Self {
            addrs,
            proxy,
            metrics,
            servers,
        })
    }

    /// Waits until the proxy is ready, serves HBONE on each enrolled local pod's address and
    /// holds its certificate; returns those pods.
    async fn wait_ready(&self, enrolled: &[Pod]) -> anyhow::Result<Vec<Pod>> {
        let local: Vec<&Pod> = enrolled
            .iter()
            .filter(|p| p.node == self.addrs.name)
            .collect();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let hbone = self.proxy.hbone_addrs();
            let certified: Vec<String> = self
                .proxy
                .state()
                .certificates()
                .map(|c| c.snapshot())
                .unwrap_or_default()
                .into_iter()
                .filter(|s| s.not_after.is_some())
                .map(|s| s.identity.to_string())
                .collect();
            let missing: Vec<&str> = local
                .iter()
                .filter(|p| {
                    !hbone.iter().any(|a| a.ip() == p.ip) || !certified.contains(&p.identity())
                })
                .map(|p| p.name)
                .collect();
            if self.proxy.is_ready() && missing.is_empty() {
                return Ok(local.into_iter().copied().collect());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready after {READY_TIMEOUT:?} (ready: {}, pods without HBONE \
                     listener or certificate: {missing:?}); rerun with --log-level info for details",
                    self.addrs.name,
                    self.proxy.is_ready()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Drains the proxy (open connections get [`DRAIN`] to finish) and stops its servers.
    async fn stop(&self) -> usize {
        let aborted = self.proxy.drain(DRAIN).await;
        for server in &self.servers {
            server.abort();
        }
        aborted
    }
}
