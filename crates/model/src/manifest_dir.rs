//! A directory of manifests as a small object store that more than one writer changes: the
//! local mesh writes pods (as kubelet and the API server would), the capture agent marks the
//! pods it captured. Every writer holds [`lock`] (an exclusive `flock` on `<dir>/.lock`, a
//! hidden file the directory source skips) for its whole read-modify-write, and writes files
//! by rename, so a reader sees a file before or after a change, never half of one.
//!
//! [`patch_pod`] changes one pod's object where it is (the document that defines it, in
//! whichever file); [`pod_annotations`] lets a writer that rewrites whole files keep the
//! annotations others set.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Held while a writer changes the directory; dropping it releases the lock.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Takes the directory's writer lock, waiting for the current writer.
pub fn lock(dir: &Path) -> io::Result<DirLock> {
    std::fs::create_dir_all(dir)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))?;
    file.lock()?;
    Ok(DirLock { _file: file })
}

/// Why a pod could not be patched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    #[error("no manifest below {} defines pod {namespace}/{name}{}", dir.display(), uid.as_ref().map(|u| format!(" with uid {u}")).unwrap_or_default())]
    NotFound {
        dir: PathBuf,
        namespace: String,
        name: String,
        uid: Option<String>,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Applies `patch` to the object of pod `namespace/name` (with `uid`, when given) in the
/// directory, under the directory's lock, and rewrites the file that defines it (the patched
/// document as JSON, which is YAML; the others as they were).
pub fn patch_pod(
    dir: &Path,
    namespace: &str,
    name: &str,
    uid: Option<&str>,
    patch: impl FnOnce(&mut Value),
) -> Result<(), PatchError> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| PatchError::Io { path, source }
    };
    let _lock = lock(dir).map_err(io_error(dir))?;
    for path in manifest_files(dir).map_err(io_error(dir))? {
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let docs = crate::manifest::split_documents(&text);
        let found = docs.iter().position(|(_, body)| {
            document_value(body).is_some_and(|v| is_pod(&v, namespace, name, uid))
        });
        let Some(index) = found else { continue };
        let mut value = document_value(docs[index].1).unwrap_or(Value::Null);
        patch(&mut value);
        let mut out = String::with_capacity(text.len() + 64);
        for (i, (_, body)) in docs.iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            if i == index {
                out.push_str(&value.to_string());
                out.push('\n');
            } else {
                out.push_str(body);
                if !body.is_empty() && !body.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        let tmp = path.with_file_name(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("patch")
        ));
        std::fs::write(&tmp, out).map_err(io_error(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_error(&path))?;
        return Ok(());
    }
    Err(PatchError::NotFound {
        dir: dir.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: uid.map(str::to_owned),
    })
}

/// Sets (`Some`) or removes (`None`) annotation `key` of `value`, a pod's object.
pub fn set_annotation(value: &mut Value, key: &str, to: Option<&str>) {
    let Some(object) = value.as_object_mut() else {
        return;
    };
    let metadata = object
        .entry("metadata")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let Some(metadata) = metadata.as_object_mut() else {
        return;
    };
    let annotations = metadata
        .entry("annotations")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !annotations.is_object() {
        *annotations = Value::Object(serde_json::Map::new());
    }
    if let Some(annotations) = annotations.as_object_mut() {
        match to {
            Some(v) => {
                annotations.insert(key.to_owned(), Value::String(v.to_owned()));
            }
            None => {
                annotations.remove(key);
            }
        }
    }
}

/// The annotations of every pod the manifest text defines, by (namespace, name, uid).
pub fn pod_annotations(text: &str) -> BTreeMap<(String, String, String), BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (_, body) in crate::manifest::split_documents(text) {
        let Some(value) = document_value(body) else {
            continue;
        };
        if value.get("kind").and_then(Value::as_str) != Some("Pod") {
            continue;
        }
        let meta = value.get("metadata");
        let field = |f: &str| {
            meta.and_then(|m| m.get(f))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let annotations: BTreeMap<String, String> = meta
            .and_then(|m| m.get("annotations"))
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
        out.insert(
            (field("namespace"), field("name"), field("uid")),
            annotations,
        );
    }
    out
}

fn document_value(body: &str) -> Option<Value> {
    if body.trim().is_empty() {
        return None;
    }
    serde_saphyr::from_str(body).ok()
}

fn is_pod(value: &Value, namespace: &str, name: &str, uid: Option<&str>) -> bool {
    let meta = value.get("metadata");
    let field = |f: &str| meta.and_then(|m| m.get(f)).and_then(Value::as_str);
    value.get("kind").and_then(Value::as_str) == Some("Pod")
        && field("namespace") == Some(namespace)
        && field("name") == Some(name)
        && uid.is_none_or(|u| field("uid") == Some(u))
}

/// The manifest files below `dir` as the directory source reads them (hidden files and editor
/// backups skipped), in path order.
fn manifest_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let file_name = file_name.to_string_lossy();
            if file_name.starts_with('.') || file_name.ends_with('~') {
                continue;
            }
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const FILE: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: ns}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: ns, uid: u1, labels: {app: web}}
spec: {nodeName: n1}
";

    #[test]
    fn a_pod_is_patched_in_its_own_file_and_the_other_documents_stay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ns.yaml");
        std::fs::write(&path, FILE).unwrap();
        patch_pod(dir.path(), "ns", "web", Some("u1"), |v| {
            set_annotation(v, "ambient.istio.io/redirection", Some("enabled"));
        })
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("apiVersion: v1\nkind: Namespace\nmetadata: {name: ns}\n---\n"));
        let got = pod_annotations(&text);
        let key = ("ns".to_owned(), "web".to_owned(), "u1".to_owned());
        assert_eq!(got[&key]["ambient.istio.io/redirection"], "enabled");
        let objects: Vec<_> = crate::manifest::parse(&text)
            .into_iter()
            .map(|d| d.result.unwrap())
            .collect();
        assert_eq!(objects.len(), 2, "both documents still parse");

        patch_pod(dir.path(), "ns", "web", None, |v| {
            set_annotation(v, "ambient.istio.io/redirection", None);
        })
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(pod_annotations(&text)[&key].is_empty());
    }

    #[test]
    fn another_uid_or_name_is_not_found_and_names_the_pod() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ns.yaml"), FILE).unwrap();
        let err = patch_pod(dir.path(), "ns", "web", Some("u2"), |_| {}).unwrap_err();
        assert!(err.to_string().contains("pod ns/web with uid u2"), "{err}");
        assert!(patch_pod(dir.path(), "ns", "db", None, |_| {}).is_err());
    }
}
