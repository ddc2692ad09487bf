//! `ambit node`: the node proxy's flags (ztunnel's role), handed to [`ambit_node::app::run`].
//!
//! Settings follow ztunnel's environment variables where the concept is the same
//! (`XDS_ADDRESS`, `CA_ADDRESS`, `NODE_NAME`, `CLUSTER_ID`, …), so the DaemonSet of Istio's chart
//! shape works unchanged.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_app::Shutdown;
use ambit_identity::TrustDomain;
use ambit_node::NodeConfig;
use ambit_node::admin::LogControl;
use ambit_node::app::AppConfig;
use ambit_node::config::{CertificateSource, ConfigSource, InPodConfig, ListenerConfig};
use ambit_node::telemetry::{LogFormat, Metrics, Telemetry};
use ambit_proto::ports;
use clap::Args;

use crate::cmd::control::{Listen, parse_addr};
use crate::cmd::control_plane::ControlPlaneArgs;
use crate::logging::LogHandle;

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
const UNSPECIFIED: Ipv4Addr = Ipv4Addr::UNSPECIFIED;

#[derive(Debug, Args)]
pub(crate) struct NodeArgs {
    /// Name of the node this proxy serves (pods with this `spec.nodeName` are local).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,

    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,

    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: TrustDomain,

    #[command(flatten)]
    control_plane: ControlPlaneArgs,

    /// Control plane CA address (`host:port`); defaults to the WDS address.
    #[arg(long, env = "CA_ADDRESS")]
    ca_address: Option<String>,

    /// Sign workload certificates with a local CA directory instead of the control plane's CA.
    #[arg(long, conflicts_with = "ca_address")]
    ca_dir: Option<PathBuf>,

    /// Serve a static file of workloads and services instead of following a control plane.
    #[arg(long)]
    local_config: Option<PathBuf>,

    /// Outbound capture listener (redirected connections, SO_ORIGINAL_DST).
    #[arg(long, default_value_t = Listen::on(LOCALHOST, ports::OUTBOUND), value_parser = parse_addr)]
    outbound_addr: Listen,

    /// Inbound plaintext listener (connections from outside the mesh).
    #[arg(long, default_value_t = Listen::on(LOCALHOST, ports::INBOUND_PASSTHROUGH), value_parser = parse_addr)]
    inbound_passthrough_addr: Listen,

    /// SOCKS5 outbound listener for applications that are not redirected.
    #[arg(long, default_value_t = Listen::on(LOCALHOST, ports::SOCKS5), value_parser = parse_addr)]
    socks5_addr: Listen,

    /// Port of the HBONE listener opened on each local workload address.
    #[arg(long, default_value_t = ports::HBONE)]
    hbone_port: u16,

    #[arg(long, default_value_t = Listen::on(LOCALHOST, ports::ADMIN), value_parser = parse_addr)]
    admin_addr: Listen,

    #[arg(long, default_value_t = Listen::on(UNSPECIFIED, ports::STATS), value_parser = parse_addr)]
    stats_addr: Listen,

    #[arg(long, default_value_t = Listen::on(UNSPECIFIED, ports::READINESS), value_parser = parse_addr)]
    readiness_addr: Listen,

    /// How long open connections may finish after SIGTERM before they are closed.
    #[arg(long, default_value_t = 30)]
    drain_seconds: u64,

    /// In-pod mode: serve each pod from listeners inside its network namespace, as the capture
    /// agent hands them over ZDS (instead of HBONE listeners on local workload addresses).
    #[arg(long, env = "INPOD_ENABLED", value_parser = clap::builder::BoolishValueParser::new())]
    inpod: bool,

    /// The capture agent's ZDS socket (in-pod mode).
    #[arg(long, env = "INPOD_UDS", default_value = InPodConfig::DEFAULT_ZDS_SOCKET)]
    inpod_uds: PathBuf,

    /// `SO_MARK` of the sockets the proxy opens inside pods (in-pod mode).
    #[arg(long, env = "INPOD_MARK", default_value_t = ports::PROXY_MARK)]
    inpod_mark: u32,

    /// Threads that carry connections (ztunnel's variable and default: 2, fewer on a machine
    /// with fewer CPUs). A proxy sharing a small machine with its workloads often does better
    /// with 1: fewer wake-ups cross CPUs.
    #[arg(long, env = "ZTUNNEL_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
}

pub(crate) fn run(args: NodeArgs, log: LogHandle, json_logs: bool) -> anyhow::Result<()> {
    let control_plane = &args.control_plane;
    let source = match &args.local_config {
        Some(path) => ConfigSource::LocalFile(path.clone()),
        None => ConfigSource::ControlPlane(control_plane.wds()),
    };
    let certificates = match (&args.ca_dir, &args.ca_address) {
        (Some(dir), _) => CertificateSource::LocalCa(dir.clone()),
        (None, Some(addr)) => CertificateSource::ControlPlane(control_plane.endpoint(addr)),
        (None, None) if control_plane.xds_plaintext => anyhow::bail!(
            "the CA is served over TLS only: pass --ca-address host:15012 or --ca-dir"
        ),
        (None, None) => CertificateSource::ControlPlane(control_plane.wds()),
    };
    let telemetry = Telemetry::new(
        Arc::new(Metrics::new()),
        if json_logs {
            LogFormat::Json
        } else {
            LogFormat::Text
        },
    );
    let mut config = NodeConfig::new(
        args.node_name.clone(),
        args.trust_domain.clone(),
        source,
        certificates,
    );
    config.cluster_id = args.cluster_id.clone();
    config.listeners = ListenerConfig {
        outbound: args.outbound_addr.0,
        inbound_passthrough: args.inbound_passthrough_addr.0,
        socks5: args.socks5_addr.0,
        hbone_port: args.hbone_port,
    };
    config.drain_deadline = Duration::from_secs(args.drain_seconds);
    if args.inpod {
        config.inpod = Some(InPodConfig {
            mark: args.inpod_mark,
            ..InPodConfig::new(args.inpod_uds.clone())
        });
    }
    config.telemetry = telemetry;
    let (current, set) = (log.clone(), log);
    let app = AppConfig {
        proxy: config,
        stats_addr: args.stats_addr.0,
        readiness_addr: args.readiness_addr.0,
        admin_addr: args.admin_addr.0,
        logging: LogControl::new(move || current.current(), move |filter| set.set(filter)),
    };
    ambit_app::runtime::block_on(
        Some(worker_threads(args.worker_threads)),
        ambit_node::app::run(app, Shutdown::new()),
    )
}

/// The data-path thread count: as asked, else 2 capped by the CPUs this process may use.
fn worker_threads(asked: Option<u16>) -> usize {
    const DEFAULT: usize = 2;
    asked.map_or_else(
        || std::thread::available_parallelism().map_or(DEFAULT, |n| n.get().min(DEFAULT)),
        usize::from,
    )
}
