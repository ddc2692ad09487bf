//! The agent's pod set: handling CNI events, capturing, releasing, reconciling, persisting.
//!
//! Every function here runs with the pod set locked (see the [agent docs](super)).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ambit_netns::{Netns, NetnsError};
use tracing::{debug, info, warn};

use super::state::PodRecord;
use super::{AgentError, CniPod, Inner, error_chain};
use crate::enrollment::{Decision, Enrolled, PodName};
use crate::rules::{Rules, RulesError};
use crate::zds::{AckState, ZdsError, ZdsPod};

/// A pod on this node whose network namespace the agent holds.
#[derive(Debug)]
pub(super) struct Pod {
    /// The key of the pod in ZDS: its Kubernetes UID (or `<namespace>/<name>` when the runtime
    /// did not pass one).
    pub(super) uid: String,
    pub(super) container_id: String,
    pub(super) netns_path: PathBuf,
    pub(super) netns: Netns,
    pub(super) ips: Vec<IpAddr>,
    /// The agent set out to capture the pod, and must release it when it leaves the mesh.
    pub(super) captured: bool,
    /// The service account the pod was captured as.
    pub(super) service_account: String,
    pub(super) rules_installed: bool,
    /// The pod's object carries the captured mark (set by this agent or an earlier one).
    pub(super) marked: bool,
    /// Why the last capture attempt failed.
    pub(super) error: Option<String>,
}

type Pods = BTreeMap<PodName, Pod>;

impl Inner {
    pub(super) async fn pod_added(&self, event: CniPod) -> Result<(), AgentError> {
        let name = PodName::new(event.namespace, event.name);
        let path = event
            .netns
            .ok_or_else(|| AgentError::NoNetns { pod: name.clone() })?;
        // Before the pod set is locked: other pods' events go on while this one waits.
        let decision = self.decide(&name, event.uid.as_deref()).await?;
        let (path, netns) = self.open_netns(path).map_err(|source| AgentError::Netns {
            pod: name.clone(),
            source,
        })?;
        let uid = event
            .uid
            .filter(|uid| !uid.is_empty())
            .unwrap_or_else(|| name.to_string());
        let mut pods = self.pods.lock().await;
        match pods.get_mut(&name) {
            Some(old)
                if old.container_id == event.container_id
                    && old.netns == netns
                    && old.uid == uid => {}
            Some(old) if old.container_id.is_empty() && old.netns == netns => {
                self.take_over_discovered(&name, old, uid.clone(), &event.container_id, &path)
                    .await;
            }
            Some(_) => {
                if let Some(mut old) = pods.remove(&name) {
                    info!(pod = %name, "a new sandbox replaces the pod's old one");
                    self.release(&name, &mut old, false).await;
                }
            }
            None => {}
        }
        let pod = pods.entry(name.clone()).or_insert_with(|| Pod {
            uid,
            container_id: event.container_id,
            netns_path: path,
            netns,
            ips: Vec::new(),
            captured: false,
            service_account: String::new(),
            rules_installed: false,
            marked: false,
            error: None,
        });
        pod.ips = event.ips;
        let result = match decision {
            Decision::Enrolled(enrolled) => {
                let captured = if self.confirmed(pod, &enrolled) {
                    self.ensure_marked(&name, pod).await
                } else {
                    self.capture(&name, pod, enrolled).await
                };
                // As istio-cni: the ADD succeeds only once a node proxy has the pod; the rules
                // stay (its connections are refused, never plaintext) and the runtime retries.
                match captured {
                    Ok(()) if !self.taken_by_node_proxy(pod) => {
                        Err(AgentError::NoNodeProxy { pod: name.clone() })
                    }
                    other => other,
                }
            }
            Decision::NotEnrolled(reason) => {
                debug!(pod = %name, reason, "pod is not enrolled; remembering its network namespace");
                Ok(())
            }
            // `decide` waits out an unknown answer.
            Decision::Unknown(reason) => Err(AgentError::Undecided { pod: name, reason }),
        };
        self.persist(&pods);
        result
    }

    /// The enrollment decision for a pod's ADD, waiting up to the decide timeout while the
    /// source does not know the pod (its answer may lag the pod's creation a little).
    async fn decide(&self, name: &PodName, uid: Option<&str>) -> Result<Decision, AgentError> {
        let mut changes = self.enrollment.changes();
        let deadline = tokio::time::Instant::now() + self.decide_timeout;
        loop {
            changes.borrow_and_update();
            let decision = self.enrollment.decide(name, uid);
            let Decision::Unknown(reason) = decision else {
                return Ok(decision);
            };
            let wait = tokio::time::timeout_at(deadline, changes.changed()).await;
            if !matches!(wait, Ok(Ok(()))) {
                warn!(pod = %name, reason, "cannot decide whether to capture the pod; failing its ADD");
                return Err(AgentError::Undecided {
                    pod: name.clone(),
                    reason: format!("{reason} (waited {:?})", self.decide_timeout),
                });
            }
        }
    }

    /// Opens the namespace a CNI event names, under the host root first (see
    /// [`super::AgentConfig::host_root`]). Returns the path that opened it.
    fn open_netns(&self, path: PathBuf) -> Result<(PathBuf, Netns), NetnsError> {
        if let Some(root) = &self.host_root
            && let Ok(relative) = path.strip_prefix("/")
        {
            let under_root = root.join(relative);
            if let Ok(netns) = Netns::open(&under_root) {
                return Ok((under_root, netns));
            }
        }
        let netns = Netns::open(&path)?;
        Ok((path, netns))
    }

    /// An ADD for the namespace of a pod found by discovery: the pod takes the runtime's sandbox
    /// id and uid. The node proxy keys pods by uid, so a captured pod is moved to the new one
    /// (the capture that follows adds it again); its rules stay in place throughout.
    async fn take_over_discovered(
        &self,
        name: &PodName,
        pod: &mut Pod,
        uid: String,
        container_id: &str,
        path: &std::path::Path,
    ) {
        info!(pod = %name, "the runtime's ADD names the network namespace found by discovery; taking its sandbox id and uid");
        if pod.uid != uid && pod.captured {
            if let Err(e) = self.zds.del(&pod.uid).await {
                warn!(pod = %name, error = %error_chain(&e), "the node proxy did not confirm the removal of the pod's discovered uid");
            }
            pod.captured = false;
        }
        pod.uid = uid;
        container_id.clone_into(&mut pod.container_id);
        path.clone_into(&mut pod.netns_path);
    }

    pub(super) async fn pod_deleted(&self, event: CniPod) {
        let name = PodName::new(event.namespace, event.name);
        let mut pods = self.pods.lock().await;
        let Some(pod) = pods.get_mut(&name) else {
            debug!(pod = %name, "DEL for a pod the agent does not know");
            return;
        };
        if !event.container_id.is_empty()
            && !pod.container_id.is_empty()
            && event.container_id != pod.container_id
        {
            // A late DEL of a sandbox that a newer ADD already replaced.
            debug!(pod = %name, container = %event.container_id, "DEL for an old sandbox; ignored");
            return;
        }
        self.release(&name, pod, false).await;
        pods.remove(&name);
        self.persist(&pods);
    }

    pub(super) async fn pod_checked(&self, event: CniPod) -> Result<(), AgentError> {
        let name = PodName::new(event.namespace, event.name);
        if self.enrollment.enrolled(&name).is_none() {
            return Ok(());
        }
        let pods = self.pods.lock().await;
        let pod = pods
            .get(&name)
            .ok_or_else(|| AgentError::Unknown { pod: name.clone() })?;
        let result = if pod.captured {
            run_rules(&self.rules, &pod.netns, Rules::check).await
        } else {
            Err(RulesError::Missing)
        };
        result.map_err(|source| AgentError::Check { pod: name, source })
    }

    /// Captures every enrolled pod that is not, and (once enrollment is synced) releases every
    /// captured pod that is no longer enrolled. Failed captures are retried.
    pub(super) async fn reconcile(&self) {
        let mut pods = self.pods.lock().await;
        let synced = self.enrollment.synced();
        let mut changed = false;
        for (name, pod) in pods.iter_mut() {
            match self.enrollment.enrolled(name) {
                Some(enrolled) if !self.confirmed(pod, &enrolled) => {
                    // Failures are logged and kept in the pod's status.
                    let _ = self.capture(name, pod, enrolled).await;
                    changed = true;
                }
                Some(_) if !pod.marked => {
                    let _ = self.ensure_marked(name, pod).await;
                    changed = true;
                }
                None if pod.captured && synced => {
                    info!(pod = %name, "pod left the mesh; releasing it");
                    self.release(name, pod, true).await;
                    changed = true;
                }
                _ => {}
            }
        }
        if changed {
            self.persist(&pods);
        }
    }

    /// Marks every captured pod the node proxy has acknowledged and that is not marked yet.
    pub(super) async fn mark_taken(&self) {
        let mut pods = self.pods.lock().await;
        let mut changed = false;
        for (name, pod) in pods.iter_mut() {
            if pod.captured && !pod.marked {
                let _ = self.ensure_marked(name, pod).await;
                changed |= pod.marked;
            }
        }
        if changed {
            self.persist(&pods);
        }
    }

    /// Re-captures the pods the state file says were captured, before anything else happens:
    /// the node proxy's first replay must name them, whatever enrollment says later.
    pub(super) async fn restore(&self) {
        let mut pods = self.pods.lock().await;
        for (record, netns) in self.store.load() {
            let name = PodName::new(record.namespace, record.name);
            let mut pod = Pod {
                uid: record.uid,
                container_id: record.container_id,
                netns_path: record.netns,
                netns,
                ips: record.ips,
                captured: false,
                service_account: String::new(),
                rules_installed: false,
                marked: record.marked,
                error: None,
            };
            if record.captured {
                let enrolled = Enrolled {
                    service_account: record.service_account,
                    ips: pod.ips.clone(),
                };
                let _ = self.capture(&name, &mut pod, enrolled).await;
            }
            pods.insert(name, pod);
        }
        info!(pods = pods.len(), "restored pods from the state file");
        self.persist(&pods);
    }

    /// Whether the node proxy acknowledged `pod` and it is marked.
    fn taken_by_node_proxy(&self, pod: &Pod) -> bool {
        self.zds.ack_state(&pod.uid) == Some(AckState::Acked) && pod.marked
    }

    /// Whether `pod` is captured as `enrolled` says and needs nothing more. A pod the node
    /// proxy rejected is retried only while a node proxy is connected.
    fn confirmed(&self, pod: &Pod, enrolled: &Enrolled) -> bool {
        let rejected = matches!(self.zds.ack_state(&pod.uid), Some(AckState::Rejected(_)));
        pod.captured
            && pod.rules_installed
            && pod.service_account == enrolled.service_account
            && !(rejected && self.zds.connected())
    }

    /// Installs the rules, then hands the pod to the node proxy.
    pub(super) async fn capture(
        &self,
        name: &PodName,
        pod: &mut Pod,
        enrolled: Enrolled,
    ) -> Result<(), AgentError> {
        pod.captured = true;
        pod.service_account = enrolled.service_account;
        if let Err(source) = run_rules(&self.rules, &pod.netns, Rules::install).await {
            pod.rules_installed = false;
            let error = AgentError::Rules {
                pod: name.clone(),
                source,
            };
            return Err(not_confirmed(name, pod, error));
        }
        pod.rules_installed = true;
        let zds_pod = ZdsPod {
            uid: pod.uid.clone(),
            name: name.name.clone(),
            namespace: name.namespace.clone(),
            service_account: pod.service_account.clone(),
            netns: Some(pod.netns.clone()),
        };
        // Marked only once the node proxy has the pod: until then the control plane does not
        // advertise it, and its rules refuse (never leak) what reaches it.
        match self.zds.add(zds_pod).await {
            Ok(()) => {
                pod.error = None;
                info!(pod = %name, "pod captured");
                self.ensure_marked(name, pod).await
            }
            Err(ZdsError::NotConnected) => {
                pod.error = Some("no node proxy connected".to_owned());
                info!(pod = %name, "rules in place; no node proxy connected, it gets the pod when it connects");
                Ok(())
            }
            Err(source) => {
                let error = AgentError::Zds {
                    pod: name.clone(),
                    source,
                };
                Err(not_confirmed(name, pod, error))
            }
        }
    }

    /// Marks a captured pod's object, unless it is marked already. A failure is kept in the
    /// pod's status and retried on the next reconciliation.
    async fn ensure_marked(&self, name: &PodName, pod: &mut Pod) -> Result<(), AgentError> {
        if pod.marked
            || !pod.captured
            || !pod.rules_installed
            || self.zds.ack_state(&pod.uid) != Some(AckState::Acked)
        {
            return Ok(());
        }
        pod.error = None;
        match self.marker.mark(name, &pod.uid, true).await {
            Ok(()) => {
                pod.marked = true;
                debug!(pod = %name, "pod marked ambient.istio.io/redirection=enabled");
                Ok(())
            }
            Err(source) => {
                let error = AgentError::Mark {
                    pod: name.clone(),
                    source,
                };
                Err(not_confirmed(name, pod, error))
            }
        }
    }

    /// Tells the node proxy the pod is gone, then removes its rules, then (with `unmark`, for
    /// a pod that stays but leaves the mesh) its mark. Problems are logged: the pod leaves
    /// either way.
    async fn release(&self, name: &PodName, pod: &mut Pod, unmark: bool) {
        if unmark && pod.marked {
            match self.marker.mark(name, &pod.uid, false).await {
                Ok(()) => pod.marked = false,
                Err(e) => {
                    warn!(pod = %name, error = %error_chain(&e), "cannot remove the pod's captured mark")
                }
            }
        }
        if !pod.captured {
            return;
        }
        if let Err(e) = self.zds.del(&pod.uid).await {
            warn!(pod = %name, error = %error_chain(&e), "the node proxy did not confirm the pod's removal");
        }
        if let Err(e) = run_rules(&self.rules, &pod.netns, Rules::remove).await {
            warn!(pod = %name, error = %error_chain(&e), "cannot remove the pod's redirection rules");
        }
        pod.captured = false;
        pod.rules_installed = false;
        pod.error = None;
        info!(pod = %name, "pod released");
    }

    pub(super) fn persist(&self, pods: &Pods) {
        let records = pods
            .iter()
            .map(|(name, pod)| PodRecord {
                namespace: name.namespace.clone(),
                name: name.name.clone(),
                uid: pod.uid.clone(),
                container_id: pod.container_id.clone(),
                netns: pod.netns_path.clone(),
                netns_inode: pod.netns.inode(),
                ips: pod.ips.clone(),
                captured: pod.captured,
                service_account: pod.service_account.clone(),
                marked: pod.marked,
            })
            .collect();
        if let Err(e) = self.store.save(records) {
            warn!(error = %error_chain(&e), "cannot save the pod records; a restarted agent may miss pods");
        }
    }
}

/// Logs a failed capture and keeps its reason in the pod's status.
fn not_confirmed(name: &PodName, pod: &mut Pod, error: AgentError) -> AgentError {
    let reason = error_chain(&error);
    warn!(pod = %name, reason, "pod capture not confirmed");
    pod.error = Some(reason);
    error
}

/// Runs a rules operation off the async runtime (it waits for a command).
async fn run_rules(
    rules: &Rules,
    netns: &Netns,
    operation: fn(&Rules, &Netns) -> Result<(), RulesError>,
) -> Result<(), RulesError> {
    let (rules, netns) = (rules.clone(), netns.clone());
    tokio::task::spawn_blocking(move || operation(&rules, &netns))
        .await
        .unwrap_or_else(|e| {
            Err(RulesError::Spawn {
                program: "the rules task".into(),
                source: std::io::Error::other(e.to_string()),
            })
        })
}
