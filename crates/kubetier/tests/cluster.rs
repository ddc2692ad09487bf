//! The tier's own ground: the API server is the pinned release with the authentication and
//! authorization scripts/test-kube promises, and each harness helper does what it says against it.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ambit_kubetier::{Cluster, Kubelet, RoleProcess, TestPod, unique_name};
use k8s_openapi::api::authentication::v1::TokenReview;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Reviews `token` for `audiences` as the admin; returns the review's status as JSON.
async fn review(cluster: &Cluster, token: &str, audiences: &[&str]) -> Value {
    let review: TokenReview = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": audiences},
    }))
    .unwrap();
    let reviewed = Api::<TokenReview>::all(cluster.client())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    serde_json::to_value(reviewed.status).unwrap()
}

#[tokio::test]
async fn api_server_is_the_pinned_release_and_the_admin_is_a_master() {
    let cluster = Cluster::shared().await;
    let version = cluster.client().apiserver_version().await.unwrap();
    assert_eq!(
        version.git_version,
        cluster.env().get("AMBIT_KUBE_VERSION").unwrap()
    );
    let whoami = cluster
        .admin_kubectl(&["auth", "whoami", "-o", "json"])
        .await
        .unwrap();
    let whoami: Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(whoami["status"]["userInfo"]["username"], "kubernetes-admin");
    let groups = whoami["status"]["userInfo"]["groups"].to_string();
    assert!(groups.contains("system:masters"), "{groups}");
}

#[tokio::test]
async fn components_authenticate_as_their_service_accounts() {
    let cluster = Cluster::shared().await;
    for (key, account) in [
        ("AMBIT_KUBE_CONTROL_KUBECONFIG", "istiod"),
        ("AMBIT_KUBE_NODE_KUBECONFIG", "ztunnel"),
        ("AMBIT_KUBE_CNI_KUBECONFIG", "istio-cni"),
    ] {
        let out = cluster
            .kubectl(&cluster.path(key), &["auth", "whoami", "-o", "json"])
            .await
            .unwrap()
            .ok()
            .unwrap();
        let whoami: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            whoami["status"]["userInfo"]["username"],
            format!("system:serviceaccount:istio-system:{account}"),
            "{key}"
        );
    }
    // RBAC is enforced: the node proxy's account has no grant to list Secrets.
    let denied = cluster
        .kubectl(
            &cluster.path("AMBIT_KUBE_NODE_KUBECONFIG"),
            &["get", "secrets", "-n", "istio-system"],
        )
        .await
        .unwrap();
    assert!(!denied.status.success());
    assert!(denied.stderr.contains("Forbidden"), "{}", denied.stderr);
}

#[tokio::test]
async fn a_pod_token_reviews_as_its_pod_and_dies_with_it() {
    let cluster = Cluster::shared().await;
    let ns = unique_name("tokens");
    cluster.namespace(&ns, &[]).await.unwrap();
    cluster.service_account(&ns, "app").await.unwrap();
    let node = unique_name("node");
    let kubelet = Kubelet::register(&cluster, &node, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        .await
        .unwrap();
    let pod = TestPod::new(&ns, "app-0", &node)
        .service_account("app")
        .token_volume("istio-ca")
        .create(&cluster)
        .await
        .unwrap();

    let token = kubelet
        .projected_token(&pod, "istio-ca", 600)
        .await
        .unwrap();
    let status = review(&cluster, &token, &["istio-ca"]).await;
    assert_eq!(status["authenticated"], true, "{status}");
    assert_eq!(
        status["user"]["username"],
        format!("system:serviceaccount:{ns}:app")
    );
    assert_eq!(status["audiences"], json!(["istio-ca"]));
    let extra = &status["user"]["extra"];
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"],
        json!(["app-0"])
    );
    assert_eq!(
        extra["authentication.kubernetes.io/node-name"],
        json!([node])
    );

    // Another audience does not accept it.
    let status = review(&cluster, &token, &["other"]).await;
    assert_ne!(status["authenticated"], true, "{status}");

    // Once the pod is gone the token is refused.
    Api::<Pod>::namespaced(cluster.client(), &ns)
        .delete("app-0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    ambit_testkit::eventually!(
        observe = review(&cluster, &token, &["istio-ca"]).await,
        |s| s["authenticated"] != true
    );
    let status = review(&cluster, &token, &["istio-ca"]).await;
    assert!(
        status["error"].to_string().contains("invalidated"),
        "{status}"
    );
}

#[tokio::test]
async fn a_kubelet_writes_status_of_its_own_pods_only() {
    let cluster = Cluster::shared().await;
    let ns = unique_name("status");
    cluster.namespace(&ns, &[]).await.unwrap();
    let (a, b) = (unique_name("node-a"), unique_name("node-b"));
    let kubelet_a = Kubelet::register(&cluster, &a, "10.0.1.1".parse().unwrap())
        .await
        .unwrap();
    let kubelet_b = Kubelet::register(&cluster, &b, "10.0.2.1".parse().unwrap())
        .await
        .unwrap();
    TestPod::new(&ns, "web", &a)
        .label("app", "web")
        .create(&cluster)
        .await
        .unwrap();

    let ip: IpAddr = "10.0.1.7".parse().unwrap();
    let pod = kubelet_a.pod_running(&ns, "web", ip).await.unwrap();
    let status = pod.status.unwrap();
    assert_eq!(status.pod_ip.as_deref(), Some("10.0.1.7"));
    assert_eq!(status.phase.as_deref(), Some("Running"));

    // The Node authorizer refuses node b writing the status of a pod bound to node a.
    let refused = kubelet_b.pod_running(&ns, "web", ip).await.unwrap_err();
    assert!(format!("{refused:#}").contains("forbidden"), "{refused:#}");
    // And a node may not mint tokens for a pod that is not its own.
    let pod = Api::<Pod>::namespaced(cluster.client(), &ns)
        .get("web")
        .await
        .unwrap();
    let refused = kubelet_b
        .projected_token(&pod, "istio-ca", 600)
        .await
        .unwrap_err();
    assert!(format!("{refused:#}").contains("forbidden"), "{refused:#}");
}

#[tokio::test]
async fn service_account_kubeconfigs_drive_kubectl_and_helm() {
    let cluster = Cluster::shared().await;
    let ns = unique_name("tools");
    cluster.namespace(&ns, &[]).await.unwrap();
    cluster.service_account(&ns, "reader").await.unwrap();
    let kubeconfig = cluster
        .service_account_kubeconfig(&ns, "reader")
        .await
        .unwrap();
    let denied = cluster
        .kubectl(&kubeconfig, &["get", "pods", "-n", &ns])
        .await
        .unwrap();
    assert!(denied.stderr.contains("Forbidden"), "{denied:?}");
    // A Role of its own: the aggregated ClusterRoles (view, edit, admin) are empty here, as
    // their aggregation controller runs in the controller-manager.
    cluster
        .admin_kubectl(&[
            "create",
            "role",
            "reader",
            "-n",
            &ns,
            "--verb=list",
            "--resource=pods",
        ])
        .await
        .unwrap();
    cluster
        .admin_kubectl(&[
            "create",
            "rolebinding",
            "reader",
            "-n",
            &ns,
            "--role=reader",
            &format!("--serviceaccount={ns}:reader"),
        ])
        .await
        .unwrap();
    ambit_testkit::eventually!(
        observe = cluster
            .kubectl(&kubeconfig, &["get", "pods", "-n", &ns])
            .await
            .unwrap()
            .status
            .success(),
        |ok| ok
    );
    // helm sees the releases scripts/test-kube installed.
    let releases = cluster
        .admin_helm(&["list", "-n", "istio-system", "-q"])
        .await
        .unwrap();
    for chart in ["ambit-base", "ambit-cni", "ambit-control", "ambit-node"] {
        assert!(releases.lines().any(|l| l == chart), "{releases}");
    }
}

#[tokio::test]
async fn control_plane_process_becomes_ready_on_the_api_server() {
    let cluster = Cluster::shared().await;
    let ca_dir = cluster.scratch().unwrap().join(unique_name("ca"));
    std::fs::create_dir_all(&ca_dir).unwrap();
    let monitoring = free_port();
    let monitoring_addr = format!("127.0.0.1:{monitoring}");
    let ca_dir = ca_dir.display().to_string();
    let mut control = RoleProcess::ambit(
        &cluster,
        "control",
        &[
            "control",
            "--source",
            "kubernetes",
            "--ca-dir",
            &ca_dir,
            "--plaintext-addr",
            "off",
            "--monitoring-addr",
            &monitoring_addr,
        ],
        &cluster.path("AMBIT_KUBE_CONTROL_KUBECONFIG"),
        &[("POD_NAMESPACE", "istio-system"), ("RUST_LOG", "info")],
    )
    .unwrap();
    // Ready only once it has listed every kind it watches: as istiod with the chart's RBAC.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if http_get(monitoring, "/ready")
            .await
            .starts_with("HTTP/1.1 200")
        {
            break;
        }
        assert!(
            control.exited().is_none(),
            "control plane exited:\n{}",
            control.log()
        );
        assert!(
            std::time::Instant::now() < deadline,
            "control plane not ready:\n{}",
            control.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    control.stop(Duration::from_secs(5));
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

async fn http_get(port: u16, path: &str) -> String {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}
