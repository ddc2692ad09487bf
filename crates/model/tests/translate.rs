//! Translation tables: one manifest set per Istio rule, and the WDS resource it must produce.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use ambit_model::enroll::Enrollment;
use ambit_model::{ClusterState, MeshConfig, MeshSnapshot, manifest, translate};
use ambit_proto::workload::{NetworkMode, Port, TunnelProtocol, WorkloadStatus, WorkloadType};

fn mesh(yaml: &str) -> MeshSnapshot {
    ambit_testkit::corpus::save("manifest", "translate", yaml.as_bytes());
    let mut state = ClusterState::default();
    for doc in manifest::parse(yaml) {
        for object in doc.result.expect("test manifests are valid") {
            state.apply(object).unwrap();
        }
    }
    translate(&state, &MeshConfig::istio_defaults())
}

const NAMESPACES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: prometheus, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: default}
";

fn pod(ns: &str, name: &str, ip: &str, extra_labels: &str, extra_spec: &str) -> String {
    format!(
        "
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{app: {name}-app{extra_labels}}}
  annotations: {{ambient.istio.io/redirection: enabled}}
spec:
  serviceAccountName: {name}-sa
  nodeName: node-a
  containers:
  - name: main
    ports: [{{name: http-metrics, containerPort: 9100}}]
  {extra_spec}
status:
  phase: Running
  podIP: {ip}
  podIPs: [{{ip: {ip}}}]
  conditions: [{{type: Ready, status: 'True'}}]
"
    )
}

#[test]
fn enrollment_sets_tunnel_protocol() {
    let yaml = [
        NAMESPACES.to_owned(),
        pod("prometheus", "scraper", "10.0.0.1", "", ""),
        pod(
            "prometheus",
            "optout",
            "10.0.0.2",
            ", istio.io/dataplane-mode: none",
            "",
        ),
        pod("default", "plain", "10.0.0.3", "", ""),
        pod(
            "default",
            "podlabel",
            "10.0.0.4",
            ", istio.io/dataplane-mode: ambient",
            "",
        ),
        pod(
            "prometheus",
            "hostnet",
            "192.168.1.10",
            "",
            "hostNetwork: true",
        ),
    ]
    .concat();
    let mesh = mesh(&yaml);
    let cases = [
        (
            "prometheus",
            "scraper",
            TunnelProtocol::Hbone,
            Enrollment::Namespace,
        ),
        (
            "prometheus",
            "optout",
            TunnelProtocol::None,
            Enrollment::OptedOut,
        ),
        (
            "default",
            "plain",
            TunnelProtocol::None,
            Enrollment::NotLabeled,
        ),
        (
            "default",
            "podlabel",
            TunnelProtocol::Hbone,
            Enrollment::PodLabel,
        ),
        (
            "prometheus",
            "hostnet",
            TunnelProtocol::None,
            Enrollment::HostNetwork,
        ),
    ];
    for (ns, name, protocol, enrollment) in cases {
        let uid = format!("Kubernetes//Pod/{ns}/{name}");
        let w = &mesh.workloads[&uid];
        assert_eq!(w.tunnel_protocol, protocol as i32, "{uid}");
        let report = mesh.pods.iter().find(|p| p.name == name).unwrap();
        assert_eq!(report.enrollment, enrollment, "{uid}");
    }
    let hostnet = &mesh.workloads["Kubernetes//Pod/prometheus/hostnet"];
    assert_eq!(hostnet.network_mode, NetworkMode::HostNetwork as i32);
}

/// As istiod: an enrolled pod is advertised over HBONE only once its capture agent marked it
/// `ambient.istio.io/redirection: enabled`, so no peer tunnels to a pod not yet captured; any
/// other value, or none, leaves it plaintext (its address is still served).
#[test]
fn an_enrolled_pod_speaks_hbone_only_once_marked_captured() {
    let marked = pod("prometheus", "scraper", "10.0.0.1", "", "");
    let unmarked = pod("prometheus", "fresh", "10.0.0.2", "", "")
        .replace("ambient.istio.io/redirection: enabled", "");
    let other = pod("prometheus", "odd", "10.0.0.3", "", "")
        .replace("redirection: enabled", "redirection: disabled");
    let mesh = mesh(&[NAMESPACES.to_owned(), marked, unmarked, other].concat());
    for (name, protocol) in [
        ("scraper", TunnelProtocol::Hbone),
        ("fresh", TunnelProtocol::None),
        ("odd", TunnelProtocol::None),
    ] {
        let w = &mesh.workloads[&format!("Kubernetes//Pod/prometheus/{name}")];
        assert_eq!(w.tunnel_protocol, protocol as i32, "{name}");
        assert!(!w.addresses.is_empty(), "{name} is served");
    }
    let fresh = mesh.pods.iter().find(|p| p.name == "fresh").unwrap();
    assert_eq!(fresh.enrollment, Enrollment::Namespace, "still enrolled");
}

#[test]
fn workload_fields_follow_istio() {
    let yaml = format!(
        "{NAMESPACES}
---
apiVersion: v1
kind: Pod
metadata:
  name: exporter-7d9f8b6c5-x2k4q
  namespace: prometheus
  labels: {{app.kubernetes.io/name: node-exporter, app: ignored, app.kubernetes.io/version: '1.8', pod-template-hash: 7d9f8b6c5}}
  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: exporter-7d9f8b6c5, uid: u1, controller: true}}]
spec:
  nodeName: node-b
  containers: [{{name: c}}]
status:
  podIPs: [{{ip: 10.1.0.5}}, {{ip: 'fd00::5'}}]
  conditions: [{{type: Ready, status: 'False'}}]
"
    );
    let mesh = mesh(&yaml);
    let w = &mesh.workloads["Kubernetes//Pod/prometheus/exporter-7d9f8b6c5-x2k4q"];
    assert_eq!(w.name, "exporter-7d9f8b6c5-x2k4q");
    assert_eq!(w.namespace, "prometheus");
    assert_eq!(
        w.addresses,
        vec![
            vec![10, 1, 0, 5],
            "fd00::5"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec()
        ]
    );
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(
        w.service_account, "default",
        "no serviceAccountName means `default`"
    );
    assert_eq!(w.node, "node-b");
    assert_eq!(
        w.canonical_name, "node-exporter",
        "app.kubernetes.io/name wins over app"
    );
    assert_eq!(w.canonical_revision, "1.8");
    assert_eq!(
        w.workload_name, "exporter",
        "Deployment name from the ReplicaSet owner"
    );
    assert_eq!(w.workload_type, WorkloadType::Deployment as i32);
    assert_eq!(w.status, WorkloadStatus::Unhealthy as i32, "not Ready");
    assert_eq!(w.cluster_id, "Kubernetes");
}

#[test]
fn owner_chain_and_canonical_labels() {
    let owned = |name: &str, kind: &str, owner: &str, labels: &str| {
        format!(
            "
---
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  labels: {{{labels}}}
  ownerReferences: [{{apiVersion: v1, kind: {kind}, name: {owner}, uid: u, controller: true}}]
status: {{podIP: 10.2.0.1}}
"
        )
    };
    let yaml = [
        owned("ds-abcde", "DaemonSet", "agent", "app: agent, version: v2"),
        owned("web-0", "StatefulSet", "web", ""),
        owned("backup-28461300-xyz", "Job", "backup-28461300", ""),
        owned("once-xyz", "Job", "once", ""),
    ]
    .concat();
    let mesh = mesh(&yaml);
    let cases = [
        ("ds-abcde", WorkloadType::Deployment, "agent", "agent", "v2"),
        ("web-0", WorkloadType::Deployment, "web", "web", "latest"),
        (
            "backup-28461300-xyz",
            WorkloadType::Cronjob,
            "backup",
            "backup",
            "latest",
        ),
        ("once-xyz", WorkloadType::Job, "once", "once", "latest"),
    ];
    for (pod, ty, workload, canonical, revision) in cases {
        let w = &mesh.workloads[&format!("Kubernetes//Pod/default/{pod}")];
        assert_eq!(
            (w.workload_type, w.workload_name.as_str()),
            (ty as i32, workload),
            "{pod}"
        );
        assert_eq!(
            (w.canonical_name.as_str(), w.canonical_revision.as_str()),
            (canonical, revision),
            "{pod}"
        );
    }
}

#[test]
fn pods_that_cannot_be_served_are_listed_with_a_reason() {
    let yaml = "
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: default}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: default}
status: {phase: Succeeded, podIP: 10.0.0.9}
---
apiVersion: v1
kind: Pod
metadata: {name: garbled, namespace: default}
status: {podIP: 10.0.0.999}
";
    let mesh = mesh(yaml);
    assert!(mesh.workloads.is_empty());
    let reason = |name: &str| {
        mesh.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap()
            .skipped
            .clone()
            .unwrap()
    };
    assert!(reason("pending").contains("no pod IP"));
    assert!(reason("done").contains("finished"));
    assert!(reason("garbled").contains("10.0.0.999"));
}

#[test]
fn services_and_target_ports() {
    let yaml = format!(
        "{}{}
---
apiVersion: v1
kind: Service
metadata: {{name: exporter, namespace: prometheus, annotations: {{alpha.istio.io/kubernetes-serviceaccounts: 'exporter-sa'}}}}
spec:
  selector: {{app: exporter-app}}
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
  - {{name: metrics, port: 80, targetPort: http-metrics}}
  - {{name: direct, port: 8080, targetPort: 9200}}
  - {{name: same, port: 7000}}
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: missing, port: 81, targetPort: no-such-port}}
---
apiVersion: v1
kind: Service
metadata: {{name: headless, namespace: prometheus}}
spec: {{clusterIP: None, selector: {{app: exporter-app}}, ports: [{{port: 9100}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: manual, namespace: prometheus}}
spec: {{clusterIP: 10.96.0.11, ports: [{{name: web, port: 443}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: manual-1, namespace: prometheus, labels: {{kubernetes.io/service-name: manual}}}}
addressType: IPv4
endpoints: [{{addresses: [10.0.0.1], targetRef: {{kind: Pod, name: exporter, namespace: prometheus}}}}]
ports: [{{name: web, port: 8443}}]
---
apiVersion: v1
kind: Service
metadata: {{name: other, namespace: prometheus}}
spec: {{clusterIP: 10.96.0.12, selector: {{app: somebody-else}}, ports: [{{port: 1}}]}}
",
        NAMESPACES,
        pod("prometheus", "exporter", "10.0.0.1", "", ""),
    );
    let mesh = mesh(&yaml);
    let svc = &mesh.services["prometheus/exporter.prometheus.svc.cluster.local"];
    assert_eq!(svc.hostname, "exporter.prometheus.svc.cluster.local");
    assert_eq!(svc.addresses.len(), 1);
    assert_eq!(svc.addresses[0].address, vec![10, 96, 0, 10]);
    assert_eq!(
        svc.ports,
        vec![
            Port {
                service_port: 80,
                target_port: 0
            },
            Port {
                service_port: 8080,
                target_port: 9200
            },
            Port {
                service_port: 7000,
                target_port: 7000
            },
            Port {
                service_port: 81,
                target_port: 0
            },
        ],
        "UDP ports are not carried; named target ports are resolved per workload"
    );
    assert_eq!(
        svc.subject_alt_names,
        vec!["spiffe://cluster.local/ns/prometheus/sa/exporter-sa"]
    );
    assert!(
        mesh.services["prometheus/headless.prometheus.svc.cluster.local"]
            .addresses
            .is_empty()
    );

    let w = &mesh.workloads["Kubernetes//Pod/prometheus/exporter"];
    let keys: Vec<_> = w.services.keys().cloned().collect();
    assert_eq!(
        keys,
        [
            "prometheus/exporter.prometheus.svc.cluster.local",
            "prometheus/headless.prometheus.svc.cluster.local",
            "prometheus/manual.prometheus.svc.cluster.local",
        ]
    );
    assert_eq!(
        w.services["prometheus/exporter.prometheus.svc.cluster.local"].ports,
        vec![
            Port {
                service_port: 80,
                target_port: 9100
            },
            Port {
                service_port: 8080,
                target_port: 9200
            },
            Port {
                service_port: 7000,
                target_port: 7000
            },
        ],
        "the named port resolves to the container port; an unknown name is dropped"
    );
    assert_eq!(
        w.services["prometheus/manual.prometheus.svc.cluster.local"].ports,
        vec![Port {
            service_port: 443,
            target_port: 8443
        }],
        "selector-less services map ports through their EndpointSlices"
    );
}

#[test]
fn translation_is_deterministic_to_the_byte() {
    use prost::Message;
    let yaml = [
        NAMESPACES.to_owned(),
        pod("prometheus", "a", "10.0.0.1", "", ""),
        pod("prometheus", "b", "10.0.0.2", "", ""),
    ]
    .concat();
    let yaml = format!(
        "{yaml}
---
apiVersion: v1
kind: Service
metadata: {{name: s1, namespace: prometheus}}
spec: {{clusterIP: 10.96.0.1, selector: {{app: a-app}}, ports: [{{port: 1}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: s2, namespace: prometheus}}
spec: {{clusterIP: 10.96.0.2, selector: {{app: a-app}}, ports: [{{port: 2}}]}}
"
    );
    let encode = |m: &MeshSnapshot| {
        m.addresses()
            .map(|(n, a)| (n.to_owned(), a.encode_to_vec()))
            .collect::<Vec<_>>()
    };
    let first = encode(&mesh(&yaml));
    for _ in 0..5 {
        assert_eq!(
            encode(&mesh(&yaml)),
            first,
            "equal input must encode to equal bytes"
        );
    }
    assert_eq!(first.len(), 4);
}

/// Incremental translation of the touched namespaces gives exactly what a full translation
/// gives, pod reports in the same order, through a sequence of edits of every kind.
#[test]
fn retranslation_equals_full_translation() {
    use ambit_model::{ClusterState, Object, ObjectKey, retranslate};

    fn parse(yaml: &str) -> Vec<Object> {
        manifest::parse(yaml)
            .into_iter()
            .flat_map(|d| d.result.unwrap())
            .collect()
    }
    let config = MeshConfig::istio_defaults();
    let mut state = ClusterState::default();
    let base = [
        NAMESPACES.to_owned(),
        pod("prometheus", "a", "10.0.0.1", "", ""),
        pod("prometheus", "b", "10.0.0.2", "", ""),
        pod("default", "c", "10.0.0.3", "", ""),
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: prometheus}\n\
         spec: {clusterIP: 10.96.0.1, selector: {app: a-app}, ports: [{port: 80, targetPort: http-metrics}]}\n"
            .to_owned(),
    ]
    .concat();
    for o in parse(&base) {
        state.apply(o).unwrap();
    }
    let mut snapshot = translate(&state, &config);
    state.take_dirty();

    let key = |kind, ns: &str, name: &str| ObjectKey {
        kind,
        namespace: ns.into(),
        name: name.into(),
    };
    type Edit = Box<dyn Fn(&mut ClusterState)>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "pod added",
            Box::new(|s| {
                drop(s.apply(parse(&pod("prometheus", "d", "10.0.0.4", "", "")).remove(0)))
            }),
        ),
        (
            "pod relabelled into the service",
            Box::new(|s| {
                drop(
                    s.apply(
                        parse(
                            &pod("prometheus", "b", "10.0.0.2", ", version: v2", "")
                                .replace("b-app", "a-app"),
                        )
                        .remove(0),
                    ),
                )
            }),
        ),
        (
            "pod deleted",
            Box::new(move |s| assert!(s.delete(&key(ambit_model::Kind::Pod, "prometheus", "a")))),
        ),
        (
            "namespace enrolled",
            Box::new(|s| {
                drop(s.apply(parse("apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}\n").remove(0)))
            }),
        ),
        (
            "service deleted",
            Box::new(move |s| {
                assert!(s.delete(&key(ambit_model::Kind::Service, "prometheus", "s")))
            }),
        ),
        (
            "policy added",
            Box::new(|s| {
                drop(s.apply(parse("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: prometheus}\nspec: {selector: {matchLabels: {app: d-app}}}\n").remove(0)))
            }),
        ),
    ];
    for (what, edit) in edits {
        edit(&mut state);
        let dirty = state.take_dirty();
        let changes = retranslate(&state, &config, &mut snapshot, &dirty);
        assert_eq!(snapshot, translate(&state, &config), "after: {what}");
        if what == "policy added" {
            assert!(
                changes.is_none(),
                "a policy change re-translates everything"
            );
        } else {
            let changes = changes.unwrap();
            assert!(
                !changes.upserts.is_empty() || !changes.removals.is_empty(),
                "{what}: {changes:?}"
            );
            let removed = |name: &str| changes.removals.iter().any(|r| r == name);
            match what {
                "pod deleted" => assert!(removed("Kubernetes//Pod/prometheus/a"), "{changes:?}"),
                "service deleted" => assert!(
                    removed("prometheus/s.prometheus.svc.cluster.local"),
                    "{changes:?}"
                ),
                _ => assert!(changes.removals.is_empty(), "{what}: {changes:?}"),
            }
        }
    }
}
