//! The flattened [`Program`] must mean what the nested rules mean: random wire policies (empty
//! rules, clauses and matches, negated fields, unreadable entries) against random connections,
//! the program's walk against a direct evaluation of the rules as read.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use ambit_identity::SpiffeId;
use ambit_proto::security::string_match::MatchType;
use ambit_proto::security::{Address, Clause, Match, Rule as WireRule, StringMatch};
use proptest::prelude::*;

use super::*;
use crate::Connection;

/// The semantics of the module docs, written as directly as possible.
fn reference(rules: &[Rule], peer: &Peer<'_>) -> Option<usize> {
    rules.iter().position(|clauses| {
        clauses.iter().all(|matches| {
            matches.is_empty()
                || matches.iter().any(|m| {
                    !m.never
                        && m.fields
                            .iter()
                            .all(|f| f.tests.iter().any(|t| t.holds(peer)) != f.negated)
                })
        })
    })
}

fn string_match() -> impl Strategy<Value = StringMatch> {
    let value = prop::sample::select(vec!["", "a", "cluster.local/ns/a/sa/x", "cluster.local"]);
    prop_oneof![
        value.clone().prop_map(|s| Some(MatchType::Exact(s.into()))),
        value
            .clone()
            .prop_map(|s| Some(MatchType::Prefix(s.into()))),
        prop::sample::select(vec!["a", "/sa/x", "b"])
            .prop_map(|s| Some(MatchType::Suffix(s.into()))),
        Just(Some(MatchType::Presence(()))),
        Just(None),
    ]
    .prop_map(|match_type| StringMatch { match_type })
}

fn address() -> impl Strategy<Value = Address> {
    prop_oneof![
        (0u32..=33).prop_map(|length| Address {
            address: vec![10, 0, 0, 0],
            length
        }),
        (0u32..=129).prop_map(|length| Address {
            address: "fd00::"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec(),
            length,
        }),
        Just(Address {
            address: vec![1, 2, 3],
            length: 8
        }),
    ]
}

fn list<S: Strategy>(s: S) -> impl Strategy<Value = Vec<S::Value>> {
    prop::collection::vec(s, 0..3)
}

fn wire_match() -> impl Strategy<Value = Match> {
    (
        (
            list(prop::sample::select(vec![80u32, 443, 70_000])),
            list(prop::sample::select(vec![80u32, 443])),
        ),
        (
            list(address()),
            list(address()),
            list(address()),
            list(address()),
        ),
        (
            list(string_match()),
            list(string_match()),
            list(string_match()),
            list(string_match()),
        ),
        prop::bool::ANY,
    )
        .prop_map(
            |((ports, not_ports), (dst, not_dst, src, not_src), (ns, not_ns, p, not_p), sa)| {
                let sas = if sa {
                    vec![ambit_proto::security::ServiceAccountMatch {
                        namespace: "a".into(),
                        service_account: "x".into(),
                    }]
                } else {
                    vec![]
                };
                Match {
                    destination_ports: ports,
                    not_destination_ports: not_ports,
                    destination_ips: dst,
                    not_destination_ips: not_dst,
                    source_ips: src,
                    not_source_ips: not_src,
                    namespaces: ns,
                    not_namespaces: not_ns,
                    principals: p,
                    not_principals: not_p,
                    service_accounts: sas,
                    ..Match::default()
                }
            },
        )
}

fn wire_rules() -> impl Strategy<Value = Vec<WireRule>> {
    let clause = prop::collection::vec(wire_match(), 0..3).prop_map(|matches| Clause { matches });
    let rule = prop::collection::vec(clause, 0..3).prop_map(|clauses| WireRule { clauses });
    prop::collection::vec(rule, 0..3)
}

fn connection() -> impl Strategy<Value = (IpAddr, Option<SpiffeId>, IpAddr, u16)> {
    let ip = prop::sample::select(vec![
        "10.0.0.1",
        "10.1.0.1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "fe80::1",
    ])
    .prop_map(|s| s.parse::<IpAddr>().unwrap());
    let id = prop::option::of(
        prop::sample::select(vec![
            "spiffe://cluster.local/ns/a/sa/x",
            "spiffe://td/ns/b/sa/y",
        ])
        .prop_map(|s| s.parse::<SpiffeId>().unwrap()),
    );
    (
        ip.clone(),
        id,
        ip,
        prop::sample::select(vec![80u16, 443, 8080]),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn program_means_what_the_rules_mean(
        rules in wire_rules(),
        allow in prop::bool::ANY,
        (src_ip, identity, dst_ip, dst_port) in connection(),
    ) {
        let authorization = Authorization { rules, ..Authorization::default() };
        let action = if allow { PolicyAction::Allow } else { PolicyAction::Deny };
        let conn = Connection { src_ip, src_identity: identity.as_ref(), dst_ip, dst_port };
        let peer = Peer::new(&conn);
        let read = read_rules(&authorization, action, &mut Vec::new());
        let expected = reference(&read, &peer);
        let program = lower(read).unwrap();
        prop_assert_eq!(program.first_match(&peer), expected);
    }
}

#[test]
fn every_field_becomes_one_test() {
    let authorization = Authorization {
        rules: vec![WireRule {
            clauses: vec![Clause {
                matches: vec![Match {
                    destination_ports: vec![80, 443],
                    not_source_ips: vec![Address {
                        address: vec![10, 0, 0, 0],
                        length: 8,
                    }],
                    ..Match::default()
                }],
            }],
        }],
        ..Authorization::default()
    };
    let read = read_rules(&authorization, PolicyAction::Allow, &mut Vec::new());
    assert_eq!(lower(read).unwrap().len(), 2);
}
