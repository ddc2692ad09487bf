//! Policies end to end in the control plane: manifests on disk → `istio.security.Authorization`
//! resources in the WDS store (dry-run ones kept back), `/debug/policies` listing them with
//! their issues, and `/debug/authorize` explaining a decision.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use ambit_control::{ControlConfig, ControlPlane, SourceConfig};
use ambit_model::MeshConfig;
use ambit_proto::security::Authorization;
use ambit_testkit::eventually;
use prost::Message;
use serde_json::Value;

const MANIFESTS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: httpbin, namespace: foo, labels: {app: httpbin}}
spec: {serviceAccountName: httpbin, nodeName: node-a, containers: [{name: c}]}
status: {podIP: 10.0.1.1, conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: sleep, namespace: foo, labels: {app: sleep}}
spec: {serviceAccountName: sleep, nodeName: node-a, containers: [{name: c}]}
status: {podIP: 10.0.1.2, conditions: [{type: Ready, status: 'True'}]}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]
    to: [{operation: {ports: ['8000'], methods: [GET]}}]
  - to: [{operation: {ports: ['9000']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: trial, namespace: foo, annotations: {istio.io/dry-run: 'true'}}
spec: {action: DENY, rules: [{to: [{operation: {ports: ['9000']}}]}]}
";

async fn start(dir: &std::path::Path) -> ControlPlane {
    start_with(dir, None).await
}

async fn start_with(dir: &std::path::Path, debug_addr: Option<SocketAddr>) -> ControlPlane {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(manifests.join("mesh.yaml"), MANIFESTS).unwrap();
    ControlPlane::start(ControlConfig {
        source: SourceConfig::Dir {
            path: manifests,
            poll: Duration::from_millis(20),
        },
        mesh: MeshConfig::istio_defaults(),
        ca_dir: dir.join("ca"),
        bootstrap_tokens: None,
        plaintext_addr: None,
        tls_addr: None,
        monitoring_addr: Some("127.0.0.1:0".parse().unwrap()),
        debug_addr,
        debounce: Duration::from_millis(20),
        serving_names: vec!["istiod.istio-system.svc".to_owned()],
    })
    .await
    .unwrap()
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_owned())
}

async fn json(addr: SocketAddr, path: &str) -> Value {
    let (status, body) = http_get(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn policies_are_served_listed_and_explained() {
    let dir = tempfile::tempdir().unwrap();
    let control = start(dir.path()).await;
    let monitoring = control.addrs().monitoring.unwrap();

    // Served: the policy and the static STRICT policy; the dry-run one is kept back.
    let store = control.store().clone();
    eventually!(store.len(ambit_proto::AUTHORIZATION_TYPE_URL) == 2);
    let mut served: Vec<(String, Authorization)> = store
        .resources(ambit_proto::AUTHORIZATION_TYPE_URL)
        .into_iter()
        .map(|r| {
            assert_eq!(r.body.type_url, ambit_proto::AUTHORIZATION_TYPE_URL);
            (
                r.name.clone(),
                Authorization::decode(r.body.value.as_slice()).unwrap(),
            )
        })
        .collect();
    served.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = served.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["foo/httpbin", "istio-system/istio_converted_static_strict"]
    );
    assert_eq!(
        served[0].1.rules.len(),
        1,
        "the rule with an HTTP method is left out of the ALLOW policy"
    );

    // Listed, with the issue and the dry-run policy.
    let policies = json(monitoring, "/debug/policies").await;
    let authorizations = policies["authorizations"].as_array().unwrap();
    assert!(
        authorizations
            .iter()
            .any(|a| a["name"] == "foo/trial" && a["dryRun"] == true && a["served"] == false),
        "{policies:#}"
    );
    let issues = policies["issues"].as_array().unwrap();
    assert!(
        issues
            .iter()
            .any(|i| i["name"] == "httpbin" && i["message"].as_str().unwrap().contains("methods")),
        "{policies:#}"
    );

    // Explained: plaintext is refused by STRICT.
    let uid = "Kubernetes//Pod/foo/httpbin";
    let trace = json(
        monitoring,
        &format!("/debug/authorize?src=&src_ip=192.168.5.5&dst={uid}&port=9000"),
    )
    .await;
    assert_eq!(trace["allowed"], false, "{trace:#}");
    assert_eq!(
        trace["reason"],
        "explicitly denied by: istio-system/istio_converted_static_strict"
    );
    // mTLS from sleep to 9000 is allowed by the ALLOW policy; the dry-run DENY would deny it.
    let trace = json(
        monitoring,
        "/debug/authorize?src=spiffe%3A%2F%2Fcluster.local%2Fns%2Ffoo%2Fsa%2Fsleep&dst=10.0.1.1&port=9000",
    )
    .await;
    assert_eq!(trace["allowed"], true, "{trace:#}");
    assert_eq!(trace["policy"], "foo/httpbin");
    assert_eq!(trace["connection"]["srcIp"], "10.0.1.2");
    assert_eq!(trace["dryRunDenials"][0], "foo/trial");
    let considered: Vec<&str> = trace["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["policy"].as_str().unwrap())
        .collect();
    assert_eq!(
        considered,
        [
            "foo/trial",
            "foo/httpbin",
            "istio-system/istio_converted_static_strict"
        ]
    );
    // 8000 only had the rule with an HTTP method: nothing allows it.
    let trace = json(
        monitoring,
        "/debug/authorize?src=spiffe://cluster.local/ns/foo/sa/sleep&dst=10.0.1.1&port=8000",
    )
    .await;
    assert_eq!(trace["reason"], "allow policies exist, but none allowed");

    // Bad requests say what is wrong.
    for (query, needle) in [
        ("dst=10.0.1.1", "port is required"),
        ("dst=10.9.9.9&port=80&src_ip=1.1.1.1", "no workload"),
        ("src=bogus&dst=10.0.1.1&port=80", "src \"bogus\""),
        ("dst=10.0.1.1&port=80", "src_ip is required"),
    ] {
        let (status, body) = http_get(monitoring, &format!("/debug/authorize?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(needle), "{query}: {body}");
    }
}

/// With a debug address (the chart puts it on loopback), `/debug/…` moves there: the monitoring
/// port, which faces the pod network for readiness and scraping, answers it 404.
#[tokio::test]
async fn a_debug_address_takes_the_debug_views_off_the_monitoring_port() {
    let dir = tempfile::tempdir().unwrap();
    let control = start_with(dir.path(), Some("127.0.0.1:0".parse().unwrap())).await;
    let monitoring = control.addrs().monitoring.unwrap();
    let debug = control.addrs().debug.unwrap();
    for path in ["/ready", "/metrics"] {
        ambit_testkit::eventually!(observe = http_get(monitoring, path).await.0, |s| s == 200);
    }
    for path in [
        "/debug/policies",
        "/debug/workloads",
        "/debug/authorize?src=&dst=x&port=1",
    ] {
        assert_eq!(
            http_get(monitoring, path).await.0,
            404,
            "{path} on the monitoring port"
        );
    }
    assert_eq!(http_get(debug, "/debug/policies").await.0, 200);
    assert_eq!(http_get(debug, "/debug/workloads").await.0, 200);
}
