//! The control plane end to end on loopback: manifests on disk → WDS clients (plaintext and
//! TLS with bearer tokens) following edits → the CA issuing only what a node is entitled to.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_control::{ControlConfig, ControlPlane, SourceConfig};
use ambit_identity::grpc::{CaClient, plaintext_channel, tls_channel};
use ambit_identity::manager::{CertificateManager, ManagerConfig, ManagerError};
use ambit_identity::{SpiffeId, SystemClock};
use ambit_model::MeshConfig;
use ambit_proto::capture::PodEnrollment;
use ambit_proto::envoy::config::core::v3::Node;
use ambit_proto::workload::{Address, TunnelProtocol, address};
use ambit_testkit::eventually;
use ambit_xds::client::{ClientConfig, Handler, Subscription, Update, XdsClient};
use prost::Message;

const NODE_A_TOKEN: &str = "node-a-bootstrap-token-0123456789";
const NODE_B_TOKEN: &str = "node-b-bootstrap-token-0123456789";

/// Mirrors what a WDS client holds: resource name → decoded Address.
#[derive(Debug, Default)]
struct Mirror {
    resources: Mutex<BTreeMap<String, Address>>,
}

impl Handler for Mirror {
    fn handle(&self, _type_url: &str, update: Update) -> Result<(), String> {
        let mut resources = self.resources.lock().unwrap();
        for r in update.upserts {
            let addr = Address::decode(r.body.value.as_slice()).map_err(|e| e.to_string())?;
            resources.insert(r.name, addr);
        }
        for name in update.removals {
            resources.remove(&name);
        }
        Ok(())
    }
}

impl Mirror {
    fn names(&self) -> Vec<String> {
        self.resources.lock().unwrap().keys().cloned().collect()
    }

    fn workload_protocol(&self, uid: &str) -> Option<i32> {
        match self.resources.lock().unwrap().get(uid)?.r#type.as_ref()? {
            address::Type::Workload(w) => Some(w.tunnel_protocol),
            address::Type::Service(_) => None,
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    // Coarse timestamps could hide a rewrite of the same size within one tick.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let bump = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now() + Duration::from_secs(bump);
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

fn pod(name: &str, sa: &str, node: &str, ip: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: prometheus, labels: {{app: {name}}}, \
         annotations: {{ambient.istio.io/redirection: enabled}}}}\n\
         spec: {{serviceAccountName: {sa}, nodeName: {node}, containers: [{{name: c}}]}}\n\
         status: {{podIP: {ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n"
    )
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: prometheus, labels: {istio.io/dataplane-mode: ambient}}\n";
const SERVICE: &str = "---\napiVersion: v1\nkind: Service\nmetadata: {name: exporter, namespace: prometheus}\n\
    spec: {clusterIP: 10.96.0.10, selector: {app: exporter}, ports: [{port: 9100}]}\n";

async fn start(dir: &Path) -> ControlPlane {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    write(
        &manifests,
        "mesh.yaml",
        &[
            NAMESPACE.to_owned(),
            pod("scraper", "scraper", "node-a", "10.0.0.1"),
            pod("exporter", "exporter", "node-b", "10.0.0.2"),
            SERVICE.to_owned(),
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("tokens"),
        format!("{NODE_A_TOKEN} node-a\n{NODE_B_TOKEN} node-b\n"),
    )
    .unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    ControlPlane::start(ControlConfig {
        source: SourceConfig::Dir {
            path: manifests,
            poll: Duration::from_millis(20),
        },
        mesh: MeshConfig::istio_defaults(),
        ca_dir: dir.join("ca"),
        bootstrap_tokens: Some(dir.join("tokens")),
        plaintext_addr: Some(any),
        tls_addr: Some(any),
        monitoring_addr: Some(any),
        debug_addr: None,
        debounce: Duration::from_millis(20),
        serving_names: vec!["istiod.istio-system.svc".to_owned()],
    })
    .await
    .unwrap()
}

fn node(id: &str) -> Node {
    Node {
        id: id.to_owned(),
        ..Node::default()
    }
}

fn wds_client(
    channel: tonic::transport::Channel,
    mirror: Arc<Mirror>,
    token: Option<&'static str>,
) -> ambit_xds::client::ClientHandle {
    let config = ClientConfig::new(node("test"))
        .subscribe(ambit_proto::ADDRESS_TYPE_URL, Subscription::Wildcard);
    XdsClient::new(
        move || std::future::ready(Ok(channel.clone())),
        config,
        mirror,
    )
    .with_bearer_token(move || token.map(str::to_owned))
    .start()
}

#[tokio::test]
async fn wds_follows_the_manifest_directory() {
    let dir = tempfile::tempdir().unwrap();
    let control = start(dir.path()).await;
    let addr = control.addrs().plaintext.unwrap().to_string();

    let mirror = Arc::new(Mirror::default());
    let _client = wds_client(plaintext_channel(&addr).unwrap(), mirror.clone(), None);
    let scraper = "Kubernetes//Pod/prometheus/scraper";
    let exporter = "Kubernetes//Pod/prometheus/exporter";
    let service = "prometheus/exporter.prometheus.svc.cluster.local";
    eventually!(observe = mirror.names(), |n| n
        == [scraper, exporter, service]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .tap_sort());
    assert_eq!(
        mirror.workload_protocol(scraper),
        Some(TunnelProtocol::Hbone as i32)
    );

    // Opt the scraper out and add a pod: the client sees both.
    let manifests = dir.path().join("manifests");
    let opted_out = pod("scraper", "scraper", "node-a", "10.0.0.1").replace(
        "labels: {app: scraper}",
        "labels: {app: scraper, istio.io/dataplane-mode: none}",
    );
    write(
        &manifests,
        "mesh.yaml",
        &[
            NAMESPACE.to_owned(),
            opted_out,
            pod("exporter", "exporter", "node-b", "10.0.0.2"),
            SERVICE.to_owned(),
        ]
        .concat(),
    );
    write(
        &manifests,
        "extra.yaml",
        &pod("late", "late", "node-a", "10.0.0.3"),
    );
    eventually!(observe = mirror.workload_protocol(scraper), |p| p
        == Some(TunnelProtocol::None as i32));
    eventually!(observe = mirror.names(), |n| n
        .contains(&"Kubernetes//Pod/prometheus/late".to_owned()));

    // Remove a file: its pod is removed from every client.
    std::fs::remove_file(manifests.join("extra.yaml")).unwrap();
    eventually!(observe = mirror.names(), |n| !n
        .contains(&"Kubernetes//Pod/prometheus/late".to_owned()));

    // A broken edit is reported and keeps the last good state.
    write(
        &manifests,
        "mesh.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: scraper\n",
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        mirror.names().contains(&scraper.to_owned()),
        "a bad edit must not remove served workloads"
    );
}

#[tokio::test]
async fn tls_port_requires_a_token_and_the_ca_authorizes_by_node() {
    let dir = tempfile::tempdir().unwrap();
    let control = start(dir.path()).await;
    let tls_addr = control.addrs().tls.unwrap().to_string();
    let roots = control.ca().roots().to_vec();
    let tls = ambit_identity::tls::control_plane_client_config(&roots).unwrap();
    let channel = tls_channel(&tls_addr, "istiod.istio-system.svc", tls).unwrap();

    // WDS over TLS with a node token gets the mesh; without a token it is refused.
    let with_token = Arc::new(Mirror::default());
    let client = wds_client(channel.clone(), with_token.clone(), Some(NODE_A_TOKEN));
    eventually!(observe = with_token.names().len(), |n| n == 3);
    assert!(client.connected());
    let without = Arc::new(Mirror::default());
    let refused = wds_client(channel.clone(), without.clone(), None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        without.names().is_empty() && !refused.connected(),
        "no token, no mesh"
    );

    let manager = |token: &'static str| {
        CertificateManager::new(
            CaClient::new(channel.clone(), move || Some(token.to_owned())),
            Arc::new(SystemClock),
            ManagerConfig::default(),
        )
    };
    let scraper: SpiffeId = "spiffe://cluster.local/ns/prometheus/sa/scraper"
        .parse()
        .unwrap();
    let exporter: SpiffeId = "spiffe://cluster.local/ns/prometheus/sa/exporter"
        .parse()
        .unwrap();

    // node-a runs the scraper: it gets the scraper's certificate, validated by the manager.
    let cert = manager(NODE_A_TOKEN).fetch(&scraper).await.unwrap();
    assert_eq!(cert.identity(), &scraper);

    // node-a does not run the exporter: refused, and the refusal names node, identity and why.
    let err = manager(NODE_A_TOKEN).fetch(&exporter).await.unwrap_err();
    let message = error_chain(&err);
    assert!(matches!(err, ManagerError::Sign { .. }), "{message}");
    assert!(
        message.contains("PermissionDenied")
            && message.contains("node-a")
            && message.contains(exporter.as_str())
            && message.contains("no pod with service account prometheus/exporter"),
        "{message}"
    );

    // node-b does run it.
    assert_eq!(
        manager(NODE_B_TOKEN)
            .fetch(&exporter)
            .await
            .unwrap()
            .identity(),
        &exporter
    );

    // An unknown token is unauthenticated.
    let err = manager("not-a-real-token-but-long-enough")
        .fetch(&scraper)
        .await
        .unwrap_err();
    assert!(
        error_chain(&err).contains("Unauthenticated"),
        "{}",
        error_chain(&err)
    );

    // The monitoring port counts what happened.
    let metrics = http_get(control.addrs().monitoring.unwrap(), "/metrics").await;
    assert!(
        metrics.contains("ambit_ca_certificates_issued_total 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ambit_ca_requests_denied_total 1"),
        "{metrics}"
    );
    let services = http_get(control.addrs().monitoring.unwrap(), "/debug/services").await;
    let body: serde_json::Value =
        serde_json::from_str(services.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        body["services"][0]["hostname"],
        "exporter.prometheus.svc.cluster.local"
    );
    assert_eq!(
        body["services"][0]["endpoints"], 1,
        "only the exporter pod backs it: {body}"
    );
    let workloads = http_get(control.addrs().monitoring.unwrap(), "/debug/workloads").await;
    assert!(
        workloads.contains("spiffe://cluster.local/ns/prometheus/sa/scraper")
            && workloads.contains("\"HBONE\""),
        "{workloads}"
    );
}

/// Mirrors the `ambit.capture.PodEnrollment` resources a capture agent follows.
#[derive(Debug, Default)]
struct PodMirror {
    pods: Mutex<BTreeMap<String, PodEnrollment>>,
}

impl Handler for PodMirror {
    fn handle(&self, _type_url: &str, update: Update) -> Result<(), String> {
        let mut pods = self.pods.lock().unwrap();
        for r in update.upserts {
            let pod = PodEnrollment::decode(r.body.value.as_slice()).map_err(|e| e.to_string())?;
            pods.insert(r.name, pod);
        }
        for name in update.removals {
            pods.remove(&name);
        }
        Ok(())
    }
}

impl PodMirror {
    fn get(&self, name: &str) -> Option<PodEnrollment> {
        self.pods.lock().unwrap().get(name).cloned()
    }
}

/// A cluster's order: the pod's object exists without an IP (the capture agent must decide at
/// CNI ADD from it), the agent marks it, kubelet writes its IP. The control plane describes
/// the pod with its decision from the first step, and advertises it over HBONE only once it
/// is marked.
#[tokio::test]
async fn a_pod_is_decided_before_it_has_an_ip_and_speaks_hbone_once_marked() {
    let dir = tempfile::tempdir().unwrap();
    let control = start(dir.path()).await;
    let addr = control.addrs().plaintext.unwrap().to_string();
    let channel = plaintext_channel(&addr).unwrap();
    let pods = Arc::new(PodMirror::default());
    let config = ClientConfig::new(node("ambit-cni-node-a"))
        .subscribe(ambit_proto::POD_ENROLLMENT_TYPE_URL, Subscription::Wildcard);
    let connect = {
        let channel = channel.clone();
        move || std::future::ready(Ok(channel.clone()))
    };
    let _pods_client = XdsClient::new(connect, config, pods.clone()).start();
    let mirror = Arc::new(Mirror::default());
    let _wds = wds_client(channel, mirror.clone(), None);

    // 1. The object, scheduled to node-a, without an IP or the mark.
    let manifests = dir.path().join("manifests");
    let fresh = |annotations: &str, status: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: fresh, namespace: prometheus, uid: u-fresh, \
             labels: {{app: fresh}}, annotations: {{{annotations}}}}}\n\
             spec: {{serviceAccountName: fresh-sa, nodeName: node-a, containers: [{{name: c}}]}}\n\
             status: {status}\n"
        )
    };
    let optout = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: batch, namespace: prometheus, uid: u-batch, \
         labels: {app: batch, istio.io/dataplane-mode: none}}\n\
         spec: {nodeName: node-a, containers: [{name: c}]}\nstatus: {phase: Pending}\n";
    write(
        &manifests,
        "fresh.yaml",
        &(fresh("", "{phase: Pending}") + optout),
    );
    eventually!(observe = pods.get("prometheus/fresh"), |p| p.is_some());
    let described = pods.get("prometheus/fresh").unwrap();
    assert!(described.enrolled, "{described:?}");
    assert_eq!(
        (
            described.uid.as_str(),
            described.node.as_str(),
            described.service_account.as_str()
        ),
        ("u-fresh", "node-a", "fresh-sa")
    );
    assert!(described.addresses.is_empty(), "no IP yet");
    assert!(
        described.reason.contains("istio.io/dataplane-mode"),
        "{described:?}"
    );
    eventually!(observe = pods.get("prometheus/batch"), |p| p.is_some());
    let batch = pods.get("prometheus/batch").unwrap();
    assert!(
        !batch.enrolled && batch.reason.contains("none"),
        "{batch:?}"
    );
    assert_eq!(batch.service_account, "default");

    // 2. kubelet writes the IP before the agent's mark lands: served, but not over HBONE.
    let running = "{phase: Running, podIP: 10.0.0.7, conditions: [{type: Ready, status: 'True'}]}";
    write(&manifests, "fresh.yaml", &(fresh("", running) + optout));
    let uid = "Kubernetes//Pod/prometheus/fresh";
    eventually!(observe = mirror.workload_protocol(uid), |p| p
        == Some(TunnelProtocol::None as i32));
    eventually!(observe = pods.get("prometheus/fresh"), |p| p
        .as_ref()
        .is_some_and(|p| p.addresses == [vec![10, 0, 0, 7]]));

    // 3. Marked captured: HBONE.
    write(
        &manifests,
        "fresh.yaml",
        &(fresh("ambient.istio.io/redirection: enabled", running) + optout),
    );
    eventually!(observe = mirror.workload_protocol(uid), |p| p
        == Some(TunnelProtocol::Hbone as i32));

    // 4. Finished: no longer described (no sandbox will be made for it).
    write(
        &manifests,
        "fresh.yaml",
        &fresh(
            "ambient.istio.io/redirection: enabled",
            "{phase: Succeeded}",
        ),
    );
    eventually!(observe = pods.get("prometheus/fresh"), |p| p.is_none());
    eventually!(observe = pods.get("prometheus/batch"), |p| p.is_none());
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

trait TapSort {
    fn tap_sort(self) -> Self;
}

impl TapSort for Vec<String> {
    fn tap_sort(mut self) -> Self {
        self.sort();
        self
    }
}
