//! The capture agent's run, start to exit (what `ambit cni` calls).
//!
//! In order: the redirection rules' backend is chosen; the agent follows the control plane's
//! per-pod decisions for enrollment (the same channel and token as the node proxy's), picks
//! where captured pods are marked (the Kubernetes API, or a manifest directory) and starts ([`Agent`]),
//! picking up the pods of its state file; it waits (at most [`ENROLLMENT_SYNC_WAIT`]) for the
//! control plane's full view, then listens for the CNI plugin, and only then, with
//! `install`, puts the plugin on the node, since the runtime calls the plugin as soon as it is
//! chained. SIGTERM and SIGINT are watched from the start (one that comes while it waits for the
//! control plane ends the wait and the run); on either it stops: captured pods keep their rules
//! and the node proxy keeps serving them; the next agent picks them up from the state file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambit_app::Shutdown;
use ambit_identity::ControlPlaneEndpoint;
use anyhow::Context;

use crate::enrollment::ControlPlaneEnrollmentConfig;
use crate::install::{InstallConfig, InstallWatch, Installer};
use crate::marker::{KubeMarker, ManifestMarker, PodMarker};
use crate::plugin::EventServer;
use crate::zds::ZdsConfig;
use crate::{
    Agent, AgentConfig, BackendChoice, ControlPlaneEnrollment, DiscoveryConfig, Enrollment, Rules,
};

/// How long the agent waits for the control plane's first answer before taking plugin events
/// anyway. Until then the plugin finds no agent and the runtime retries the pod; past it, each
/// ADD is decided on its own, failing while the control plane has not described the pod. The
/// control plane's own pods are not held up: their namespace is excluded from the plugin.
pub const ENROLLMENT_SYNC_WAIT: Duration = Duration::from_secs(10);

/// Everything a capture agent's run needs.
#[derive(Debug, Clone)]
pub struct AppConfig {
    /// This node: pods with this `spec.nodeName` are captured here.
    pub node_name: String,
    pub cluster_id: String,
    /// The control plane (its per-pod enrollment decisions).
    pub control_plane: ControlPlaneEndpoint,
    pub backend: BackendChoice,
    /// Where the agent keeps its pod records across restarts.
    pub state_dir: PathBuf,
    /// The ZDS socket the node proxy connects to.
    pub zds_socket: PathBuf,
    /// The socket the CNI plugin reports pods on.
    pub plugin_socket: PathBuf,
    /// The host's procfs, where running pods' namespaces are found by address.
    pub procfs: Option<PathBuf>,
    /// Where the host's folders are mounted (`None`: `/host` when `/host/proc` exists).
    pub host_root: Option<PathBuf>,
    /// Mark captured pods in this manifest directory; `None`: through the Kubernetes API
    /// (in-cluster service account, or `KUBECONFIG`).
    pub pod_manifests: Option<PathBuf>,
    /// How long an ADD waits for the control plane to describe its pod before failing.
    pub decide_timeout: Duration,
    /// Put the plugin on the node (Istio's install-cni); `None`: someone else does.
    pub install: Option<InstallOptions>,
}

/// Putting the CNI plugin on the node.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The runtime's CNI plugin folder, as mounted in the agent's container.
    pub cni_bin_dir: PathBuf,
    /// The runtime's CNI configuration folder, as mounted in the agent's container.
    pub cni_conf_dir: PathBuf,
    /// The configuration file to chain into (`None`: the one the runtime loads).
    pub conf_name: Option<String>,
    /// Namespaces whose pods the plugin passes through without telling the agent.
    pub exclude_namespaces: Vec<String>,
    /// On exit, take the plugin out of the configuration and remove its binary.
    pub uninstall_on_exit: bool,
}

/// Runs the capture agent until `shutdown`.
///
/// # Errors
/// When the rules backend, the agent, the plugin socket or the plugin's installation cannot
/// start.
pub async fn run(config: AppConfig, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut stop = shutdown
        .watch()
        .context("cannot watch SIGTERM and SIGINT")?;
    let rules =
        Rules::new(config.backend).context("cannot write redirection rules on this host")?;
    let enrollment = ControlPlaneEnrollment::new(ControlPlaneEnrollmentConfig {
        node_name: config.node_name.clone(),
        cluster_id: config.cluster_id.clone(),
    });
    let marker = marker(config.pod_manifests.as_deref()).await?;
    let channel = config.control_plane.channel()?;
    let wds = enrollment.start(channel, config.control_plane.bearer_token());
    let mut agent_config = AgentConfig::new(
        &config.state_dir,
        ZdsConfig::new(&config.zds_socket),
        rules.clone(),
    );
    agent_config.marker = marker;
    agent_config.decide_timeout = config.decide_timeout;
    if let Some(procfs) = &config.procfs {
        agent_config.discovery = Some(DiscoveryConfig::new(procfs));
    }
    agent_config.host_root = config.host_root.clone().or_else(|| {
        Path::new(crate::discovery::HOST_PROCFS)
            .is_dir()
            .then(|| PathBuf::from("/host"))
    });
    let agent = Agent::start(agent_config, Arc::new(enrollment.clone()))
        .await
        .context("cannot start the capture agent")?;

    if let Err(reason) = stop.or_stop(wait_for_sync(&enrollment)).await {
        tracing::info!("{reason} while starting: stopping");
        wds.shutdown();
        agent.shutdown().await;
        return Ok(());
    }
    let events = EventServer::bind(&config.plugin_socket).with_context(|| {
        format!(
            "cannot listen for the CNI plugin on {}",
            config.plugin_socket.display()
        )
    })?;
    let serving = tokio::spawn(events.serve(Arc::new(agent.clone())));
    // Only now: the runtime calls the plugin as soon as it is chained, and the plugin must
    // find the agent listening.
    let installed = match &config.install {
        Some(install) => Some(install_cni(install, &config.plugin_socket)?),
        None => None,
    };
    tracing::info!(
        node = %config.node_name,
        backend = ?rules.backend(),
        zds = %config.zds_socket.display(),
        plugin = %config.plugin_socket.display(),
        "capture agent started"
    );

    let reason = stop.wait().await;
    tracing::info!("{reason}: stopping");
    // Captured pods keep their rules and the node proxy keeps serving them; the next agent
    // picks them up from the state file.
    if let (Some(installed), Some(install)) = (installed, &config.install)
        && let Err(e) = installed.stop(install.uninstall_on_exit).await
    {
        let error = format!("{:#}", anyhow::Error::from(e));
        tracing::warn!(%error, "cannot remove the CNI plugin");
    }
    serving.abort();
    wds.shutdown();
    agent.shutdown().await;
    Ok(())
}

/// Copies the binary (a failure stops the agent: pods on this node could never be captured)
/// and starts keeping the plugin chained in the configuration (retried until the network
/// plugin has written one).
fn install_cni(install: &InstallOptions, plugin_socket: &Path) -> anyhow::Result<InstallWatch> {
    let mut config = InstallConfig::new(&install.cni_bin_dir, &install.cni_conf_dir, plugin_socket)
        .context("cannot find the running binary to install as the CNI plugin")?;
    config.conf_name = install.conf_name.clone().filter(|name| !name.is_empty());
    config.exclude_namespaces = install.exclude_namespaces.clone();
    let installer = Installer::new(config);
    installer
        .ensure_binary()
        .context("cannot install the CNI plugin binary")?;
    tracing::info!(
        binary = %installer.binary_path().display(),
        conf_dir = %install.cni_conf_dir.display(),
        "CNI plugin binary installed; chaining the plugin into the network configuration"
    );
    Ok(installer.watch())
}

/// Where captured pods are marked: the manifest directory when given, else the Kubernetes API
/// (in-cluster service account, or `KUBECONFIG`).
async fn marker(pod_manifests: Option<&Path>) -> anyhow::Result<Arc<dyn PodMarker>> {
    if let Some(dir) = pod_manifests {
        return Ok(Arc::new(ManifestMarker::new(dir)));
    }
    let marker = KubeMarker::from_environment().await.context(
        "the agent marks captured pods through the Kubernetes API and has no client for it (pass --pod-manifests to mark them in a manifest directory)",
    )?;
    Ok(Arc::new(marker))
}

/// Waits until the enrollment source has the control plane's full view, at most
/// [`ENROLLMENT_SYNC_WAIT`].
async fn wait_for_sync(enrollment: &ControlPlaneEnrollment) {
    let mut changes = enrollment.changes();
    let synced = async {
        while !enrollment.synced() {
            if changes.changed().await.is_err() {
                return;
            }
        }
    };
    if tokio::time::timeout(ENROLLMENT_SYNC_WAIT, synced)
        .await
        .is_err()
    {
        tracing::warn!(
            wait = ?ENROLLMENT_SYNC_WAIT,
            "no enrollment from the control plane yet; taking pod events anyway (pods are captured once it answers)"
        );
    }
}
