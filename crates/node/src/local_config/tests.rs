use super::*;
use crate::state::Protocol;

fn node() -> NodeInfo {
    NodeInfo {
        node_name: "node-a".into(),
        cluster_id: "Kubernetes".into(),
        trust_domain: ambit_identity::TrustDomain::new("cluster.local").unwrap(),
    }
}

const YAML: &str = r#"
workloads:
- name: echo
  namespace: demo
  serviceAccount: echo
  workloadIps: [10.0.0.2]
  protocol: HBONE
  node: node-a
  services:
    demo/echo.demo.svc.cluster.local: {80: 8080}
- name: legacy
  namespace: demo
  workloadIps: ["10.0.0.3"]
services:
- name: echo
  namespace: demo
  hostname: echo.demo.svc.cluster.local
  vips: [/10.96.0.10]
  ports: {80: 8080}
"#;

#[test]
fn yaml_loads_into_the_same_state_as_wds() {
    let mut mesh = MeshState::default();
    LocalConfig::parse(YAML)
        .unwrap()
        .apply(&node(), "local.yaml", &mut mesh)
        .unwrap();
    let echo = mesh.workload_by_ip("10.0.0.2".parse().unwrap()).unwrap();
    assert_eq!(echo.uid, "Kubernetes//Pod/demo/echo");
    assert_eq!(
        echo.identity.as_str(),
        "spiffe://cluster.local/ns/demo/sa/echo"
    );
    assert_eq!(echo.protocol, Protocol::Hbone);
    assert_eq!(
        echo.target_port("demo/echo.demo.svc.cluster.local", 80),
        Some(8080)
    );
    let legacy = mesh.workload_by_ip("10.0.0.3".parse().unwrap()).unwrap();
    assert_eq!(legacy.protocol, Protocol::Tcp);
    assert_eq!(
        legacy.identity.as_str(),
        "spiffe://cluster.local/ns/demo/sa/default"
    );
    let svc = mesh.service_by_vip("10.96.0.10".parse().unwrap()).unwrap();
    assert_eq!(svc.hostname, "echo.demo.svc.cluster.local");
    assert_eq!(mesh.endpoints(&svc.key()).len(), 1);
}

#[test]
fn json_is_read_too() {
    let json = r#"{"workloads": [{"name": "a", "namespace": "n", "workloadIps": ["10.1.0.1"]}]}"#;
    let mut mesh = MeshState::default();
    LocalConfig::parse(json)
        .unwrap()
        .apply(&node(), "local.json", &mut mesh)
        .unwrap();
    assert!(mesh.workload_by_ip("10.1.0.1".parse().unwrap()).is_some());
}

#[test]
fn mistakes_are_named() {
    let err = LocalConfig::parse("workloads: [{name: a, wokloadIps: []}]").unwrap_err();
    assert!(err.contains("wokloadIps"), "{err}");

    let bad_ip = LocalConfig::parse("workloads: [{name: a, workloadIps: [nope]}]").unwrap();
    let err = bad_ip
        .apply(&node(), "f.yaml", &mut MeshState::default())
        .unwrap_err()
        .to_string();
    assert_eq!(err, "f.yaml: workload 0: \"nope\" is not an IP address");

    let bad_protocol = LocalConfig::parse("workloads: [{name: a, protocol: QUIC}]").unwrap();
    let err = bad_protocol
        .apply(&node(), "f.yaml", &mut MeshState::default())
        .unwrap_err();
    assert!(
        matches!(
            err,
            LocalConfigError::Invalid {
                source: DecodeError::UnknownProtocol(-1),
                ..
            }
        ),
        "{err:?}"
    );
}
