//! The charts installed for real: every chart of `deploy/` goes into a private API server with
//! Helm 4, in the order and with the values of the k0rdent MultiClusterService (the seed's
//! `profile: ambient`), after kube-prometheus-stack's CRDs (prometheus-operator's, as
//! kube-prometheus-stack ships them); every object is accepted, `helm upgrade` changes what it
//! should, and `helm uninstall` leaves nothing behind but what is meant to stay. The k0rdent
//! HelmRepository, ServiceTemplates and MultiClusterService are applied against k0rdent's and
//! Flux's published CRDs.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ambit_kubetier::{Cluster, PrivateCluster, unique_name};
use serde_json::Value;

/// One service of the MultiClusterService: release name, namespace, chart folder, values.
#[derive(Debug)]
struct Release {
    name: String,
    namespace: String,
    chart: PathBuf,
    values: PathBuf,
}

/// The MultiClusterService's services that are Ambit charts, in its order, with its values.
fn releases(cluster: &Cluster, dir: &Path) -> Vec<Release> {
    let repo = cluster.repo();
    let text =
        std::fs::read_to_string(repo.join("deploy/k0rdent/multiclusterservice.yaml")).unwrap();
    let mcs: Value = serde_saphyr::from_str(&text).unwrap();
    let services = mcs["spec"]["serviceSpec"]["services"].as_array().unwrap();
    let mut releases = Vec::new();
    for service in services {
        let name = service["name"].as_str().unwrap();
        let chart = match name {
            "ambit-monitoring" => repo.join("deploy/monitoring"),
            _ if name.starts_with("ambit-") => repo.join("deploy/charts").join(name),
            _ => continue, // kube-prometheus-stack: the catalog's, not ours
        };
        assert!(chart.join("Chart.yaml").exists(), "{}", chart.display());
        let values = dir.join(format!("{name}.values.yaml"));
        std::fs::write(&values, service["values"].as_str().unwrap_or("{}\n")).unwrap();
        releases.push(Release {
            name: name.to_owned(),
            namespace: service["namespace"].as_str().unwrap().to_owned(),
            chart,
            values,
        });
    }
    let names: Vec<&str> = releases.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "ambit-base",
            "ambit-cni",
            "ambit-control",
            "ambit-node",
            "ambit-monitoring"
        ]
    );
    releases
}

async fn helm(cluster: &Cluster, args: &[&str]) -> String {
    match cluster.admin_helm(args).await {
        Ok(out) => out,
        Err(e) => panic!("{e:#}"),
    }
}

/// Every object of release `name`'s manifest exists in the API server (kubectl fails on one
/// that does not).
async fn release_objects(cluster: &Cluster, release: &Release, dir: &Path) -> Vec<String> {
    let manifest = helm(
        cluster,
        &["get", "manifest", &release.name, "-n", &release.namespace],
    )
    .await;
    let file = dir.join(format!("{}.manifest.yaml", release.name));
    std::fs::write(&file, manifest).unwrap();
    let file = file.display().to_string();
    let listed = cluster
        .admin_kubectl(&["get", "-f", &file, "-o", "name"])
        .await
        .unwrap();
    listed.lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn every_chart_installs_upgrades_and_uninstalls_cleanly() {
    let shared = Cluster::shared().await;
    let cluster = PrivateCluster::start(&shared).await.unwrap();
    let dir = cluster.scratch().unwrap().join(unique_name("charts"));
    std::fs::create_dir_all(&dir).unwrap();

    // kube-prometheus-stack's CRDs first, as the MultiClusterService installs it first.
    let crds = cluster.path("AMBIT_KUBE_PROMETHEUS_CRDS");
    let files: Vec<PathBuf> = ["podmonitors", "servicemonitors", "prometheusrules"]
        .iter()
        .map(|k| crds.join(format!("monitoring.coreos.com_{k}.yaml")))
        .collect();
    let files: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    cluster.apply_files(&files).await.unwrap();
    let before = cluster.objects().await.unwrap();

    let releases = releases(&cluster, &dir);
    let mut installed = Vec::new();
    for release in &releases {
        let (chart, values) = (
            release.chart.display().to_string(),
            release.values.display().to_string(),
        );
        let out = helm(
            &cluster,
            &[
                "install",
                &release.name,
                &chart,
                "-n",
                &release.namespace,
                "--create-namespace",
                "-f",
                &values,
            ],
        )
        .await;
        assert!(out.contains("STATUS: deployed"), "{out}");
        let objects = release_objects(&cluster, release, &dir).await;
        assert!(!objects.is_empty(), "{} installed no objects", release.name);
        installed.extend(objects);
    }
    // What the charts promise (docs/kubernetes.md), as the API server holds it.
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.security.istio.io",
        "customresourcedefinition.apiextensions.k8s.io/peerauthentications.security.istio.io",
        "daemonset.apps/istio-cni-node",
        "serviceaccount/istio-cni",
        "deployment.apps/istiod",
        "service/istiod",
        "poddisruptionbudget.policy/istiod",
        "serviceaccount/istiod",
        "daemonset.apps/ztunnel",
        "serviceaccount/ztunnel",
        "podmonitor.monitoring.coreos.com/ztunnel",
        "servicemonitor.monitoring.coreos.com/istiod",
        "prometheusrule.monitoring.coreos.com/ambit",
    ] {
        assert!(
            installed.iter().any(|o| o == object),
            "{object} not installed: {installed:#?}"
        );
    }
    let dashboards = installed
        .iter()
        .filter(|o| o.starts_with("configmap/"))
        .count();
    assert!(dashboards >= 4, "dashboards: {installed:#?}");

    // An upgrade changes what it is asked to, and keeps every object.
    let node = releases.iter().find(|r| r.name == "ambit-node").unwrap();
    for release in &releases {
        let (chart, values) = (
            release.chart.display().to_string(),
            release.values.display().to_string(),
        );
        let mut args = vec![
            "upgrade",
            &release.name,
            &chart,
            "-n",
            &release.namespace,
            "-f",
            &values,
        ];
        if release.name == node.name {
            args.extend(["--set", "logLevel=debug"]);
        }
        let out = helm(&cluster, &args).await;
        assert!(out.contains("REVISION: 2"), "{out}");
        release_objects(&cluster, release, &dir).await;
    }
    let env = cluster
        .admin_kubectl(&[
            "get",
            "daemonset",
            "ztunnel",
            "-n",
            "istio-system",
            "-o",
            "jsonpath={.spec.template.spec.containers[0].env[?(@.name==\"RUST_LOG\")].value}",
        ])
        .await
        .unwrap();
    assert_eq!(env, "debug");

    // Uninstall, last first: only the namespaces and the CRDs (resource-policy keep, so users'
    // policies survive) remain.
    for release in releases.iter().rev() {
        let out = helm(
            &cluster,
            &[
                "uninstall",
                &release.name,
                "-n",
                &release.namespace,
                "--wait",
            ],
        )
        .await;
        assert!(out.contains("uninstalled"), "{out}");
    }
    let after = cluster.objects().await.unwrap();
    let left: BTreeSet<&String> = after.difference(&before).collect();
    let expected = [
        "apiextensions.k8s.io/CustomResourceDefinition /authorizationpolicies.security.istio.io",
        "apiextensions.k8s.io/CustomResourceDefinition /peerauthentications.security.istio.io",
        // The aggregator registers an APIService for each CRD group version while its CRD is there.
        "apiregistration.k8s.io/APIService /v1.security.istio.io",
        "apiregistration.k8s.io/APIService /v1beta1.security.istio.io",
        "core/Namespace /istio-system",
    ];
    let left_names: Vec<&str> = left.iter().map(|s| s.as_str()).collect();
    assert_eq!(left_names, expected, "left behind after helm uninstall");
    let gone: Vec<&String> = before.difference(&after).collect();
    assert!(
        gone.is_empty(),
        "objects that were there before are gone: {gone:#?}"
    );
}

#[tokio::test]
async fn k0rdent_templates_and_multicluster_service_are_accepted_by_k0rdents_crds() {
    let cluster = Cluster::shared().await;
    let repo = cluster.repo();
    let k0rdent = repo.join("deploy/tests/crds/k0rdent");
    let flux = cluster
        .path("AMBIT_KUBE_FLUX_CRDS")
        .join("source.toolkit.fluxcd.io_helmrepositories.yaml");
    let crds = [
        k0rdent.join("k0rdent.mirantis.com_servicetemplates.yaml"),
        k0rdent.join("k0rdent.mirantis.com_multiclusterservices.yaml"),
        flux,
    ];
    let crds: Vec<&Path> = crds.iter().map(PathBuf::as_path).collect();
    cluster.apply_files(&crds).await.unwrap();
    cluster
        .admin_kubectl(&["create", "namespace", "kcm-system"])
        .await
        .unwrap();

    let objects = [
        "helmrepository.yaml",
        "servicetemplates.yaml",
        "multiclusterservice.yaml",
    ]
    .map(|f| repo.join("deploy/k0rdent").join(f));
    let objects: Vec<&Path> = objects.iter().map(PathBuf::as_path).collect();
    let applied = cluster.apply_files(&objects).await.unwrap();
    for name in [
        "helmrepository.source.toolkit.fluxcd.io/ambit",
        "servicetemplate.k0rdent.mirantis.com/ambit-base-0-1-0",
        "servicetemplate.k0rdent.mirantis.com/ambit-cni-0-1-0",
        "servicetemplate.k0rdent.mirantis.com/ambit-control-0-1-0",
        "servicetemplate.k0rdent.mirantis.com/ambit-node-0-1-0",
        "servicetemplate.k0rdent.mirantis.com/ambit-monitoring-0-1-0",
        "multiclusterservice.k0rdent.mirantis.com/ambit-security",
    ] {
        assert!(
            applied.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name}: {applied}"
        );
    }
    let listed = cluster
        .admin_kubectl(&["get", "servicetemplates", "-n", "kcm-system", "-o", "name"])
        .await
        .unwrap();
    assert_eq!(listed.lines().count(), 5, "{listed}");

    // The schema is enforced: a misspelt field of a ServiceTemplate is refused by the API server.
    let bad = cluster.scratch().unwrap().join(unique_name("bad-template"));
    std::fs::write(
        &bad,
        "apiVersion: k0rdent.mirantis.com/v1beta1\nkind: ServiceTemplate\nmetadata:\n  name: bad\n  namespace: kcm-system\nspec:\n  helm:\n    chartSpecc:\n      chart: ambit-base\n",
    )
    .unwrap();
    let bad = bad.display().to_string();
    let refused = cluster
        .kubectl(
            &cluster.admin_kubeconfig(),
            &["apply", "--server-side", "-f", &bad],
        )
        .await
        .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    assert!(refused.stderr.contains("chartSpecc"), "{}", refused.stderr);
}
