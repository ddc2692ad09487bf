//! Marking a captured pod, as istio-cni does: annotation `ambient.istio.io/redirection:
//! enabled` on the pod's object once its rules are in place and the node proxy took it, removed
//! when the pod leaves the mesh. The control plane advertises a pod over HBONE only while it
//! carries the mark, so no peer tunnels to a pod whose listeners are not up.
//!
//! Where the object lives decides the [`PodMarker`]:
//! - [`KubeMarker`]: the Kubernetes API, a JSON merge patch through the `pods/status`
//!   subresource (which may change metadata, and is the narrower permission), as istio-cni;
//! - [`ManifestMarker`]: a manifest directory (the local mesh), the pod's own document patched
//!   under the directory's writer lock ([`ambit_model::manifest_dir`]);
//! - [`NoMarker`]: nothing to mark (agent tests without a control plane).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use ambit_model::enroll::{REDIRECTION_ANNOTATION, REDIRECTION_ENABLED};
use ambit_model::manifest_dir;

use crate::enrollment::PodName;

/// A boxed future, so the agent can hold any marker behind `dyn`.
pub type MarkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), MarkError>> + Send + 'a>>;

/// Why a pod could not be marked.
#[derive(Debug, thiserror::Error)]
#[error("cannot {} pod {pod} as captured: {reason}", if *.captured { "mark" } else { "unmark" })]
pub struct MarkError {
    pub pod: PodName,
    pub captured: bool,
    pub reason: String,
}

/// Sets or clears the captured mark on a pod's object.
pub trait PodMarker: Send + Sync + std::fmt::Debug + 'static {
    /// Marks `pod` (the one with `uid`, when known) captured, or with `captured == false`
    /// removes the mark.
    fn mark<'a>(&'a self, pod: &'a PodName, uid: &'a str, captured: bool) -> MarkFuture<'a>;
}

/// Marks nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoMarker;

impl PodMarker for NoMarker {
    fn mark<'a>(&'a self, _pod: &'a PodName, _uid: &'a str, _captured: bool) -> MarkFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// Marks pods in a manifest directory.
#[derive(Debug, Clone)]
pub struct ManifestMarker {
    dir: PathBuf,
}

impl ManifestMarker {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl PodMarker for ManifestMarker {
    fn mark<'a>(&'a self, pod: &'a PodName, uid: &'a str, captured: bool) -> MarkFuture<'a> {
        let dir = self.dir.clone();
        let (namespace, name) = (pod.namespace.clone(), pod.name.clone());
        // A uid the agent made up (`<namespace>/<name>`, no K8S_POD_UID) matches no object.
        let uid = (!uid.is_empty() && uid != pod.to_string()).then(|| uid.to_owned());
        Box::pin(async move {
            let patched = tokio::task::spawn_blocking(move || {
                manifest_dir::patch_pod(&dir, &namespace, &name, uid.as_deref(), |value| {
                    let to = captured.then_some(REDIRECTION_ENABLED);
                    manifest_dir::set_annotation(value, REDIRECTION_ANNOTATION, to);
                })
                .map_err(|e| e.to_string())
            })
            .await
            .unwrap_or_else(|e| Err(format!("the marking task failed: {e}")));
            patched.map_err(|reason| MarkError {
                pod: pod.clone(),
                captured,
                reason,
            })
        })
    }
}

/// Marks pods through the Kubernetes API.
#[derive(Clone)]
pub struct KubeMarker {
    client: kube::Client,
}

impl std::fmt::Debug for KubeMarker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeMarker").finish_non_exhaustive()
    }
}

impl KubeMarker {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// A marker with the client the environment configures: the pod's service account in a
    /// cluster, else `KUBECONFIG` or `~/.kube/config`.
    pub async fn from_environment() -> Result<Self, kube::Error> {
        Ok(Self::new(kube::Client::try_default().await?))
    }
}

impl PodMarker for KubeMarker {
    fn mark<'a>(&'a self, pod: &'a PodName, uid: &'a str, captured: bool) -> MarkFuture<'a> {
        Box::pin(async move {
            use k8s_openapi::api::core::v1::Pod;
            use kube::api::{Api, Patch, PatchParams};
            let value = if captured {
                serde_json::Value::String(REDIRECTION_ENABLED.to_owned())
            } else {
                serde_json::Value::Null
            };
            let mut metadata = serde_json::json!({"annotations": {REDIRECTION_ANNOTATION: value}});
            // The uid as a precondition: never mark a newer pod of the same name.
            if !uid.is_empty() && uid != pod.to_string() {
                metadata["uid"] = serde_json::Value::String(uid.to_owned());
            }
            let patch = serde_json::json!({ "metadata": metadata });
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &pod.namespace);
            api.patch_status(&pod.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
                .map_err(|e| MarkError {
                    pod: pod.clone(),
                    captured,
                    reason: e.to_string(),
                })
        })
    }
}
