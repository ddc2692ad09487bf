//! What `ambit node` is told: who it is, where its configuration and certificates come from,
//! where it listens, and how patient it is.
//!
//! Everything here is plain data, already typed (a [`TrustDomain`], socket addresses, paths):
//! the binary parses flags into a [`NodeConfig`] and [`crate::NodeProxy::start`] never
//! re-checks strings.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_identity::{ControlPlaneEndpoint, TrustDomain};
use ambit_proto::ports;

use crate::telemetry::{LogFormat, Metrics, Telemetry};

/// Everything a node proxy needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The Kubernetes node this proxy serves: workloads whose `node` is this name are local.
    pub node_name: String,
    /// Istio's `CLUSTER_ID`, reported in metrics and `Baggage`.
    pub cluster_id: String,
    /// Trust domain of identities whose workload resource names none.
    pub trust_domain: TrustDomain,
    /// Where workloads, services and policies come from.
    pub source: ConfigSource,
    /// Where workload certificates come from.
    pub certificates: CertificateSource,
    pub listeners: ListenerConfig,
    /// The port dialed on a destination workload for HBONE. Always 15008 against Istio; a test
    /// may point it elsewhere to put a relay on the path.
    pub peer_hbone_port: u16,
    /// How long [`crate::NodeProxy::drain`] lets open connections finish, unless told otherwise.
    pub drain_deadline: Duration,
    pub timeouts: Timeouts,
    pub pool: PoolConfig,
    /// Where access logs and metrics go; share it with the admin and stats servers.
    pub telemetry: Telemetry,
    /// In-pod mode: pods arrive over ZDS and are served by listeners inside their own network
    /// namespaces. `None`: shared mode (HBONE listeners on local workload addresses).
    pub inpod: Option<InPodConfig>,
}

/// In-pod mode (Istio's `INPOD_ENABLED`): where the capture agent's ZDS socket is and how the
/// listeners opened inside each pod look.
#[derive(Debug, Clone)]
pub struct InPodConfig {
    /// The capture agent's seqpacket socket (Istio's `INPOD_UDS`).
    pub zds_socket: PathBuf,
    /// `SO_MARK` of every socket opened in a pod (Istio's `INPOD_MARK`, 1337 = 0x539): the
    /// pod's redirection rules let marked traffic through.
    pub mark: u32,
    /// Port of the outbound listener, on `127.0.0.1` inside each pod (15001).
    pub outbound_port: u16,
    /// Port of the inbound plaintext listener, on every address inside each pod (15006). The
    /// HBONE listener beside it takes [`ListenerConfig::hbone_port`].
    pub inbound_passthrough_port: u16,
}

/// Where the mesh configuration comes from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConfigSource {
    /// WDS (delta xDS) from a control plane: `ambit control` or istiod.
    ControlPlane(ControlPlaneEndpoint),
    /// A static file of workloads and services (YAML or JSON, see [`crate::local_config`]):
    /// no control plane at all.
    LocalFile(PathBuf),
}

/// Where workload certificates come from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CertificateSource {
    /// `IstioCertificateService` of a control plane; the endpoint must use TLS.
    ControlPlane(ControlPlaneEndpoint),
    /// An in-process CA in Istio's plug-in layout (single host, no control plane).
    LocalCa(PathBuf),
    /// No certificates: every HBONE connection fails closed; only plaintext passthrough works.
    None,
}

/// The listeners of the proxy's own network namespace (shared mode). `None` disables one.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// 15001: redirected outbound connections (`SO_ORIGINAL_DST`).
    pub outbound: Option<SocketAddr>,
    /// 15006: plaintext from outside the mesh, redirected to local workloads.
    pub inbound_passthrough: Option<SocketAddr>,
    /// 15080: SOCKS5 CONNECT, for hosts without redirection and for tests.
    pub socks5: Option<SocketAddr>,
    /// Port of the HBONE listener bound on each local workload's address (15008).
    pub hbone_port: u16,
}

/// Bounds on waiting, so a stalled peer costs a timer, not a task forever.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP connect to an application or a peer proxy.
    pub connect: Duration,
    /// TLS, HTTP/2 and SOCKS5 handshakes, and the wait for a CONNECT response.
    pub handshake: Duration,
    /// A proxied connection with no byte in either direction for this long is closed.
    pub idle: Duration,
    /// How long an outbound connection waits for an on-demand lookup of an unknown address.
    pub on_demand: Duration,
    /// An inbound HBONE connection without any stream for this long is closed.
    pub hbone_idle: Duration,
}

/// The outbound HBONE connection pool.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Streams carried by one HTTP/2 connection before another is opened.
    pub max_streams_per_connection: usize,
    /// A pooled connection without streams for this long is closed.
    pub idle_timeout: Duration,
}

// === impl NodeConfig ===

impl NodeConfig {
    /// A configuration with Istio's ports on loopback and default timeouts.
    pub fn new(
        node_name: impl Into<String>,
        trust_domain: TrustDomain,
        source: ConfigSource,
        certificates: CertificateSource,
    ) -> Self {
        Self {
            node_name: node_name.into(),
            cluster_id: "Kubernetes".to_owned(),
            trust_domain,
            source,
            certificates,
            listeners: ListenerConfig::default(),
            peer_hbone_port: ports::HBONE,
            drain_deadline: Duration::from_secs(30),
            timeouts: Timeouts::default(),
            pool: PoolConfig::default(),
            telemetry: Telemetry::new(Arc::new(Metrics::new()), LogFormat::default()),
            inpod: None,
        }
    }
}

impl InPodConfig {
    /// Istio's default ZDS socket.
    pub const DEFAULT_ZDS_SOCKET: &str = "/var/run/ztunnel/ztunnel.sock";

    /// Istio's mark and ports, with the ZDS socket at `zds_socket`.
    pub fn new(zds_socket: impl Into<PathBuf>) -> Self {
        Self {
            zds_socket: zds_socket.into(),
            mark: ports::PROXY_MARK,
            outbound_port: ports::OUTBOUND,
            inbound_passthrough_port: ports::INBOUND_PASSTHROUGH,
        }
    }
}

impl Default for ListenerConfig {
    /// Istio's ports on `127.0.0.1`.
    fn default() -> Self {
        let on = |port| Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        Self {
            outbound: on(ports::OUTBOUND),
            inbound_passthrough: on(ports::INBOUND_PASSTHROUGH),
            socks5: on(ports::SOCKS5),
            hbone_port: ports::HBONE,
        }
    }
}

impl ListenerConfig {
    /// Every listener on `ip` with a kernel-chosen port (tests).
    pub fn ephemeral(ip: std::net::IpAddr) -> Self {
        let any = Some(SocketAddr::new(ip, 0));
        Self {
            outbound: any,
            inbound_passthrough: any,
            socks5: any,
            hbone_port: ports::HBONE,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            handshake: Duration::from_secs(10),
            idle: Duration::from_secs(3600),
            on_demand: Duration::from_millis(500),
            hbone_idle: Duration::from_secs(300),
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_streams_per_connection: 100,
            idle_timeout: Duration::from_secs(60),
        }
    }
}
