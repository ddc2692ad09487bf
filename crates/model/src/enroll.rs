//! Which pods are in the mesh, by Istio ambient mode's label rules.
//!
//! The order matters and follows Istio: an explicit opt-out wins, pods that cannot be captured
//! (host network) or are already meshed by a sidecar are never enrolled, then the pod's own label,
//! then its namespace's label.

use k8s_openapi::api::core::v1::{Namespace, Pod};

/// The label that enrolls a namespace or pod (`ambient`) or opts a pod out (`none`).
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Set by Istio's sidecar injector on pods that carry a sidecar proxy.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";

/// Set by the capture agent (istio-cni, or Ambit's) on a pod once its traffic is redirected to
/// the node proxy: `enabled`. The control plane advertises the pod over HBONE only then.
pub const REDIRECTION_ANNOTATION: &str = "ambient.istio.io/redirection";
/// The value of [`REDIRECTION_ANNOTATION`] on a captured pod.
pub const REDIRECTION_ENABLED: &str = "enabled";

/// Whether the pod carries `ambient.istio.io/redirection: enabled`.
pub fn redirected(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REDIRECTION_ANNOTATION))
        .is_some_and(|v| v == REDIRECTION_ENABLED)
}

/// Whether a pod's traffic is carried by the mesh, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Enrollment {
    /// Enrolled because its namespace has `istio.io/dataplane-mode=ambient`.
    Namespace,
    /// Enrolled by its own `istio.io/dataplane-mode=ambient` label.
    PodLabel,
    /// Not enrolled: `istio.io/dataplane-mode=none` on the pod.
    OptedOut,
    /// Never enrolled: shares the node's network namespace, so it cannot be captured.
    HostNetwork,
    /// Never enrolled: an injected sidecar already meshes it.
    Sidecar,
    /// Not enrolled: neither it nor its namespace asks to be.
    NotLabeled,
}

impl Enrollment {
    pub fn is_enrolled(self) -> bool {
        matches!(self, Enrollment::Namespace | Enrollment::PodLabel)
    }

    /// A short reason for listings (`ambit config workloads`, `/debug`).
    pub fn reason(self) -> &'static str {
        match self {
            Enrollment::Namespace => "namespace label istio.io/dataplane-mode=ambient",
            Enrollment::PodLabel => "pod label istio.io/dataplane-mode=ambient",
            Enrollment::OptedOut => "pod label istio.io/dataplane-mode=none",
            Enrollment::HostNetwork => "host-network pod (cannot be captured)",
            Enrollment::Sidecar => "pod has an injected sidecar",
            Enrollment::NotLabeled => "not enrolled",
        }
    }
}

/// Applies the rules to one pod and its namespace (absent when not yet seen).
pub fn enrollment(pod: &Pod, namespace: Option<&Namespace>) -> Enrollment {
    let pod_mode = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(DATAPLANE_MODE_LABEL));
    if pod_mode.map(String::as_str) == Some("none") {
        return Enrollment::OptedOut;
    }
    let spec = pod.spec.as_ref();
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Enrollment::HostNetwork;
    }
    if has_sidecar(pod) {
        return Enrollment::Sidecar;
    }
    if pod_mode.map(String::as_str) == Some("ambient") {
        return Enrollment::PodLabel;
    }
    let ns_mode = namespace
        .and_then(|ns| ns.metadata.labels.as_ref())
        .and_then(|l| l.get(DATAPLANE_MODE_LABEL));
    if ns_mode.map(String::as_str) == Some("ambient") {
        return Enrollment::Namespace;
    }
    Enrollment::NotLabeled
}

fn has_sidecar(pod: &Pod) -> bool {
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(SIDECAR_STATUS_ANNOTATION));
    let proxy_container = pod.spec.as_ref().is_some_and(|s| {
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
            .any(|c| c.name == "istio-proxy")
    });
    annotated || proxy_container
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(
        labels: serde_json::Value,
        annotations: serde_json::Value,
        spec: serde_json::Value,
    ) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "ns",
            "labels": labels, "annotations": annotations}, "spec": spec}))
        .unwrap()
    }

    fn ns(labels: serde_json::Value) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": "ns", "labels": labels}})).unwrap()
    }

    #[test]
    fn istio_enrollment_rules() {
        let plain_spec = json!({"containers": [{"name": "app"}]});
        let ambient = json!({"istio.io/dataplane-mode": "ambient"});
        let none = json!({"istio.io/dataplane-mode": "none"});
        let cases = [
            (
                "labeled namespace",
                pod(json!({}), json!({}), plain_spec.clone()),
                Some(ns(ambient.clone())),
                Enrollment::Namespace,
            ),
            (
                "unlabeled namespace",
                pod(json!({}), json!({}), plain_spec.clone()),
                Some(ns(json!({}))),
                Enrollment::NotLabeled,
            ),
            (
                "namespace not seen yet",
                pod(json!({}), json!({}), plain_spec.clone()),
                None,
                Enrollment::NotLabeled,
            ),
            (
                "other label value",
                pod(json!({}), json!({}), plain_spec.clone()),
                Some(ns(json!({"istio.io/dataplane-mode": "sidecar"}))),
                Enrollment::NotLabeled,
            ),
            (
                "pod label in unlabeled namespace",
                pod(ambient.clone(), json!({}), plain_spec.clone()),
                Some(ns(json!({}))),
                Enrollment::PodLabel,
            ),
            (
                "pod opts out of labeled namespace",
                pod(none.clone(), json!({}), plain_spec.clone()),
                Some(ns(ambient.clone())),
                Enrollment::OptedOut,
            ),
            (
                "host network in labeled namespace",
                pod(
                    json!({}),
                    json!({}),
                    json!({"hostNetwork": true, "containers": []}),
                ),
                Some(ns(ambient.clone())),
                Enrollment::HostNetwork,
            ),
            (
                "host network with pod label",
                pod(
                    ambient.clone(),
                    json!({}),
                    json!({"hostNetwork": true, "containers": []}),
                ),
                None,
                Enrollment::HostNetwork,
            ),
            (
                "sidecar annotation",
                pod(
                    json!({}),
                    json!({"sidecar.istio.io/status": "{}"}),
                    plain_spec.clone(),
                ),
                Some(ns(ambient.clone())),
                Enrollment::Sidecar,
            ),
            (
                "sidecar container",
                pod(
                    json!({}),
                    json!({}),
                    json!({"containers": [{"name": "app"}, {"name": "istio-proxy"}]}),
                ),
                Some(ns(ambient.clone())),
                Enrollment::Sidecar,
            ),
            (
                "native sidecar init container",
                pod(
                    json!({}),
                    json!({}),
                    json!({"containers": [{"name": "app"}], "initContainers": [{"name": "istio-proxy"}]}),
                ),
                Some(ns(ambient.clone())),
                Enrollment::Sidecar,
            ),
            (
                "opt-out beats host network",
                pod(
                    none.clone(),
                    json!({}),
                    json!({"hostNetwork": true, "containers": []}),
                ),
                Some(ns(ambient.clone())),
                Enrollment::OptedOut,
            ),
        ];
        for (name, pod, ns, want) in cases {
            let got = enrollment(&pod, ns.as_ref());
            assert_eq!(got, want, "{name}");
            assert_eq!(
                got.is_enrolled(),
                matches!(want, Enrollment::Namespace | Enrollment::PodLabel),
                "{name}"
            );
        }
    }
}
