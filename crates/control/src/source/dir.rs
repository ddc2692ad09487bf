//! A directory of Kubernetes manifests as the source of truth.
//!
//! Every `*.yaml`, `*.yml` and `*.json` file below the directory (hidden files and editor
//! backups skipped) is read as multi-document YAML. The directory is polled: a file is re-read
//! when its modification time or size changes, and the resulting object set replaces what this
//! source contributed before — objects added, changed and removed as the files were.
//!
//! Bad input never loses state: a document that fails to parse is reported with its file,
//! document index, line and the field at fault, and while a file has errors, every object it
//! defined when it was last good is kept, so one typo (or a half-written save) does not un-mesh
//! a pod.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ambit_model::manifest;
use ambit_model::{Object, ObjectKey};
use tracing::{debug, info, warn};

use crate::SharedState;

/// Polls a manifest directory and mirrors it into the shared state.
///
/// It keeps no copy of the objects (the shared state has them): per file, only the keys each
/// document produced, and per key how many files define it, so an edit costs the size of the
/// edited file, not of the whole directory.
#[derive(Debug)]
pub struct DirSource {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// How many files currently define each key (a key defined twice is kept until both go).
    owners: HashMap<ObjectKey, usize>,
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
    /// Keys of the objects this file defines, as of its last successful read of each document.
    keys: BTreeSet<ObjectKey>,
}

/// What reading one file produced.
struct FileRead {
    objects: Vec<Object>,
    /// Whether every document parsed; if not, the file's previous keys are all kept.
    complete: bool,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            files: BTreeMap::new(),
            owners: HashMap::new(),
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
                info!(dir = %self.root.display(), objects = self.owners.len(), "manifests changed");
            }
        }
    }

    /// Reads whatever changed on disk and applies the difference to `state`.
    pub fn scan(&mut self, state: &SharedState) -> Scan {
        let started = std::time::Instant::now();
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

        // Work out every change first, then apply them under one lock and one generation bump.
        let mut upserts: Vec<Object> = Vec::new();
        let mut released: Vec<ObjectKey> = Vec::new();
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(file) = self.files.remove(&path) {
                released.extend(file.keys);
            }
        }
        for (path, fingerprint) in present {
            if self
                .files
                .get(&path)
                .is_some_and(|f| f.fingerprint == fingerprint)
            {
                continue;
            }
            let mut file = self.files.remove(&path).unwrap_or(FileState {
                fingerprint,
                keys: BTreeSet::new(),
            });
            file.fingerprint = fingerprint;
            let read = read_file(&path, &mut scan.issues);
            let keys: BTreeSet<ObjectKey> =
                read.objects.iter().filter_map(|o| o.key().ok()).collect();
            if read.complete {
                released.extend(file.keys.difference(&keys).cloned());
                for key in keys.difference(&file.keys) {
                    *self.owners.entry(key.clone()).or_default() += 1;
                }
                file.keys = keys;
            } else {
                // Mid-edit: keep every key the file had; add the ones that now parse.
                for key in keys {
                    if file.keys.insert(key.clone()) {
                        *self.owners.entry(key).or_default() += 1;
                    }
                }
            }
            upserts.extend(read.objects);
            self.files.insert(path, file);
        }
        report(&scan.issues);

        let mut deletions = Vec::new();
        for key in released {
            if let Some(count) = self.owners.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    self.owners.remove(&key);
                    deletions.push(key);
                }
            }
        }
        if upserts.is_empty() && deletions.is_empty() {
            return scan;
        }
        scan.changed = state.update(|cluster| {
            let mut changed = false;
            for key in &deletions {
                changed |= cluster.delete(key);
            }
            for object in upserts {
                // Keys were checked when the document was parsed, so apply cannot fail here.
                changed |= cluster.apply(object).unwrap_or(false);
            }
            changed
        });
        if scan.changed {
            debug!(elapsed = ?started.elapsed(), "manifest scan applied changes");
        }
        scan
    }
}

/// Parses one file. Documents that fail are reported; the caller keeps what they defined.
fn read_file(path: &Path, issues: &mut Vec<ManifestIssue>) -> FileRead {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            issues.push(ManifestIssue {
                file: path.to_owned(),
                document: 0,
                line: 0,
                message: format!("cannot read: {e}"),
            });
            return FileRead {
                objects: Vec::new(),
                complete: false,
            };
        }
    };
    let mut read = FileRead {
        objects: Vec::new(),
        complete: true,
    };
    for doc in manifest::parse(&text) {
        match doc.result {
            Ok(objects) => read.objects.extend(objects),
            Err(e) if e.is_unsupported_kind() => {
                debug!(file = %path.display(), document = doc.index, "skipped: {e}")
            }
            Err(e) => {
                read.complete = false;
                issues.push(ManifestIssue {
                    file: path.to_owned(),
                    document: doc.index,
                    line: doc.line,
                    message: e.to_string(),
                });
            }
        }
    }
    read
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
