//! Capturing enrolled pods the agent has no CNI event for: their namespaces are found by address
//! in procfs ([`crate::discovery`]).
//!
//! After every reconciliation the agent lists the enrolled pods it does not know. For those
//! with addresses it scans procfs, and captures each pod whose addresses are held by exactly
//! one namespace that no known pod holds, recording it as an ADD would (netns path
//! `<procfs>/<pid>/ns/net`, no sandbox id, uid `<namespace>/<name>` since WDS does not carry
//! the Kubernetes UID). A later ADD for the same namespace takes over the pod (see
//! [`super::pods`]).
//!
//! Scans are rate-limited: a pod not searched for before is searched for at most
//! [`DiscoveryConfig::min_interval`] after the previous scan; pods a scan did not find are
//! searched for again every [`DiscoveryConfig::retry_interval`]. The reconcile loop wakes up
//! for the next scan that is due.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ambit_netns::Netns;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::pods::Pod;
use super::{Inner, error_chain};
use crate::discovery::{Lookup, NetnsScan, default_procfs};
use crate::enrollment::{Enrolled, PodName};

/// Where and how often the agent looks for running pods' namespaces.
#[derive(Clone, Debug)]
pub struct DiscoveryConfig {
    /// The procfs to scan (the host's: `/host/proc` in the DaemonSet).
    pub procfs: PathBuf,
    /// The least time between two scans.
    pub min_interval: Duration,
    /// How often pods that a scan did not find are searched for again.
    pub retry_interval: Duration,
}

impl DiscoveryConfig {
    pub fn new(procfs: impl Into<PathBuf>) -> Self {
        Self {
            procfs: procfs.into(),
            min_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(60),
        }
    }
}

impl Default for DiscoveryConfig {
    /// The host's procfs ([`default_procfs`]).
    fn default() -> Self {
        Self::new(default_procfs())
    }
}

/// The agent's discovery state: when it last scanned, and for whom.
#[derive(Debug)]
pub(super) struct Discoverer {
    config: DiscoveryConfig,
    state: Mutex<Searched>,
}

#[derive(Debug, Default)]
struct Searched {
    last_scan: Option<Instant>,
    /// Pods the last scans looked for and did not find.
    pods: BTreeSet<PodName>,
}

/// Whether a scan should run now.
enum Due {
    Now,
    At(Instant),
}

impl Discoverer {
    pub(super) fn new(config: DiscoveryConfig) -> Self {
        Self {
            config,
            state: Mutex::default(),
        }
    }

    fn due(&self, missing: &[(PodName, Enrolled)]) -> Due {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(last) = state.last_scan else {
            return Due::Now;
        };
        let new = missing.iter().any(|(name, _)| !state.pods.contains(name));
        let next = last
            + if new {
                self.config.min_interval
            } else {
                self.config.retry_interval
            };
        if Instant::now() >= next {
            Due::Now
        } else {
            Due::At(next)
        }
    }

    fn scanned(&self, not_found: BTreeSet<PodName>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.last_scan = Some(Instant::now());
        state.pods = not_found;
    }
}

impl Inner {
    /// Looks for the namespaces of enrolled pods the agent does not know, when a scan is due,
    /// and captures those found. Returns when the next scan is due, if one will be.
    pub(super) async fn discover(&self) -> Option<Instant> {
        let discoverer = self.discovery.as_ref()?;
        let missing = self.missing().await;
        if missing.is_empty() {
            return None;
        }
        if let Due::At(next) = discoverer.due(&missing) {
            return Some(next);
        }
        let procfs = discoverer.config.procfs.clone();
        let scan = tokio::task::spawn_blocking(move || NetnsScan::scan(&procfs)).await;
        let scan = match scan {
            Ok(Ok(scan)) => scan,
            Ok(Err(e)) => {
                warn!(error = %error_chain(&e), "cannot look for running pods' network namespaces");
                discoverer.scanned(missing.into_iter().map(|(name, _)| name).collect());
                return Some(Instant::now() + discoverer.config.retry_interval);
            }
            Err(e) => {
                warn!(error = %e, "the network namespace scan failed");
                discoverer.scanned(missing.into_iter().map(|(name, _)| name).collect());
                return Some(Instant::now() + discoverer.config.retry_interval);
            }
        };
        let not_found = self.adopt(&scan, missing).await;
        let next =
            (!not_found.is_empty()).then(|| Instant::now() + discoverer.config.retry_interval);
        discoverer.scanned(not_found);
        next
    }

    /// Enrolled pods with addresses that the agent holds no namespace for.
    async fn missing(&self) -> Vec<(PodName, Enrolled)> {
        let pods = self.pods.lock().await;
        self.enrollment
            .enrolled_pods()
            .into_iter()
            .filter(|(name, enrolled)| !enrolled.ips.is_empty() && !pods.contains_key(name))
            .collect()
    }

    /// Captures the pods of `missing` that `scan` found; returns those it did not.
    async fn adopt(
        &self,
        scan: &NetnsScan,
        missing: Vec<(PodName, Enrolled)>,
    ) -> BTreeSet<PodName> {
        let mut pods = self.pods.lock().await;
        let mut held: HashSet<u64> = pods.values().map(|pod| pod.netns.inode()).collect();
        let mut not_found = BTreeSet::new();
        let mut changed = false;
        for (name, _) in missing {
            // The scan ran unlocked: an ADD may have come, or enrollment changed, meanwhile.
            let Some(enrolled) = self.enrollment.enrolled(&name) else {
                continue;
            };
            if pods.contains_key(&name) {
                continue;
            }
            let found = match scan.find(&enrolled.ips) {
                Lookup::Found(found) => found,
                Lookup::NotFound => {
                    debug!(pod = %name, ips = ?enrolled.ips, "no network namespace on this node holds the pod's addresses");
                    not_found.insert(name);
                    continue;
                }
                Lookup::Ambiguous(inodes) => {
                    warn!(pod = %name, ips = ?enrolled.ips, ?inodes, "several network namespaces hold the pod's addresses; not capturing it");
                    not_found.insert(name);
                    continue;
                }
            };
            if held.contains(&found.inode) {
                warn!(pod = %name, netns = %found.path.display(), "the network namespace holding the pod's addresses belongs to another known pod; not capturing it");
                not_found.insert(name);
                continue;
            }
            let netns = match Netns::open(&found.path) {
                Ok(netns) if netns.inode() == found.inode => netns,
                Ok(_) | Err(_) => {
                    debug!(pod = %name, netns = %found.path.display(), "the discovered network namespace went away");
                    not_found.insert(name);
                    continue;
                }
            };
            info!(pod = %name, netns = %found.path.display(), "found the network namespace of a running pod the agent had no CNI event for");
            held.insert(found.inode);
            let mut pod = Pod {
                uid: name.to_string(),
                container_id: String::new(),
                netns_path: found.path.clone(),
                netns,
                ips: enrolled.ips.clone(),
                captured: false,
                service_account: String::new(),
                rules_installed: false,
                marked: false,
                error: None,
            };
            // Failures are logged and kept in the pod's status; reconciliation retries them.
            let _ = self.capture(&name, &mut pod, enrolled).await;
            pods.insert(name, pod);
            changed = true;
        }
        if changed {
            self.persist(&pods);
        }
        not_found
    }
}
