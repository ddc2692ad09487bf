//! RBAC least privilege, checked against the real API server with the charts installed (by
//! scripts/test-kube, in istio-system): every row of `deploy/tests/rbac/can-i.tsv` is asked with
//! `kubectl auth can-i --as=system:serviceaccount:istio-system:<account>`, and the table is
//! printed with each answer. Then the grants that matter are used for real, with the accounts'
//! own tokens: the capture agent's pod mark through pods/status, and the control plane's watch of
//! its root-certificate ConfigMaps.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::fmt::Write as _;

use ambit_kubetier::{Cluster, Kubelet, TestPod, unique_name};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, WatchParams};
use serde_json::json;

/// One row of the table.
#[derive(Debug)]
struct Row {
    account: String,
    expected: bool,
    verb: String,
    resource: String,
    subresource: Option<String>,
    /// None: cluster-scoped; Some("*"): all namespaces.
    namespace: Option<String>,
    why: String,
}

fn table(cluster: &Cluster) -> Vec<Row> {
    let file = cluster.repo().join("deploy/tests/rbac/can-i.tsv");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let [account, answer, verb, resource, subresource, namespace, why] = cols[..] else {
            panic!(
                "{}:{}: expected 7 tab-separated columns: {line:?}",
                file.display(),
                n + 1
            );
        };
        let expected = match answer {
            "yes" => true,
            "no" => false,
            other => panic!(
                "{}:{}: answer {other:?} is not yes|no",
                file.display(),
                n + 1
            ),
        };
        rows.push(Row {
            account: account.to_owned(),
            expected,
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            subresource: (subresource != "-").then(|| subresource.to_owned()),
            namespace: (namespace != "-").then(|| namespace.to_owned()),
            why: why.to_owned(),
        });
    }
    rows
}

/// `kubectl auth can-i` as the row's account; true for "yes".
async fn can_i(cluster: &Cluster, namespace: &str, row: &Row) -> bool {
    let user = format!("system:serviceaccount:{namespace}:{}", row.account);
    let mut args = vec!["auth", "can-i", row.verb.as_str(), row.resource.as_str()];
    let as_user = format!("--as={user}");
    args.push(&as_user);
    let subresource;
    if let Some(sub) = &row.subresource {
        subresource = format!("--subresource={sub}");
        args.push(&subresource);
    }
    match row.namespace.as_deref() {
        Some("*") => args.push("--all-namespaces"),
        Some(ns) => args.extend(["-n", ns]),
        None => {}
    }
    let run = cluster
        .kubectl(&cluster.admin_kubeconfig(), &args)
        .await
        .unwrap();
    match run.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {}: {other:?} {}", args.join(" "), run.stderr),
    }
}

#[tokio::test]
async fn each_account_may_do_what_its_binary_does_and_nothing_it_must_not() {
    let cluster = Cluster::shared().await;
    let namespace = cluster
        .env()
        .get("AMBIT_KUBE_NAMESPACE")
        .unwrap()
        .to_owned();
    let rows = table(&cluster);
    assert!(rows.len() > 30, "the table lost rows");
    let mut printed = String::new();
    let mut wrong = Vec::new();
    writeln!(
        printed,
        "{:<10} {:<7} {:<6} {:<52} {:<13} {:<4} why",
        "account", "verb", "can-i", "resource", "namespace", ""
    )
    .unwrap();
    for row in &rows {
        let answer = can_i(&cluster, &namespace, row).await;
        let resource = match &row.subresource {
            Some(sub) => format!("{} (subresource {sub})", row.resource),
            None => row.resource.clone(),
        };
        let verdict = if answer == row.expected { "ok" } else { "FAIL" };
        writeln!(
            printed,
            "{:<10} {:<7} {:<6} {:<52} {:<13} {:<4} {}",
            row.account,
            row.verb,
            if answer { "yes" } else { "no" },
            resource,
            row.namespace.as_deref().unwrap_or("(cluster)"),
            verdict,
            row.why
        )
        .unwrap();
        if answer != row.expected {
            wrong.push(format!(
                "{} {} {resource} in {:?}: expected {}, the API server says {}",
                row.account, row.verb, row.namespace, row.expected, answer
            ));
        }
    }
    // libtest hides a passing test's output, so the table goes to a file scripts/test-kube prints.
    let table = format!(
        "RBAC of the charts' service accounts \
         (kubectl auth can-i --as=system:serviceaccount:{namespace}:<account>):\n{printed}"
    );
    let file = cluster.path("AMBIT_KUBE_WORK").join("logs/rbac-table.txt");
    std::fs::write(&file, &table).unwrap();
    println!("{table}");
    assert!(
        wrong.is_empty(),
        "RBAC differs from deploy/tests/rbac/can-i.tsv:\n{}",
        wrong.join("\n")
    );
}

#[tokio::test]
async fn the_capture_agent_marks_a_pod_through_its_status_and_cannot_change_the_pod() {
    let cluster = Cluster::shared().await;
    let ns = unique_name("mark");
    cluster
        .namespace(&ns, &[("istio.io/dataplane-mode", "ambient")])
        .await
        .unwrap();
    let node = unique_name("node");
    let kubelet = Kubelet::register(&cluster, &node, "10.1.0.1".parse().unwrap())
        .await
        .unwrap();
    TestPod::new(&ns, "app", &node)
        .create(&cluster)
        .await
        .unwrap();
    kubelet
        .pod_running(&ns, "app", "10.1.0.9".parse().unwrap())
        .await
        .unwrap();

    let cni = cluster
        .client_for(&cluster.path("AMBIT_KUBE_CNI_KUBECONFIG"))
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(cni, &ns);
    let mark = json!({"metadata": {"annotations": {"ambient.istio.io/redirection": "enabled"}}});
    let marked = pods
        .patch_status("app", &PatchParams::default(), &Patch::Merge(&mark))
        .await
        .expect("istio-cni may mark a pod through pods/status");
    let annotations = marked.metadata.annotations.unwrap_or_default();
    assert_eq!(
        annotations
            .get("ambient.istio.io/redirection")
            .map(String::as_str),
        Some("enabled")
    );

    // The same patch on the pod itself, and any read, are refused.
    let refused = pods
        .patch("app", &PatchParams::default(), &Patch::Merge(&mark))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403),
        "{refused}"
    );
    let refused = pods.get("app").await.unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403),
        "{refused}"
    );
}

#[tokio::test]
async fn the_control_plane_watches_only_its_root_certificate_config_maps() {
    let cluster = Cluster::shared().await;
    let ns = unique_name("rootcert");
    cluster.namespace(&ns, &[]).await.unwrap();
    let control = cluster
        .client_for(&cluster.path("AMBIT_KUBE_CONTROL_KUBECONFIG"))
        .await
        .unwrap();
    let all = Api::<ConfigMap>::all(control.clone());

    // By name (field selector), across namespaces: allowed.
    let by_name = ListParams::default().fields("metadata.name=istio-ca-root-cert");
    all.list(&by_name)
        .await
        .expect("list of istio-ca-root-cert by field selector");
    let mut events = all
        .watch(
            &WatchParams::default()
                .fields("metadata.name=istio-ca-root-cert")
                .timeout(5),
            "0",
        )
        .await
        .expect("watch of istio-ca-root-cert by field selector")
        .boxed();
    // Any other ConfigMap, or all of them: refused.
    let refused = all.list(&ListParams::default()).await.unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403),
        "{refused}"
    );
    let refused = Api::<ConfigMap>::namespaced(control.clone(), &ns)
        .get("kube-root-ca.crt")
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, kube::Error::Api(s) if s.code == 403),
        "{refused}"
    );

    // It may create istio-ca-root-cert in a new namespace, and the watch sees it.
    let root: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "istio-ca-root-cert", "namespace": ns},
        "data": {"root-cert.pem": "test"},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(control, &ns)
        .create(&Default::default(), &root)
        .await
        .expect("create istio-ca-root-cert");
    let mut seen = false;
    while let Some(event) = events.next().await {
        if let Ok(kube::api::WatchEvent::Added(cm)) = event
            && cm.metadata.namespace.as_deref() == Some(&ns)
        {
            seen = true;
            break;
        }
    }
    assert!(
        seen,
        "the watch did not see istio-ca-root-cert created in {ns}"
    );
}
