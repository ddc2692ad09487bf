//! What the control-plane tests of the tier share: a control plane in this process pointed at an
//! API server, a WDS client that records what it receives and when, and the charts' CRDs.

#![allow(dead_code)] // each test crate uses a part
#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_control::{ControlConfig, ControlPlane, SourceConfig};
use ambit_identity::grpc::plaintext_channel;
use ambit_kubetier::{Cluster, RoleProcess};
use ambit_model::MeshConfig;
use ambit_proto::envoy::config::core::v3::Node;
use ambit_proto::security::Authorization;
use ambit_proto::workload::{Address, address};
use ambit_xds::client::{ClientConfig, ClientHandle, Handler, Subscription, Update, XdsClient};
use prost::Message;

/// Where a control plane listens and keeps its CA directory; fixed ports, so a restarted control
/// plane is found where the old one was.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) kubeconfig: PathBuf,
    pub(crate) namespace: String,
    pub(crate) ca_dir: PathBuf,
    pub(crate) plaintext: SocketAddr,
    pub(crate) tls: SocketAddr,
    pub(crate) monitoring: SocketAddr,
}

impl Plan {
    /// Free loopback ports and an empty CA directory under `dir`.
    pub(crate) fn new(kubeconfig: &Path, namespace: &str, dir: &Path) -> Self {
        let ca_dir = dir.join("cacerts");
        std::fs::create_dir_all(&ca_dir).unwrap();
        Self {
            kubeconfig: kubeconfig.to_owned(),
            namespace: namespace.to_owned(),
            ca_dir,
            plaintext: free_port(),
            tls: free_port(),
            monitoring: free_port(),
        }
    }

    pub(crate) fn config(&self) -> ControlConfig {
        ControlConfig {
            source: SourceConfig::Kubernetes {
                namespace: self.namespace.clone(),
                kubeconfig: Some(self.kubeconfig.clone()),
            },
            mesh: MeshConfig::istio_defaults(),
            ca_dir: self.ca_dir.clone(),
            bootstrap_tokens: None,
            plaintext_addr: Some(self.plaintext),
            tls_addr: Some(self.tls),
            monitoring_addr: Some(self.monitoring),
            debug_addr: None,
            // The binary's default.
            debounce: Duration::from_millis(50),
            serving_names: vec!["istiod.istio-system.svc".to_owned()],
        }
    }

    /// Starts a control plane in this process; returns once it serves (every watched kind
    /// listed, CA loaded).
    pub(crate) async fn start(&self) -> ControlPlane {
        ControlPlane::start(self.config()).await.unwrap()
    }

    /// The same control plane on other ports (a replica, or a restart while the old ports may
    /// still be held by connections being torn down).
    pub(crate) fn on_new_ports(&self) -> Self {
        Self {
            plaintext: free_port(),
            tls: free_port(),
            monitoring: free_port(),
            ..self.clone()
        }
    }

    /// `ambit control --source kubernetes` as a process with this plan's ports and CA folder, so
    /// that a restart is a real one (every connection closed by the kernel).
    pub(crate) fn process(&self, cluster: &Cluster) -> RoleProcess {
        let addr = |a: SocketAddr| a.to_string();
        let args = [
            "control".to_owned(),
            "--source".to_owned(),
            "kubernetes".to_owned(),
            "--plaintext-addr".to_owned(),
            addr(self.plaintext),
            "--tls-addr".to_owned(),
            addr(self.tls),
            "--monitoring-addr".to_owned(),
            addr(self.monitoring),
            "--ca-dir".to_owned(),
            self.ca_dir.display().to_string(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        RoleProcess::ambit(
            cluster,
            "control",
            &args,
            &self.kubeconfig,
            &[("POD_NAMESPACE", self.namespace.as_str())],
        )
        .unwrap()
    }

    /// Waits until `/ready` answers 200.
    pub(crate) async fn ready(&self) {
        let monitoring = self.monitoring;
        ambit_testkit::eventually!(
            timeout = Duration::from_secs(60),
            observe = http_get(monitoring, "/ready").await.map(|(code, _)| code),
            |code| code == Some(200)
        );
    }
}

/// A loopback port nothing listens on now.
pub(crate) fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// `GET path` on `addr`: (status code, body).
pub(crate) async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// One received resource change.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) at: Instant,
    pub(crate) type_url: String,
    pub(crate) upserts: Vec<String>,
    pub(crate) removals: Vec<String>,
}

/// What a WDS client holds, and every update it received.
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    pub(crate) addresses: Mutex<BTreeMap<String, Address>>,
    pub(crate) authorizations: Mutex<BTreeMap<String, Authorization>>,
    pub(crate) log: Mutex<Vec<Received>>,
    /// Type URLs whose first response (after each connect) arrived.
    pub(crate) initial: Mutex<Vec<String>>,
}

impl Handler for Mirror {
    fn handle(&self, type_url: &str, update: Update) -> Result<(), String> {
        fn apply<M: Message + Default>(
            map: &Mutex<BTreeMap<String, M>>,
            update: &Update,
        ) -> Result<(), String> {
            let mut map = map.lock().unwrap();
            for r in &update.upserts {
                let decoded = M::decode(r.body.value.as_slice()).map_err(|e| e.to_string())?;
                map.insert(r.name.clone(), decoded);
            }
            for name in &update.removals {
                map.remove(name);
            }
            Ok(())
        }
        if update.initial {
            self.initial.lock().unwrap().push(type_url.to_owned());
        }
        match type_url {
            ambit_proto::ADDRESS_TYPE_URL => apply(&self.addresses, &update)?,
            ambit_proto::AUTHORIZATION_TYPE_URL => apply(&self.authorizations, &update)?,
            other => return Err(format!("unexpected type {other}")),
        }
        self.log.lock().unwrap().push(Received {
            at: Instant::now(),
            type_url: type_url.to_owned(),
            upserts: update.upserts.iter().map(|r| r.name.clone()).collect(),
            removals: update.removals.clone(),
        });
        Ok(())
    }
}

impl Mirror {
    /// Resources upserted or removed since log position `from`.
    pub(crate) fn changes_since(&self, from: usize) -> usize {
        self.log.lock().unwrap()[from..]
            .iter()
            .map(|r| r.upserts.len() + r.removals.len())
            .sum()
    }

    pub(crate) fn log_len(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The workload `uid` as served.
    pub(crate) fn workload(&self, uid: &str) -> Option<ambit_proto::workload::Workload> {
        match self.addresses.lock().unwrap().get(uid)?.r#type.clone()? {
            address::Type::Workload(w) => Some(w),
            address::Type::Service(_) => None,
        }
    }
}

/// A wildcard WDS client (addresses and authorizations) of the plaintext port at `addr`; it
/// reconnects on its own, sending the versions it holds.
pub(crate) fn wds_client(addr: SocketAddr, mirror: Arc<Mirror>) -> ClientHandle {
    let channel = plaintext_channel(&addr.to_string()).unwrap();
    let config = ClientConfig::new(Node {
        id: "kubetier-wds-client".to_owned(),
        ..Node::default()
    })
    .subscribe(ambit_proto::ADDRESS_TYPE_URL, Subscription::Wildcard)
    .subscribe(ambit_proto::AUTHORIZATION_TYPE_URL, Subscription::Wildcard);
    XdsClient::new(
        move || std::future::ready(Ok(channel.clone())),
        config,
        mirror,
    )
    .start()
}

/// Installs the security.istio.io CRDs (the ambit-base chart, rendered by Helm) into `cluster`.
pub(crate) async fn install_crds(cluster: &Cluster) {
    let rendered = cluster
        .admin_helm(&[
            "template",
            "ambit-base",
            &cluster
                .repo()
                .join("deploy/charts/ambit-base")
                .display()
                .to_string(),
        ])
        .await
        .unwrap();
    let file = cluster
        .scratch()
        .unwrap()
        .join(format!("{}.yaml", ambit_kubetier::unique_name("crds")));
    std::fs::write(&file, rendered).unwrap();
    cluster.apply_files(&[file.as_path()]).await.unwrap();
}

/// The p-th percentile (0–100) of `samples`, nearest rank.
pub(crate) fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
