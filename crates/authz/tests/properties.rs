//! Properties of authorization, over random policies written as manifests (L4 fields, HTTP
//! fields, values that do not parse, dry-run annotations, PeerAuthentications) and random
//! connections, through the real translation into the engine:
//!
//! 1. Adding a DENY policy never turns a denial into an allow.
//! 2. With no ALLOW policy, adding one never allows what a DENY denies.
//! 3. Adding an ALLOW policy never allows a connection that a DENY policy denied (any set).

#![allow(clippy::unwrap_used)]

use ambit_authz::{Connection, PolicyIndex, Reason};
use ambit_identity::SpiffeId;
use ambit_model::{ClusterState, MeshConfig, MeshSnapshot, manifest, translate};
use proptest::prelude::*;

const PODS: [(&str, &str, &str); 4] = [
    ("foo", "httpbin", "10.0.1.1"),
    ("foo", "sleep", "10.0.1.2"),
    ("bar", "sleep", "10.0.2.1"),
    ("bar", "httpbin", "10.0.2.2"),
];

#[derive(Debug, Clone)]
struct Policy {
    namespace: &'static str,
    selector: Option<&'static str>,
    dry_run: bool,
    rules: Vec<String>,
}

fn value<T: Clone + std::fmt::Debug + 'static>(options: &[T]) -> impl Strategy<Value = T> + use<T> {
    prop::sample::select(options.to_vec())
}

fn list(options: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::collection::vec(value(options), 1..3).prop_map(|v| {
        let quoted: Vec<String> = v.iter().map(|s| format!("'{s}'")).collect();
        format!("[{}]", quoted.join(", "))
    })
}

const PRINCIPALS: &[&str] = &[
    "cluster.local/ns/foo/sa/sleep",
    "*/sa/sleep",
    "cluster.local/ns/bar/*",
    "*",
];
const NAMESPACES: &[&str] = &["foo", "bar", "*", "b*", "*o"];
const IPS: &[&str] = &[
    "10.0.1.0/24",
    "10.0.2.1",
    "192.168.0.0/16",
    "0.0.0.0/0",
    "bogus",
];
const PORTS: &[&str] = &["8000", "9000", "http"];
const HTTP: &[&str] = &["GET", "/admin"];

fn source() -> impl Strategy<Value = String> {
    prop_oneof![
        list(PRINCIPALS).prop_map(|v| format!("principals: {v}")),
        list(PRINCIPALS).prop_map(|v| format!("notPrincipals: {v}")),
        list(NAMESPACES).prop_map(|v| format!("namespaces: {v}")),
        list(NAMESPACES).prop_map(|v| format!("notNamespaces: {v}")),
        list(IPS).prop_map(|v| format!("ipBlocks: {v}")),
        list(IPS).prop_map(|v| format!("notIpBlocks: {v}")),
        list(PRINCIPALS).prop_map(|v| format!("requestPrincipals: {v}")),
    ]
}

fn operation() -> impl Strategy<Value = String> {
    prop_oneof![
        list(PORTS).prop_map(|v| format!("ports: {v}")),
        list(PORTS).prop_map(|v| format!("notPorts: {v}")),
        list(HTTP).prop_map(|v| format!("methods: {v}")),
        list(HTTP).prop_map(|v| format!("paths: {v}")),
    ]
}

fn condition() -> impl Strategy<Value = String> {
    let key = value(&[
        ("source.namespace", NAMESPACES),
        ("source.principal", PRINCIPALS),
        ("source.ip", IPS),
        ("destination.ip", IPS),
        ("destination.port", PORTS),
        ("request.headers[x-token]", HTTP),
    ]);
    (key, any::<bool>(), 1..3usize).prop_flat_map(|((key, values), negate, n)| {
        prop::collection::vec(value(values), n).prop_map(move |v| {
            let quoted: Vec<String> = v.iter().map(|s| format!("'{s}'")).collect();
            let field = if negate { "notValues" } else { "values" };
            format!("{{key: '{key}', {field}: [{}]}}", quoted.join(", "))
        })
    })
}

fn rule() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(source(), 0..3),
        prop::collection::vec(operation(), 0..2),
        prop::collection::vec(condition(), 0..2),
    )
        .prop_map(|(from, to, when)| {
            let mut parts = Vec::new();
            if !from.is_empty() {
                let sources: Vec<String> = from
                    .iter()
                    .map(|s| format!("{{source: {{{s}}}}}"))
                    .collect();
                parts.push(format!("from: [{}]", sources.join(", ")));
            }
            if !to.is_empty() {
                let ops: Vec<String> = to
                    .iter()
                    .map(|o| format!("{{operation: {{{o}}}}}"))
                    .collect();
                parts.push(format!("to: [{}]", ops.join(", ")));
            }
            if !when.is_empty() {
                parts.push(format!("when: [{}]", when.join(", ")));
            }
            format!("{{{}}}", parts.join(", "))
        })
}

fn policy() -> impl Strategy<Value = Policy> {
    (
        value(&["foo", "bar", "istio-system"]),
        value(&[None, Some("httpbin"), Some("sleep")]),
        prop::bool::weighted(0.15),
        prop::collection::vec(rule(), 0..3),
    )
        .prop_map(|(namespace, selector, dry_run, rules)| Policy {
            namespace,
            selector,
            dry_run,
            rules,
        })
}

fn peer_modes() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    prop::collection::vec(
        (
            value(&["istio-system", "foo"]),
            value(&["STRICT", "PERMISSIVE", "UNSET", "DISABLE"]),
        ),
        0..2,
    )
}

#[derive(Debug, Clone, Copy)]
struct Conn {
    /// Index into PODS, or `None` for plaintext from 192.168.5.5.
    from: Option<usize>,
    to: usize,
    port: u16,
}

fn conn() -> impl Strategy<Value = Conn> {
    (
        prop::option::of(0..PODS.len()),
        0..PODS.len(),
        value(&[8000u16, 9000, 5432]),
    )
        .prop_map(|(from, to, port)| Conn { from, to, port })
}

fn manifest_of(policies: &[Policy], action: &[&str], peers: &[(&str, &str)]) -> String {
    let mut yaml = String::new();
    for (ns, name, ip) in PODS {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}}}}}\nspec: {{serviceAccountName: {name}}}\nstatus: {{podIP: {ip}}}\n"
        ));
    }
    for (i, (p, action)) in policies.iter().zip(action).enumerate() {
        let annotations = if p.dry_run {
            ", annotations: {istio.io/dry-run: 'true'}"
        } else {
            ""
        };
        let selector = p
            .selector
            .map(|app| format!("selector: {{matchLabels: {{app: {app}}}}}, "))
            .unwrap_or_default();
        yaml.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}, namespace: {}{annotations}}}\nspec: {{{selector}action: {action}, rules: [{}]}}\n",
            p.namespace,
            p.rules.join(", ")
        ));
    }
    for (i, (ns, mode)) in peers.iter().enumerate() {
        yaml.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: pa{i}, namespace: {ns}}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
        ));
    }
    yaml
}

fn snapshot(yaml: &str) -> MeshSnapshot {
    let mut state = ClusterState::default();
    for doc in manifest::parse(yaml) {
        let objects = doc
            .result
            .unwrap_or_else(|e| panic!("generated manifest does not parse: {e}\n{yaml}"));
        for object in objects {
            state.apply(object).unwrap();
        }
    }
    translate(&state, &MeshConfig::istio_defaults())
}

/// `(allowed, denied by an explicit DENY)`.
fn decide(snapshot: &MeshSnapshot, c: Conn) -> (bool, bool) {
    let index = PolicyIndex::from_policies(
        snapshot.authorizations.values(),
        snapshot.dry_run_authorizations.values(),
    );
    let (dst_ns, dst_name, dst_ip) = PODS[c.to];
    let workload = snapshot.with_dry_run(
        snapshot
            .workloads
            .values()
            .find(|w| w.namespace == dst_ns && w.name == dst_name)
            .unwrap(),
    );
    let identity: Option<SpiffeId> = c.from.map(|i| {
        let (ns, sa, _) = PODS[i];
        format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
            .parse()
            .unwrap()
    });
    let src_ip = c.from.map_or("192.168.5.5", |i| PODS[i].2);
    let decision = index.decide(
        &workload,
        &Connection {
            src_ip: src_ip.parse().unwrap(),
            src_identity: identity.as_ref(),
            dst_ip: dst_ip.parse().unwrap(),
            dst_port: c.port,
        },
    );
    (
        decision.allowed,
        decision.reason == Reason::ExplicitlyDenied,
    )
}

fn actions() -> impl Strategy<Value = &'static str> {
    // DENY-heavy, so that explicit denials (what the properties are about) are common.
    value(&["ALLOW", "DENY", "DENY", "DENY", "CUSTOM", "AUDIT"])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn adding_a_deny_never_allows_a_denied_connection(
        base in prop::collection::vec((policy(), actions()), 0..4),
        peers in peer_modes(),
        extra in policy(),
        c in conn(),
    ) {
        let (policies, acts): (Vec<Policy>, Vec<&str>) = base.into_iter().unzip();
        let before = decide(&snapshot(&manifest_of(&policies, &acts, &peers)), c);
        let mut with = policies.clone();
        with.push(extra);
        let mut with_acts = acts.clone();
        with_acts.push("DENY");
        let after = decide(&snapshot(&manifest_of(&with, &with_acts, &peers)), c);
        prop_assert!(before.0 || !after.0, "a DENY policy turned a denial into an allow");
    }

    #[test]
    fn with_no_allow_adding_one_never_allows_what_a_deny_denies(
        base in prop::collection::vec(policy(), 1..4),
        peers in peer_modes(),
        extra in policy(),
        c in conn(),
    ) {
        let acts = vec!["DENY"; base.len()];
        let before = decide(&snapshot(&manifest_of(&base, &acts, &peers)), c);
        prop_assert!(before.0 || before.1, "with only DENY policies, a denial is an explicit DENY");
        let mut with = base.clone();
        with.push(extra);
        let mut with_acts = acts.clone();
        with_acts.push("ALLOW");
        let after = decide(&snapshot(&manifest_of(&with, &with_acts, &peers)), c);
        prop_assert!(before.0 || !after.0, "an ALLOW policy let through what a DENY denied");
    }

    #[test]
    fn adding_an_allow_never_overrides_an_explicit_deny(
        base in prop::collection::vec((policy(), actions()), 0..4),
        peers in peer_modes(),
        extra in policy(),
        c in conn(),
    ) {
        let (policies, acts): (Vec<Policy>, Vec<&str>) = base.into_iter().unzip();
        let before = decide(&snapshot(&manifest_of(&policies, &acts, &peers)), c);
        let mut with = policies.clone();
        with.push(extra);
        let mut with_acts = acts.clone();
        with_acts.push("ALLOW");
        let after = decide(&snapshot(&manifest_of(&with, &with_acts, &peers)), c);
        prop_assert!(!before.1 || (!after.0 && after.1), "an ALLOW policy overrode a DENY");
    }
}
