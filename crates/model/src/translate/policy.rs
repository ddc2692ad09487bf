//! `AuthorizationPolicy` → `istio.security.Authorization`, as istiod converts it for ztunnel.
//!
//! Shape (istiod's ambient `convertAuthorizationPolicy`): one resource per policy, named
//! `<namespace>/<name>`. Scope is GLOBAL for a selector-less policy in the root namespace,
//! NAMESPACE for a selector-less policy elsewhere, WORKLOAD_SELECTOR otherwise (such a policy
//! applies to the workloads that list it in `authorization_policies`). Each rule becomes one
//! `Rule` (istiod: `Group`) whose clauses are ANDed: one clause for `to` (its operations ORed),
//! one for `from` (its sources ORed), one per `when` condition. String values become exact,
//! prefix (`x*`), suffix (`*x`) or presence (`*`) matches; `serviceAccounts` entries without a
//! namespace take the policy's.
//!
//! Fail-closed invariant: a rule part the node proxy cannot enforce — HTTP attributes, fields
//! this version does not know, values that do not parse, empty sources or operations — makes
//! the rule match *nothing* in an ALLOW policy, and is left out (so the rule matches *more*) in
//! a DENY policy. Either way the result denies at least what the policy as written denies, and
//! every such part is reported as a [`PolicyIssue`](super::PolicyIssue).
//!
//! Where Ambit deliberately departs from istiod (each time towards denying more):
//! - istiod keeps an empty `Match` where it removed HTTP attributes from a DENY rule; ztunnel
//!   treats an empty match as matching nothing, so such a rule denies nothing. Ambit leaves the
//!   whole clause out instead, so the rest of the rule still denies.
//! - istiod silently drops ports and CIDRs that do not parse (its validating webhook normally
//!   keeps them out); Ambit treats them as unenforceable parts (above).
//! - istiod does not serve CUSTOM policies at all. Ambit cannot call an external authorizer, so
//!   it serves a CUSTOM policy as DENY on its L4 parts: nothing the policy would have sent to the
//!   authorizer gets through. An action it does not know denies everything in its scope.
//! - `selector: {}` (no labels) is namespace-wide, as Istio's API reference defines it. A
//!   selector key other than `matchLabels` (Istio has no other) widens the selection to what
//!   `matchLabels` selects; an ALLOW policy with one matches nothing, so it never widens access.
//! - Dry-run policies are translated and kept, but not served (see
//!   [`MeshSnapshot::dry_run_authorizations`](super::MeshSnapshot::dry_run_authorizations)).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ambit_proto::security::string_match::MatchType;
use ambit_proto::security::{
    Action, Address, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::istio::{self, AuthorizationPolicy, Unknown};

/// Annotation that turns a policy into a dry run: evaluated and reported, never enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// Operation fields only a waypoint (an HTTP proxy) can check.
const HTTP_OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];
/// Source fields only a waypoint can check.
const HTTP_SOURCE_FIELDS: &[&str] = &[
    "requestPrincipals",
    "notRequestPrincipals",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
];
/// `when` keys an L4 proxy can check (istiod's `l4WhenAttributes`).
const L4_CONDITION_KEYS: &[&str] = &[
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// One AuthorizationPolicy after translation.
#[derive(Debug, Default)]
pub(super) struct Converted {
    /// `None` when nothing is served for the policy (AUDIT, or bound to a waypoint).
    pub(super) authorization: Option<Authorization>,
    /// The labels of a WORKLOAD_SELECTOR policy.
    pub(super) selector: Option<BTreeMap<String, String>>,
    pub(super) dry_run: bool,
    pub(super) issues: Vec<String>,
}

/// What the policy's `action` asks for, before it becomes the wire's ALLOW or DENY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Intent {
    Allow,
    Deny,
    /// External authorization: enforced as DENY on its L4 parts.
    Custom,
    /// Not an action Istio defines: deny everything in scope.
    Unknown,
}

/// Translates one policy.
pub(super) fn convert(root_namespace: &str, policy: &AuthorizationPolicy) -> Converted {
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let name = policy.metadata.name.clone().unwrap_or_default();
    let spec = &policy.spec;
    let mut out = Converted::default();

    if let Some(key) = ["targetRef", "targetRefs"]
        .into_iter()
        .find(|k| spec.unknown.contains_key(*k))
    {
        out.issues.push(format!(
            "`{key}` binds this policy to a waypoint, not to the node proxy; Ambit has no \
             waypoint yet, so nothing enforces it"
        ));
        return out;
    }
    let intent = match spec.action.as_deref() {
        None | Some("ALLOW") => Intent::Allow,
        Some("DENY") => Intent::Deny,
        Some("AUDIT") => {
            out.issues.push(
                "action AUDIT is not supported by the node proxy: nothing is audited (AUDIT \
                 never allows or denies, so access is unchanged)"
                    .to_owned(),
            );
            return out;
        }
        Some("CUSTOM") => {
            out.issues.push(
                "action CUSTOM (external authorization) is not supported by the node proxy; \
                 Ambit enforces the policy as DENY on its L4 parts, so nothing it would send \
                 to the external authorizer is let through"
                    .to_owned(),
            );
            Intent::Custom
        }
        Some(other) => {
            out.issues.push(format!(
                "action {other:?} is not ALLOW, DENY, AUDIT or CUSTOM; Ambit denies every \
                 connection to the workloads in the policy's scope"
            ));
            Intent::Unknown
        }
    };
    for key in spec.unknown.keys() {
        if key == "provider" && intent == Intent::Custom {
            continue;
        }
        out.issues
            .push(format!("`spec.{key}` is not a field Ambit knows; ignored"));
    }
    out.dry_run = dry_run(&policy.metadata, &mut out.issues);

    // A selector part Ambit cannot read could only have narrowed the selection: the policy is
    // applied to every workload `matchLabels` selects (or the whole scope without labels). A
    // DENY applied more widely denies more; an ALLOW would let more in on the workloads it did
    // not mean, so it matches nothing instead.
    let mut unreadable_selector = false;
    let labels = spec.selector.as_ref().and_then(|selector| {
        for key in selector.unknown.keys() {
            unreadable_selector = true;
            let effect = if intent == Intent::Allow {
                "the ALLOW policy matches nothing (fail closed) on every workload `matchLabels` \
                 selects"
            } else {
                "the policy applies to every workload `matchLabels` selects"
            };
            out.issues
                .push(format!("`spec.selector.{key}` is not supported; {effect}"));
        }
        Some(selector.match_labels.clone()).filter(|l| !l.is_empty())
    });
    let scope = match (&labels, namespace == root_namespace) {
        (Some(_), _) => Scope::WorkloadSelector,
        (None, true) => Scope::Global,
        (None, false) => Scope::Namespace,
    };
    let action = match intent {
        Intent::Allow => Action::Allow,
        Intent::Deny | Intent::Custom | Intent::Unknown => Action::Deny,
    };
    let rules = match intent {
        // One rule without clauses matches every connection.
        Intent::Unknown => vec![Rule::default()],
        // A policy without rules matches nothing.
        Intent::Allow if unreadable_selector => Vec::new(),
        _ => spec
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| rule(action, &namespace, i, r, &mut out.issues))
            .collect(),
    };
    out.authorization = Some(Authorization {
        name,
        namespace,
        scope: scope as i32,
        action: action as i32,
        rules,
    });
    out.selector = labels;
    out
}

/// Go's `strconv.ParseBool`, which istiod uses for the annotation. A value that is not a
/// boolean leaves the policy enforced.
fn dry_run(meta: &ObjectMeta, issues: &mut Vec<String>) -> bool {
    let value = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION));
    match value.map(String::as_str) {
        None => false,
        Some("1" | "t" | "T" | "TRUE" | "true" | "True") => true,
        Some("0" | "f" | "F" | "FALSE" | "false" | "False") => false,
        Some(other) => {
            issues.push(format!(
                "annotation {DRY_RUN_ANNOTATION}={other:?} is not a boolean; the policy is \
                 enforced"
            ));
            false
        }
    }
}

// === rules ===

/// Parts of one rule the node proxy cannot enforce, by path within the policy.
#[derive(Debug, Default)]
struct Problems {
    http: Vec<String>,
    unknown: Vec<String>,
    invalid: Vec<String>,
}

impl Problems {
    fn len(&self) -> usize {
        self.http.len() + self.unknown.len() + self.invalid.len()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.http.is_empty() {
            parts.push(format!(
                "HTTP attributes need a waypoint ({})",
                self.http.join(", ")
            ));
        }
        if !self.unknown.is_empty() {
            parts.push(format!(
                "fields Ambit does not know ({})",
                self.unknown.join(", ")
            ));
        }
        if !self.invalid.is_empty() {
            parts.push(format!("invalid values ({})", self.invalid.join("; ")));
        }
        parts.join("; ")
    }
}

/// Translates one rule. `None` when an ALLOW rule holds a part that cannot be enforced.
fn rule(
    action: Action,
    policy_namespace: &str,
    index: usize,
    rule: &istio::Rule,
    issues: &mut Vec<String>,
) -> Option<Rule> {
    let at = format!("rules[{index}]");
    let mut problems = Problems::default();
    unknown_fields(&rule.unknown, &at, &mut problems);
    let mut clauses = Vec::new();

    // A clause is left out when one of its alternatives is unconstrained: it holds anyway.
    let to = rule
        .to
        .iter()
        .enumerate()
        .map(|(j, to)| operation(&format!("{at}.to[{j}]"), to, &mut problems))
        .collect::<Vec<_>>();
    if !to.is_empty()
        && let Some(matches) = to.into_iter().collect::<Option<Vec<_>>>()
    {
        clauses.push(Clause { matches });
    }
    let from = rule
        .from
        .iter()
        .enumerate()
        .map(|(j, from)| {
            source(
                &format!("{at}.from[{j}]"),
                from,
                policy_namespace,
                &mut problems,
                issues,
            )
        })
        .collect::<Vec<_>>();
    if !from.is_empty()
        && let Some(matches) = from.into_iter().collect::<Option<Vec<_>>>()
    {
        clauses.push(Clause { matches });
    }
    for (j, condition) in rule.when.iter().enumerate() {
        if let Some(m) = when(&format!("{at}.when[{j}]"), condition, &mut problems) {
            clauses.push(Clause { matches: vec![m] });
        }
    }

    if problems.len() == 0 {
        return Some(Rule { clauses });
    }
    let what = problems.describe();
    if action == Action::Allow {
        issues.push(format!(
            "{at}: {what}; in an ALLOW policy this rule matches nothing (stricter than written)"
        ));
        None
    } else {
        issues.push(format!(
            "{at}: {what}; in a DENY policy the rule is enforced without them (denies more \
             than written)"
        ));
        Some(Rule { clauses })
    }
}

fn operation(path: &str, to: &istio::To, problems: &mut Problems) -> Option<Match> {
    let before = problems.len();
    unknown_fields(&to.unknown, path, problems);
    let Some(op) = &to.operation else {
        problems.invalid.push(format!("{path} has no operation"));
        return None;
    };
    for key in op.unknown.keys() {
        let field = format!("{path}.operation.{key}");
        if HTTP_OPERATION_FIELDS.contains(&key.as_str()) {
            problems.http.push(field);
        } else {
            problems.unknown.push(field);
        }
    }
    let m = Match {
        destination_ports: ports(&op.ports, &format!("{path}.operation.ports"), problems),
        not_destination_ports: ports(
            &op.not_ports,
            &format!("{path}.operation.notPorts"),
            problems,
        ),
        ..Match::default()
    };
    constrained(m, path, before, problems)
}

fn source(
    path: &str,
    from: &istio::From,
    policy_namespace: &str,
    problems: &mut Problems,
    issues: &mut Vec<String>,
) -> Option<Match> {
    let before = problems.len();
    unknown_fields(&from.unknown, path, problems);
    let Some(src) = &from.source else {
        problems.invalid.push(format!("{path} has no source"));
        return None;
    };
    for key in src.unknown.keys() {
        let field = format!("{path}.source.{key}");
        if HTTP_SOURCE_FIELDS.contains(&key.as_str()) {
            problems.http.push(field);
        } else {
            problems.unknown.push(field);
        }
    }
    for p in src.principals.iter().chain(&src.not_principals) {
        if p.starts_with("spiffe://") {
            issues.push(format!(
                "{path}: principal {p:?} starts with spiffe://; Istio principals are written \
                 without the scheme (<trust domain>/ns/<namespace>/sa/<account>), so it never \
                 matches"
            ));
        }
    }
    let at = |field: &str| format!("{path}.source.{field}");
    let m = Match {
        namespaces: strings(&src.namespaces),
        not_namespaces: strings(&src.not_namespaces),
        service_accounts: service_accounts(&src.service_accounts, policy_namespace),
        not_service_accounts: service_accounts(&src.not_service_accounts, policy_namespace),
        principals: strings(&src.principals),
        not_principals: strings(&src.not_principals),
        source_ips: cidrs(&src.ip_blocks, &at("ipBlocks"), problems),
        not_source_ips: cidrs(&src.not_ip_blocks, &at("notIpBlocks"), problems),
        ..Match::default()
    };
    constrained(m, path, before, problems)
}

fn when(path: &str, condition: &istio::Condition, problems: &mut Problems) -> Option<Match> {
    let before = problems.len();
    unknown_fields(&condition.unknown, path, problems);
    let key = condition.key.as_str();
    if !L4_CONDITION_KEYS.contains(&key) {
        problems.http.push(format!("{path}.key {key:?}"));
        return None;
    }
    if condition.values.is_empty() && condition.not_values.is_empty() {
        problems
            .invalid
            .push(format!("{path} ({key}) has neither values nor notValues"));
        return None;
    }
    let (values, not_values) = (&condition.values, &condition.not_values);
    let field = |f: &str| format!("{path}.{f}");
    let mut m = Match::default();
    match key {
        "source.namespace" => {
            m.namespaces = strings(values);
            m.not_namespaces = strings(not_values);
        }
        "source.principal" => {
            m.principals = strings(values);
            m.not_principals = strings(not_values);
        }
        "source.ip" => {
            m.source_ips = cidrs(values, &field("values"), problems);
            m.not_source_ips = cidrs(not_values, &field("notValues"), problems);
        }
        "destination.ip" => {
            m.destination_ips = cidrs(values, &field("values"), problems);
            m.not_destination_ips = cidrs(not_values, &field("notValues"), problems);
        }
        _ => {
            m.destination_ports = ports(values, &field("values"), problems);
            m.not_destination_ports = ports(not_values, &field("notValues"), problems);
        }
    }
    constrained(m, path, before, problems)
}

/// `Some(m)` unless `m` checks nothing. An empty match is recorded as a problem unless one was
/// already recorded for this part (ztunnel treats an empty match as matching nothing).
fn constrained(m: Match, path: &str, before: usize, problems: &mut Problems) -> Option<Match> {
    if m != Match::default() {
        return Some(m);
    }
    if problems.len() == before {
        problems
            .invalid
            .push(format!("{path} sets no field the node proxy can check"));
    }
    None
}

fn unknown_fields(unknown: &Unknown, path: &str, problems: &mut Problems) {
    problems
        .unknown
        .extend(unknown.keys().map(|k| format!("{path}.{k}")));
}

/// istiod's `stringToMatch`: `*` is presence, `*x` a suffix, `x*` a prefix, anything else exact.
fn strings(values: &[String]) -> Vec<StringMatch> {
    values
        .iter()
        .map(|v| {
            let match_type = if v == "*" {
                MatchType::Presence(())
            } else if let Some(suffix) = v.strip_prefix('*') {
                MatchType::Suffix(suffix.to_owned())
            } else if let Some(prefix) = v.strip_suffix('*') {
                MatchType::Prefix(prefix.to_owned())
            } else {
                MatchType::Exact(v.clone())
            };
            StringMatch {
                match_type: Some(match_type),
            }
        })
        .collect()
}

/// `<namespace>/<account>`, or `<account>` in the policy's namespace.
fn service_accounts(values: &[String], policy_namespace: &str) -> Vec<ServiceAccountMatch> {
    values
        .iter()
        .map(|v| match v.split_once('/') {
            Some((ns, sa)) => ServiceAccountMatch {
                namespace: ns.to_owned(),
                service_account: sa.to_owned(),
            },
            None => ServiceAccountMatch {
                namespace: policy_namespace.to_owned(),
                service_account: v.clone(),
            },
        })
        .collect()
}

/// Port numbers; if any value is not one, the whole field is reported and left out.
fn ports(values: &[String], path: &str, problems: &mut Problems) -> Vec<u32> {
    let parsed: Vec<Option<u32>> = values
        .iter()
        .map(|v| v.parse::<u16>().ok().filter(|p| *p != 0).map(u32::from))
        .collect();
    if let Some(bad) = values.iter().zip(&parsed).find(|(_, p)| p.is_none()) {
        problems
            .invalid
            .push(format!("{path}: {:?} is not a port number", bad.0));
        return Vec::new();
    }
    parsed.into_iter().flatten().collect()
}

/// Addresses (`10.0.0.1`, a host) or CIDRs (`10.0.0.0/8`); if any value is neither, the whole
/// field is reported and left out.
fn cidrs(values: &[String], path: &str, problems: &mut Problems) -> Vec<Address> {
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        match cidr(v) {
            Some(a) => out.push(a),
            None => {
                problems
                    .invalid
                    .push(format!("{path}: {v:?} is not an IP address or CIDR"));
                return Vec::new();
            }
        }
    }
    out
}

fn cidr(value: &str) -> Option<Address> {
    let (ip, length) = match value.split_once('/') {
        Some((ip, len)) => (ip.parse::<IpAddr>().ok()?, Some(len.parse::<u32>().ok()?)),
        None => (value.parse::<IpAddr>().ok()?, None),
    };
    let (address, bits) = match ip {
        IpAddr::V4(v4) => (v4.octets().to_vec(), 32),
        IpAddr::V6(v6) => (v6.octets().to_vec(), 128),
    };
    let length = length.unwrap_or(bits);
    (length <= bits).then_some(Address { address, length })
}
