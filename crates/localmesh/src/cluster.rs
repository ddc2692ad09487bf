//! The local cluster on paper: namespaces and pods, written as the Kubernetes manifests the
//! control plane reads from its directory (one file per namespace, rewritten whole on change,
//! so relabeling a namespace is one atomic rename).
//!
//! The directory has a second writer: the capture agent marks the pods it captured
//! (`ambient.istio.io/redirection`, see `ambit_capture::marker`). Both hold the directory's
//! writer lock ([`ambit_model::manifest_dir`]) and a rewrite keeps the annotations a pod of the
//! same uid carries on disk, as the API server keeps a pod's annotations when kubelet writes
//! its status.

use std::collections::BTreeMap;

use ambit_model::manifest_dir;
use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

/// Istio's enrollment label.
pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";

/// One namespace and its pods.
#[derive(Debug, Clone, Default)]
pub struct Namespace {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// One pod as its manifest describes it.
#[derive(Debug, Clone)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
    /// The `app` label (canonical service name).
    pub app: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub labels: BTreeMap<String, String>,
    /// kubelet has written the pod's status (`podIP`, Ready): only after its sandbox's CNI ADD
    /// succeeded. Until then the object has no IP, as on a cluster.
    pub started: bool,
}

/// Namespaces and pods of the local cluster.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    /// Further manifests (policies, services…), written as `extra.yaml`, verbatim.
    pub extra: Vec<String>,
}

impl Namespace {
    /// A namespace, enrolled in ambient mode or not.
    pub fn new(name: &str, ambient: bool) -> Self {
        let mut labels = BTreeMap::new();
        if ambient {
            labels.insert(DATAPLANE_MODE.to_owned(), "ambient".to_owned());
        }
        Self {
            name: name.to_owned(),
            labels,
        }
    }
}

impl Pod {
    pub fn new(namespace: &str, name: &str, node: &str, ip: Ipv4Addr) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            service_account: name.to_owned(),
            app: name.to_owned(),
            node: node.to_owned(),
            ip,
            labels: BTreeMap::new(),
            started: false,
        }
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The pod's UID as a runtime would pass it (`K8S_POD_UID`) and its manifest carries.
    pub fn uid(&self) -> String {
        format!("uid-{}-{}", self.namespace, self.name)
    }

    /// Its SPIFFE identity in trust domain `cluster.local`.
    pub fn identity(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }

    /// The pod's object; `annotations` are the ones others set on it (kept across rewrites).
    fn manifest(&self, annotations: &BTreeMap<String, String>) -> String {
        let mut labels = format!("app: {}", quote(&self.app));
        for (k, v) in &self.labels {
            let _ = write!(labels, ", {}: {}", quote(k), quote(v));
        }
        let mut annotation_text = String::new();
        for (k, v) in annotations {
            let sep = if annotation_text.is_empty() { "" } else { ", " };
            let _ = write!(annotation_text, "{sep}{}: {}", quote(k), quote(v));
        }
        let status = if self.started {
            format!(
                "{{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}], \
                 conditions: [{{type: Ready, status: 'True'}}]}}",
                ip = self.ip
            )
        } else {
            "{phase: Pending}".to_owned()
        };
        format!(
            "apiVersion: v1\nkind: Pod\n\
             metadata: {{name: {name}, namespace: {ns}, uid: {uid}, labels: {{{labels}}}, \
             annotations: {{{annotation_text}}}}}\n\
             spec: {{serviceAccountName: {sa}, nodeName: {node}, containers: [{{name: main}}]}}\n\
             status: {status}\n",
            name = quote(&self.name),
            ns = quote(&self.namespace),
            uid = quote(&self.uid()),
            sa = quote(&self.service_account),
            node = quote(&self.node),
        )
    }
}

impl Cluster {
    pub fn namespace_mut(&mut self, name: &str) -> Option<&mut Namespace> {
        self.namespaces.iter_mut().find(|n| n.name == name)
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    pub fn pod_mut(&mut self, namespace: &str, name: &str) -> Option<&mut Pod> {
        self.pods
            .iter_mut()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// Writes one `<namespace>.yaml` per namespace into `dir` (Namespace, ServiceAccounts,
    /// Pods), each atomically, and removes files of namespaces that are gone.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let _lock = manifest_dir::lock(dir)?;
        for ns in &self.namespaces {
            let path = dir.join(format!("{}.yaml", ns.name));
            let kept = match std::fs::read_to_string(&path) {
                Ok(text) => manifest_dir::pod_annotations(&text),
                Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => return Err(e),
            };
            let mut yaml = String::new();
            let mut labels = String::new();
            for (k, v) in &ns.labels {
                let sep = if labels.is_empty() { "" } else { ", " };
                let _ = write!(labels, "{sep}{}: {}", quote(k), quote(v));
            }
            let _ = write!(
                yaml,
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}, labels: {{{labels}}}}}\n",
                quote(&ns.name)
            );
            for pod in self.pods.iter().filter(|p| p.namespace == ns.name) {
                let _ = write!(
                    yaml,
                    "---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {}, namespace: {}}}\n",
                    quote(&pod.service_account),
                    quote(&ns.name)
                );
                yaml.push_str("---\n");
                let key = (pod.namespace.clone(), pod.name.clone(), pod.uid());
                let annotations = kept.get(&key).cloned().unwrap_or_default();
                yaml.push_str(&pod.manifest(&annotations));
            }
            let tmp = dir.join(format!(".{}.yaml.tmp", ns.name));
            std::fs::write(&tmp, yaml)?;
            std::fs::rename(&tmp, &path)?;
        }
        let extra = dir.join("extra.yaml");
        if self.extra.is_empty() {
            match std::fs::remove_file(&extra) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        } else {
            let tmp = dir.join(".extra.yaml.tmp");
            std::fs::write(&tmp, self.extra.join("\n---\n"))?;
            std::fs::rename(&tmp, &extra)?;
        }
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
            let ours = path.extension().is_some_and(|e| e == "yaml");
            if ours && stem != "extra" && !self.namespaces.iter().any(|n| n.name == stem) {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

/// A YAML double-quoted scalar.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
