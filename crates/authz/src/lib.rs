//! L4 authorization: which policies apply to a destination workload, and whether they let a
//! connection through.
//!
//! The engine depends only on the wire types (`ambit-proto`) and identities
//! (`ambit-identity`), not on the Kubernetes model, so the node proxy carries it without
//! k8s-openapi.
//!
//! The node proxy calls [`PolicyIndex::decide`] for every inbound connection (HBONE on 15008 and
//! plaintext on 15006) before it forwards a byte; the control plane's `/debug/authorize` calls
//! [`PolicyIndex::trace`] to explain a decision. Both take the `istio.security.Authorization`
//! resources as served over WDS, so a decision is the same whether Ambit's control plane or a
//! stock istiod produced them.
//!
//! Order (Istio's, as ztunnel implements it):
//! 1. any matching DENY policy denies;
//! 2. if no ALLOW policy applies, the connection is allowed;
//! 3. if an ALLOW policy matches, it is allowed;
//! 4. otherwise it is denied ("allow policies exist, but none allowed").
//!
//! Applicable policies are the GLOBAL ones, the NAMESPACE ones of the workload's namespace, and
//! those the workload lists in `authorization_policies`. Dry-run policies never change a
//! decision: a matching dry-run DENY, or dry-run ALLOWs that would leave the connection
//! unmatched, are reported in [`Decision::dry_run_denials`] (ztunnel's dry-run semantics).
//!
//! Invariants:
//! - Fail closed: a workload that lists a policy the index does not hold is denied (the missing
//!   policy may be a DENY); see also [`CompiledPolicy`] for unreadable resource parts.
//! - [`PolicyIndex::decide`] allocates nothing unless a dry-run policy reports a denial.

mod compiled;
mod program;

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use ambit_identity::SpiffeId;
use ambit_proto::security::Authorization;
use ambit_proto::workload::Workload;
use serde::Serialize;

pub use compiled::{CompiledPolicy, PolicyAction, PolicyScope};

/// What the destination node proxy knows about a connection when it authorizes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection<'a> {
    /// The peer's address as seen by the destination.
    pub src_ip: IpAddr,
    /// The peer's verified identity; `None` for plaintext (15006).
    pub src_identity: Option<&'a SpiffeId>,
    /// The destination workload's address the connection is for.
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

/// The outcome of authorizing one connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision<'a> {
    pub allowed: bool,
    /// The policy that decided: the matching DENY or ALLOW, or the missing one.
    pub policy: Option<&'a str>,
    pub reason: Reason,
    /// Dry-run policies that would have denied the connection.
    pub dry_run_denials: Vec<&'a str>,
}

/// Why a connection was allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// No policy applies to the workload.
    NoPolicy,
    /// Policies apply, none denies, and none is an ALLOW.
    NoAllowPolicy,
    /// An ALLOW policy matched.
    AllowedBy,
    /// A DENY policy matched.
    ExplicitlyDenied,
    /// ALLOW policies apply and none matched.
    NoAllowMatched,
    /// The workload lists a policy the index does not hold.
    MissingPolicy,
}

/// A decision, with every applicable policy and whether it matched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Trace<'a> {
    pub decision: Decision<'a>,
    pub policies: Vec<TraceEntry<'a>>,
}

/// One policy considered for a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceEntry<'a> {
    pub policy: &'a str,
    /// `None` when the workload lists a policy the index does not hold.
    pub action: Option<PolicyAction>,
    pub scope: Option<PolicyScope>,
    pub dry_run: bool,
    /// Index of the first matching rule; `None` if no rule matched.
    pub matched_rule: Option<usize>,
    pub warnings: &'a [String],
}

/// The destination as authorization sees it: its namespace and the policies it lists. Built
/// from a WDS [`Workload`] (`From`), or from any workload type's fields without copying them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub namespace: &'a str,
    /// `authorization_policies` of the workload: `<namespace>/<name>` keys.
    pub policies: &'a [String],
}

impl<'a> From<&'a Workload> for Target<'a> {
    fn from(workload: &'a Workload) -> Self {
        Self {
            namespace: &workload.namespace,
            policies: &workload.authorization_policies,
        }
    }
}

/// Every authorization policy a node proxy knows, by name and scope.
#[derive(Debug, Clone, Default)]
pub struct PolicyIndex {
    by_key: FastMap<Arc<CompiledPolicy>>,
    /// GLOBAL policies, sorted by key.
    global: Vec<Arc<CompiledPolicy>>,
    /// NAMESPACE policies by namespace, each list sorted by key.
    by_namespace: FastMap<Vec<Arc<CompiledPolicy>>>,
}

/// Policy names are looked up once per listed policy per connection, so the hash matters.
/// The keys come from the control plane (an authenticated, trusted peer), not from the
/// connection, so a fast non-keyed hash (rustc's Fx) is safe here.
type FastMap<V> = HashMap<Box<str>, V, BuildHasherDefault<FxHasher>>;

#[derive(Debug, Default, Clone, Copy)]
struct FxHasher(u64);

/// The Fx hash of a string (as `Hash for str` feeds it).
fn fx_hash(s: &str) -> u64 {
    let mut h = FxHasher::default();
    s.hash(&mut h);
    h.finish()
}

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        // The last 0..7 bytes as at most three fixed-size reads, not a variable-length copy.
        let rest = chunks.remainder();
        let (four, rest) = rest.split_at(rest.len() & 4);
        if let Ok(four) = <[u8; 4]>::try_from(four) {
            self.add(u64::from(u32::from_le_bytes(four)));
        }
        let (two, rest) = rest.split_at(rest.len() & 2);
        if let Ok(two) = <[u8; 2]>::try_from(two) {
            self.add(u64::from(u16::from_le_bytes(two)));
        }
        if let Some(byte) = rest.first() {
            self.add(u64::from(*byte));
        }
    }

    fn write_u8(&mut self, byte: u8) {
        self.add(u64::from(byte));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The source side of a connection, resolved once per decision.
#[derive(Debug)]
struct Peer<'a> {
    src_ip: IpAddr,
    dst_ip: IpAddr,
    dst_port: u16,
    identified: bool,
    /// The identity without `spiffe://`, or empty.
    principal: &'a str,
    principal_hash: u64,
    /// The identity's namespace, or empty.
    namespace: &'a str,
    namespace_hash: u64,
    service_account: &'a str,
}

// === impl PolicyIndex ===

impl PolicyIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// The `enforced` policies and the `dry_run` ones (flagged as such), e.g. every
    /// authorization of a control plane's translation. To see a workload's dry-run
    /// WORKLOAD_SELECTOR policies, evaluate the workload as listing them.
    pub fn from_policies<'a>(
        enforced: impl IntoIterator<Item = &'a Authorization>,
        dry_run: impl IntoIterator<Item = &'a Authorization>,
    ) -> Self {
        let mut index = Self::new();
        for authorization in enforced {
            index.insert(authorization, false);
        }
        for authorization in dry_run {
            index.insert(authorization, true);
        }
        index
    }

    /// Adds a policy, replacing any with the same `<namespace>/<name>`.
    pub fn insert(&mut self, authorization: &Authorization, dry_run: bool) {
        let policy = Arc::new(CompiledPolicy::compile(authorization, dry_run));
        self.remove(policy.key());
        let list = match policy.scope() {
            PolicyScope::Global => Some(&mut self.global),
            PolicyScope::Namespace => Some(
                self.by_namespace
                    .entry(policy.namespace().into())
                    .or_default(),
            ),
            PolicyScope::WorkloadSelector => None,
        };
        if let Some(list) = list {
            let at = list.partition_point(|p| p.key() < policy.key());
            list.insert(at, policy.clone());
        }
        self.by_key.insert(policy.key().into(), policy);
    }

    /// Removes a policy by `<namespace>/<name>`. Returns whether it was there.
    pub fn remove(&mut self, key: &str) -> bool {
        let Some(old) = self.by_key.remove(key) else {
            return false;
        };
        match old.scope() {
            PolicyScope::Global => self.global.retain(|p| p.key() != key),
            PolicyScope::Namespace => {
                if let Some(list) = self.by_namespace.get_mut(old.namespace()) {
                    list.retain(|p| p.key() != key);
                    if list.is_empty() {
                        self.by_namespace.remove(old.namespace());
                    }
                }
            }
            PolicyScope::WorkloadSelector => {}
        }
        true
    }

    pub fn get(&self, key: &str) -> Option<&CompiledPolicy> {
        self.by_key.get(key).map(|p| &**p)
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Every policy, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &CompiledPolicy> + '_ {
        self.by_key.values().map(|p| &**p)
    }

    /// The policies that apply to a workload: GLOBAL, then NAMESPACE of its namespace, then the
    /// ones it lists (listed names the index does not hold are skipped here; see
    /// [`missing`](Self::missing)).
    pub fn applicable<'a>(
        &'a self,
        target: impl Into<Target<'a>>,
    ) -> impl Iterator<Item = &'a CompiledPolicy> + 'a {
        let workload = target.into();
        let namespace = self
            .by_namespace
            .get(workload.namespace)
            .map_or(&[][..], Vec::as_slice);
        let listed = workload
            .policies
            .iter()
            .filter_map(|key| self.by_key.get(key.as_str()))
            // A listed GLOBAL or same-namespace policy is already in the lists above.
            .filter(move |p| listed_separately(p, workload));
        self.global
            .iter()
            .chain(namespace)
            .chain(listed)
            .map(|p| &**p)
    }

    /// Names the workload lists that the index does not hold.
    pub fn missing<'a>(
        &'a self,
        target: impl Into<Target<'a>>,
    ) -> impl Iterator<Item = &'a str> + 'a {
        target
            .into()
            .policies
            .iter()
            .filter(|key| !self.by_key.contains_key(key.as_str()))
            .map(String::as_str)
    }

    /// Authorizes one connection to `workload`.
    ///
    /// One pass over the applicable policies: DENY policies are all evaluated (until one
    /// matches), ALLOW policies until one matches and only while nothing denied.
    pub fn decide<'a>(
        &'a self,
        target: impl Into<Target<'a>>,
        conn: &Connection<'_>,
    ) -> Decision<'a> {
        let workload = target.into();
        let peer = Peer::new(conn);
        let mut eval = Evaluation::default();
        let mut missing = None;
        let namespace = self
            .by_namespace
            .get(workload.namespace)
            .map_or(&[][..], Vec::as_slice);
        let listed =
            workload
                .policies
                .iter()
                .filter_map(|key| match self.by_key.get(key.as_str()) {
                    Some(p) => listed_separately(p, workload).then_some(p),
                    None => {
                        missing.get_or_insert(key.as_str());
                        None
                    }
                });
        // One loop, so the policy walk is inlined (and the peer kept at hand) in one place.
        for p in self.global.iter().chain(namespace).chain(listed) {
            eval.visit(p, &peer);
        }
        let mut decision = if let Some(key) = eval.denied_by {
            Decision::deny(Reason::ExplicitlyDenied, Some(key))
        } else if let Some(key) = missing {
            Decision::deny(Reason::MissingPolicy, Some(key))
        } else {
            if eval.any_dry_allow && !eval.any_allow && !eval.dry_allow_matched {
                // Enforcing the dry-run ALLOWs would leave this connection unmatched.
                eval.dry_run_denials.extend(
                    self.applicable(workload)
                        .filter(|p| p.action() == PolicyAction::Allow && p.dry_run())
                        .map(CompiledPolicy::key),
                );
            }
            match (eval.any_allow, eval.allowed_by) {
                (true, Some(key)) => Decision::allow(Reason::AllowedBy, Some(key)),
                (true, None) => Decision::deny(Reason::NoAllowMatched, None),
                (false, _) if eval.any_policy => Decision::allow(Reason::NoAllowPolicy, None),
                (false, _) => Decision::allow(Reason::NoPolicy, None),
            }
        };
        decision.dry_run_denials = eval.dry_run_denials;
        decision
    }

    /// [`decide`](Self::decide), with every applicable policy and its outcome.
    pub fn trace<'a>(&'a self, target: impl Into<Target<'a>>, conn: &Connection<'_>) -> Trace<'a> {
        let workload = target.into();
        let peer = Peer::new(conn);
        let mut policies: Vec<TraceEntry<'a>> = self
            .applicable(workload)
            .map(|p| TraceEntry {
                policy: p.key(),
                action: Some(p.action()),
                scope: Some(p.scope()),
                dry_run: p.dry_run(),
                matched_rule: p.matching_rule(&peer),
                warnings: p.warnings(),
            })
            .collect();
        policies.extend(self.missing(workload).map(|key| TraceEntry {
            policy: key,
            action: None,
            scope: None,
            dry_run: false,
            matched_rule: None,
            warnings: &[],
        }));
        Trace {
            decision: self.decide(workload, conn),
            policies,
        }
    }
}

/// Whether a listed policy is not already among the GLOBAL and namespace lists.
fn listed_separately(p: &CompiledPolicy, workload: Target<'_>) -> bool {
    match p.scope() {
        PolicyScope::Global => false,
        PolicyScope::Namespace => p.namespace() != workload.namespace,
        PolicyScope::WorkloadSelector => true,
    }
}

/// What one pass over the applicable policies found.
#[derive(Debug, Default)]
struct Evaluation<'a> {
    any_policy: bool,
    denied_by: Option<&'a str>,
    any_allow: bool,
    allowed_by: Option<&'a str>,
    any_dry_allow: bool,
    dry_allow_matched: bool,
    dry_run_denials: Vec<&'a str>,
}

impl<'a> Evaluation<'a> {
    /// Takes one applicable policy into account, evaluating it only if its outcome could still
    /// change the decision or the dry-run report.
    #[inline]
    fn visit(&mut self, p: &'a CompiledPolicy, peer: &Peer<'_>) {
        self.any_policy = true;
        let undecided = self.denied_by.is_none();
        let wanted = match (p.action(), p.dry_run()) {
            (PolicyAction::Deny, false) => undecided,
            (PolicyAction::Deny, true) => true,
            (PolicyAction::Allow, false) => {
                self.any_allow = true;
                undecided && self.allowed_by.is_none()
            }
            (PolicyAction::Allow, true) => {
                self.any_dry_allow = true;
                undecided && !self.dry_allow_matched
            }
        };
        // A single call to `matches`, so the policy walk is inlined once.
        if !wanted || !p.matches(peer) {
            return;
        }
        match (p.action(), p.dry_run()) {
            (PolicyAction::Deny, false) => self.denied_by = Some(p.key()),
            (PolicyAction::Deny, true) => self.dry_run_denials.push(p.key()),
            (PolicyAction::Allow, false) => self.allowed_by = Some(p.key()),
            (PolicyAction::Allow, true) => self.dry_allow_matched = true,
        }
    }
}

// === impl Decision ===

impl<'a> Decision<'a> {
    fn allow(reason: Reason, policy: Option<&'a str>) -> Self {
        Self {
            allowed: true,
            policy,
            reason,
            dry_run_denials: Vec::new(),
        }
    }

    fn deny(reason: Reason, policy: Option<&'a str>) -> Self {
        Self {
            allowed: false,
            policy,
            reason,
            dry_run_denials: Vec::new(),
        }
    }
}

/// ztunnel's wording where it has one (`explicitly denied by: <ns>/<name>`, `allow policies
/// exist, but none allowed`), so access logs read the same. Dry-run denials are not part of it:
/// log them on their own (as ztunnel does).
impl fmt::Display for Decision<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = self.policy.unwrap_or("-");
        match self.reason {
            Reason::NoPolicy => f.write_str("allowed: no policy applies"),
            Reason::NoAllowPolicy => f.write_str("allowed: no ALLOW policy applies"),
            Reason::AllowedBy => write!(f, "allowed by: {policy}"),
            Reason::ExplicitlyDenied => write!(f, "explicitly denied by: {policy}"),
            Reason::NoAllowMatched => f.write_str("allow policies exist, but none allowed"),
            Reason::MissingPolicy => write!(
                f,
                "denied: the workload lists policy {policy}, which this proxy does not have"
            ),
        }
    }
}

// === impl Peer ===

impl<'a> Peer<'a> {
    fn new(conn: &Connection<'a>) -> Self {
        let (principal, namespace, service_account) = match conn.src_identity {
            Some(id) => (
                id.as_str().strip_prefix("spiffe://").unwrap_or(id.as_str()),
                id.namespace(),
                id.service_account(),
            ),
            None => ("", "", ""),
        };
        Self {
            // An IPv4 peer seen through a dual-stack socket (`::ffff:a.b.c.d`) must meet the
            // IPv4 CIDRs of a policy, or a DENY on its address would not hold.
            src_ip: conn.src_ip.to_canonical(),
            dst_ip: conn.dst_ip.to_canonical(),
            dst_port: conn.dst_port,
            identified: conn.src_identity.is_some(),
            principal,
            principal_hash: fx_hash(principal),
            namespace,
            namespace_hash: fx_hash(namespace),
            service_account,
        }
    }
}

#[cfg(test)]
mod tests;
