//! Engine-level tests on wire resources (the shapes a stock istiod sends, too). The
//! manifest-level table lives in `tests/authz_table.rs`.

use ambit_proto::security::string_match::MatchType;
use ambit_proto::security::{Action, Clause, Match, Rule, Scope, StringMatch};

use super::*;

fn policy(ns: &str, name: &str, scope: Scope, action: Action, rules: Vec<Rule>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: ns.into(),
        scope: scope as i32,
        action: action as i32,
        rules,
    }
}

fn rule(matches: Vec<Vec<Match>>) -> Rule {
    Rule {
        clauses: matches
            .into_iter()
            .map(|matches| Clause { matches })
            .collect(),
    }
}

fn exact(s: &str) -> StringMatch {
    StringMatch {
        match_type: Some(MatchType::Exact(s.into())),
    }
}

fn workload(ns: &str, listed: &[&str]) -> Workload {
    Workload {
        namespace: ns.into(),
        authorization_policies: listed.iter().map(|s| (*s).to_owned()).collect(),
        ..Workload::default()
    }
}

fn id(s: &str) -> SpiffeId {
    s.parse().unwrap()
}

fn conn<'a>(identity: Option<&'a SpiffeId>, port: u16) -> Connection<'a> {
    Connection {
        src_ip: "10.0.0.1".parse().unwrap(),
        src_identity: identity,
        dst_ip: "10.0.0.2".parse().unwrap(),
        dst_port: port,
    }
}

#[test]
fn empty_shapes_follow_ztunnel() {
    let port80 = Match {
        destination_ports: vec![80],
        ..Match::default()
    };
    let cases = [
        ("no rules", vec![], false),
        ("rule without clauses", vec![Rule::default()], true),
        ("clause without matches", vec![rule(vec![vec![]])], true),
        (
            "empty match",
            vec![rule(vec![vec![Match::default()]])],
            false,
        ),
        (
            "empty match beside a real one",
            vec![rule(vec![vec![Match::default(), port80.clone()]])],
            true,
        ),
    ];
    let w = workload("ns", &[]);
    for (what, rules, matches) in cases {
        let mut index = PolicyIndex::new();
        index.insert(
            &policy("ns", "p", Scope::Namespace, Action::Deny, rules),
            false,
        );
        let decision = index.decide(&w, &conn(None, 80));
        assert_eq!(!decision.allowed, matches, "{what}: {decision}");
    }
}

/// A scope value this build does not know never widens access (security review L2): an ALLOW
/// with it matches nothing wherever it might apply, a DENY applies everywhere.
#[test]
fn an_unknown_scope_never_widens_access() {
    let allow_all = || vec![Rule::default()];
    let unknown = |action: Action| Authorization {
        scope: 99,
        ..policy("other", "future", Scope::Global, action, allow_all())
    };
    // A workload with an ALLOW that does not match this connection (port 9000 only).
    let port_9000 = vec![rule(vec![vec![Match {
        destination_ports: vec![9000],
        ..Match::default()
    }]])];
    let w = workload("a", &["a/narrow"]);
    let mut index = PolicyIndex::new();
    index.insert(
        &policy(
            "a",
            "narrow",
            Scope::WorkloadSelector,
            Action::Allow,
            port_9000,
        ),
        false,
    );
    index.insert(&unknown(Action::Allow), false);
    let decision = index.decide(&w, &conn(None, 80));
    assert!(
        !decision.allowed,
        "an unknown-scope ALLOW let it in: {decision}"
    );
    let compiled = index.get("other/future").unwrap();
    assert!(
        compiled
            .warnings()
            .iter()
            .any(|w| w.contains("matching nothing")),
        "{:?}",
        compiled.warnings()
    );

    // An unknown-scope DENY of everything denies a workload of any namespace.
    let mut index = PolicyIndex::new();
    index.insert(&unknown(Action::Deny), false);
    assert!(!index.decide(&workload("b", &[]), &conn(None, 80)).allowed);
}

#[test]
fn scopes_select_workloads() {
    let deny_all = || vec![Rule::default()];
    let mut index = PolicyIndex::new();
    index.insert(
        &policy("istio-system", "g", Scope::Global, Action::Deny, vec![]),
        false,
    );
    index.insert(
        &policy("a", "ns", Scope::Namespace, Action::Deny, deny_all()),
        false,
    );
    index.insert(
        &policy(
            "a",
            "sel",
            Scope::WorkloadSelector,
            Action::Deny,
            deny_all(),
        ),
        false,
    );
    fn keys(index: &PolicyIndex, w: &Workload) -> Vec<String> {
        index.applicable(w).map(|p| p.key().to_owned()).collect()
    }
    assert_eq!(
        keys(&index, &workload("a", &[])),
        ["istio-system/g", "a/ns"]
    );
    assert_eq!(
        keys(&index, &workload("b", &["a/sel"])),
        ["istio-system/g", "a/sel"]
    );
    // A listed namespace policy of the workload's own namespace is not evaluated twice.
    assert_eq!(
        keys(&index, &workload("a", &["a/ns"])),
        ["istio-system/g", "a/ns"]
    );
    assert!(index.remove("a/ns"));
    assert!(!index.remove("a/ns"));
    assert_eq!(keys(&index, &workload("a", &[])), ["istio-system/g"]);
    assert_eq!(index.len(), 2);
}

#[test]
fn a_listed_policy_the_proxy_lacks_denies() {
    let index = PolicyIndex::new();
    let w = workload("a", &["a/not-yet-here"]);
    let d = index.decide(&w, &conn(None, 80));
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::MissingPolicy);
    assert_eq!(d.policy, Some("a/not-yet-here"));
}

#[test]
fn identity_fields_and_plaintext() {
    let client = id("spiffe://cluster.local/ns/a/sa/client");
    let principals = |m: Vec<StringMatch>, negate: bool| {
        let mut x = Match::default();
        if negate {
            x.not_principals = m;
        } else {
            x.principals = m;
        }
        vec![rule(vec![vec![x]])]
    };
    let cases = [
        (
            principals(vec![exact("cluster.local/ns/a/sa/client")], false),
            Some(&client),
            true,
        ),
        (
            principals(vec![exact("spiffe://cluster.local/ns/a/sa/client")], false),
            Some(&client),
            false,
        ),
        (
            principals(vec![exact("cluster.local/ns/a/sa/client")], false),
            None,
            false,
        ),
        (
            principals(vec![exact("cluster.local/ns/a/sa/client")], true),
            None,
            true,
        ),
        (
            principals(vec![exact("cluster.local/ns/a/sa/client")], true),
            Some(&client),
            false,
        ),
    ];
    for (i, (rules, identity, matches)) in cases.into_iter().enumerate() {
        let mut index = PolicyIndex::new();
        index.insert(
            &policy("a", "p", Scope::Namespace, Action::Deny, rules),
            false,
        );
        let w = workload("a", &[]);
        let d = index.decide(&w, &conn(identity, 80));
        assert_eq!(!d.allowed, matches, "case {i}: {d}");
    }
}

#[test]
fn unreadable_entries_fail_closed() {
    let bad_port = Match {
        destination_ports: vec![70_000],
        ..Match::default()
    };
    let no_type = Match {
        principals: vec![StringMatch { match_type: None }],
        ..Match::default()
    };
    for m in [bad_port, no_type] {
        // In an ALLOW, the match never holds: nothing is allowed.
        let mut index = PolicyIndex::new();
        let allow = policy(
            "a",
            "p",
            Scope::Namespace,
            Action::Allow,
            vec![rule(vec![vec![m.clone()]])],
        );
        index.insert(&allow, false);
        assert!(!index.get("a/p").unwrap().warnings().is_empty());
        let w = workload("a", &[]);
        assert!(!index.decide(&w, &conn(None, 80)).allowed);
        // In a DENY, the field is dropped: the match holds for everything.
        let deny = policy(
            "a",
            "p",
            Scope::Namespace,
            Action::Deny,
            vec![rule(vec![vec![m]])],
        );
        index.insert(&deny, false);
        assert!(!index.decide(&w, &conn(None, 80)).allowed);
    }
}

#[test]
fn dry_run_reports_and_never_decides() {
    let mut index = PolicyIndex::new();
    index.insert(
        &policy(
            "a",
            "dry-deny",
            Scope::Namespace,
            Action::Deny,
            vec![Rule::default()],
        ),
        true,
    );
    let w = workload("a", &[]);
    let d = index.decide(&w, &conn(None, 80));
    assert!(d.allowed, "{d}");
    assert_eq!(d.dry_run_denials, ["a/dry-deny"]);

    let mut index = PolicyIndex::new();
    let only_port_9 = rule(vec![vec![Match {
        destination_ports: vec![9],
        ..Match::default()
    }]]);
    index.insert(
        &policy(
            "a",
            "dry-allow",
            Scope::Namespace,
            Action::Allow,
            vec![only_port_9],
        ),
        true,
    );
    let d = index.decide(&w, &conn(None, 80));
    assert!(d.allowed);
    assert_eq!(d.dry_run_denials, ["a/dry-allow"]);
    let d = index.decide(&w, &conn(None, 9));
    assert!(d.allowed && d.dry_run_denials.is_empty());
}

#[test]
fn messages_use_ztunnel_wording() {
    let mut index = PolicyIndex::new();
    index.insert(
        &policy(
            "istio-system",
            "istio_converted_static_strict",
            Scope::WorkloadSelector,
            Action::Deny,
            vec![rule(vec![vec![Match {
                not_principals: vec![StringMatch {
                    match_type: Some(MatchType::Presence(())),
                }],
                ..Match::default()
            }]])],
        ),
        false,
    );
    let w = workload("a", &["istio-system/istio_converted_static_strict"]);
    let d = index.decide(&w, &conn(None, 80));
    assert_eq!(
        d.to_string(),
        "explicitly denied by: istio-system/istio_converted_static_strict"
    );
    let trace = index.trace(&w, &conn(None, 80));
    assert_eq!(trace.policies.len(), 1);
    assert_eq!(trace.policies[0].matched_rule, Some(0));
}

#[test]
fn ipv4_mapped_addresses_meet_ipv4_cidrs() {
    let mut index = PolicyIndex::new();
    let deny_block = rule(vec![vec![Match {
        source_ips: vec![ambit_proto::security::Address {
            address: vec![192, 168, 5, 0],
            length: 24,
        }],
        ..Match::default()
    }]]);
    index.insert(
        &policy("a", "p", Scope::Namespace, Action::Deny, vec![deny_block]),
        false,
    );
    let w = workload("a", &[]);
    let mapped = Connection {
        src_ip: "::ffff:192.168.5.5".parse().unwrap(),
        ..conn(None, 80)
    };
    assert!(!index.decide(&w, &mapped).allowed);
}
