use proptest::prelude::*;

use super::*;

#[test]
fn valid_ids_parse_and_round_trip() {
    let cases = [
        (
            "spiffe://cluster.local/ns/default/sa/default",
            "cluster.local",
            "default",
            "default",
        ),
        (
            "spiffe://example.org/ns/bookinfo/sa/bookinfo-ratings",
            "example.org",
            "bookinfo",
            "bookinfo-ratings",
        ),
        (
            "spiffe://td_1-x.example/ns/a/sa/B.c_d-E",
            "td_1-x.example",
            "a",
            "B.c_d-E",
        ),
        ("spiffe://x/ns/n/sa/s", "x", "n", "s"),
    ];
    for (input, td, ns, sa) in cases {
        let id: SpiffeId = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
        assert_eq!(id.trust_domain().as_str(), td, "{input}");
        assert_eq!(id.namespace(), ns, "{input}");
        assert_eq!(id.service_account(), sa, "{input}");
        assert_eq!(id.to_string(), input);
        let built = SpiffeId::new(TrustDomain::new(td).unwrap(), ns, sa).unwrap();
        assert_eq!(built, id);
    }
}

#[test]
fn malformed_ids_name_the_problem() {
    use SpiffeIdError as E;
    let long_td = format!("spiffe://{}/ns/a/sa/b", "a".repeat(256));
    let long_id = format!("spiffe://td/ns/a/sa/{}", "b".repeat(2040));
    #[allow(clippy::type_complexity)]
    let cases: &[(&str, fn(&SpiffeIdError) -> bool)] = &[
        ("", |e| matches!(e, E::Empty)),
        ("cluster.local/ns/a/sa/b", |e| matches!(e, E::MissingScheme)),
        ("spiffe:/cluster.local/ns/a/sa/b", |e| {
            matches!(e, E::MissingScheme)
        }),
        (
            "https://cluster.local/ns/a/sa/b",
            |e| matches!(e, E::WrongScheme { scheme } if scheme == "https"),
        ),
        ("SPIFFE://cluster.local/ns/a/sa/b", |e| {
            matches!(e, E::WrongScheme { .. })
        }),
        ("spiffe:///ns/a/sa/b", |e| matches!(e, E::EmptyTrustDomain)),
        ("spiffe://Cluster.local/ns/a/sa/b", |e| {
            matches!(e, E::TrustDomainUppercase { .. })
        }),
        ("spiffe://cluster.local:8080/ns/a/sa/b", |e| {
            matches!(e, E::TrustDomainPort { .. })
        }),
        ("spiffe://user@cluster.local/ns/a/sa/b", |e| {
            matches!(e, E::TrustDomainUserinfo { .. })
        }),
        ("spiffe://clu*ster/ns/a/sa/b", |e| {
            matches!(e, E::TrustDomainChar { ch: '*', .. })
        }),
        ("spiffe://cluster.local", |e| {
            matches!(e, E::MissingNamespace)
        }),
        ("spiffe://cluster.local/ns", |e| {
            matches!(e, E::MissingNamespace)
        }),
        ("spiffe://cluster.local/ns/a", |e| {
            matches!(e, E::MissingServiceAccount)
        }),
        ("spiffe://cluster.local/ns/a/sa", |e| {
            matches!(e, E::MissingServiceAccount)
        }),
        ("spiffe://cluster.local/namespace/a/sa/b", |e| {
            matches!(
                e,
                E::WrongKeyword {
                    position: 0,
                    expected: "ns",
                    ..
                }
            )
        }),
        ("spiffe://cluster.local/ns/a/serviceaccount/b", |e| {
            matches!(
                e,
                E::WrongKeyword {
                    position: 2,
                    expected: "sa",
                    ..
                }
            )
        }),
        ("spiffe://cluster.local/ns/a/sa/b/extra", |e| {
            matches!(e, E::ExtraSegments { count: 5 })
        }),
        ("spiffe://cluster.local/ns//sa/b", |e| {
            matches!(e, E::EmptySegment)
        }),
        ("spiffe://cluster.local//ns/a/sa/b", |e| {
            matches!(e, E::EmptySegment)
        }),
        ("spiffe://cluster.local/ns/a/sa/b?x=1", |e| {
            matches!(e, E::QueryOrFragment)
        }),
        ("spiffe://cluster.local/ns/a/sa/b#frag", |e| {
            matches!(e, E::QueryOrFragment)
        }),
        ("spiffe://cluster.local/ns/a%2Fb/sa/b", |e| {
            matches!(e, E::PercentEncoded)
        }),
        ("spiffe://cluster.local/ns/../sa/b", |e| {
            matches!(e, E::DotSegment)
        }),
        ("spiffe://cluster.local/ns/./sa/b", |e| {
            matches!(e, E::DotSegment)
        }),
        ("spiffe://cluster.local/ns/a/sa/b/", |e| {
            matches!(e, E::TrailingSlash)
        }),
        ("spiffe://cluster.local/", |e| matches!(e, E::TrailingSlash)),
        ("spiffe://cluster.local/ns/a b/sa/b", |e| {
            matches!(e, E::PathChar { ch: ' ', .. })
        }),
        ("spiffe://cluster.local/ns/a/sa/é", |e| {
            matches!(e, E::PathChar { ch: 'é', .. })
        }),
        (&long_td, |e| {
            matches!(e, E::TrustDomainTooLong { len: 256 })
        }),
        (&long_id, |e| matches!(e, E::TooLong { .. })),
    ];
    for (input, is_expected) in cases {
        match input.parse::<SpiffeId>() {
            Ok(id) => panic!("{input:?} parsed as {id}"),
            Err(err) => assert!(is_expected(&err), "{input:?} gave the wrong error: {err:?}"),
        }
    }
}

#[test]
fn trust_domain_rules() {
    assert!(TrustDomain::new("cluster.local").is_ok());
    assert!(TrustDomain::new("a".repeat(255)).is_ok());
    assert!(matches!(
        TrustDomain::new("a".repeat(256)),
        Err(SpiffeIdError::TrustDomainTooLong { len: 256 })
    ));
    assert!(matches!(
        TrustDomain::new(""),
        Err(SpiffeIdError::EmptyTrustDomain)
    ));
    let err = TrustDomain::new("Bad_Domain").unwrap_err();
    assert!(
        err.to_string().contains("Bad_Domain"),
        "the input is named: {err}"
    );
}

#[test]
fn new_rejects_bad_segments() {
    let td = TrustDomain::new("cluster.local").unwrap();
    assert!(matches!(
        SpiffeId::new(td.clone(), "", "sa"),
        Err(SpiffeIdError::EmptySegment)
    ));
    assert!(matches!(
        SpiffeId::new(td.clone(), "..", "sa"),
        Err(SpiffeIdError::DotSegment)
    ));
    assert!(matches!(
        SpiffeId::new(td.clone(), "ns", "a/b"),
        Err(SpiffeIdError::PathChar { ch: '/', .. })
    ));
    assert!(matches!(
        SpiffeId::new(td, "ns", "b".repeat(2040)),
        Err(SpiffeIdError::TooLong { .. })
    ));
}

fn segment() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,40}".prop_filter("dot segments are invalid", |s| s != "." && s != "..")
}

proptest! {
    #[test]
    fn display_parse_round_trip(
        td in "[a-z0-9._-]{1,60}",
        ns in segment(),
        sa in segment(),
    ) {
        let id = SpiffeId::new(TrustDomain::new(td).unwrap(), ns, sa).unwrap();
        let parsed: SpiffeId = id.to_string().parse().unwrap();
        prop_assert_eq!(&parsed, &id);
        prop_assert_eq!(parsed.namespace(), id.namespace());
        prop_assert_eq!(parsed.service_account(), id.service_account());
    }

    #[test]
    fn parse_never_panics_and_accepts_only_canonical_strings(s in any::<String>()) {
        if let Ok(id) = s.parse::<SpiffeId>() {
            prop_assert_eq!(id.to_string(), s);
        }
    }

    #[test]
    fn parse_never_panics_on_near_misses(s in "(spiffe|SPIFFE|https)?:?/{0,3}[a-zA-Z0-9.:@%/?#_ -]{0,80}") {
        if let Ok(id) = s.parse::<SpiffeId>() {
            prop_assert_eq!(id.to_string(), s);
        }
    }
}
