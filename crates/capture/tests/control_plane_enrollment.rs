//! Capture decided at CNI ADD, in a cluster's order of events: the pod's object exists without
//! an IP, the runtime makes its network namespace and runs ADD with the IP in `prevResult`.
//! A real delta-ADS server (the one the control plane runs) serves the pod's decision, a real
//! agent decides from it, installs real rules in a real namespace, hands the pod to the node
//! proxy's end of ZDS (driven by the test) and marks the pod's object in a manifest directory,
//! all before ADD returns. Needs root (namespaces, nft/iptables).
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_capture::enrollment::ControlPlaneEnrollmentConfig;
use ambit_capture::marker::ManifestMarker;
use ambit_capture::zds::ZdsConfig;
use ambit_capture::{
    Agent, AgentConfig, AgentError, BackendChoice, CniPod, ControlPlaneEnrollment, Decision,
    Enrollment, PodName, Rules, RulesError,
};
use ambit_model::manifest_dir::pod_annotations;
use ambit_proto::capture::PodEnrollment;
use ambit_proto::zds::workload_request::Payload;
use ambit_testkit::eventually;
use ambit_xds::Resource;
use ambit_xds::server::{AdsServer, Store};
use common::{NodeSide, TestPod};
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Endpoint;

fn described(name: &str, enrolled: bool) -> Resource {
    let message = PodEnrollment {
        uid: format!("uid-{name}"),
        namespace: "ns".into(),
        name: name.into(),
        node: "node-a".into(),
        service_account: format!("sa-{name}"),
        enrolled,
        reason: if enrolled {
            "namespace label istio.io/dataplane-mode=ambient".into()
        } else {
            "pod label istio.io/dataplane-mode=none".into()
        },
        // Before kubelet wrote status.podIP: no address.
        addresses: vec![],
    };
    let any = prost_types::Any {
        type_url: ambit_proto::POD_ENROLLMENT_TYPE_URL.into(),
        value: message.encode_to_vec(),
    };
    Resource::new(format!("ns/{name}"), any)
}

/// The pod's object as the API server holds it before kubelet wrote its status.
fn write_pod_object(dir: &Path, name: &str) {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: ns, uid: uid-{name}}}\n\
         spec: {{nodeName: node-a, serviceAccountName: sa-{name}}}\nstatus: {{phase: Pending}}\n"
    );
    std::fs::write(dir.join(format!("{name}.yaml")), yaml).unwrap();
}

fn marked(dir: &Path, name: &str) -> bool {
    let text = std::fs::read_to_string(dir.join(format!("{name}.yaml"))).unwrap();
    let key = ("ns".to_owned(), name.to_owned(), format!("uid-{name}"));
    pod_annotations(&text)
        .get(&key)
        .and_then(|a| a.get("ambient.istio.io/redirection"))
        .is_some_and(|v| v == "enabled")
}

fn add_event(name: &str, pod: &TestPod, ip: u8) -> CniPod {
    CniPod {
        namespace: "ns".into(),
        name: name.into(),
        uid: Some(format!("uid-{name}")),
        container_id: format!("sandbox-{name}"),
        netns: Some(pod.path.clone()),
        // The IP from prevResult: IPAM handed it out during this ADD.
        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 77, 0, ip))],
    }
}

struct Setup {
    dir: tempfile::TempDir,
    store: Store,
    agent: Agent,
    rules: Rules,
    enrollment: ControlPlaneEnrollment,
    serving: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    _client: ambit_xds::client::ClientHandle,
}

impl Setup {
    async fn new(decide_timeout: Duration) -> Self {
        let store = Store::new();
        store.replace_all(ambit_proto::POD_ENROLLMENT_TYPE_URL, vec![]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serving = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AdsServer::new(store.clone()).into_service())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let enrollment = ControlPlaneEnrollment::new(ControlPlaneEnrollmentConfig {
            node_name: "node-a".into(),
            cluster_id: "Kubernetes".into(),
        });
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let client = enrollment.start(channel, || None);
        eventually!(enrollment.synced());

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("manifests")).unwrap();
        let rules = Rules::new(BackendChoice::Auto).unwrap();
        let mut config = AgentConfig::new(
            dir.path().join("state"),
            ZdsConfig::new(dir.path().join("zds.sock")),
            rules.clone(),
        );
        config.resync_interval = Duration::from_secs(3600);
        config.discovery = None;
        config.decide_timeout = decide_timeout;
        config.marker = Arc::new(ManifestMarker::new(dir.path().join("manifests")));
        let agent = Agent::start(config, Arc::new(enrollment.clone()))
            .await
            .unwrap();
        Self {
            dir,
            store,
            agent,
            enrollment,
            rules,
            serving,
            _client: client,
        }
    }

    fn manifests(&self) -> std::path::PathBuf {
        self.dir.path().join("manifests")
    }

    fn describe(&self, name: &str, enrolled: bool) {
        self.store.apply(
            ambit_proto::POD_ENROLLMENT_TYPE_URL,
            vec![described(name, enrolled)],
            vec![],
        );
    }

    async fn stop(self) {
        self.agent.shutdown().await;
        self.serving.abort();
    }
}

/// The node proxy's end: acks every request, and records what it was sent.
fn acking_node(node: NodeSide) -> tokio::sync::mpsc::UnboundedReceiver<Payload> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (payload, _fds) = node.recv().await;
            node.ack("").await;
            if tx.send(payload).is_err() {
                return;
            }
        }
    });
    rx
}

#[tokio::test]
async fn an_add_before_the_pod_has_an_ip_is_captured_before_it_returns_or_fails_closed() {
    let setup = Setup::new(Duration::from_millis(600)).await;
    let node = NodeSide::connect(&setup.dir.path().join("zds.sock")).await;
    assert!(node.replay().await.is_empty());
    let mut sent = acking_node(node);
    let manifests = setup.manifests();

    // 1. The pod's object exists (no IP), but the control plane has not described it yet: the
    // ADD fails closed, naming why, and leaves the pod's namespace untouched.
    write_pod_object(&manifests, "web");
    let web = TestPod::new();
    let started = Instant::now();
    let err = setup
        .agent
        .pod_added(add_event("web", &web, 2))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "it waited for an answer"
    );
    assert!(matches!(err, AgentError::Undecided { .. }), "{err:?}");
    let text = format!("{err}");
    assert!(
        text.contains("cannot decide whether to capture it")
            && text.contains("no pod ns/web on node node-a"),
        "{text}"
    );
    assert!(matches!(
        setup.rules.check(&web.netns),
        Err(RulesError::Missing)
    ));
    assert!(!marked(&manifests, "web"));

    // 2. The runtime retries once the control plane described the pod (still without an IP):
    // when ADD returns, the rules are in place, the node proxy has the pod and the object is
    // marked.
    setup.describe("web", true);
    setup
        .agent
        .pod_added(add_event("web", &web, 2))
        .await
        .unwrap();
    setup.rules.check(&web.netns).unwrap();
    match sent.try_recv() {
        Ok(Payload::Add(add)) => {
            assert_eq!(add.uid, "uid-web");
            assert_eq!(add.workload_info.unwrap().service_account, "sa-web");
        }
        other => panic!("the node proxy had no AddWorkload when ADD returned: {other:?}"),
    }
    assert!(marked(&manifests, "web"), "marked before ADD returned");
    let status = setup.agent.status().await;
    assert!(status[0].acked && status[0].marked && status[0].rules_installed);

    // 3. An ADD arriving just before the control plane's answer waits for it, then captures.
    write_pod_object(&manifests, "late");
    let late = TestPod::new();
    let agent = setup.agent.clone();
    let event = add_event("late", &late, 3);
    let adding = tokio::spawn(async move { agent.pod_added(event).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!adding.is_finished(), "the ADD waits for the decision");
    setup.describe("late", true);
    adding.await.unwrap().unwrap();
    setup.rules.check(&late.netns).unwrap();
    assert!(marked(&manifests, "late"));

    // 4. A pod opted out with istio.io/dataplane-mode=none passes through: ADD succeeds at
    // once, nothing in its namespace, nothing sent, no mark.
    write_pod_object(&manifests, "batch");
    setup.describe("batch", false);
    let batch = TestPod::new();
    setup
        .agent
        .pod_added(add_event("batch", &batch, 4))
        .await
        .unwrap();
    assert!(matches!(
        setup.rules.check(&batch.netns),
        Err(RulesError::Missing)
    ));
    assert!(!marked(&manifests, "batch"));

    // 5. A pod recreated under the same name while the control plane still describes the old
    // one (another uid) is not decided from the old one's answer.
    let again = TestPod::new();
    let mut event = add_event("batch", &again, 5);
    event.uid = Some("uid-batch-2".into());
    let err = setup.agent.pod_added(event).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("knows pod ns/batch with uid uid-batch, not uid-batch-2"),
        "{err}"
    );
    assert!(matches!(
        setup.rules.check(&again.netns),
        Err(RulesError::Missing)
    ));
    setup.stop().await;
}

/// Capture latency at ADD, the decision already known (the control plane describes a pod when
/// its object is created, before the runtime starts its sandbox): from the ADD reaching the
/// agent to its answer, rules installed, node proxy acked and object marked. Printed with
/// `--nocapture`.
#[tokio::test]
async fn capture_latency_at_add_over_sixty_pods() {
    const PODS: usize = 60;
    let setup = Setup::new(Duration::from_secs(5)).await;
    let node = NodeSide::connect(&setup.dir.path().join("zds.sock")).await;
    assert!(node.replay().await.is_empty());
    let mut sent = acking_node(node);
    let manifests = setup.manifests();
    let mut took = Vec::with_capacity(PODS);
    let mut pods = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let name = format!("pod-{i}");
        write_pod_object(&manifests, &name);
        setup.describe(&name, true);
        let pod = TestPod::new();
        let event = add_event(&name, &pod, u8::try_from(i + 10).unwrap());
        // The control plane describes the pod when its object is created, before the runtime
        // starts the sandbox: wait for the answer to reach the agent's view outside the span.
        let pod_name = PodName::new("ns", &name);
        eventually!(!matches!(
            setup
                .enrollment
                .decide(&pod_name, Some(&format!("uid-{name}"))),
            Decision::Unknown(_)
        ));
        let started = Instant::now();
        setup.agent.pod_added(event).await.unwrap();
        took.push(started.elapsed());
        assert!(matches!(sent.try_recv(), Ok(Payload::Add(_))));
        assert!(marked(&manifests, &name));
        pods.push(pod);
    }
    took.sort();
    let p50 = took[PODS / 2];
    let p99 = took[(PODS * 99).div_ceil(100) - 1];
    println!(
        "capture at ADD over {PODS} pods (rules + ZDS ack + mark): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        took[PODS - 1].as_secs_f64() * 1e3
    );
    for pod in &pods {
        setup.rules.check(&pod.netns).unwrap();
    }
    setup.stop().await;
}
