//! `ambit control --source kubernetes` on the real API server (items 3 and 4 of the Kubernetes
//! tier): the same WDS as the manifest-directory source for the same objects, nothing served
//! before every watched kind has listed, watches resumed after a control-plane or API-server
//! restart without a re-push, label changes reaching WDS clients (latency printed), and the
//! fresh-cluster bootstrap of the root (Secret `istio-ca-secret`, ConfigMap `istio-ca-root-cert`).
//!
//! Each test has a private API server (`PrivateCluster`) with the charts' CRDs, so the objects
//! it creates are the only ones there and cluster-wide names (`istio-system`) are its own.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_kubetier::{Cluster, Kubelet, PrivateCluster};
use ambit_testkit::{eventually, shared_mesh};
use common::control::{Mirror, Plan, http_get, install_crds, percentile, wds_client};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, Patch, PatchParams};
use serde_json::Value;

/// A private cluster with the CRDs and the shared mesh's objects created as a cluster has them:
/// pods through the API, their status written by their node's kubelet stand-in.
async fn cluster_with_shared_mesh() -> PrivateCluster {
    let shared = Cluster::shared().await;
    let cluster = PrivateCluster::start(&shared).await.unwrap();
    install_crds(&cluster).await;
    let documents: Vec<Value> = shared_mesh::OBJECTS
        .split("\n---\n")
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .map(|d| serde_saphyr::from_str(d).unwrap())
        .collect();
    // Nodes first (their kubelets write pod status), then everything but pod status.
    let mut kubelets = BTreeMap::new();
    for doc in &documents {
        if let Some(node) = doc["spec"]["nodeName"].as_str()
            && !kubelets.contains_key(node)
        {
            let host = 10 + u8::try_from(kubelets.len()).unwrap();
            let kubelet =
                Kubelet::register(&cluster, node, IpAddr::V4(Ipv4Addr::new(127, 0, 8, host)))
                    .await
                    .unwrap();
            kubelets.insert(node.to_owned(), kubelet);
        }
    }
    let file = cluster.scratch().unwrap().join("shared-mesh.yaml");
    std::fs::write(&file, shared_mesh::OBJECTS).unwrap();
    cluster.apply_files(&[file.as_path()]).await.unwrap();
    for doc in &documents {
        if doc["kind"] != "Pod" {
            continue;
        }
        let (namespace, name) = (
            doc["metadata"]["namespace"].as_str().unwrap(),
            doc["metadata"]["name"].as_str().unwrap(),
        );
        let kubelet = &kubelets[doc["spec"]["nodeName"].as_str().unwrap()];
        let status = serde_json::json!({"status": doc["status"]});
        Api::<Pod>::namespaced(kubelet.client(), namespace)
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
    cluster
}

/// The namespaces of the shared mesh: only their resources are compared (a cluster has more,
/// such as Service `default/kubernetes`).
fn in_shared_mesh(name: &str) -> bool {
    ["shop", "legacy", "istio-system"]
        .iter()
        .any(|ns| name.contains(&format!("/{ns}/")) || name.starts_with(&format!("{ns}/")))
}

fn rendered(mirror: &Mirror) -> String {
    shared_mesh::render(
        &only_shared_mesh(&mirror.addresses.lock().unwrap()),
        &only_shared_mesh(&mirror.authorizations.lock().unwrap()),
    )
}

fn only_shared_mesh<V: Clone>(resources: &BTreeMap<String, V>) -> BTreeMap<String, V> {
    resources
        .iter()
        .filter(|(name, _)| in_shared_mesh(name))
        .map(|(name, v)| (name.clone(), v.clone()))
        .collect()
}

async fn synced(mirror: &Mirror) {
    eventually!(observe = mirror.initial.lock().unwrap().len(), |n| n >= 2);
}

/// Pushes counted by the control plane's own metric.
async fn pushes_total(plan: &Plan) -> String {
    let metrics = http_get(plan.monitoring, "/metrics").await.unwrap().1;
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("ambit_xds_pushes_total")
                || l.starts_with("ambit_xds_resources_pushed_total")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test]
async fn the_kubernetes_source_serves_the_shared_expectation_and_resumes_without_repushing() {
    let cluster = cluster_with_shared_mesh().await;
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan::new(&cluster.admin_kubeconfig(), "istio-system", dir.path());
    let mut control = plan.process(&cluster);
    plan.ready().await;
    let mirror = Arc::new(Mirror::default());
    let client = wds_client(plan.plaintext, mirror.clone());
    synced(&mirror).await;
    shared_mesh::assert_expected(&rendered(&mirror), "Kubernetes");
    let first_sync = mirror.changes_since(0);

    // The control plane restarts (a new process on the same ports, same cluster): the client
    // reconnects with the versions it holds and is sent nothing, since nothing changed.
    let before = mirror.log_len();
    let initial_before = mirror.initial.lock().unwrap().len();
    control.stop(Duration::from_secs(5));
    let _control = plan.process(&cluster);
    plan.ready().await;
    eventually!(
        timeout = Duration::from_secs(30),
        observe = mirror.initial.lock().unwrap().len(),
        |n| n >= initial_before + 2
    );
    assert!(client.connected());
    let after_own_restart = mirror.changes_since(before);
    let own_restart_pushes = pushes_total(&plan).await;

    // The API server restarts (etcd keeps running): the watches resume from their resource
    // versions; nothing is re-pushed.
    let before = mirror.log_len();
    cluster.restart_api_server().await.unwrap();
    // A change made after the restart arrives, so the watches are live again.
    cluster
        .admin_kubectl(&[
            "label",
            "pod",
            "-n",
            "shop",
            "frontend",
            "service.istio.io/canonical-revision=v2",
            "--overwrite",
        ])
        .await
        .unwrap();
    let frontend = "Kubernetes//Pod/shop/frontend";
    eventually!(
        timeout = Duration::from_secs(60),
        observe = mirror.workload(frontend).map(|w| w.canonical_revision),
        |r| r.as_deref() == Some("v2")
    );
    // Anything else the restart would re-push has had time to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_api_restart = mirror.changes_since(before);
    println!(
        "resources sent to one WDS client: first sync {first_sync}; after the control plane's restart {after_own_restart} (new process's metrics: {own_restart_pushes}); after the API server's restart {after_api_restart} (the one label change made to prove the watches resumed; metrics now: {})",
        pushes_total(&plan).await
    );
    assert_eq!(after_own_restart, 0, "a restart re-pushed resources");
    assert_eq!(
        after_api_restart, 1,
        "an API-server restart re-pushed resources"
    );
    assert_eq!(
        rendered(&mirror).replace(r#"canonical_revision: "v2""#, r#"canonical_revision: "v1""#),
        shared_mesh::EXPECTED,
        "only the label changed"
    );
}

#[tokio::test]
async fn label_changes_reach_wds_clients_quickly() {
    let cluster = cluster_with_shared_mesh().await;
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan::new(&cluster.admin_kubeconfig(), "istio-system", dir.path());
    let _control = plan.start().await;
    let mirror = Arc::new(Mirror::default());
    let _client = wds_client(plan.plaintext, mirror.clone());
    synced(&mirror).await;
    let frontend = "Kubernetes//Pod/shop/frontend";
    const CHANGES: usize = 20;

    // A pod label: the workload's canonical revision.
    let mut pod_latency = Vec::new();
    for i in 0..CHANGES {
        let revision = format!("r{i}");
        let started = Instant::now();
        cluster
            .admin_kubectl(&[
                "label",
                "pod",
                "-n",
                "shop",
                "frontend",
                &format!("service.istio.io/canonical-revision={revision}"),
                "--overwrite",
            ])
            .await
            .unwrap();
        eventually!(
            observe = mirror.workload(frontend).map(|w| w.canonical_revision),
            |r| r.as_deref() == Some(revision.as_str())
        );
        pod_latency.push(started.elapsed());
    }

    // A namespace label: out of the mesh and back (the workload's tunnel protocol).
    let mut namespace_latency = Vec::new();
    for i in 0..CHANGES {
        let (mode, hbone) = if i % 2 == 0 {
            ("none", false)
        } else {
            ("ambient", true)
        };
        let started = Instant::now();
        cluster
            .admin_kubectl(&[
                "label",
                "namespace",
                "shop",
                &format!("istio.io/dataplane-mode={mode}"),
                "--overwrite",
            ])
            .await
            .unwrap();
        eventually!(
            observe = mirror.workload(frontend).map(|w| w.tunnel_protocol),
            |p| p
                == Some(if hbone {
                    ambit_proto::workload::TunnelProtocol::Hbone as i32
                } else {
                    ambit_proto::workload::TunnelProtocol::None as i32
                })
        );
        namespace_latency.push(started.elapsed());
    }
    for (what, samples) in [
        ("pod label", &pod_latency),
        ("namespace label", &namespace_latency),
    ] {
        println!(
            "kubectl label ({what}) -> WDS client, {CHANGES} changes, from starting kubectl: p50 {:?}, p99 {:?}, max {:?}",
            percentile(samples, 50.0),
            percentile(samples, 99.0),
            samples.iter().max().unwrap()
        );
    }
}

#[tokio::test]
async fn nothing_is_served_until_every_kind_has_listed() {
    let shared = Cluster::shared().await;
    // No CRDs yet: the policy kinds cannot be listed.
    let cluster = PrivateCluster::start(&shared).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan::new(&cluster.admin_kubeconfig(), "istio-system", dir.path());
    cluster
        .admin_kubectl(&["create", "namespace", "istio-system"])
        .await
        .unwrap();
    let starting = tokio::spawn({
        let plan = plan.clone();
        async move { plan.start().await }
    });
    eventually!(
        timeout = Duration::from_secs(20),
        observe = http_get(plan.monitoring, "/ready").await,
        |r| r
            .as_ref()
            .is_some_and(|(code, body)| *code == 503
                && body.contains("authorizationpolicies.security.istio.io"))
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !starting.is_finished(),
        "start-up must wait for the policy kinds"
    );
    assert!(
        tokio::net::TcpStream::connect(plan.plaintext)
            .await
            .is_err(),
        "WDS must not be served before every kind has listed"
    );
    assert!(
        tokio::net::TcpStream::connect(plan.tls).await.is_err(),
        "nor the CA"
    );

    install_crds(&cluster).await;
    let _control = tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .unwrap()
        .unwrap();
    let (code, _) = http_get(plan.monitoring, "/ready").await.unwrap();
    assert_eq!(code, 200);
    assert!(tokio::net::TcpStream::connect(plan.plaintext).await.is_ok());
}

/// The control plane's own account on a fresh cluster: the charts installed by Helm into
/// `istio-system`, and a kubeconfig of ServiceAccount `istio-system/istiod`.
async fn fresh_cluster_with_charts() -> (PrivateCluster, std::path::PathBuf) {
    let shared = Cluster::shared().await;
    let cluster = PrivateCluster::start(&shared).await.unwrap();
    let charts = cluster.repo().join("deploy/charts");
    for chart in ["ambit-base", "ambit-control"] {
        cluster
            .admin_helm(&[
                "install",
                chart,
                &charts.join(chart).display().to_string(),
                "--namespace",
                "istio-system",
                "--create-namespace",
                "--set",
                "profile=ambient",
            ])
            .await
            .unwrap();
    }
    let kubeconfig = cluster
        .service_account_kubeconfig("istio-system", "istiod")
        .await
        .unwrap();
    (cluster, kubeconfig)
}

async fn ca_secret(cluster: &Cluster) -> Option<Secret> {
    Api::<Secret>::namespaced(cluster.client(), "istio-system")
        .get_opt("istio-ca-secret")
        .await
        .unwrap()
}

async fn root_configmap(cluster: &Cluster, namespace: &str) -> Option<ConfigMap> {
    Api::<ConfigMap>::namespaced(cluster.client(), namespace)
        .get_opt("istio-ca-root-cert")
        .await
        .unwrap()
}

fn root_of(cm: &ConfigMap) -> String {
    cm.data
        .as_ref()
        .and_then(|d| d.get("root-cert.pem"))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_fresh_cluster_gets_one_root_kept_in_istio_ca_secret_and_published_everywhere() {
    let (cluster, kubeconfig) = fresh_cluster_with_charts().await;
    assert!(ca_secret(&cluster).await.is_none());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (plan_a, plan_b) = (
        Plan::new(&kubeconfig, "istio-system", dir_a.path()),
        Plan::new(&kubeconfig, "istio-system", dir_b.path()),
    );
    // Two replicas starting at once race to create the Secret: they end with one root.
    let (a, b) = tokio::join!(plan_a.start(), plan_b.start());
    assert_eq!(
        a.ca().root_pem(),
        b.ca().root_pem(),
        "two replicas, two roots"
    );
    let secret = ca_secret(&cluster).await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("istio.io/ca-root"));
    let data = secret.data.unwrap();
    let keys: Vec<&str> = data.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "key.pem",
            "root-cert.pem"
        ]
    );
    assert_eq!(
        String::from_utf8(data["ca-cert.pem"].0.clone()).unwrap(),
        a.ca().root_pem()
    );

    // A restart finds the same root.
    drop(a);
    let a = plan_a.on_new_ports().start().await;
    assert_eq!(
        a.ca().root_pem(),
        b.ca().root_pem(),
        "a restart made another root"
    );
    let root = a.ca().root_pem().to_owned();

    // Every namespace has the root, but those istiod skips.
    for namespace in ["istio-system", "default", "kube-system"] {
        eventually!(
            observe = root_configmap(&cluster, namespace)
                .await
                .map(|c| root_of(&c)),
            |r| r.as_deref() == Some(root.as_str())
        );
    }
    let cm = root_configmap(&cluster, "default").await.unwrap();
    assert_eq!(cm.metadata.labels.unwrap()["istio.io/config"], "true");
    for skipped in ["kube-public", "kube-node-lease"] {
        assert!(
            root_configmap(&cluster, skipped).await.is_none(),
            "{skipped}"
        );
    }
    // A new namespace gets it; a deleted one comes back; an edited one is put right, its other
    // keys kept.
    cluster
        .admin_kubectl(&["create", "namespace", "late"])
        .await
        .unwrap();
    eventually!(
        observe = root_configmap(&cluster, "late").await.map(|c| root_of(&c)),
        |r| r.as_deref() == Some(root.as_str())
    );
    cluster
        .admin_kubectl(&["delete", "configmap", "-n", "late", "istio-ca-root-cert"])
        .await
        .unwrap();
    eventually!(
        observe = root_configmap(&cluster, "late").await.map(|c| root_of(&c)),
        |r| r.as_deref() == Some(root.as_str())
    );
    cluster
        .admin_kubectl(&[
            "patch",
            "configmap",
            "-n",
            "late",
            "istio-ca-root-cert",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"root-cert.pem":"tampered","note":"kept"}}"#,
        ])
        .await
        .unwrap();
    eventually!(observe = root_configmap(&cluster, "late").await, |c| c
        .as_ref()
        .is_some_and(|c| root_of(c) == root
            && c.data
                .as_ref()
                .is_some_and(
                    |d| d.get("note").map(String::as_str) == Some("kept")
                )));
    drop((a, b));
}

#[tokio::test]
async fn a_cacerts_plug_in_ca_is_used_instead_of_a_self_signed_root() {
    let (cluster, kubeconfig) = fresh_cluster_with_charts().await;
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan::new(&kubeconfig, "istio-system", dir.path());
    // The plug-in material, as the cacerts Secret mounted at /etc/cacerts holds it.
    let config = ambit_identity::CaConfig::new("cluster.local".parse().unwrap());
    let plugged = ambit_identity::CertificateAuthority::init(&plan.ca_dir, &config).unwrap();
    let control = plan.start().await;
    assert_eq!(control.ca().root_pem(), plugged.root_pem());
    assert!(
        ca_secret(&cluster).await.is_none(),
        "a plug-in CA needs no istio-ca-secret"
    );
    eventually!(
        observe = root_configmap(&cluster, "default")
            .await
            .map(|c| root_of(&c)),
        |r| r.as_deref() == Some(plugged.root_pem())
    );
}
