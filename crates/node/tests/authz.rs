//! Authorization enforced by the destination node proxy over real HBONE: AuthorizationPolicies
//! in the manifests → the control plane's translation → `istio.security.Authorization` over WDS
//! → the node proxy's decision before any byte reaches the application. Each destination pod
//! carries one policy case (cases drawn from the unit table in crates/model/tests/authz_table.rs).

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use ambit_testkit::{LoopbackAddrs, eventually};
use common::{Mesh, Pod, echo, echo_roundtrip, metric, socks_connect, wait_hbone};

/// Destination pods (namespace `server`, node-b) and the policy selecting each.
const CASES: &[(&str, &str)] = &[
    ("open", ""),
    (
        "allow-scraper",
        "action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/client/sa/scraper]}}]}]",
    ),
    (
        "deny-other-ns",
        "action: DENY\n  rules: [{from: [{source: {namespaces: [other]}}]}]",
    ),
    (
        "allow-wrong-port",
        "action: ALLOW\n  rules: [{to: [{operation: {ports: ['9999']}}]}]",
    ),
    (
        "allow-l7-only",
        "action: ALLOW\n  rules: [{to: [{operation: {methods: [GET]}}]}]",
    ),
    (
        "deny-l7-and-ns",
        "action: DENY\n  rules: [{from: [{source: {namespaces: [client]}}], to: [{operation: {methods: [GET]}}]}]",
    ),
    (
        "allow-when-ns",
        "action: ALLOW\n  rules: [{when: [{key: source.namespace, values: [client]}]}]",
    ),
    ("allow-nothing", ""),
    (
        "allow-not-other",
        "action: ALLOW\n  rules: [{from: [{source: {notPrincipals: ['*/sa/other']}}]}]",
    ),
    (
        "allow-prefix",
        "action: ALLOW\n  rules: [{from: [{source: {principals: ['cluster.local/ns/cli*']}}]}]",
    ),
];

struct Setup {
    mesh: Mesh,
    scraper: Ipv4Addr,
    other: Ipv4Addr,
    dests: Vec<(&'static str, Ipv4Addr)>,
}

async fn setup() -> Setup {
    let addrs = LoopbackAddrs::new();
    let (scraper, other) = (addrs.next_addr(), addrs.next_addr());
    let dests: Vec<_> = CASES
        .iter()
        .map(|(name, _)| (*name, addrs.next_addr()))
        .collect();
    let mut manifests = [
        common::namespace("client", true),
        common::namespace("other", true),
        common::namespace("server", true),
        common::namespace("istio-system", false),
    ]
    .concat();
    for (name, namespace, ip) in [("scraper", "client", scraper), ("other", "other", other)] {
        manifests.push_str(&common::pod(&Pod {
            name,
            namespace,
            service_account: name,
            node: "node-a",
            ip,
        }));
    }
    for (name, ip) in &dests {
        manifests.push_str(&common::pod(&Pod {
            name,
            namespace: "server",
            service_account: name,
            node: "node-b",
            ip: *ip,
        }));
    }
    for (name, spec) in CASES {
        let body = match *name {
            "open" => continue,
            "allow-nothing" => "{}".to_owned(),
            _ => format!("\n  selector: {{matchLabels: {{app: {name}}}}}\n  {spec}"),
        };
        let selector = if *name == "allow-nothing" {
            format!("{{selector: {{matchLabels: {{app: {name}}}}}}}")
        } else {
            body
        };
        manifests.push_str(&format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: server}}\nspec: {selector}\n"
        ));
    }
    // A mesh-wide policy from the root namespace, selecting one destination by label.
    manifests.push_str(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: root-deny, namespace: istio-system}\n\
         spec:\n  selector: {matchLabels: {app: open}}\n  action: DENY\n  rules: [{from: [{source: {namespaces: [other]}}]}]\n",
    );
    let mesh = Mesh::start(addrs, &manifests, &["node-a", "node-b"]).await;
    Setup {
        mesh,
        scraper,
        other,
        dests,
    }
}

/// Whether `from` may reach `to`:8080 through node-a's SOCKS5 and HBONE to node-b.
async fn reaches(socks: SocketAddr, from: Ipv4Addr, to: Ipv4Addr) -> bool {
    match socks_connect(socks, from.into(), (to, 8080).into()).await {
        Ok(stream) => echo_roundtrip(stream, b"policy?").await == b"policy?",
        Err(_code) => false,
    }
}

#[tokio::test]
async fn policies_are_enforced_at_the_destination_over_hbone() {
    let s = setup().await;
    let a = s.mesh.node(s.mesh.node_config("node-a")).await;
    let b = s.mesh.node(s.mesh.node_config("node-b")).await;
    let mut echoes = Vec::new();
    for (_, ip) in &s.dests {
        wait_hbone(&b, *ip, 15008).await;
        echoes.push(echo((*ip, 8080).into()).await);
    }
    // Policies arrive with the workloads; wait until node-b holds all of them.
    eventually!(observe = b.state().policies().len(), |n| n >= CASES.len());
    let socks = a.addrs().socks5.unwrap();
    let ip = |name: &str| s.dests.iter().find(|(n, _)| *n == name).unwrap().1;

    // (destination, source, allowed?) — the Istio semantics each line checks.
    let expectations = [
        ("open", s.scraper, true),              // no policy selects it: allow
        ("open", s.other, false), // mesh-wide DENY from the root namespace, by selector
        ("allow-scraper", s.scraper, true), // ALLOW by principal
        ("allow-scraper", s.other, false), // an ALLOW exists and does not match: deny
        ("deny-other-ns", s.other, false), // DENY by source namespace
        ("deny-other-ns", s.scraper, true), // DENY not matching: allow
        ("allow-wrong-port", s.scraper, false), // ports compare with the destination port
        ("allow-l7-only", s.scraper, false), // L7-only rule in ALLOW matches nothing
        ("deny-l7-and-ns", s.scraper, false), // L7 part of a DENY dropped, the rest denies
        ("deny-l7-and-ns", s.other, true),
        ("allow-when-ns", s.scraper, true), // when: source.namespace
        ("allow-when-ns", s.other, false),
        ("allow-nothing", s.scraper, false), // an ALLOW policy with no rules denies everything
        ("allow-not-other", s.scraper, true), // notPrincipals with a suffix match
        ("allow-not-other", s.other, false),
        ("allow-prefix", s.scraper, true), // prefix match on the principal
        ("allow-prefix", s.other, false),
    ];
    let mut wrong = Vec::new();
    for (dest, from, allowed) in expectations {
        let got = reaches(socks, from, ip(dest)).await;
        if got != allowed {
            wrong.push(format!(
                "{from} → {dest}: expected {}, got {}",
                verdict(allowed),
                verdict(got)
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "policy decisions differ:\n{}",
        wrong.join("\n")
    );

    // Denials are counted at the destination with Istio's DENY response flag.
    let denied = metric(
        &b.telemetry().metrics().render(),
        "istio_tcp_connections_closed_total",
        &[("response_flags", "DENY")],
    );
    let expected_denials = expectations
        .iter()
        .filter(|(_, _, allowed)| !allowed)
        .count() as u64;
    assert_eq!(denied, expected_denials, "every denial is counted once");
    drop(echoes);
}

fn verdict(allowed: bool) -> &'static str {
    if allowed { "allow" } else { "deny" }
}
