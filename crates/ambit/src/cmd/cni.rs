//! `ambit cni`: run the capture agent (istio-cni's node agent), and `ambit cni plugin`: the CNI
//! plugin a container runtime invokes.
//!
//! The agent follows the control plane's WDS to learn which pods on this node are enrolled,
//! takes pod events from the plugin on `--plugin-socket`, installs redirection rules in each
//! enrolled pod's netns and hands it to the node proxy on `--zds-socket`. Enrolled pods it has
//! no event for (they ran before it) are found by address in `--procfs`. With `--install-cni`
//! it first puts the plugin on the node: its own binary into `--cni-bin-dir` and the plugin
//! into the network configuration in `--cni-conf-dir`, kept there while it runs. Paths and
//! settings default to Istio's, so a node proxy (ours or ztunnel) finds the agent where it
//! looks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ambit_capture::enrollment::WdsEnrollmentConfig;
use ambit_capture::install::{InstallConfig, InstallWatch, Installer};
use ambit_capture::plugin::EventServer;
use ambit_capture::zds::ZdsConfig;
use ambit_capture::{
    Agent, AgentConfig, BackendChoice, DiscoveryConfig, Enrollment, Rules, WdsEnrollment,
};
use ambit_identity::TrustDomain;
use anyhow::Context;
use clap::{Args, Subcommand};

use crate::cmd::control_plane::ControlPlaneArgs;

/// How long the agent waits for the control plane's first answer before taking plugin events
/// anyway. Until then a pod's ADD fails with "try again later" and the runtime retries it, so
/// pods do not start uncaptured; past it, the control plane being down must not stop every
/// pod on the node from starting (it may be one of them).
const ENROLLMENT_SYNC_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub(crate) struct CniArgs {
    #[command(subcommand)]
    command: Option<CniCommand>,

    #[command(flatten)]
    agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
enum CniCommand {
    /// Run as the CNI plugin: the container runtime invokes this with `CNI_*` variables and the
    /// network configuration on stdin.
    Plugin,
}

#[derive(Debug, Args)]
struct AgentArgs {
    /// The ZDS socket the node proxy connects to.
    #[arg(
        long,
        env = "ZDS_SOCKET",
        default_value = "/var/run/ztunnel/ztunnel.sock"
    )]
    zds_socket: PathBuf,

    /// The socket the CNI plugin reports pods on.
    #[arg(long, default_value = "/var/run/istio-cni/pluginevent.sock")]
    plugin_socket: PathBuf,

    /// Where the agent keeps its pod records across restarts.
    #[arg(long, default_value = "/var/run/ambit/cni")]
    state_dir: PathBuf,

    /// Name of this node (pods with this `spec.nodeName` are captured here).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,

    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,

    /// Trust domain of workloads whose WDS resource names none (as the node proxy's).
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: TrustDomain,

    #[command(flatten)]
    control_plane: ControlPlaneArgs,

    /// Write the redirection rules with nft (the default when nft is installed).
    #[arg(long, conflicts_with = "iptables")]
    nft: bool,

    /// Write the redirection rules with iptables-restore.
    #[arg(long)]
    iptables: bool,

    /// The host's procfs, where the namespaces of running pods are found by address (default:
    /// /host/proc when it exists, else /proc).
    #[arg(long)]
    procfs: Option<PathBuf>,

    /// Where the host's folders are mounted in the agent's container: pod network namespaces
    /// named by CNI events (`/var/run/netns/cni-…`) are opened under it first (default: /host
    /// when /host/proc exists).
    #[arg(long)]
    host_root: Option<PathBuf>,

    #[command(flatten)]
    install: InstallArgs,
}

/// Putting the CNI plugin on the node (Istio's install-cni).
#[derive(Debug, Args)]
struct InstallArgs {
    /// Copy this binary into the CNI bin folder as `ambit-cni` and chain the plugin into the
    /// node's CNI network configuration, keeping it there while the agent runs.
    #[arg(long)]
    install_cni: bool,

    /// The runtime's CNI plugin folder, as mounted in the agent's container.
    #[arg(long, default_value = "/host/opt/cni/bin")]
    cni_bin_dir: PathBuf,

    /// The runtime's CNI configuration folder, as mounted in the agent's container.
    #[arg(long, default_value = "/host/etc/cni/net.d")]
    cni_conf_dir: PathBuf,

    /// The configuration file to chain into; by default the one the runtime loads (the
    /// lexically first *.conf, *.conflist or *.json).
    #[arg(long, env = "CNI_CONF_NAME")]
    cni_conf_name: Option<String>,

    /// Namespaces whose pods the plugin passes through without telling the agent.
    #[arg(long, value_delimiter = ',', default_value = "kube-system")]
    exclude_namespaces: Vec<String>,

    /// On exit, take the plugin out of the CNI configuration and remove its binary. Off by
    /// default: while the agent is away (an upgrade), new pods wait rather than start
    /// uncaptured.
    #[arg(long, requires = "install_cni")]
    uninstall_on_exit: bool,
}

pub(crate) fn run(args: CniArgs) -> anyhow::Result<()> {
    match args.command {
        Some(CniCommand::Plugin) => run_plugin(),
        None => run_agent(args.agent),
    }
}

/// The CNI plugin: the whole answer (result or error object) is on stdout already.
fn run_plugin() -> anyhow::Result<()> {
    // === call site of the CNI plugin (ambit_capture::plugin) ===
    let code = ambit_capture::plugin::run_plugin();
    if code == ExitCode::SUCCESS {
        Ok(())
    } else {
        anyhow::bail!("the CNI command failed; its error object is on stdout")
    }
}

fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let node_name = args
        .node_name
        .clone()
        .context("the agent needs the node's name: pass --node-name or set NODE_NAME")?;
    let backend = match (args.nft, args.iptables) {
        (true, _) => BackendChoice::Nftables,
        (_, true) => BackendChoice::Iptables,
        _ => BackendChoice::Auto,
    };
    let rules = Rules::new(backend).context("cannot write redirection rules on this host")?;

    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let enrollment = WdsEnrollment::new(WdsEnrollmentConfig {
            node_name: node_name.clone(),
            cluster_id: args.cluster_id.clone(),
            trust_domain: args.trust_domain.clone(),
        });
        // The same channel and token as the node proxy's.
        let control_plane = args.control_plane.wds();
        let channel = control_plane.channel()?;
        let wds = enrollment.start(channel, control_plane.bearer_token());
        let mut config = AgentConfig::new(
            &args.state_dir,
            ZdsConfig::new(&args.zds_socket),
            rules.clone(),
        );
        if let Some(procfs) = &args.procfs {
            config.discovery = Some(DiscoveryConfig::new(procfs));
        }
        config.host_root = args.host_root.clone().or_else(|| {
            Path::new(ambit_capture::discovery::HOST_PROCFS)
                .is_dir()
                .then(|| PathBuf::from("/host"))
        });
        let agent = Agent::start(config, Arc::new(enrollment.clone()))
            .await
            .context("cannot start the capture agent")?;

        wait_for_sync(&enrollment).await;
        let events = EventServer::bind(&args.plugin_socket).with_context(|| {
            format!(
                "cannot listen for the CNI plugin on {}",
                args.plugin_socket.display()
            )
        })?;
        let serving = tokio::spawn(events.serve(Arc::new(agent.clone())));
        // Only now: the runtime calls the plugin as soon as it is chained, and the plugin must
        // find the agent listening.
        let installed = install_cni(&args.install, &args.plugin_socket)?;
        tracing::info!(
            node = %node_name,
            backend = ?rules.backend(),
            zds = %args.zds_socket.display(),
            plugin = %args.plugin_socket.display(),
            "capture agent started"
        );

        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot watch SIGTERM")?;
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: stopping"),
        }
        // Captured pods keep their rules and the node proxy keeps serving them; the next agent
        // picks them up from the state file.
        if let Some(installed) = installed {
            let uninstall = args.install.uninstall_on_exit;
            if let Err(e) = installed.stop(uninstall).await {
                tracing::warn!(error = %format!("{:#}", anyhow::Error::from(e)), "cannot remove the CNI plugin");
            }
        }
        serving.abort();
        wds.shutdown();
        agent.shutdown().await;
        Ok(())
    })
}

/// With `--install-cni`: copies the binary (a failure stops the agent: pods on this node could
/// never be captured) and starts keeping the plugin chained in the configuration (retried until
/// the network plugin has written one).
fn install_cni(args: &InstallArgs, plugin_socket: &Path) -> anyhow::Result<Option<InstallWatch>> {
    if !args.install_cni {
        return Ok(None);
    }
    let mut config = InstallConfig::new(&args.cni_bin_dir, &args.cni_conf_dir, plugin_socket)
        .context("cannot find the running binary to install as the CNI plugin")?;
    config.conf_name = args.cni_conf_name.clone().filter(|name| !name.is_empty());
    config.exclude_namespaces = args.exclude_namespaces.clone();
    let installer = Installer::new(config);
    installer
        .ensure_binary()
        .context("cannot install the CNI plugin binary")?;
    tracing::info!(
        binary = %installer.binary_path().display(),
        conf_dir = %args.cni_conf_dir.display(),
        "CNI plugin binary installed; chaining the plugin into the network configuration"
    );
    Ok(Some(installer.watch()))
}

/// Waits until the enrollment source has the control plane's full view, at most
/// [`ENROLLMENT_SYNC_WAIT`].
async fn wait_for_sync(enrollment: &WdsEnrollment) {
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        cni: CniArgs,
    }

    #[test]
    fn the_plugin_needs_no_agent_flags_and_the_backends_conflict() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["cni", "plugin"]).unwrap();
        assert!(matches!(cli.cni.command, Some(CniCommand::Plugin)));
        let cli = Cli::try_parse_from(["cni", "--node-name", "n1", "--iptables"]).unwrap();
        assert!(cli.cni.agent.iptables && cli.cni.command.is_none());
        assert!(Cli::try_parse_from(["cni", "--nft", "--iptables"]).is_err());
    }

    #[test]
    fn install_cni_is_off_by_default_and_takes_the_host_folders() {
        let cli = Cli::try_parse_from(["cni", "--node-name", "n1"]).unwrap();
        let install = &cli.cni.agent.install;
        assert!(!install.install_cni && !install.uninstall_on_exit);
        assert_eq!(install.cni_bin_dir, Path::new("/host/opt/cni/bin"));
        assert_eq!(install.cni_conf_dir, Path::new("/host/etc/cni/net.d"));
        assert_eq!(install.exclude_namespaces, ["kube-system"]);
        assert!(cli.cni.agent.procfs.is_none() && cli.cni.agent.host_root.is_none());

        let cli = Cli::try_parse_from([
            "cni",
            "--install-cni",
            "--uninstall-on-exit",
            "--cni-bin-dir",
            "/b",
            "--cni-conf-dir",
            "/c",
            "--cni-conf-name",
            "10-calico.conflist",
            "--exclude-namespaces",
            "kube-system,istio-system",
            "--procfs",
            "/p",
        ])
        .unwrap();
        let install = &cli.cni.agent.install;
        assert!(install.install_cni && install.uninstall_on_exit);
        assert_eq!(install.cni_conf_name.as_deref(), Some("10-calico.conflist"));
        assert_eq!(install.exclude_namespaces, ["kube-system", "istio-system"]);
        assert_eq!(cli.cni.agent.procfs.as_deref(), Some(Path::new("/p")));
        assert!(
            Cli::try_parse_from(["cni", "--uninstall-on-exit"]).is_err(),
            "uninstalling needs installing"
        );
    }
}
