//! `PeerAuthentication` → `istio.security.Authorization`, as istiod converts it for ztunnel.
//!
//! The node proxy has no mTLS "mode": requiring mTLS is expressed as a DENY policy on
//! connections without a peer identity (`notPrincipals: [presence]`), which is exactly what a
//! plaintext connection arriving on 15006 lacks. istiod's facts, carried over:
//!
//! - If any PeerAuthentication exists, one static policy is served: `istio_converted_static_strict`
//!   in the root namespace, scope WORKLOAD_SELECTOR, DENY, one rule with one clause with one match
//!   `notPrincipals: [presence]`. Every workload whose effective mode is STRICT (and that has no
//!   port-level exception) lists `<root>/istio_converted_static_strict`.
//! - Precedence: the oldest selector-less policy of the root namespace is mesh-wide, the oldest
//!   selector-less policy of a namespace overrides it, the oldest policy of the workload's
//!   namespace whose selector matches overrides both; UNSET inherits. Policies with a selector in
//!   the root namespace are not used (as in istiod).
//! - A workload-level policy with `portLevelMtls` that changes the mode of some port is served as
//!   `converted_peer_authentication_<name>` in its namespace (WORKLOAD_SELECTOR, DENY), and the
//!   workloads it governs list it *instead of* the static policy (a DENY cannot be excepted by
//!   another policy). If the workload is effectively STRICT, the policy is one rule whose clauses
//!   are `notPrincipals: [presence]` (when the workload itself says STRICT), one
//!   `notDestinationPorts: [p]` per non-strict port, and `notPrincipals: [presence]` again when
//!   the parent (namespace, else mesh) is STRICT. Otherwise it is one rule per STRICT port:
//!   `notPrincipals: [presence], destinationPorts: [p]`.
//!
//! Where Ambit departs from istiod:
//! - DISABLE cannot be honoured (mesh traffic is always mTLS); it is reported and ignored, i.e.
//!   treated as UNSET so the level inherits from its parent. istiod treats it like PERMISSIVE in
//!   some places and ignores it in others.
//! - Exceptions are computed from the effective modes (a port that says what its workload already
//!   means is no exception). istiod's operator precedence skips a STRICT port of a PERMISSIVE
//!   workload under a STRICT mesh, and drops a PERMISSIVE port under an UNSET namespace policy
//!   with a STRICT mesh, in both cases listing a policy it never serves.
//! - A mode that is not one of Istio's is treated as STRICT (fail closed).
//! - A selector key other than `matchLabels` (Istio has none) could only have narrowed the
//!   selection: a STRICT policy with one applies to what `matchLabels` selects without port
//!   exceptions, any other is not used, so plaintext is never accepted more widely.

use std::collections::BTreeMap;

use ambit_proto::security::string_match::MatchType;
use ambit_proto::security::{Action, Authorization, Clause, Match, Rule, Scope, StringMatch};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::istio::{Mtls, PeerAuthentication};
use crate::state::ClusterState;

/// Name of the static policy that makes a workload STRICT.
pub const STATIC_STRICT_POLICY: &str = "istio_converted_static_strict";
/// Prefix of a converted workload-level PeerAuthentication's name.
pub const CONVERTED_PEER_AUTHENTICATION_PREFIX: &str = "converted_peer_authentication_";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unset,
    Permissive,
    Strict,
}

/// One PeerAuthentication, normalised.
#[derive(Debug)]
struct Peer<'a> {
    namespace: &'a str,
    name: &'a str,
    created: Option<&'a Time>,
    /// Non-empty labels, or `None` for a namespace- or mesh-wide policy.
    selector: Option<&'a BTreeMap<String, String>>,
    mode: Mode,
    ports: BTreeMap<u32, Mode>,
}

/// Every PeerAuthentication of the cluster, oldest first.
#[derive(Debug)]
pub(super) struct PeerAuthentications<'a> {
    root: &'a str,
    peers: Vec<Peer<'a>>,
}

/// An issue found in one PeerAuthentication: `(namespace, name, message)`.
pub(super) type PeerIssue = (String, String, String);

impl<'a> PeerAuthentications<'a> {
    pub(super) fn new(state: &'a ClusterState, root: &'a str, issues: &mut Vec<PeerIssue>) -> Self {
        let mut peers: Vec<Peer<'a>> = state
            .peer_authentications
            .iter()
            .filter_map(|((ns, name), pa)| {
                let mut report = |message: String| issues.push((ns.clone(), name.clone(), message));
                peer(ns, name, pa, &mut report)
            })
            .collect();
        // Istio's rule: when several policies compete, the oldest wins. Objects from a manifest
        // directory have no creation time; they come after timed ones, by name.
        peers.sort_by(|a, b| {
            (a.created.is_none(), a.created, a.namespace, a.name).cmp(&(
                b.created.is_none(),
                b.created,
                b.namespace,
                b.name,
            ))
        });
        for p in peers
            .iter()
            .filter(|p| p.namespace == root && p.selector.is_some())
        {
            issues.push((
                p.namespace.to_owned(),
                p.name.to_owned(),
                "a PeerAuthentication with a selector in the root namespace is not used (as in \
                 istiod); put workload policies in the workload's namespace"
                    .to_owned(),
            ));
        }
        let this = Self { root, peers };
        this.report_shadowed(issues);
        this
    }

    /// The resources to serve: the static STRICT policy (if any PeerAuthentication exists) and
    /// every converted workload-level policy.
    pub(super) fn authorizations(&self) -> Vec<Authorization> {
        if self.peers.is_empty() {
            return Vec::new();
        }
        let mut out = vec![Authorization {
            name: STATIC_STRICT_POLICY.to_owned(),
            namespace: self.root.to_owned(),
            scope: Scope::WorkloadSelector as i32,
            action: Action::Deny as i32,
            rules: vec![Rule {
                clauses: vec![without_identity()],
            }],
        }];
        out.extend(self.peers.iter().filter_map(|p| self.converted(p)));
        out
    }

    /// The PeerAuthentication-derived policies a workload lists, by resource name.
    pub(super) fn workload_keys(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> Vec<String> {
        let parent_strict = self.parent_strict(namespace);
        let workload = (namespace != self.root)
            .then(|| {
                self.peers.iter().find(|p| {
                    p.namespace == namespace
                        && p.selector
                            .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
                })
            })
            .flatten();
        let strict = match workload {
            None => parent_strict,
            Some(w) => {
                let top = top_strict(w, parent_strict);
                if !exceptions(w, top).is_empty() {
                    return vec![format!(
                        "{}/{CONVERTED_PEER_AUTHENTICATION_PREFIX}{}",
                        w.namespace, w.name
                    )];
                }
                top
            }
        };
        if strict {
            vec![format!("{}/{STATIC_STRICT_POLICY}", self.root)]
        } else {
            Vec::new()
        }
    }

    /// Whether the level above a workload policy (namespace, else mesh) is STRICT.
    fn parent_strict(&self, namespace: &str) -> bool {
        let level = |ns: &str| {
            self.peers
                .iter()
                .find(|p| p.namespace == ns && p.selector.is_none())
                .map_or(Mode::Unset, |p| p.mode)
        };
        let namespace_mode = if namespace == self.root {
            Mode::Unset
        } else {
            level(namespace)
        };
        match namespace_mode {
            Mode::Unset => level(self.root) == Mode::Strict,
            mode => mode == Mode::Strict,
        }
    }

    fn converted(&self, peer: &Peer<'_>) -> Option<Authorization> {
        if peer.namespace == self.root || peer.selector.is_none() {
            return None;
        }
        let parent_strict = self.parent_strict(peer.namespace);
        let top = top_strict(peer, parent_strict);
        let exceptions = exceptions(peer, top);
        if exceptions.is_empty() {
            return None;
        }
        let rules = if top {
            let mut clauses = Vec::new();
            if peer.mode == Mode::Strict {
                clauses.push(without_identity());
            }
            clauses.extend(exceptions.iter().map(|&port| Clause {
                matches: vec![Match {
                    not_destination_ports: vec![port],
                    ..Match::default()
                }],
            }));
            // istiod merges a STRICT parent in as a final clause (a duplicate when the
            // workload itself says STRICT; kept so the bytes match istiod's).
            if parent_strict {
                clauses.push(without_identity());
            }
            vec![Rule { clauses }]
        } else {
            exceptions
                .iter()
                .map(|&port| Rule {
                    clauses: vec![Clause {
                        matches: vec![Match {
                            not_principals: vec![presence()],
                            destination_ports: vec![port],
                            ..Match::default()
                        }],
                    }],
                })
                .collect()
        };
        Some(Authorization {
            name: format!("{CONVERTED_PEER_AUTHENTICATION_PREFIX}{}", peer.name),
            namespace: peer.namespace.to_owned(),
            scope: Scope::WorkloadSelector as i32,
            action: Action::Deny as i32,
            rules,
        })
    }

    /// Reports mesh- and namespace-wide policies that an older one overrides.
    fn report_shadowed(&self, issues: &mut Vec<PeerIssue>) {
        let mut winners: BTreeMap<&str, &Peer<'_>> = BTreeMap::new();
        for p in self.peers.iter().filter(|p| p.selector.is_none()) {
            match winners.get(p.namespace) {
                None => {
                    winners.insert(p.namespace, p);
                }
                Some(w) => {
                    let level = if p.namespace == self.root {
                        "mesh-wide"
                    } else {
                        "namespace-wide"
                    };
                    issues.push((
                        p.namespace.to_owned(),
                        p.name.to_owned(),
                        format!(
                            "another {level} PeerAuthentication, {}/{}, is older and takes \
                             precedence; this one has no effect",
                            w.namespace, w.name
                        ),
                    ));
                }
            }
        }
    }
}

fn top_strict(peer: &Peer<'_>, parent_strict: bool) -> bool {
    match peer.mode {
        Mode::Unset => parent_strict,
        mode => mode == Mode::Strict,
    }
}

/// Ports whose effective mode differs from the workload's, ascending.
fn exceptions(peer: &Peer<'_>, top_strict: bool) -> Vec<u32> {
    peer.ports
        .iter()
        .filter(|(_, mode)| **mode != Mode::Unset && (**mode == Mode::Strict) != top_strict)
        .map(|(port, _)| *port)
        .collect()
}

fn peer<'a>(
    namespace: &'a str,
    name: &'a str,
    pa: &'a PeerAuthentication,
    report: &mut dyn FnMut(String),
) -> Option<Peer<'a>> {
    let spec = &pa.spec;
    for key in spec.unknown.keys() {
        report(format!("`spec.{key}` is not a field Ambit knows; ignored"));
    }
    let unreadable_selector: Vec<&String> = spec
        .selector
        .as_ref()
        .map(|s| s.unknown.keys().collect())
        .unwrap_or_default();
    let selector = spec
        .selector
        .as_ref()
        .and_then(|s| Some(&s.match_labels).filter(|l| !l.is_empty()));
    let mut mode = spec
        .mtls
        .as_ref()
        .map_or(Mode::Unset, |m| mode_at(m, "mtls", report));
    let mut ports = BTreeMap::new();
    for (key, mtls) in &spec.port_level_mtls {
        let port_mode = mode_at(mtls, &format!("portLevelMtls[{key}]"), report);
        match key.parse::<u16>().ok().filter(|p| *p != 0) {
            Some(port) => {
                ports.insert(u32::from(port), port_mode);
            }
            None if port_mode == Mode::Strict => {
                report(format!(
                    "portLevelMtls key {key:?} is not a port number; since it asks for STRICT, \
                     the whole workload is treated as STRICT (fail closed)"
                ));
                mode = Mode::Strict;
            }
            None => report(format!(
                "portLevelMtls key {key:?} is not a port number; the entry is ignored"
            )),
        }
    }
    if !unreadable_selector.is_empty() {
        // The unread part could only have narrowed the selection. STRICT applied more widely
        // asks for more; anything else would accept plaintext where it was not meant to.
        for key in unreadable_selector {
            let effect = if mode == Mode::Strict {
                "the policy applies as STRICT, without port exceptions, to every workload \
                 `matchLabels` selects"
            } else {
                "since the policy is not STRICT it is not used (fail closed)"
            };
            report(format!("`spec.selector.{key}` is not supported; {effect}"));
        }
        if mode != Mode::Strict {
            return None;
        }
        ports.clear();
    }
    if selector.is_none() && !ports.is_empty() {
        report(
            "portLevelMtls needs a workload selector (as in Istio); the port settings are ignored"
                .to_owned(),
        );
        ports.clear();
    }
    Some(Peer {
        namespace,
        name,
        created: pa.metadata.creation_timestamp.as_ref(),
        selector,
        mode,
        ports,
    })
}

/// The mode of `mtls` (at path `at` in the spec), reported where Ambit does not honour it.
fn mode_at(mtls: &Mtls, at: &str, report: &mut dyn FnMut(String)) -> Mode {
    for key in mtls.unknown.keys() {
        report(format!("`{at}.{key}` is not a field Ambit knows; ignored"));
    }
    match mtls.mode.as_deref() {
        None | Some("UNSET") => Mode::Unset,
        Some("PERMISSIVE") => Mode::Permissive,
        Some("STRICT") => Mode::Strict,
        Some("DISABLE") => {
            report(format!(
                "{at}.mode DISABLE cannot be honoured in ambient mode (traffic between mesh \
                 workloads is always mTLS); it is ignored, so this level inherits its parent's \
                 mode (use PERMISSIVE to accept plaintext)"
            ));
            Mode::Unset
        }
        Some(other) => {
            report(format!(
                "{at}.mode {other:?} is not UNSET, PERMISSIVE, STRICT or DISABLE; treated as STRICT \
                 (fail closed)"
            ));
            Mode::Strict
        }
    }
}

fn presence() -> StringMatch {
    StringMatch {
        match_type: Some(MatchType::Presence(())),
    }
}

/// The clause matching connections without a peer identity (plaintext).
fn without_identity() -> Clause {
    Clause {
        matches: vec![Match {
            not_principals: vec![presence()],
            ..Match::default()
        }],
    }
}
