//! [`CompiledPolicy`]: an `istio.security.Authorization` in the form the data path evaluates.
//!
//! Compiling parses everything once — CIDRs become masked integers, string matches are
//! classified, ports become `u16` — so a match walks plain slices and allocates nothing.
//!
//! Semantics are ztunnel's, so a policy means the same here whether Ambit's control plane or a
//! stock istiod produced it: a policy matches when any rule matches; a rule when all its clauses
//! match (a rule without clauses always matches); a clause when any of its matches matches (a
//! clause without matches always matches); a match when every non-empty field holds — any entry
//! of a positive list, no entry of a negative list. A match with no field at all matches
//! nothing, and a policy without rules matches nothing. Principals are compared without the
//! `spiffe://` scheme; identity fields never match a connection without an identity, and their
//! negations always do.
//!
//! Fail-closed invariant: an entry that cannot be read (a bad address, a port above 65535, a
//! string match without a type) makes its whole match never hold in an ALLOW policy, and drops
//! its field (so the match holds more often) in a DENY policy. ztunnel instead drops the entry,
//! which can widen an ALLOW. Each such entry is kept as a warning on the policy.

use std::fmt;
use std::net::IpAddr;

use ambit_proto::security::string_match::MatchType;
use ambit_proto::security::{self as wire, Authorization};

use super::{Peer, fx_hash};

/// The scope of a policy: which workloads it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyScope {
    /// Every workload of the mesh.
    Global,
    /// Every workload of the policy's namespace.
    Namespace,
    /// Workloads that list the policy by name.
    WorkloadSelector,
}

/// What a policy does to the connections it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyAction {
    Allow,
    Deny,
}

/// One authorization policy, ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    key: Box<str>,
    namespace: Box<str>,
    scope: PolicyScope,
    action: PolicyAction,
    dry_run: bool,
    rules: Box<[Box<[Clause]>]>,
    warnings: Vec<String>,
}

type Clause = Box<[CompiledMatch]>;

/// One wire `Match`, as the fields it sets: all must hold.
#[derive(Debug, Clone)]
struct CompiledMatch {
    /// Never holds: empty on the wire, or unreadable in an ALLOW policy.
    never: bool,
    /// Only the fields the match sets, cheapest first.
    checks: Box<[Check]>,
}

/// One field of a match. A positive field holds when any entry matches; a negated one
/// (`not_…`) when none does.
#[derive(Debug, Clone)]
enum Check {
    DestinationPorts(Box<[u16]>, Negated),
    DestinationIps(Box<[Cidr]>, Negated),
    SourceIps(Box<[Cidr]>, Negated),
    Namespaces(Box<[StrMatch]>, Negated),
    ServiceAccounts(Box<[(Box<str>, Box<str>)]>, Negated),
    Principals(Box<[StrMatch]>, Negated),
}

type Negated = bool;

#[derive(Debug, Clone, PartialEq, Eq)]
enum StrMatch {
    /// With the value's hash, so most mismatches cost one integer comparison.
    Exact(Box<str>, u64),
    Prefix(Box<str>),
    Suffix(Box<str>),
    /// Any non-empty value.
    Presence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cidr {
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

// === impl CompiledPolicy ===

impl CompiledPolicy {
    /// Compiles a policy. Never fails: what cannot be read fails closed and is kept in
    /// [`warnings`](Self::warnings).
    pub fn compile(authorization: &Authorization, dry_run: bool) -> Self {
        let mut warnings = Vec::new();
        let action = match wire::Action::try_from(authorization.action) {
            Ok(wire::Action::Allow) => PolicyAction::Allow,
            Ok(wire::Action::Deny) => PolicyAction::Deny,
            Err(_) => {
                warnings.push(format!(
                    "unknown action {}; treated as DENY",
                    authorization.action
                ));
                PolicyAction::Deny
            }
        };
        let scope = match wire::Scope::try_from(authorization.scope) {
            Ok(wire::Scope::Global) => PolicyScope::Global,
            Ok(wire::Scope::Namespace) => PolicyScope::Namespace,
            Ok(wire::Scope::WorkloadSelector) => PolicyScope::WorkloadSelector,
            Err(_) => {
                warnings.push(format!(
                    "unknown scope {}; applied mesh-wide",
                    authorization.scope
                ));
                PolicyScope::Global
            }
        };
        let rules = authorization
            .rules
            .iter()
            .enumerate()
            .map(|(r, rule)| {
                rule.clauses
                    .iter()
                    .enumerate()
                    .map(|(c, clause)| {
                        clause
                            .matches
                            .iter()
                            .enumerate()
                            .map(|(m, wire_match)| {
                                let mut warn = |what: String| {
                                    warnings.push(format!(
                                        "rules[{r}].clauses[{c}].matches[{m}]: {what}"
                                    ));
                                };
                                CompiledMatch::compile(wire_match, action, &mut warn)
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect();
        Self {
            key: format!("{}/{}", authorization.namespace, authorization.name).into(),
            namespace: authorization.namespace.as_str().into(),
            scope,
            action,
            dry_run,
            rules,
            warnings,
        }
    }

    /// `<namespace>/<name>`, the resource name.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn scope(&self) -> PolicyScope {
        self.scope
    }

    pub fn action(&self) -> PolicyAction {
        self.action
    }

    /// Evaluated and reported, never enforced.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// Parts of the resource that could not be read, and how each was treated.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Whether the policy matches the connection.
    pub(super) fn matches(&self, peer: &Peer<'_>) -> bool {
        self.matching_rule(peer).is_some()
    }

    /// The index of the first rule that matches.
    pub(super) fn matching_rule(&self, peer: &Peer<'_>) -> Option<usize> {
        self.rules.iter().position(|clauses| {
            clauses
                .iter()
                .all(|matches| matches.is_empty() || matches.iter().any(|m| m.matches(peer)))
        })
    }
}

impl fmt::Display for PolicyAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyAction::Allow => "ALLOW",
            PolicyAction::Deny => "DENY",
        })
    }
}

impl fmt::Display for PolicyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyScope::Global => "GLOBAL",
            PolicyScope::Namespace => "NAMESPACE",
            PolicyScope::WorkloadSelector => "WORKLOAD_SELECTOR",
        })
    }
}

// === impl CompiledMatch ===

/// Reads one list of entries: `None` if it is empty, `Err` if any entry cannot be read.
fn list<T, U>(
    entries: &[T],
    field: &str,
    read: impl Fn(&T) -> Option<U>,
    warn: &mut dyn FnMut(String),
) -> Result<Option<Box<[U]>>, ()> {
    if entries.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        match read(entry) {
            Some(v) => out.push(v),
            None => {
                warn(format!("{field}[{i}] cannot be read"));
                return Err(());
            }
        }
    }
    Ok(Some(out.into_boxed_slice()))
}

impl CompiledMatch {
    fn compile(m: &wire::Match, action: PolicyAction, warn: &mut dyn FnMut(String)) -> Self {
        let mut unreadable = false;
        let mut checks = Vec::new();
        let mut add = |read: Result<Option<Check>, ()>| match read {
            Ok(check) => checks.extend(check),
            Err(()) => unreadable = true,
        };
        let sa = |s: &wire::ServiceAccountMatch| {
            Some((
                s.namespace.as_str().into(),
                s.service_account.as_str().into(),
            ))
        };
        let port = |p: &u32| u16::try_from(*p).ok();
        // Cheapest checks first.
        for negated in [false, true] {
            let (ports, name) = pick(
                negated,
                &m.destination_ports,
                &m.not_destination_ports,
                "destination_ports",
            );
            add(list(ports, &name, port, warn)
                .map(|l| l.map(|l| Check::DestinationPorts(l, negated))));
        }
        for negated in [false, true] {
            let (ips, name) = pick(
                negated,
                &m.destination_ips,
                &m.not_destination_ips,
                "destination_ips",
            );
            add(list(ips, &name, Cidr::read, warn)
                .map(|l| l.map(|l| Check::DestinationIps(l, negated))));
        }
        for negated in [false, true] {
            let (ips, name) = pick(negated, &m.source_ips, &m.not_source_ips, "source_ips");
            add(list(ips, &name, Cidr::read, warn).map(|l| l.map(|l| Check::SourceIps(l, negated))));
        }
        for negated in [false, true] {
            let (ns, name) = pick(negated, &m.namespaces, &m.not_namespaces, "namespaces");
            add(list(ns, &name, StrMatch::read, warn)
                .map(|l| l.map(|l| Check::Namespaces(l, negated))));
        }
        for negated in [false, true] {
            let (sas, name) = pick(
                negated,
                &m.service_accounts,
                &m.not_service_accounts,
                "service_accounts",
            );
            add(list(sas, &name, sa, warn).map(|l| l.map(|l| Check::ServiceAccounts(l, negated))));
        }
        for negated in [false, true] {
            let (ps, name) = pick(negated, &m.principals, &m.not_principals, "principals");
            add(list(ps, &name, StrMatch::read, warn)
                .map(|l| l.map(|l| Check::Principals(l, negated))));
        }
        let checks = checks.into_boxed_slice();
        let never = match (unreadable, action) {
            (true, PolicyAction::Allow) => {
                warn("this ALLOW match never holds (fail closed)".to_owned());
                true
            }
            // Dropping fields only widens a DENY. If nothing is left, the match holds for every
            // connection rather than (as an empty match would) for none.
            (true, PolicyAction::Deny) => {
                warn(
                    "the unreadable field is ignored, so this DENY match holds more often"
                        .to_owned(),
                );
                false
            }
            (false, _) => checks.is_empty(),
        };
        Self { never, checks }
    }

    fn matches(&self, peer: &Peer<'_>) -> bool {
        !self.never && self.checks.iter().all(|c| c.holds(peer))
    }
}

/// The positive or the negated list of a field, with its wire name.
fn pick<'a, T>(
    negated: bool,
    positive: &'a [T],
    negative: &'a [T],
    name: &'static str,
) -> (&'a [T], String) {
    if negated {
        (negative, format!("not_{name}"))
    } else {
        (positive, name.to_owned())
    }
}

impl Check {
    fn holds(&self, peer: &Peer<'_>) -> bool {
        let (any, negated) = match self {
            Check::DestinationPorts(ports, n) => (ports.contains(&peer.dst_port), *n),
            Check::DestinationIps(cidrs, n) => (cidrs.iter().any(|c| c.contains(peer.dst_ip)), *n),
            Check::SourceIps(cidrs, n) => (cidrs.iter().any(|c| c.contains(peer.src_ip)), *n),
            // ztunnel compares against the empty string when there is no identity.
            Check::Namespaces(m, n) => (
                m.iter()
                    .any(|s| s.matches(peer.namespace, peer.namespace_hash)),
                *n,
            ),
            Check::ServiceAccounts(sas, n) => (
                peer.identified
                    && sas
                        .iter()
                        .any(|(ns, sa)| **ns == *peer.namespace && **sa == *peer.service_account),
                *n,
            ),
            Check::Principals(m, n) => (
                peer.identified
                    && m.iter()
                        .any(|s| s.matches(peer.principal, peer.principal_hash)),
                *n,
            ),
        };
        any != negated
    }
}

// === impl StrMatch ===

impl StrMatch {
    fn read(m: &wire::StringMatch) -> Option<Self> {
        Some(match m.match_type.as_ref()? {
            MatchType::Exact(s) => StrMatch::Exact(s.as_str().into(), fx_hash(s)),
            MatchType::Prefix(s) => StrMatch::Prefix(s.as_str().into()),
            MatchType::Suffix(s) => StrMatch::Suffix(s.as_str().into()),
            MatchType::Presence(()) => StrMatch::Presence,
        })
    }

    /// `hash` is [`fx_hash`] of `value`.
    fn matches(&self, value: &str, hash: u64) -> bool {
        match self {
            StrMatch::Exact(s, h) => *h == hash && **s == *value,
            StrMatch::Prefix(s) => value.starts_with(&**s),
            StrMatch::Suffix(s) => value.ends_with(&**s),
            StrMatch::Presence => !value.is_empty(),
        }
    }
}

// === impl Cidr ===

impl Cidr {
    fn read(a: &wire::Address) -> Option<Self> {
        match a.address.len() {
            4 if a.length <= 32 => {
                let addr = u32::from_be_bytes(<[u8; 4]>::try_from(a.address.as_slice()).ok()?);
                let mask = u32::MAX.checked_shl(32 - a.length).unwrap_or(0);
                Some(Cidr::V4 {
                    net: addr & mask,
                    mask,
                })
            }
            16 if a.length <= 128 => {
                let addr = u128::from_be_bytes(<[u8; 16]>::try_from(a.address.as_slice()).ok()?);
                let mask = u128::MAX.checked_shl(128 - a.length).unwrap_or(0);
                Some(Cidr::V6 {
                    net: addr & mask,
                    mask,
                })
            }
            _ => None,
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Cidr::V4 { net, mask }, IpAddr::V4(ip)) => u32::from(ip) & mask == *net,
            (Cidr::V6 { net, mask }, IpAddr::V6(ip)) => u128::from(ip) & mask == *net,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(addr: &[u8], length: u32) -> Cidr {
        Cidr::read(&wire::Address {
            address: addr.to_vec(),
            length,
        })
        .unwrap()
    }

    #[test]
    fn cidrs_mask_host_bits_and_keep_families_apart() {
        let c = cidr(&[10, 1, 2, 3], 8);
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::ffff:10.0.0.1".parse().unwrap()));
        let all = cidr(&[0, 0, 0, 0], 0);
        assert!(all.contains("192.168.0.1".parse().unwrap()));
        let host = cidr(&[192, 168, 0, 1], 32);
        assert!(host.contains("192.168.0.1".parse().unwrap()));
        assert!(!host.contains("192.168.0.2".parse().unwrap()));
        let v6 = cidr(
            &"fd00::".parse::<std::net::Ipv6Addr>().unwrap().octets(),
            16,
        );
        assert!(v6.contains("fd00:1::5".parse().unwrap()));
        assert!(!v6.contains("fd01::5".parse().unwrap()));
        for (bytes, len) in [(vec![1, 2, 3], 8), (vec![1, 2, 3, 4], 33)] {
            assert!(
                Cidr::read(&wire::Address {
                    address: bytes,
                    length: len
                })
                .is_none()
            );
        }
    }

    #[test]
    fn string_matches_follow_ztunnel() {
        let exact = |s: &str| StrMatch::Exact(s.into(), fx_hash(s));
        let cases = [
            (exact("foo"), "foo", true),
            (exact("foo"), "", false),
            (StrMatch::Prefix("foo".into()), "foobar", true),
            (StrMatch::Prefix("foo".into()), "barfoo", false),
            (StrMatch::Suffix("foo".into()), "barfoo", true),
            (StrMatch::Suffix("foo".into()), "foobar", false),
            (StrMatch::Presence, "x", true),
            (StrMatch::Presence, "", false),
        ];
        for (m, value, expected) in cases {
            assert_eq!(
                m.matches(value, fx_hash(value)),
                expected,
                "{m:?} on {value:?}"
            );
        }
    }
}
