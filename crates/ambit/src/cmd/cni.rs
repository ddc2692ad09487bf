//! `ambit cni`: the capture agent's flags (istio-cni's node agent), handed to
//! [`ambit_capture::app::run`]; and `ambit cni plugin`: the CNI plugin a container runtime
//! invokes.
//!
//! The agent follows the control plane's per-pod decisions to learn which pods on this node are
//! enrolled (known before a pod has an IP), takes pod events from the plugin on
//! `--plugin-socket`, installs redirection rules in each enrolled pod's netns, hands it to the
//! node proxy on `--zds-socket`, and marks it `ambient.istio.io/redirection: enabled` through
//! the Kubernetes API (or, with `--pod-manifests`, in the local mesh's manifest directory).
//! Enrolled pods it has no event for (they ran before it) are found by address in `--procfs`. With `--install-cni`
//! it first puts the plugin on the node: its own binary into `--cni-bin-dir` and the plugin
//! into the network configuration in `--cni-conf-dir`, kept there while it runs. Paths and
//! settings default to Istio's, so a node proxy (ours or ztunnel) finds the agent where it
//! looks.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ambit_app::Shutdown;
use ambit_capture::BackendChoice;
use ambit_capture::app::{AppConfig, InstallOptions};
use anyhow::Context;
use clap::{Args, Subcommand};

use crate::cmd::control_plane::ControlPlaneArgs;

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

    /// Mark captured pods in this manifest directory (the one the control plane reads with
    /// `--config-dir`) instead of through the Kubernetes API.
    #[arg(long)]
    pod_manifests: Option<PathBuf>,

    /// How long an ADD waits for the control plane to describe its pod before failing.
    #[arg(long, default_value = "5", value_name = "SECONDS")]
    decide_timeout: u64,

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

    /// Namespaces whose pods the plugin passes through without telling the agent: the agent
    /// decides from the control plane, so the control plane's namespace must be among them.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kube-system,istio-system"
    )]
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
    let install = args.install;
    let config = AppConfig {
        node_name,
        cluster_id: args.cluster_id,
        control_plane: args.control_plane.wds(),
        backend,
        state_dir: args.state_dir,
        zds_socket: args.zds_socket,
        plugin_socket: args.plugin_socket,
        procfs: args.procfs,
        host_root: args.host_root,
        pod_manifests: args.pod_manifests,
        decide_timeout: Duration::from_secs(args.decide_timeout),
        install: install.install_cni.then_some(InstallOptions {
            cni_bin_dir: install.cni_bin_dir,
            cni_conf_dir: install.cni_conf_dir,
            conf_name: install.cni_conf_name,
            exclude_namespaces: install.exclude_namespaces,
            uninstall_on_exit: install.uninstall_on_exit,
        }),
    };
    ambit_app::runtime::block_on(None, ambit_capture::app::run(config, Shutdown::new()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

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
        assert_eq!(install.exclude_namespaces, ["kube-system", "istio-system"]);
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
