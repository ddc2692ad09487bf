//! Enrollment from a real WDS server (the delta-ADS server of `ambit-xds` on loopback), driving
//! a real agent: a workload turning HBONE captures its running pod, and turning back releases it.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use ambit_capture::enrollment::WdsEnrollmentConfig;
use ambit_capture::zds::ZdsConfig;
use ambit_capture::{
    Agent, AgentConfig, BackendChoice, CniPod, Enrollment, PodName, Rules, RulesError,
    WdsEnrollment,
};
use ambit_proto::workload::{Address, TunnelProtocol, Workload, address};
use ambit_testkit::eventually;
use ambit_xds::Resource;
use ambit_xds::server::{AdsServer, Store};
use common::TestPod;
use prost::Message;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Endpoint;

fn workload(name: &str, node: &str, protocol: TunnelProtocol) -> Resource {
    let uid = format!("Kubernetes//Pod/ns/{name}");
    let body = Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.clone(),
            name: name.into(),
            namespace: "ns".into(),
            node: node.into(),
            service_account: "web-sa".into(),
            tunnel_protocol: protocol as i32,
            ..Workload::default()
        })),
    };
    let any = prost_types::Any {
        type_url: ambit_proto::ADDRESS_TYPE_URL.into(),
        value: body.encode_to_vec(),
    };
    Resource::new(uid, any)
}

#[tokio::test]
async fn a_workload_turning_hbone_on_this_node_captures_the_running_pod() {
    let store = Store::new();
    store.apply(
        ambit_proto::ADDRESS_TYPE_URL,
        vec![
            workload("web", "node-a", TunnelProtocol::None),
            workload("elsewhere", "node-b", TunnelProtocol::Hbone),
        ],
        vec![],
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = AdsServer::new(store.clone());
    let serving = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(server.into_service())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let enrollment = WdsEnrollment::new(WdsEnrollmentConfig {
        node_name: "node-a".into(),
        cluster_id: "Kubernetes".into(),
        trust_domain: "cluster.local".parse().unwrap(),
    });
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let client = enrollment.start(channel, || None);
    eventually!(enrollment.synced());
    assert!(enrollment.enrolled(&PodName::new("ns", "web")).is_none());
    assert!(
        enrollment
            .enrolled(&PodName::new("ns", "elsewhere"))
            .is_none(),
        "another node's pod"
    );

    let dir = tempfile::tempdir().unwrap();
    let rules = Rules::new(BackendChoice::Auto).unwrap();
    let mut config = AgentConfig::new(
        dir.path().join("state"),
        ZdsConfig::new(dir.path().join("zds.sock")),
        rules.clone(),
    );
    config.resync_interval = Duration::from_secs(3600);
    let agent = Agent::start(config, Arc::new(enrollment.clone()))
        .await
        .unwrap();
    let pod = TestPod::new();
    agent
        .pod_added(CniPod {
            namespace: "ns".into(),
            name: "web".into(),
            uid: Some("uid-web".into()),
            container_id: "sandbox".into(),
            netns: Some(pod.path.clone()),
            ips: vec![],
        })
        .await
        .unwrap();
    assert!(matches!(rules.check(&pod.netns), Err(RulesError::Missing)));

    store.apply(
        ambit_proto::ADDRESS_TYPE_URL,
        vec![workload("web", "node-a", TunnelProtocol::Hbone)],
        vec![],
    );
    eventually!(observe = agent.status().await, |s| s.len() == 1
        && s[0].enrolled
        && s[0].rules_installed);
    rules.check(&pod.netns).unwrap();
    assert_eq!(
        enrollment
            .enrolled(&PodName::new("ns", "web"))
            .unwrap()
            .service_account,
        "web-sa"
    );

    store.apply(
        ambit_proto::ADDRESS_TYPE_URL,
        vec![],
        vec!["Kubernetes//Pod/ns/web".into()],
    );
    eventually!(observe = agent.status().await, |s| !s[0].enrolled
        && !s[0].rules_installed);
    assert!(matches!(rules.check(&pod.netns), Err(RulesError::Missing)));

    agent.shutdown().await;
    client.shutdown();
    serving.abort();
}
