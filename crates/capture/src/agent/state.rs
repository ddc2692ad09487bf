//! The agent's pod records on disk, so a restarted agent knows its pods again.
//!
//! One JSON file, `pods.json` in the state directory, rewritten whole on every change: written
//! to a temporary file in the same directory, flushed to disk, then renamed over the old one,
//! so a reader (or an agent starting after a crash) sees either the old records or the new,
//! never a mix.
//!
//! A record names the pod's network namespace by path and inode. On load a record is kept
//! only if the path still opens a namespace with the same inode: otherwise the pod went away
//! while the agent was down (and the path may even name a new pod's namespace by now).

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ambit_netns::Netns;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

const FILE_NAME: &str = "pods.json";
const FORMAT_VERSION: u32 = 1;

/// One pod as remembered across restarts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PodRecord {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) container_id: String,
    pub(crate) netns: PathBuf,
    pub(crate) netns_inode: u64,
    #[serde(default)]
    pub(crate) ips: Vec<IpAddr>,
    /// Whether the agent had captured the pod (rules installed, handed to the node proxy).
    pub(crate) captured: bool,
    /// The service account it was captured as.
    #[serde(default)]
    pub(crate) service_account: String,
    /// Whether the pod's object carries the captured mark.
    #[serde(default)]
    pub(crate) marked: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    pods: Vec<PodRecord>,
}

/// Why the records could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("cannot create the state directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The state file of one agent.
#[derive(Debug)]
pub(crate) struct StateStore {
    path: PathBuf,
}

impl StateStore {
    /// The store in `dir`, creating the directory.
    pub(crate) fn new(dir: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(dir).map_err(|source| StateError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            path: dir.join(FILE_NAME),
        })
    }

    /// The records whose namespace still exists, each with its namespace opened. A missing
    /// file is an empty state; an unreadable one is logged and treated as empty, since the
    /// agent can still serve new pods.
    pub(crate) fn load(&self) -> Vec<(PodRecord, Netns)> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "cannot read the state file; starting empty");
                return Vec::new();
            }
        };
        let file: StateFile = match serde_json::from_str(&text) {
            Ok(file) => file,
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "the state file is not valid; starting empty");
                return Vec::new();
            }
        };
        if file.version != FORMAT_VERSION {
            warn!(
                version = file.version,
                "unknown state file version; starting empty"
            );
            return Vec::new();
        }
        file.pods.into_iter().filter_map(reopen).collect()
    }

    /// Replaces the file's records with `records`.
    pub(crate) fn save(&self, records: Vec<PodRecord>) -> Result<(), StateError> {
        let write_error = |source| StateError::Write {
            path: self.path.clone(),
            source,
        };
        let file = StateFile {
            version: FORMAT_VERSION,
            pods: records,
        };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| write_error(e.into()))?;
        let temp = self.path.with_extension("json.tmp");
        let mut out = fs::File::create(&temp).map_err(write_error)?;
        out.write_all(&json).map_err(write_error)?;
        out.sync_all().map_err(write_error)?;
        drop(out);
        fs::rename(&temp, &self.path).map_err(write_error)
    }
}

/// Opens a record's namespace, keeping the record only if it is still the same namespace.
fn reopen(record: PodRecord) -> Option<(PodRecord, Netns)> {
    let pod = format!("{}/{}", record.namespace, record.name);
    match Netns::open(&record.netns) {
        Ok(netns) if netns.inode() == record.netns_inode => Some((record, netns)),
        Ok(netns) => {
            info!(%pod, netns = %record.netns.display(), was = record.netns_inode, now = netns.inode(), "forgetting a pod: its network namespace path now names another namespace");
            None
        }
        Err(e) => {
            info!(%pod, netns = %record.netns.display(), error = %e, "forgetting a pod: its network namespace is gone");
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(name: &str, netns: &Path, inode: u64) -> PodRecord {
        PodRecord {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            container_id: "c".into(),
            netns: netns.to_owned(),
            netns_inode: inode,
            ips: vec!["10.0.0.1".parse().unwrap()],
            captured: true,
            service_account: "sa".into(),
            marked: true,
        }
    }

    #[test]
    fn keeps_records_whose_namespace_is_the_same_and_drops_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(dir.path()).unwrap();
        let here = Path::new("/proc/self/ns/net");
        let inode = Netns::open(here).unwrap().inode();
        store
            .save(vec![
                record("same", here, inode),
                record("other-inode", here, inode + 1),
                record("gone", &dir.path().join("no-such-netns"), inode),
            ])
            .unwrap();
        let loaded = store.load();
        let names: Vec<&str> = loaded.iter().map(|(r, _)| r.name.as_str()).collect();
        assert_eq!(names, ["same"]);
        assert_eq!(loaded[0].0, record("same", here, inode));
        assert!(!dir.path().join("pods.json.tmp").exists());
    }

    #[test]
    fn a_missing_or_corrupt_file_is_an_empty_state() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::new(&dir.path().join("sub")).unwrap();
        assert!(store.load().is_empty());
        fs::write(dir.path().join("sub/pods.json"), b"{not json").unwrap();
        assert!(store.load().is_empty());
    }
}
