//! [`CompiledPolicy`]: an `istio.security.Authorization` in the form the data path evaluates.
//!
//! Compiling parses everything once — CIDRs become masked integers, string matches are
//! classified with exact values pre-hashed, ports become `u16` — and then flattens the rules
//! into a [`Program`] of tests with continuations, so a decision walks one array and allocates
//! nothing.
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
//! An unknown scope (a value newer than this build) never widens access: the policy applies
//! mesh-wide, and an ALLOW among them matches nothing (ztunnel rejects the resource instead,
//! which would drop a DENY).
//!
//! Fail-closed invariant: an entry that cannot be read (a bad address, a port above 65535, a
//! string match without a type) makes its whole match never hold in an ALLOW policy, and drops
//! its field (so the match holds more often) in a DENY policy. ztunnel instead drops the entry,
//! which can widen an ALLOW. Each such entry is kept as a warning on the policy.

use std::fmt;

use ambit_proto::security::{self as wire, Authorization};

use super::Peer;
use super::program::{Builder, Cidr, Next, Program, StrMatch, Test, TooLarge};

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
    program: Program,
    warnings: Vec<String>,
}

/// A wire rule as read: its clauses, each a list of matches. Only lives while compiling.
type Rule = Vec<Vec<CompiledMatch>>;

/// One wire `Match`, as the fields it sets: all must hold.
#[derive(Debug)]
struct CompiledMatch {
    /// Never holds: empty on the wire, or unreadable in an ALLOW policy.
    never: bool,
    /// Only the fields the match sets, cheapest first.
    fields: Vec<Field>,
}

/// One field of a match: a positive field holds when any entry holds; a negated one
/// (`not_…`) when none does.
#[derive(Debug)]
struct Field {
    /// Any of them holding makes the field hold (one test, or two when exact strings and
    /// patterns mix).
    tests: Vec<Test>,
    negated: bool,
}

// === impl CompiledPolicy ===

impl CompiledPolicy {
    /// Compiles a policy. Never fails: what cannot be read fails closed and is kept in
    /// [`warnings`](Self::warnings).
    pub fn compile(authorization: &Authorization, dry_run: bool) -> Self {
        let mut warnings = Vec::new();
        let mut unknown_scope = false;
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
                // Applied mesh-wide either way: a DENY then covers every workload it might have
                // meant, and an ALLOW (below) matches nothing, so it can only take access away.
                let meaning = match action {
                    PolicyAction::Allow => "applied mesh-wide, matching nothing",
                    PolicyAction::Deny => "applied mesh-wide",
                };
                warnings.push(format!("unknown scope {}; {meaning}", authorization.scope));
                unknown_scope = true;
                PolicyScope::Global
            }
        };
        let mut rules = read_rules(authorization, action, &mut warnings);
        if unknown_scope && action == PolicyAction::Allow {
            // A policy without rules matches nothing.
            rules.clear();
        }
        let program = lower(rules).unwrap_or_else(|TooLarge| {
            // Unreachable from the wire (see `TooLarge`); fail closed all the same.
            let (outcome, meaning) = match action {
                PolicyAction::Allow => (Next::NO_MATCH, "nothing"),
                PolicyAction::Deny => (Next::FIRST_RULE, "every connection"),
            };
            warnings.push(format!("too many entries to evaluate; matches {meaning}"));
            Program::constant(outcome)
        });
        Self {
            key: format!("{}/{}", authorization.namespace, authorization.name).into(),
            namespace: authorization.namespace.as_str().into(),
            scope,
            action,
            dry_run,
            program,
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
    // Inlined into the decision loop with the walk; see the `program` module docs.
    #[inline(always)]
    pub(super) fn matches(&self, peer: &Peer<'_>) -> bool {
        self.matching_rule(peer).is_some()
    }

    /// The index of the first rule that matches.
    // Inlined into the decision loop with the walk; see the `program` module docs.
    #[inline(always)]
    pub(super) fn matching_rule(&self, peer: &Peer<'_>) -> Option<usize> {
        self.program.first_match(peer)
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

// === reading ===

/// Reads the rules of a policy, reporting what cannot be read through `warnings`.
fn read_rules(
    authorization: &Authorization,
    action: PolicyAction,
    warnings: &mut Vec<String>,
) -> Vec<Rule> {
    let mut rules = Vec::with_capacity(authorization.rules.len());
    for (r, rule) in authorization.rules.iter().enumerate() {
        let mut clauses = Vec::with_capacity(rule.clauses.len());
        for (c, clause) in rule.clauses.iter().enumerate() {
            let mut matches = Vec::with_capacity(clause.matches.len());
            for (m, wire_match) in clause.matches.iter().enumerate() {
                let mut warn = |what: String| {
                    warnings.push(format!("rules[{r}].clauses[{c}].matches[{m}]: {what}"));
                };
                matches.push(CompiledMatch::read(wire_match, action, &mut warn));
            }
            clauses.push(matches);
        }
        rules.push(clauses);
    }
    rules
}

impl CompiledMatch {
    fn read(m: &wire::Match, action: PolicyAction, warn: &mut dyn FnMut(String)) -> Self {
        let mut fields = Fields {
            fields: Vec::new(),
            unreadable: false,
            warn,
        };
        let port = |p: &u32| u16::try_from(*p).ok();
        let service_account = |s: &wire::ServiceAccountMatch| {
            Some((
                s.namespace.as_str().into(),
                s.service_account.as_str().into(),
            ))
        };
        // Cheapest tests first.
        fields.add(
            "destination_ports",
            &m.destination_ports,
            &m.not_destination_ports,
            port,
            |l| vec![Test::DestinationPorts(l)],
        );
        fields.add(
            "destination_ips",
            &m.destination_ips,
            &m.not_destination_ips,
            Cidr::read,
            |l| vec![Test::DestinationIps(l)],
        );
        fields.add(
            "source_ips",
            &m.source_ips,
            &m.not_source_ips,
            Cidr::read,
            |l| vec![Test::SourceIps(l)],
        );
        fields.add(
            "namespaces",
            &m.namespaces,
            &m.not_namespaces,
            StrMatch::read,
            |l| Test::strings(l, Test::NamespaceIs, Test::NamespaceLike),
        );
        fields.add(
            "service_accounts",
            &m.service_accounts,
            &m.not_service_accounts,
            service_account,
            |l| vec![Test::ServiceAccounts(l)],
        );
        fields.add(
            "principals",
            &m.principals,
            &m.not_principals,
            StrMatch::read,
            |l| Test::strings(l, Test::PrincipalIs, Test::PrincipalLike),
        );
        let Fields {
            fields,
            unreadable,
            warn,
        } = fields;
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
            (false, _) => fields.is_empty(),
        };
        Self { never, fields }
    }
}

/// The fields of one match being read.
struct Fields<'w> {
    fields: Vec<Field>,
    /// A field had an entry that cannot be read (and was left out).
    unreadable: bool,
    warn: &'w mut dyn FnMut(String),
}

impl Fields<'_> {
    /// Reads the positive and the negated list of one field (`name` and `not_name`) with
    /// `read` for each entry; an empty list sets no field.
    fn add<T, U>(
        &mut self,
        name: &str,
        positive: &[T],
        negative: &[T],
        read: impl Fn(&T) -> Option<U>,
        tests: impl Fn(Box<[U]>) -> Vec<Test>,
    ) {
        for (negated, list) in [(false, positive), (true, negative)] {
            if list.is_empty() {
                continue;
            }
            let entries: Option<Box<[U]>> = list.iter().map(&read).collect();
            match entries {
                Some(entries) => self.fields.push(Field {
                    tests: tests(entries),
                    negated,
                }),
                None => {
                    // Name the first entry that cannot be read.
                    let i = list.iter().position(|e| read(e).is_none()).unwrap_or(0);
                    let not = if negated { "not_" } else { "" };
                    (self.warn)(format!("{not}{name}[{i}] cannot be read"));
                    self.unreadable = true;
                }
            }
        }
    }
}

// === lowering ===

/// Flattens rules into a [`Program`]. Built from the last rule to the first, so that every
/// continuation a test names already exists: a rule that holds ends in "rule `r` matched",
/// one that does not continues with the next rule.
fn lower(rules: Vec<Rule>) -> Result<Program, TooLarge> {
    let mut b = Builder::default();
    let mut next = Next::NO_MATCH;
    for (r, clauses) in rules.into_iter().enumerate().rev() {
        next = lower_rule(&mut b, clauses, Next::matched(r)?, next)?;
    }
    Ok(b.finish(next))
}

/// Every clause must hold: each one that does continues with the next.
fn lower_rule(
    b: &mut Builder,
    rule: Rule,
    on_true: Next,
    on_false: Next,
) -> Result<Next, TooLarge> {
    rule.into_iter().rev().try_fold(on_true, |next, clause| {
        lower_clause(b, clause, next, on_false)
    })
}

/// Any match will do (a clause without matches always holds): each one that does not hold
/// falls through to the next.
fn lower_clause(
    b: &mut Builder,
    matches: Vec<CompiledMatch>,
    on_true: Next,
    on_false: Next,
) -> Result<Next, TooLarge> {
    if matches.is_empty() {
        return Ok(on_true);
    }
    matches
        .into_iter()
        .rev()
        .try_fold(on_false, |next, m| lower_match(b, m, on_true, next))
}

/// Every field must hold (a match left without fields by an unreadable DENY field always
/// does).
fn lower_match(
    b: &mut Builder,
    m: CompiledMatch,
    on_true: Next,
    on_false: Next,
) -> Result<Next, TooLarge> {
    if m.never {
        return Ok(on_false);
    }
    m.fields
        .into_iter()
        .rev()
        .try_fold(on_true, |next, field| lower_field(b, field, next, on_false))
}

/// The first test that holds decides: the field holds (or, negated, fails). When none holds,
/// the field fails (or, negated, holds).
fn lower_field(
    b: &mut Builder,
    field: Field,
    on_true: Next,
    on_false: Next,
) -> Result<Next, TooLarge> {
    let (hit, miss) = if field.negated {
        (on_false, on_true)
    } else {
        (on_true, on_false)
    };
    field
        .tests
        .into_iter()
        .rev()
        .try_fold(miss, |next, test| b.test(test, hit, next))
}

#[cfg(test)]
mod tests;
