//! Translation: [`ClusterState`] → the WDS resources of Istio's ambient mode.
//!
//! A pure function of the cluster state and the mesh settings, recomputed as a whole on every
//! (debounced) change; the xDS layer diffs the result so clients receive only what changed.
//!
//! Resource names follow istiod, so a stock ztunnel sees the names it expects:
//! workloads are named by their uid (`<cluster>//Pod/<namespace>/<name>`), services by
//! `<namespace>/<hostname>`, authorizations by `<namespace>/<name>` (see [`policy`] and
//! [`peer_auth`] for how AuthorizationPolicies and PeerAuthentications become them).

pub mod peer_auth;
pub mod policy;
mod service;
mod workload;

use std::collections::BTreeMap;

use ambit_identity::TrustDomain;
use ambit_proto::security::{Authorization, Scope};
use ambit_proto::workload::{Address, Service, Workload, address};

use crate::enroll::Enrollment;
use crate::objects::Kind;
use crate::state::ClusterState;

/// Mesh-wide settings the translation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshConfig {
    pub trust_domain: TrustDomain,
    /// Istio's `CLUSTER_ID`; part of every workload uid.
    pub cluster_id: String,
    /// DNS suffix of services: `<name>.<namespace>.svc.<domain_suffix>`.
    pub domain_suffix: String,
    /// Network name for addresses; empty for a single flat network.
    pub network: String,
    /// Policies here apply mesh-wide.
    pub root_namespace: String,
}

impl MeshConfig {
    /// Istio's defaults: trust domain and DNS suffix `cluster.local`, cluster `Kubernetes`, root
    /// namespace `istio-system`.
    pub fn istio_defaults() -> Self {
        Self {
            // The literal is a valid trust domain; the spiffe tests parse it too.
            trust_domain: TrustDomain::new("cluster.local").expect("valid trust domain"),
            cluster_id: "Kubernetes".to_owned(),
            domain_suffix: "cluster.local".to_owned(),
            network: String::new(),
            root_namespace: "istio-system".to_owned(),
        }
    }
}

/// Everything the control plane serves, plus what it chose not to serve and why.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MeshSnapshot {
    /// By workload uid.
    pub workloads: BTreeMap<String, Workload>,
    /// By `<namespace>/<hostname>`.
    pub services: BTreeMap<String, Service>,
    /// Every pod seen, with its enrollment decision or why it is not served, ordered by
    /// namespace then name (after an incremental translation too).
    pub pods: Vec<PodReport>,
    /// `istio.security.Authorization` resources to serve, by `<namespace>/<name>`.
    pub authorizations: BTreeMap<String, Authorization>,
    /// Dry-run policies (`istio.io/dry-run: "true"`), by `<namespace>/<name>`: translated, never
    /// served.
    ///
    /// The wire has no dry-run flag Ambit can rely on yet (Ambit's `authorization.proto` has
    /// none, and the field upstream added recently could not be verified), and a node proxy that
    /// does not know such a flag would enforce the policy. So, as istiod does since 1.25, dry-run
    /// policies are neither served nor listed by workloads; they are kept apart here, so nothing
    /// that serves [`authorizations`](Self::authorizations) and [`workloads`](Self::workloads)
    /// can leak them, and `ambit_authz::PolicyIndex::from_policies` evaluates them in shadow
    /// mode (the control plane's `/debug/authorize`).
    pub dry_run_authorizations: BTreeMap<String, Authorization>,
    /// The dry-run WORKLOAD_SELECTOR policies each workload (by uid) would list.
    pub dry_run_selected: BTreeMap<String, Vec<String>>,
    /// What could not be translated as written, per policy object.
    pub policy_issues: Vec<PolicyIssue>,
}

/// Something in an AuthorizationPolicy or PeerAuthentication that is not enforced as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyIssue {
    /// [`Kind::AuthorizationPolicy`] or [`Kind::PeerAuthentication`].
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// What was found and what Ambit does instead; always says which way it errs (never open).
    pub message: String,
}

/// How one pod was treated, for `ambit config workloads` and `/debug`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReport {
    pub namespace: String,
    pub name: String,
    pub enrollment: Enrollment,
    /// Set when the pod is not served as a workload at all (no IP yet, finished, bad address).
    pub skipped: Option<String>,
}

impl MeshSnapshot {
    /// The `istio.workload.Address` resources by resource name.
    pub fn addresses(&self) -> impl Iterator<Item = (&str, Address)> + '_ {
        let workloads = self.workloads.iter().map(|(name, w)| {
            (
                name.as_str(),
                Address {
                    r#type: Some(address::Type::Workload(w.clone())),
                },
            )
        });
        let services = self.services.iter().map(|(name, s)| {
            (
                name.as_str(),
                Address {
                    r#type: Some(address::Type::Service(s.clone())),
                },
            )
        });
        workloads.chain(services)
    }
}

impl MeshSnapshot {
    /// A workload as a dry-run evaluation sees it: listing its dry-run policies too.
    pub fn with_dry_run(&self, workload: &Workload) -> Workload {
        let mut w = workload.clone();
        if let Some(names) = self.dry_run_selected.get(&w.uid) {
            w.authorization_policies.extend(names.iter().cloned());
        }
        w
    }
}

/// Computes the mesh from the cluster state.
pub fn translate(state: &ClusterState, config: &MeshConfig) -> MeshSnapshot {
    let services = service::services(state, config);
    let policies = Policies::new(state, config);
    let mut snapshot = MeshSnapshot {
        services,
        ..MeshSnapshot::default()
    };
    for pod in state.pods.values() {
        add_pod(state, config, &policies, pod, &mut snapshot);
    }
    snapshot.authorizations = policies.authorizations;
    snapshot.dry_run_authorizations = policies.dry_run;
    snapshot.policy_issues = policies.issues;
    snapshot
}

/// What an incremental translation changed, as `istio.workload.Address` resource names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressChanges {
    /// Resources of the re-translated namespaces (unchanged ones included: the xDS store skips
    /// bodies it already has).
    pub upserts: Vec<String>,
    pub removals: Vec<String>,
}

/// Brings `snapshot` (a translation of an earlier `state`) up to date, translating only the
/// namespaces in `dirty`. Returns `None` when everything had to be translated again (a policy
/// changed), in which case the caller replaces all resources.
///
/// Equivalent to [`translate`] (asserted by the tests): a workload depends only on its pod,
/// its namespace, and the Services, EndpointSlices and policies of its namespace and the root
/// namespace; policy changes mark everything dirty.
pub fn retranslate(
    state: &ClusterState,
    config: &MeshConfig,
    snapshot: &mut MeshSnapshot,
    dirty: &crate::state::Dirty,
) -> Option<AddressChanges> {
    if dirty.all {
        *snapshot = translate(state, config);
        return None;
    }
    let mut changes = AddressChanges::default();
    if dirty.namespaces.is_empty() {
        return Some(changes);
    }
    let policies = Policies::new(state, config);
    for ns in &dirty.namespaces {
        let mut old: std::collections::BTreeSet<String> = snapshot
            .services
            .iter()
            .filter(|(_, s)| &s.namespace == ns)
            .map(|(k, _)| k.clone())
            .collect();
        let old_uids: Vec<String> = snapshot
            .workloads
            .iter()
            .filter(|(_, w)| &w.namespace == ns)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &old {
            snapshot.services.remove(key);
        }
        for uid in &old_uids {
            snapshot.workloads.remove(uid);
            snapshot.dry_run_selected.remove(uid);
        }
        old.extend(old_uids);
        snapshot.pods.retain(|p| &p.namespace != ns);
        let reports_before = snapshot.pods.len();

        // Every name produced again is struck from `old`; what is left was removed.
        let services = service::services_in(state, config, ns);
        for key in services.keys() {
            old.remove(key);
            changes.upserts.push(key.clone());
        }
        snapshot.services.extend(services);
        let pods = state
            .pods
            .range((ns.clone(), String::new())..)
            .take_while(|((pod_ns, _), _)| pod_ns == ns);
        for (_, pod) in pods {
            if let Some(uid) = add_pod(state, config, &policies, pod, snapshot) {
                old.remove(&uid);
                changes.upserts.push(uid);
            }
        }
        // The namespace's reports go where a full translation puts them, so `/debug/pods`
        // does not depend on the order of updates.
        let reports: Vec<PodReport> = snapshot.pods.drain(reports_before..).collect();
        let at = snapshot.pods.partition_point(|p| p.namespace < *ns);
        snapshot.pods.splice(at..at, reports);
        changes.removals.extend(old);
    }
    Some(changes)
}

/// Translates one pod into `snapshot`; returns the workload uid if it is served.
fn add_pod(
    state: &ClusterState,
    config: &MeshConfig,
    policies: &Policies,
    pod: &k8s_openapi::api::core::v1::Pod,
    snapshot: &mut MeshSnapshot,
) -> Option<String> {
    let (report, result) = workload::workload(state, config, pod, &snapshot.services);
    snapshot.pods.push(report);
    let mut w = result.ok()?;
    let no_labels = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&no_labels);
    let (served, dry_run) = policies.for_workload(&w.namespace, labels);
    w.authorization_policies = served;
    if !dry_run.is_empty() {
        snapshot.dry_run_selected.insert(w.uid.clone(), dry_run);
    }
    let uid = w.uid.clone();
    snapshot.workloads.insert(uid.clone(), w);
    Some(uid)
}

/// Resource name of an authorization: `<namespace>/<name>`.
pub fn authorization_key(authorization: &Authorization) -> String {
    format!("{}/{}", authorization.namespace, authorization.name)
}

/// Every policy of the cluster, translated, with what workloads need to list them.
struct Policies<'a> {
    authorizations: BTreeMap<String, Authorization>,
    dry_run: BTreeMap<String, Authorization>,
    issues: Vec<PolicyIssue>,
    /// WORKLOAD_SELECTOR AuthorizationPolicies: key, namespace, labels, dry run.
    selecting: Vec<(String, String, BTreeMap<String, String>, bool)>,
    peer: peer_auth::PeerAuthentications<'a>,
    root: &'a str,
}

impl<'a> Policies<'a> {
    fn new(state: &'a ClusterState, config: &'a MeshConfig) -> Self {
        let root = config.root_namespace.as_str();
        let mut authorizations = BTreeMap::new();
        let mut dry_run = BTreeMap::new();
        let mut issues = Vec::new();
        let mut selecting = Vec::new();
        for ((ns, name), ap) in &state.authorization_policies {
            let converted = policy::convert(root, ap);
            issues.extend(converted.issues.into_iter().map(|message| PolicyIssue {
                kind: Kind::AuthorizationPolicy,
                namespace: ns.clone(),
                name: name.clone(),
                message,
            }));
            let Some(authorization) = converted.authorization else {
                continue;
            };
            let key = authorization_key(&authorization);
            if authorization.scope == Scope::WorkloadSelector as i32
                && let Some(labels) = converted.selector
            {
                selecting.push((key.clone(), ns.clone(), labels, converted.dry_run));
            }
            if converted.dry_run {
                dry_run.insert(key, authorization);
            } else {
                authorizations.insert(key, authorization);
            }
        }
        let mut peer_issues = Vec::new();
        let peer = peer_auth::PeerAuthentications::new(state, root, &mut peer_issues);
        issues.extend(
            peer_issues
                .into_iter()
                .map(|(namespace, name, message)| PolicyIssue {
                    kind: Kind::PeerAuthentication,
                    namespace,
                    name,
                    message,
                }),
        );
        for authorization in peer.authorizations() {
            authorizations.insert(authorization_key(&authorization), authorization);
        }
        Self {
            authorizations,
            dry_run,
            issues,
            selecting,
            peer,
            root,
        }
    }

    /// istiod's list for a workload: the WORKLOAD_SELECTOR AuthorizationPolicies of its own or
    /// the root namespace whose labels it carries, sorted, then the PeerAuthentication-derived
    /// ones. Dry-run policies come back separately (never served).
    fn for_workload(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> (Vec<String>, Vec<String>) {
        let (mut served, mut dry_run) = (Vec::new(), Vec::new());
        for (key, ns, selector, dry) in &self.selecting {
            if (ns == namespace || ns == self.root)
                && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            {
                if *dry { &mut dry_run } else { &mut served }.push(key.clone());
            }
        }
        served.sort();
        dry_run.sort();
        served.extend(self.peer.workload_keys(namespace, labels));
        (served, dry_run)
    }
}

/// Istio's workload uid for a pod.
pub fn pod_uid(cluster_id: &str, namespace: &str, name: &str) -> String {
    format!("{cluster_id}//Pod/{namespace}/{name}")
}
