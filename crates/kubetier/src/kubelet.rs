//! Pods as a cluster has them, and a stand-in for the kubelet's part in their life.
//!
//! No scheduler runs, so a [`TestPod`] is created with `spec.nodeName` set, as the scheduler's
//! binding would leave it. A [`Kubelet`] does, with its node's credentials (client certificate
//! `system:node:<name>`, group `system:nodes`), what kubelet does through the API server and in
//! the same order: it registers its Node, mints the projected service-account tokens of pods bound
//! to it (TokenRequest bound to the pod) and writes their status (`status.podIP`/`podIPs`, phase
//! Running, Ready) through the status subresource. The API server's Node authorizer and
//! NodeRestriction admission judge each of those requests as they judge a real kubelet's.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;

use crate::cluster::{Cluster, TokenOptions, request_token};

/// A pod to create: name, namespace, node, service account, labels and annotations.
#[derive(Debug, Clone)]
pub struct TestPod {
    namespace: String,
    name: String,
    node: String,
    service_account: String,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    token_audiences: Vec<String>,
}

impl TestPod {
    /// Pod `namespace/name` bound to `node`, running as service account `default`.
    pub fn new(namespace: &str, name: &str, node: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            service_account: "default".to_owned(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            token_audiences: Vec::new(),
        }
    }

    pub fn service_account(mut self, name: &str) -> Self {
        self.service_account = name.to_owned();
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.insert(key.to_owned(), value.to_owned());
        self
    }

    /// A projected service-account token volume for `audience` (as the node proxy's and capture
    /// agent's pods have one for `istio-ca`): the API server lets a kubelet mint a pod's token only
    /// for an audience one of its volumes names.
    pub fn token_volume(mut self, audience: &str) -> Self {
        self.token_audiences.push(audience.to_owned());
        self
    }

    /// The object as it is sent: one container, no IP (that is the kubelet's to write).
    pub fn manifest(&self) -> anyhow::Result<Pod> {
        let volumes: Vec<_> = self
            .token_audiences
            .iter()
            .enumerate()
            .map(|(n, audience)| {
                json!({"name": format!("token-{n}"), "projected": {"sources": [{"serviceAccountToken": {
                    "path": "token", "audience": audience, "expirationSeconds": 43200,
                }}]}})
            })
            .collect();
        let mounts: Vec<_> = (0..volumes.len())
            .map(|n| json!({"name": format!("token-{n}"), "mountPath": format!("/var/run/secrets/tokens-{n}")}))
            .collect();
        Ok(serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": self.labels,
                "annotations": self.annotations,
            },
            "spec": {
                "nodeName": self.node,
                "serviceAccountName": self.service_account,
                "containers": [{
                    "name": "app",
                    "image": "registry.invalid/ambit-test/app:1",
                    "volumeMounts": mounts,
                }],
                "volumes": volumes,
            },
        }))?)
    }

    /// Creates the pod as the admin (as a controller or a user would), and returns it with its uid.
    pub async fn create(&self, cluster: &Cluster) -> anyhow::Result<Pod> {
        Api::<Pod>::namespaced(cluster.client(), &self.namespace)
            .create(&PostParams::default(), &self.manifest()?)
            .await
            .with_context(|| format!("cannot create pod {}/{}", self.namespace, self.name))
    }
}

/// One node's kubelet, as far as the API server sees it.
#[derive(Clone)]
pub struct Kubelet {
    node: String,
    client: kube::Client,
    kubeconfig: PathBuf,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl Kubelet {
    /// Makes node `name`'s client certificate (signed by the cluster CA, as the kubelet's
    /// bootstrap would get it), and registers Node `name` with it, with `address` as its
    /// InternalIP.
    pub async fn register(cluster: &Cluster, name: &str, address: IpAddr) -> anyhow::Result<Self> {
        let dir = cluster.scratch()?.join(format!("node-{name}"));
        std::fs::create_dir_all(&dir)?;
        let (cert, key) = node_certificate(cluster, name, &dir)?;
        let kubeconfig = dir.join("kubelet.kubeconfig");
        cluster.write_kubeconfig(
            &kubeconfig,
            &format!("system:node:{name}"),
            json!({"client-certificate": cert, "client-key": key}),
            "default",
        )?;
        let client = cluster.client_for(&kubeconfig).await?;
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            }},
        }))?;
        let nodes = Api::<Node>::all(client.clone());
        nodes
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("node {name} cannot register itself"))?;
        let status = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": address.to_string()},
                          {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                            "message": "kubelet stand-in of the Kubernetes tier"}],
        }});
        nodes
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .with_context(|| format!("node {name} cannot write its status"))?;
        Ok(Self {
            node: name.to_owned(),
            client,
            kubeconfig,
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The node's own client (`system:node:<name>`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Writes what kubelet writes once the pod's sandbox is up and its containers are ready:
    /// phase Running, `podIP`/`podIPs`, `hostIP`, and the Ready conditions.
    pub async fn pod_running(
        &self,
        namespace: &str,
        name: &str,
        ip: IpAddr,
    ) -> anyhow::Result<Pod> {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let ready = |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now});
        let status = json!({"status": {
            "phase": "Running",
            "podIP": ip.to_string(),
            "podIPs": [{"ip": ip.to_string()}],
            "startTime": now,
            "conditions": [ready("PodScheduled"), ready("Initialized"), ready("ContainersReady"), ready("Ready")],
        }});
        let pods = Api::<Pod>::namespaced(self.client(), namespace);
        // The Node authorizer learns of a pod's binding from its own watch, a moment after the
        // pod is created: a refusal in that moment is retried, any other error is returned.
        let (params, patch) = (PatchParams::default(), Patch::Merge(&status));
        retry_forbidden(|| pods.patch_status(name, &params, &patch))
            .await
            .with_context(|| format!("{} writing status of pod {namespace}/{name}", self.node))
    }

    /// The token kubelet puts in a pod's projected `serviceAccountToken` volume: the pod's
    /// service account, bound to the pod, for `audience` (which one of the pod's volumes must
    /// name, see [`TestPod::token_volume`]), valid `expiration_seconds`.
    pub async fn projected_token(
        &self,
        pod: &Pod,
        audience: &str,
        expiration_seconds: i64,
    ) -> anyhow::Result<String> {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("default");
        let options = TokenOptions::audience(audience)
            .expiration(expiration_seconds)
            .bound_to(pod);
        let client = self.client();
        retry_forbidden(|| request_token(&client, namespace, account, &options))
            .await
            .with_context(|| format!("{} minting a token for {namespace}/{account}", self.node))
    }
}

/// Retries `call` while the API server answers 403, for up to 10 s.
async fn retry_forbidden<T, E, F, Fut>(mut call: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: Forbidden,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match call().await {
            Err(e) if e.is_forbidden() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            result => return result,
        }
    }
}

trait Forbidden {
    fn is_forbidden(&self) -> bool;
}

impl Forbidden for kube::Error {
    fn is_forbidden(&self) -> bool {
        matches!(self, kube::Error::Api(status) if status.code == 403)
    }
}

impl Forbidden for anyhow::Error {
    fn is_forbidden(&self) -> bool {
        self.chain()
            .filter_map(|e| e.downcast_ref::<kube::Error>())
            .any(Forbidden::is_forbidden)
    }
}

/// Writes node `name`'s client certificate and key (PEM) into `dir`; returns their paths.
fn node_certificate(
    cluster: &Cluster,
    name: &str,
    dir: &Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let ca_cert = std::fs::read_to_string(cluster.ca_file())?;
    let ca_key = std::fs::read_to_string(cluster.path("AMBIT_KUBE_CA_KEY"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, KeyPair::from_pem(&ca_key)?)
        .context("the cluster CA")?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "system:nodes");
    subject.push(DnType::CommonName, format!("system:node:{name}"));
    params.distinguished_name = subject;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer)?;
    let (cert_file, key_file) = (dir.join("kubelet.crt"), dir.join("kubelet.key"));
    std::fs::write(&cert_file, cert.pem())?;
    std::fs::write(&key_file, key.serialize_pem())?;
    Ok((cert_file, key_file))
}
