//! `ambit cni`: run the capture agent (istio-cni's node agent), and `ambit cni plugin`: the CNI
//! plugin a container runtime invokes.
//!
//! The agent follows the control plane's WDS to learn which pods on this node are enrolled,
//! takes pod events from the plugin on `--plugin-socket`, installs redirection rules in each
//! enrolled pod's netns and hands it to the node proxy on `--zds-socket`. Paths and settings
//! default to Istio's, so a node proxy (ours or ztunnel) finds the agent where it looks.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use ambit_capture::enrollment::WdsEnrollmentConfig;
use ambit_capture::plugin::EventServer;
use ambit_capture::zds::ZdsConfig;
use ambit_capture::{Agent, AgentConfig, BackendChoice, Enrollment, Rules, WdsEnrollment};
use anyhow::Context;
use clap::{Args, Subcommand};

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

    /// Control plane WDS address (`host:port`).
    #[arg(
        long,
        env = "XDS_ADDRESS",
        default_value = "istiod.istio-system.svc:15012"
    )]
    xds_address: String,

    /// Speak plaintext to the WDS address (a control plane's loopback port 15010).
    #[arg(long)]
    xds_plaintext: bool,

    /// Bearer token presented to the control plane (re-read on every connect).
    #[arg(long, default_value = "/var/run/secrets/tokens/istio-token")]
    token_file: PathBuf,

    /// Mesh root certificate, to verify the control plane's TLS certificate.
    #[arg(long, default_value = "/var/run/secrets/istio/root-cert.pem")]
    root_cert: PathBuf,

    /// TLS name of the control plane; defaults to the host part of the address.
    #[arg(long)]
    server_name: Option<String>,

    /// Write the redirection rules with nft (the default when nft is installed).
    #[arg(long, conflicts_with = "iptables")]
    nft: bool,

    /// Write the redirection rules with iptables-restore.
    #[arg(long)]
    iptables: bool,
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
        });
        let addr = &args.xds_address;
        let channel = if args.xds_plaintext {
            ambit_identity::grpc::plaintext_channel(addr).context("control plane address")?
        } else {
            let host = addr.rsplit_once(':').map_or(addr.as_str(), |(h, _)| h);
            let server_name = args.server_name.as_deref().unwrap_or(host);
            let roots =
                ambit_node::certs::read_roots(&args.root_cert).context("mesh root certificates")?;
            let tls = ambit_identity::tls::control_plane_client_config(&roots)
                .context("TLS towards the control plane")?;
            ambit_identity::grpc::tls_channel(addr, server_name, tls)
                .context("control plane address")?
        };
        let wds = enrollment.start(channel, token_reader(&args));
        let config = AgentConfig::new(
            &args.state_dir,
            ZdsConfig::new(&args.zds_socket),
            rules.clone(),
        );
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
        serving.abort();
        wds.shutdown();
        agent.shutdown().await;
        Ok(())
    })
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

/// The bearer token, read afresh on every connect (projected tokens rotate); none in plaintext.
fn token_reader(args: &AgentArgs) -> impl Fn() -> Option<String> + Send + Sync + 'static {
    let path = (!args.xds_plaintext).then(|| args.token_file.clone());
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
}
