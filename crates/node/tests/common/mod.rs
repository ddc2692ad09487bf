//! A loopback mesh for node proxy tests: a real control plane serving manifests (pods with
//! `127.x.y.z` addresses on named "nodes"), node proxies started against it with per-node
//! bootstrap tokens, echo applications, and SOCKS5 clients that connect from a workload's own
//! address (shared mode identifies the source by address).

#![allow(dead_code, unreachable_pub)] // each test binary uses a different subset
#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ambit_control::{ControlConfig, ControlPlane, SourceConfig};
use ambit_identity::grpc::{CaClient, tls_channel};
use ambit_identity::manager::{CertificateManager, ManagerConfig};
use ambit_identity::{ControlPlaneEndpoint, ControlPlaneTls, SpiffeId, SystemClock, TrustDomain};
use ambit_model::MeshConfig;
use ambit_node::NodeProxy;
use ambit_node::config::{CertificateSource, ConfigSource, ListenerConfig, NodeConfig};
use ambit_testkit::{LoopbackAddrs, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

pub const SERVER_NAME: &str = "istiod.istio-system.svc";

/// One pod of the manifests.
pub struct Pod<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub service_account: &'a str,
    pub node: &'a str,
    pub ip: Ipv4Addr,
}

/// A running control plane and what node proxies need to reach it.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub control: ControlPlane,
    pub root_file: PathBuf,
    pub addrs: LoopbackAddrs,
}

pub fn namespace(name: &str, ambient: bool) -> String {
    let labels = if ambient {
        "{istio.io/dataplane-mode: ambient}"
    } else {
        "{}"
    };
    format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {labels}}}\n")
}

/// A running pod's object. It carries the capture agent's mark
/// (`ambient.istio.io/redirection: enabled`), as a captured pod does on a cluster: in this tier
/// the SOCKS5 listener stands in for capture, and the control plane advertises a pod over HBONE
/// only once it is marked.
pub fn pod(p: &Pod<'_>) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\n\
         metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}, \
         annotations: {{ambient.istio.io/redirection: enabled}}}}\n\
         spec: {{serviceAccountName: {sa}, nodeName: {node}, containers: [{{name: c}}]}}\n\
         status: {{podIP: {ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n",
        name = p.name,
        ns = p.namespace,
        sa = p.service_account,
        node = p.node,
        ip = p.ip,
    )
}

/// A ClusterIP service selecting pods labelled `app: <app>`.
pub fn service(name: &str, ns: &str, vip: Ipv4Addr, port: u16, target: u16, app: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{clusterIP: {vip}, selector: {{app: {app}}}, ports: [{{port: {port}, targetPort: {target}}}]}}\n"
    )
}

pub fn token(node: &str) -> String {
    format!("{node}-bootstrap-token-0123456789abcdef")
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,h2=warn,rustls=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

impl Mesh {
    /// Starts a control plane serving `manifests`, with bootstrap tokens for `nodes`.
    pub async fn start(addrs: LoopbackAddrs, manifests: &str, nodes: &[&str]) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let manifest_dir = dir.path().join("manifests");
        std::fs::create_dir_all(&manifest_dir).unwrap();
        std::fs::write(manifest_dir.join("mesh.yaml"), manifests).unwrap();
        let tokens: String = nodes
            .iter()
            .map(|n| format!("{} {n}\n", token(n)))
            .collect();
        std::fs::write(dir.path().join("tokens"), tokens).unwrap();
        for n in nodes {
            std::fs::write(dir.path().join(format!("{n}.token")), token(n)).unwrap();
        }
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let control = ControlPlane::start(ControlConfig {
            source: SourceConfig::Dir {
                path: manifest_dir,
                poll: Duration::from_millis(20),
            },
            mesh: MeshConfig::istio_defaults(),
            ca_dir: dir.path().join("ca"),
            bootstrap_tokens: Some(dir.path().join("tokens")),
            plaintext_addr: Some(any),
            tls_addr: Some(any),
            monitoring_addr: None,
            debug_addr: None,
            debounce: Duration::from_millis(20),
            serving_names: vec![SERVER_NAME.to_owned()],
        })
        .await
        .unwrap();
        let root_file = dir.path().join("root-cert.pem");
        std::fs::write(&root_file, control.ca().root_pem()).unwrap();
        Self {
            dir,
            control,
            root_file,
            addrs,
        }
    }

    pub fn endpoint(&self, node: &str) -> ControlPlaneEndpoint {
        ControlPlaneEndpoint::tls(
            self.control.addrs().tls.unwrap().to_string(),
            ControlPlaneTls {
                server_name: SERVER_NAME.to_owned(),
                root_cert_file: self.root_file.clone(),
                token_file: self.dir.path().join(format!("{node}.token")),
            },
        )
    }

    /// A node proxy config for `node`: WDS and CA over TLS with the node's token, listeners on
    /// a fresh loopback address with kernel-chosen ports, short timeouts.
    pub fn node_config(&self, node: &str) -> NodeConfig {
        let endpoint = self.endpoint(node);
        let mut config = NodeConfig::new(
            node,
            TrustDomain::new("cluster.local").unwrap(),
            ConfigSource::ControlPlane(endpoint.clone()),
            CertificateSource::ControlPlane(endpoint),
        );
        config.listeners = ListenerConfig::ephemeral(IpAddr::V4(self.addrs.next_addr()));
        config.timeouts.handshake = Duration::from_secs(3);
        config.timeouts.connect = Duration::from_secs(3);
        config
    }

    /// Starts a node proxy and waits until it holds the mesh.
    pub async fn node(&self, config: NodeConfig) -> NodeProxy {
        let proxy = NodeProxy::start(config).await.unwrap();
        eventually!(proxy.state().is_synced());
        proxy
    }

    /// A certificate manager speaking to the CA as `node` (to hold identities in tests).
    pub fn ca_manager(&self, node: &str) -> CertificateManager<CaClient> {
        let roots = self.control.ca().roots().to_vec();
        let tls = ambit_identity::tls::control_plane_client_config(&roots).unwrap();
        let addr = self.control.addrs().tls.unwrap().to_string();
        let channel = tls_channel(&addr, SERVER_NAME, tls).unwrap();
        let token = token(node);
        CertificateManager::new(
            CaClient::new(channel, move || Some(token.clone())),
            Arc::new(SystemClock),
            ManagerConfig::default(),
        )
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
        .parse()
        .unwrap()
}

/// Waits until `proxy` serves HBONE on `ip:port`.
pub async fn wait_hbone(proxy: &NodeProxy, ip: Ipv4Addr, port: u16) {
    let addr = SocketAddr::from((ip, port));
    eventually!(observe = proxy.hbone_addrs(), |bound| bound.contains(&addr));
}

/// An echo application: writes back everything, half-closes when its client does.
pub struct Echo {
    pub addr: SocketAddr,
    /// Bytes received over all connections.
    pub received: Arc<AtomicU64>,
    /// Connections accepted.
    pub accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn echo(addr: SocketAddr) -> Echo {
    let listener = TcpListener::bind(addr).await.unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let (r, a) = (received.clone(), accepted.clone());
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            r.fetch_add(n as u64, Ordering::SeqCst);
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    Echo {
        addr,
        received,
        accepted,
        task,
    }
}

/// Connects through a SOCKS5 proxy from `from`; `Err(code)` is the proxy's reply code.
pub async fn socks_connect(
    socks: SocketAddr,
    from: IpAddr,
    dst: SocketAddr,
) -> Result<TcpStream, u8> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    let mut stream = socket.connect(socks).await.unwrap();
    stream.write_all(&[5, 1, 0]).await.unwrap();
    let mut choice = [0u8; 2];
    stream.read_exact(&mut choice).await.unwrap();
    assert_eq!(choice, [5, 0]);
    let IpAddr::V4(ip) = dst.ip() else {
        panic!("tests use IPv4")
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend_from_slice(&ip.octets());
    request.extend_from_slice(&dst.port().to_be_bytes());
    stream.write_all(&request).await.unwrap();
    let mut reply = [0u8; 10];
    match tokio::time::timeout(Duration::from_secs(15), stream.read_exact(&mut reply)).await {
        Ok(Ok(_)) if reply[1] == 0 => Ok(stream),
        Ok(Ok(_)) => Err(reply[1]),
        Ok(Err(e)) => panic!("SOCKS reply: {e}"),
        Err(_) => panic!("no SOCKS reply"),
    }
}

/// Sends `payload`, half-closes, and reads everything back.
pub async fn echo_roundtrip(mut stream: TcpStream, payload: &[u8]) -> Vec<u8> {
    stream.write_all(payload).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), stream.read_to_end(&mut back))
        .await
        .expect("echo timed out")
        .unwrap();
    back
}

/// Sum of the samples of metric `name` whose labels include every pair of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
