//! `ambit control`: the control plane's flags (istiod's ambient subset), handed to
//! [`ambit_control::app::run`].

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ambit_app::Shutdown;
use ambit_control::{ControlConfig, SourceConfig};
use ambit_identity::TrustDomain;
use ambit_model::MeshConfig;
use ambit_proto::ports;
use clap::Args;

#[derive(Debug, Args)]
pub(crate) struct ControlArgs {
    /// Where cluster objects come from: a directory of manifests, or the Kubernetes API.
    #[arg(long, value_enum, default_value_t = Source::Dir)]
    source: Source,

    /// Directory of Kubernetes manifests to serve (Namespaces, Pods, Services, EndpointSlices,
    /// ServiceAccounts, AuthorizationPolicies, PeerAuthentications); watched for changes.
    #[arg(long, required_if_eq("source", "dir"))]
    config_dir: Option<PathBuf>,

    /// Kubeconfig for `--source kubernetes` (default: `KUBECONFIG`, `~/.kube/config`, or the
    /// pod's in-cluster configuration).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,

    /// CA directory in Istio's plug-in layout. With `--source dir` a self-signed root is created
    /// there if it is empty; with `--source kubernetes` an empty directory means the self-signed
    /// root kept in Secret `istio-ca-secret` of `POD_NAMESPACE`, created by the first start.
    #[arg(long, default_value = "./ambit-ca")]
    ca_dir: PathBuf,

    /// File of `<token> <node-name>` lines that authenticate node proxies on the TLS port.
    #[arg(long)]
    bootstrap_tokens: Option<PathBuf>,

    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: TrustDomain,

    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    cluster_id: String,

    /// Namespace whose policies apply mesh-wide.
    #[arg(long, env = "ROOT_NAMESPACE", default_value = "istio-system")]
    root_namespace: String,

    #[arg(long, default_value = "cluster.local")]
    domain_suffix: String,

    /// Plaintext WDS; keep it on loopback. `off` disables it.
    #[arg(long, default_value_t = Listen::on(Ipv4Addr::LOCALHOST, ports::XDS_PLAINTEXT), value_parser = parse_addr)]
    plaintext_addr: Listen,

    /// WDS and CA over TLS, bearer token required (needs --bootstrap-tokens). `off` disables it.
    #[arg(long, default_value = "off", value_parser = parse_addr)]
    tls_addr: Listen,

    /// `/metrics`, `/ready` and `/debug/…`. `off` disables it.
    #[arg(long, default_value_t = Listen::on(Ipv4Addr::LOCALHOST, ports::MONITORING), value_parser = parse_addr)]
    monitoring_addr: Listen,

    /// `/debug/…` on a port of its own; then the monitoring port no longer serves it. `off`
    /// (the default) keeps `/debug/…` on the monitoring port.
    #[arg(long, default_value = "off", value_parser = parse_addr)]
    debug_addr: Listen,

    /// Quiet time after a change before pushing, in milliseconds.
    #[arg(long, default_value_t = 50)]
    debounce_ms: u64,

    /// How often the manifest directory is checked, in milliseconds.
    #[arg(long, default_value_t = 250)]
    poll_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    Dir,
    Kubernetes,
}

pub(crate) fn run(args: ControlArgs) -> anyhow::Result<()> {
    let namespace = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "istio-system".to_owned());
    let serving_names = vec![
        format!("istiod.{namespace}.svc"),
        format!("istiod.{namespace}.svc.{}", args.domain_suffix),
        "istiod".to_owned(),
        "localhost".to_owned(),
    ];
    let config = ControlConfig {
        source: match (args.source, args.config_dir) {
            (Source::Dir, Some(path)) => SourceConfig::Dir {
                path,
                poll: Duration::from_millis(args.poll_ms),
            },
            (Source::Dir, None) => anyhow::bail!("--source dir needs --config-dir"),
            (Source::Kubernetes, _) => SourceConfig::Kubernetes {
                namespace: namespace.clone(),
                kubeconfig: args.kubeconfig,
            },
        },
        mesh: MeshConfig {
            trust_domain: args.trust_domain,
            cluster_id: args.cluster_id,
            domain_suffix: args.domain_suffix,
            network: String::new(),
            root_namespace: args.root_namespace,
        },
        ca_dir: args.ca_dir,
        bootstrap_tokens: args.bootstrap_tokens,
        plaintext_addr: args.plaintext_addr.0,
        tls_addr: args.tls_addr.0,
        monitoring_addr: args.monitoring_addr.0,
        debug_addr: args.debug_addr.0,
        debounce: Duration::from_millis(args.debounce_ms),
        serving_names,
    };
    ambit_app::runtime::block_on(None, ambit_control::app::run(config, Shutdown::new()))
}

/// A listen address, or `off`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listen(pub(crate) Option<SocketAddr>);

impl Listen {
    /// `ip:port` (a flag's default).
    pub(crate) fn on(ip: Ipv4Addr, port: u16) -> Self {
        Self(Some(SocketAddr::from((ip, port))))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("off"),
        }
    }
}

pub(crate) fn parse_addr(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen(None));
    }
    s.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|e| format!("{s:?} is not an ip:port address (or `off`): {e}"))
}
