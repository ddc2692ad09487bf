//! A directory of Kubernetes manifests as the source of truth.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file below the directory (hidden files and editor
//! backups skipped) is read as multi-document YAML. The directory is polled: a file is re-read
//! when its modification time or size changes, and the resulting object set replaces what this
//! source contributed before — objects added, changed and removed as the files were.
//!
//! Bad input never loses state: a document that fails to parse is reported with its file,
//! document index, line and the field at fault, and while a file has errors, the objects it
//! produced when it was last good are kept, so one typo does not un-mesh a pod.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ambit_model::manifest;
use ambit_model::{Object, ObjectKey};
use tracing::{debug, info, warn};

use crate::SharedState;

/// Polls a manifest directory and mirrors it into the shared state.
#[derive(Debug)]
pub struct DirSource {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// What this source last put into the shared state, so removals can be computed.
    applied: BTreeMap<ObjectKey, Object>,
}

/// A problem with one document of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestIssue {
    pub file: PathBuf,
    /// 0-based document index within the file.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    pub message: String,
}

/// The outcome of one scan.
#[derive(Debug, Default)]
pub struct Scan {
    /// Whether the shared state changed.
    pub changed: bool,
    /// Problems found in files read during this scan.
    pub issues: Vec<ManifestIssue>,
}

#[derive(Debug)]
struct FileState {
    fingerprint: (SystemTime, u64),
    /// Objects by document index, as last successfully parsed.
    documents: BTreeMap<usize, Vec<Object>>,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            files: BTreeMap::new(),
            applied: BTreeMap::new(),
        }
    }

    /// Polls every `interval` forever, applying changes to `state`.
    pub async fn run(mut self, state: SharedState, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            // The scan does blocking file I/O; keep it off the async workers.
            let (source, scan) = {
                let state = state.clone();
                match tokio::task::spawn_blocking(move || {
                    let scan = self.scan(&state);
                    (self, scan)
                })
                .await
                {
                    Ok(done) => done,
                    Err(e) => {
                        warn!(error = %e, "manifest scan task failed; the directory source stops");
                        return;
                    }
                }
            };
            self = source;
            if scan.changed {
                info!(dir = %self.root.display(), objects = self.applied.len(), "manifests changed");
            }
        }
    }

    /// Reads whatever changed on disk and applies the difference to `state`.
    pub fn scan(&mut self, state: &SharedState) -> Scan {
        let mut scan = Scan::default();
        let present = match list_files(&self.root) {
            Ok(files) => files,
            Err(e) => {
                // An unreadable directory is reported; the last known objects stay served.
                scan.issues.push(ManifestIssue {
                    file: self.root.clone(),
                    document: 0,
                    line: 0,
                    message: format!("cannot list the directory: {e}"),
                });
                report(&scan.issues);
                return scan;
            }
        };
        self.files.retain(|path, _| present.contains_key(path));
        for (path, fingerprint) in present {
            if self
                .files
                .get(&path)
                .is_some_and(|f| f.fingerprint == fingerprint)
            {
                continue;
            }
            let previous = self
                .files
                .remove(&path)
                .map(|f| f.documents)
                .unwrap_or_default();
            let documents = read_file(&path, previous, &mut scan.issues);
            self.files.insert(
                path,
                FileState {
                    fingerprint,
                    documents,
                },
            );
        }
        report(&scan.issues);

        let desired = self.desired();
        scan.changed = state.update(|cluster| {
            let mut changed = false;
            for key in self.applied.keys().filter(|k| !desired.contains_key(*k)) {
                changed |= cluster.delete(key);
            }
            for (key, object) in &desired {
                if self.applied.get(key) != Some(object) {
                    // Keys were checked when the document was parsed, so apply cannot fail here;
                    // if it did, the object is simply not served and the next scan retries.
                    changed |= cluster.apply(object.clone()).unwrap_or(false);
                }
            }
            changed
        });
        self.applied = desired;
        scan
    }

    fn desired(&self) -> BTreeMap<ObjectKey, Object> {
        let mut desired = BTreeMap::new();
        for (path, file) in &self.files {
            for object in file.documents.values().flatten() {
                let Ok(key) = object.key() else { continue };
                if desired.insert(key.clone(), object.clone()).is_some() {
                    warn!(file = %path.display(), object = %key, "object defined more than once; the last definition wins");
                }
            }
        }
        desired
    }
}

/// Parses one file. If any document fails, the file is treated as mid-edit: every document
/// keeps its last good objects unless it now parses, so a truncated or garbled save never
/// withdraws what the file served.
fn read_file(
    path: &Path,
    previous: BTreeMap<usize, Vec<Object>>,
    issues: &mut Vec<ManifestIssue>,
) -> BTreeMap<usize, Vec<Object>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            issues.push(ManifestIssue {
                file: path.to_owned(),
                document: 0,
                line: 0,
                message: format!("cannot read: {e}"),
            });
            return previous;
        }
    };
    let mut documents = BTreeMap::new();
    let mut failed = false;
    for doc in manifest::parse(&text) {
        match doc.result {
            Ok(objects) => {
                documents.insert(doc.index, objects);
            }
            Err(e) if e.is_unsupported_kind() => {
                debug!(file = %path.display(), document = doc.index, "skipped: {e}")
            }
            Err(e) => {
                failed = true;
                issues.push(ManifestIssue {
                    file: path.to_owned(),
                    document: doc.index,
                    line: doc.line,
                    message: e.to_string(),
                });
            }
        }
    }
    if failed {
        let mut merged = previous;
        merged.extend(documents);
        return merged;
    }
    documents
}

fn report(issues: &[ManifestIssue]) {
    for issue in issues {
        warn!("{issue}");
    }
}

/// Manifest files below `root` with their (mtime, size) fingerprints.
fn list_files(root: &Path) -> std::io::Result<BTreeMap<PathBuf, (SystemTime, u64)>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.ends_with('~') {
                continue;
            }
            let meta = entry.metadata()?;
            let path = entry.path();
            if meta.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.insert(path, (meta.modified()?, meta.len()));
            }
        }
    }
    Ok(out)
}

impl fmt::Display for ManifestIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: document {} (line {}): {}",
            self.file.display(),
            self.document,
            self.line,
            self.message
        )
    }
}
