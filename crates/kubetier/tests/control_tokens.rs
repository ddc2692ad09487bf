//! Item 5 of the Kubernetes tier: node proxies and capture agents authenticate to the control
//! plane with their pods' projected service-account tokens (TokenRequest by the node's kubelet
//! stand-in, audience `istio-ca`, bound to the pod), and the control plane checks them with the
//! real API server's TokenReview and the bound pod as the API server has it.
//!
//! The control plane runs in this process (`ambit_control::ControlPlane`) with the chart's
//! `istiod` service account; everything it asks of the API server goes through that account's
//! RBAC.
//!
//! One token cannot be had from the API server as it is: an expired one (TokenRequest's shortest
//! lifetime is 10 minutes). [`expired`] takes a real token the API server minted and signs it
//! again, expired, with the cluster's service-account signing key (`AMBIT_KUBE_SA_KEY`), the key
//! the API server signs with; TokenReview then judges it exactly as a token of its own whose time
//! ran out.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ambit_control::{ControlConfig, ControlPlane, SourceConfig};
use ambit_identity::grpc::{CaClient, tls_channel};
use ambit_identity::manager::{CertificateManager, ManagerConfig};
use ambit_identity::{SpiffeId, SystemClock};
use ambit_kubetier::{Cluster, Kubelet, TestPod, TokenOptions, unique_name};
use ambit_model::MeshConfig;
use ambit_testkit::eventually;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};

const AUDIENCE: &str = "istio-ca";

/// A node with a running pod of each kind a test needs.
struct Node {
    kubelet: Kubelet,
}

impl Node {
    async fn register(cluster: &Cluster, host: u8) -> Self {
        let name = unique_name("node");
        let kubelet = Kubelet::register(cluster, &name, IpAddr::V4(Ipv4Addr::new(127, 0, 9, host)))
            .await
            .unwrap();
        Self { kubelet }
    }

    fn name(&self) -> &str {
        self.kubelet.node()
    }

    /// Creates `pod` on this node and reports it running at `ip`, as kubelet would.
    async fn run(&self, cluster: &Cluster, pod: TestPod, name: &str, ip: [u8; 4]) -> Pod {
        let created = pod.create(cluster).await.unwrap();
        let namespace = created.metadata.namespace.clone().unwrap();
        self.kubelet
            .pod_running(&namespace, name, IpAddr::V4(Ipv4Addr::from(ip)))
            .await
            .unwrap()
    }

    /// The token kubelet projects into `pod` for `istio-ca`.
    async fn token(&self, pod: &Pod) -> String {
        self.kubelet
            .projected_token(pod, AUDIENCE, 3600)
            .await
            .unwrap()
    }
}

async fn control_plane(cluster: &Cluster, ca_dir: &std::path::Path) -> ControlPlane {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    ControlPlane::start(ControlConfig {
        source: SourceConfig::Kubernetes {
            namespace: "istio-system".to_owned(),
            kubeconfig: Some(cluster.path("AMBIT_KUBE_CONTROL_KUBECONFIG")),
        },
        mesh: MeshConfig::istio_defaults(),
        ca_dir: ca_dir.to_owned(),
        bootstrap_tokens: None,
        plaintext_addr: None,
        tls_addr: Some(any),
        monitoring_addr: Some(any),
        debug_addr: None,
        debounce: Duration::from_millis(20),
        serving_names: vec!["istiod.istio-system.svc".to_owned()],
    })
    .await
    .unwrap()
}

fn manager(control: &ControlPlane, token: String) -> CertificateManager<CaClient> {
    let tls = ambit_identity::tls::control_plane_client_config(control.ca().roots()).unwrap();
    let channel = tls_channel(
        &control.addrs().tls.unwrap().to_string(),
        "istiod.istio-system.svc",
        tls,
    )
    .unwrap();
    CertificateManager::new(
        CaClient::new(channel, move || Some(token.clone())),
        Arc::new(SystemClock),
        ManagerConfig::default(),
    )
}

fn identity(namespace: &str, account: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/{namespace}/sa/{account}")
        .parse()
        .unwrap()
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

/// The refusal of `token` asking for `id`: the chain of the error, which must be a
/// PermissionDenied.
async fn refusal(control: &ControlPlane, token: String, id: &SpiffeId) -> String {
    let err = manager(control, token).fetch(id).await.unwrap_err();
    let message = error_chain(&err);
    assert!(message.contains("PermissionDenied"), "{message}");
    eprintln!("refused as it should be: {message}");
    message
}

/// `token` (a JWT the API server signed) with its lifetime moved into the past and signed again
/// with the API server's own service-account signing key.
fn expired(cluster: &Cluster, token: &str) -> String {
    let mut parts = token.split('.');
    let (header, claims) = (parts.next().unwrap(), parts.next().unwrap());
    let mut claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    claims["iat"] = (now - 3600).into();
    claims["nbf"] = (now - 3600).into();
    claims["exp"] = (now - 600).into();
    let signed = format!(
        "{header}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).unwrap())
    );
    let key_pem = std::fs::read(cluster.path("AMBIT_KUBE_SA_KEY")).unwrap();
    let key = {
        use rustls::pki_types::PrivateKeyDer;
        use rustls::pki_types::pem::PemObject;
        let der = PrivateKeyDer::from_pem_slice(&key_pem).unwrap();
        aws_lc_rs::rsa::KeyPair::from_pkcs8(der.secret_der()).unwrap()
    };
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
        &aws_lc_rs::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .unwrap();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// What every test here starts from: a namespace with two workloads on two nodes, a node proxy
/// pod on the first node, and a control plane that sees all of it.
struct Mesh {
    cluster: Cluster,
    _ca_dir: tempfile::TempDir,
    control: ControlPlane,
    namespace: String,
    a: Node,
    b: Node,
    /// The node proxy's pod on node a.
    ztunnel_a: Pod,
}

impl Mesh {
    async fn new() -> Self {
        let cluster = Cluster::shared().await;
        let namespace = unique_name("tokens");
        cluster
            .namespace(&namespace, &[("istio.io/dataplane-mode", "ambient")])
            .await
            .unwrap();
        for account in ["app", "other"] {
            cluster.service_account(&namespace, account).await.unwrap();
        }
        let (a, b) = (
            Node::register(&cluster, 1).await,
            Node::register(&cluster, 2).await,
        );
        let ztunnel_name = unique_name("ztunnel");
        let ztunnel_a = a
            .run(
                &cluster,
                TestPod::new("istio-system", &ztunnel_name, a.name())
                    .service_account("ztunnel")
                    .token_volume(AUDIENCE),
                &ztunnel_name,
                [10, 9, 0, 1],
            )
            .await;
        a.run(
            &cluster,
            TestPod::new(&namespace, "app", a.name())
                .service_account("app")
                .token_volume(AUDIENCE),
            "app",
            [10, 9, 1, 1],
        )
        .await;
        b.run(
            &cluster,
            TestPod::new(&namespace, "other", b.name()).service_account("other"),
            "other",
            [10, 9, 2, 1],
        )
        .await;
        let ca_dir = tempfile::tempdir().unwrap();
        let control = control_plane(&cluster, ca_dir.path()).await;
        // The CA decides from the control plane's view of the pods: wait until it has both.
        let ns = namespace.clone();
        eventually!(control.state().read(|s| {
            ["app", "other"]
                .iter()
                .all(|p| s.pods.contains_key(&(ns.clone(), (*p).to_owned())))
        }));
        Self {
            cluster,
            _ca_dir: ca_dir,
            control,
            namespace,
            a,
            b,
            ztunnel_a,
        }
    }

    async fn pod(&self, namespace: &str, name: &str) -> Pod {
        Api::<Pod>::namespaced(self.cluster.client(), namespace)
            .get(name)
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_node_proxy_gets_certificates_only_for_pods_on_its_node() {
    let mesh = Mesh::new().await;
    let token = mesh.a.token(&mesh.ztunnel_a).await;
    let app = identity(&mesh.namespace, "app");
    let cert = manager(&mesh.control, token.clone())
        .fetch(&app)
        .await
        .unwrap();
    assert_eq!(cert.identity(), &app);

    // The other workload runs on node b: refused, naming node a and why.
    let other = identity(&mesh.namespace, "other");
    let why = refusal(&mesh.control, token, &other).await;
    assert!(
        why.contains(mesh.a.name())
            && why.contains(other.as_str())
            && why.contains(&format!(
                "no pod with service account {}/other",
                mesh.namespace
            )),
        "{why}"
    );
}

#[tokio::test]
async fn the_node_comes_from_the_bound_pod_not_from_the_token() {
    let mesh = Mesh::new().await;
    // A node proxy pod on node b, whose token is minted by node a's kubelet would be refused by
    // the API server (NodeRestriction); minted by node b, it must get only node b's workloads.
    let name = unique_name("ztunnel");
    let ztunnel_b = mesh
        .b
        .run(
            &mesh.cluster,
            TestPod::new("istio-system", &name, mesh.b.name())
                .service_account("ztunnel")
                .token_volume(AUDIENCE),
            &name,
            [10, 9, 0, 2],
        )
        .await;
    let token_b = mesh.b.token(&ztunnel_b).await;
    let other = identity(&mesh.namespace, "other");
    assert_eq!(
        manager(&mesh.control, token_b.clone())
            .fetch(&other)
            .await
            .unwrap()
            .identity(),
        &other
    );
    let why = refusal(&mesh.control, token_b, &identity(&mesh.namespace, "app")).await;
    assert!(why.contains(mesh.b.name()), "{why}");

    // A token of the node proxy's account that is not bound to a pod names no node at all.
    let unbound = mesh
        .cluster
        .token("istio-system", "ztunnel", &TokenOptions::audience(AUDIENCE))
        .await
        .unwrap();
    let why = refusal(&mesh.control, unbound, &other).await;
    assert!(
        why.contains("must present a token bound to its pod"),
        "{why}"
    );
}

#[tokio::test]
async fn tokens_of_another_account_expired_or_of_a_gone_pod_are_refused_saying_why() {
    let mesh = Mesh::new().await;
    let app = identity(&mesh.namespace, "app");
    let other = identity(&mesh.namespace, "other");

    // Another service account's token (the app's own, bound to its pod): it is that workload,
    // entitled to its own identity only.
    let app_pod = mesh.pod(&mesh.namespace, "app").await;
    let app_token = mesh.a.token(&app_pod).await;
    let why = refusal(&mesh.control, app_token.clone(), &other).await;
    assert!(
        why.contains(app.as_str())
            && why.contains("only node proxies may request other identities"),
        "{why}"
    );
    assert_eq!(
        manager(&mesh.control, app_token)
            .fetch(&app)
            .await
            .unwrap()
            .identity(),
        &app
    );

    // A token for another audience.
    let api_token = mesh
        .cluster
        .token(
            "istio-system",
            "ztunnel",
            &TokenOptions::api().bound_to(&mesh.ztunnel_a),
        )
        .await
        .unwrap();
    let why = refusal(&mesh.control, api_token, &app).await;
    assert!(
        why.contains("TokenReview") && why.contains(AUDIENCE),
        "{why}"
    );

    // An expired token.
    let token = mesh.a.token(&mesh.ztunnel_a).await;
    let why = refusal(&mesh.control, expired(&mesh.cluster, &token), &app).await;
    assert!(why.contains("expired"), "{why}");

    // The token of a pod that is gone.
    let name = unique_name("ztunnel");
    let doomed = mesh
        .a
        .run(
            &mesh.cluster,
            TestPod::new("istio-system", &name, mesh.a.name())
                .service_account("ztunnel")
                .token_volume(AUDIENCE),
            &name,
            [10, 9, 0, 3],
        )
        .await;
    let token = mesh.a.token(&doomed).await;
    assert!(
        manager(&mesh.control, token.clone())
            .fetch(&app)
            .await
            .is_ok()
    );
    Api::<Pod>::namespaced(mesh.cluster.client(), "istio-system")
        .delete(&name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually!(
        Api::<Pod>::namespaced(mesh.cluster.client(), "istio-system")
            .get_opt(&name)
            .await
            .unwrap()
            .is_none()
    );
    let why = refusal(&mesh.control, token, &app).await;
    assert!(why.contains(&name), "{why}");
}

/// Counts the WDS resources a client receives.
#[derive(Debug, Default)]
struct Count(std::sync::atomic::AtomicUsize);

impl ambit_xds::client::Handler for Count {
    fn handle(&self, _type_url: &str, update: ambit_xds::client::Update) -> Result<(), String> {
        self.0
            .fetch_add(update.upserts.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

/// A WDS client of the TLS port presenting `token`, as the capture agent's enrollment does.
fn wds_with_token(
    control: &ControlPlane,
    token: String,
    count: Arc<Count>,
) -> ambit_xds::client::ClientHandle {
    let tls = ambit_identity::tls::control_plane_client_config(control.ca().roots()).unwrap();
    let channel = tls_channel(
        &control.addrs().tls.unwrap().to_string(),
        "istiod.istio-system.svc",
        tls,
    )
    .unwrap();
    let config = ambit_xds::client::ClientConfig::new(ambit_proto::envoy::config::core::v3::Node {
        id: "capture-agent".to_owned(),
        ..Default::default()
    })
    .subscribe(
        ambit_proto::ADDRESS_TYPE_URL,
        ambit_xds::client::Subscription::Wildcard,
    );
    ambit_xds::client::XdsClient::new(
        move || std::future::ready(Ok(channel.clone())),
        config,
        count,
    )
    .with_bearer_token(move || Some(token.clone()))
    .start()
}

#[tokio::test]
async fn a_capture_agent_reads_wds_with_its_pods_token_until_the_pod_is_gone() {
    let mesh = Mesh::new().await;
    let name = unique_name("istio-cni");
    let cni = mesh
        .a
        .run(
            &mesh.cluster,
            TestPod::new("istio-system", &name, mesh.a.name())
                .service_account("istio-cni")
                .token_volume(AUDIENCE),
            &name,
            [10, 9, 0, 4],
        )
        .await;
    let token = mesh.a.token(&cni).await;
    let count = Arc::new(Count::default());
    let client = wds_with_token(&mesh.control, token.clone(), count.clone());
    eventually!(
        observe = count.0.load(std::sync::atomic::Ordering::SeqCst),
        |n| n > 0
    );
    assert!(client.connected());
    drop(client);

    // Once the pod is gone its token opens nothing.
    Api::<Pod>::namespaced(mesh.cluster.client(), "istio-system")
        .delete(&name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually!(
        Api::<Pod>::namespaced(mesh.cluster.client(), "istio-system")
            .get_opt(&name)
            .await
            .unwrap()
            .is_none()
    );
    let refused = Arc::new(Count::default());
    let client = wds_with_token(&mesh.control, token, refused.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!client.connected(), "a gone pod's token must not open WDS");
    assert_eq!(refused.0.load(std::sync::atomic::Ordering::SeqCst), 0);
}
