//! Translation of AuthorizationPolicy and PeerAuthentication into `istio.security.Authorization`,
//! checked against istiod's own golden files (`pilot/pkg/serviceregistry/kube/controller/
//! ambient/testdata/*.yaml` in istio/istio), transcribed into a compact text form.

#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::net::IpAddr;

use ambit_model::{ClusterState, MeshConfig, MeshSnapshot, manifest, translate};
use ambit_proto::security::string_match::MatchType;
use ambit_proto::security::{Authorization, Match, StringMatch};
use ambit_proto::workload::address;

fn mesh(yaml: &str) -> MeshSnapshot {
    ambit_testkit::corpus::save("manifest", "authz-translate", yaml.as_bytes());
    let mut state = ClusterState::default();
    for doc in manifest::parse(yaml) {
        for object in doc.result.unwrap() {
            state.apply(object).unwrap();
        }
    }
    translate(&state, &MeshConfig::istio_defaults())
}

/// One line per rule (istiod: group), clauses separated by ` & `, matches by ` | `.
fn render(a: &Authorization) -> String {
    let mut out = format!("{} scope={} action={}\n", a.name, a.scope, a.action);
    for rule in &a.rules {
        let clauses: Vec<String> = rule
            .clauses
            .iter()
            .map(|c| {
                c.matches
                    .iter()
                    .map(render_match)
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .collect();
        writeln!(out, "- {}", clauses.join(" & ")).unwrap();
    }
    out
}

fn render_match(m: &Match) -> String {
    let mut fields = Vec::new();
    let strings = |name: &str, v: &[StringMatch], fields: &mut Vec<String>| {
        if !v.is_empty() {
            let items: Vec<String> = v
                .iter()
                .map(|s| match s.match_type.as_ref().unwrap() {
                    MatchType::Exact(x) => format!("exact:{x}"),
                    MatchType::Prefix(x) => format!("prefix:{x}"),
                    MatchType::Suffix(x) => format!("suffix:{x}"),
                    MatchType::Presence(()) => "presence".to_owned(),
                })
                .collect();
            fields.push(format!("{name}=[{}]", items.join(",")));
        }
    };
    let ips = |name: &str, v: &[ambit_proto::security::Address], fields: &mut Vec<String>| {
        if !v.is_empty() {
            let items: Vec<String> = v
                .iter()
                .map(|a| {
                    let ip: IpAddr = match a.address.len() {
                        4 => <[u8; 4]>::try_from(a.address.as_slice()).unwrap().into(),
                        _ => <[u8; 16]>::try_from(a.address.as_slice()).unwrap().into(),
                    };
                    format!("{ip}/{}", a.length)
                })
                .collect();
            fields.push(format!("{name}=[{}]", items.join(",")));
        }
    };
    let ports = |name: &str, v: &[u32], fields: &mut Vec<String>| {
        if !v.is_empty() {
            let items: Vec<String> = v.iter().map(u32::to_string).collect();
            fields.push(format!("{name}=[{}]", items.join(",")));
        }
    };
    let sas =
        |name: &str, v: &[ambit_proto::security::ServiceAccountMatch], fields: &mut Vec<String>| {
            if !v.is_empty() {
                let items: Vec<String> = v
                    .iter()
                    .map(|s| format!("{}/{}", s.namespace, s.service_account))
                    .collect();
                fields.push(format!("{name}=[{}]", items.join(",")));
            }
        };
    strings("namespaces", &m.namespaces, &mut fields);
    strings("notNamespaces", &m.not_namespaces, &mut fields);
    sas("serviceAccounts", &m.service_accounts, &mut fields);
    sas("notServiceAccounts", &m.not_service_accounts, &mut fields);
    strings("principals", &m.principals, &mut fields);
    strings("notPrincipals", &m.not_principals, &mut fields);
    ips("sourceIps", &m.source_ips, &mut fields);
    ips("notSourceIps", &m.not_source_ips, &mut fields);
    ips("destinationIps", &m.destination_ips, &mut fields);
    ips("notDestinationIps", &m.not_destination_ips, &mut fields);
    ports("destinationPorts", &m.destination_ports, &mut fields);
    ports("notDestinationPorts", &m.not_destination_ports, &mut fields);
    fields.join(" ")
}

/// istiod's `allow-full-in.yaml` → `allow-full.yaml`: every L4 field, and every L7 field and
/// condition (those rules are left out of an ALLOW policy).
#[test]
fn allow_full_matches_istiod_golden() {
    let yaml = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: cfg}
spec:
  action: ALLOW
  rules:
  - from: [{source: {principals: ["principal", "principal-prefix-*", "*-suffix-principal", "*"], notPrincipals: ["not-principal", "not-principal-prefix-*", "*-suffix-not-principal", "*"]}}]
  - from: [{source: {serviceAccounts: ["ns/sa", "sa-only"], notServiceAccounts: ["ns/sa-not", "sa-not-only"]}}]
  - from: [{source: {requestPrincipals: ["requestPrincipals", "*"], notRequestPrincipals: ["not-requestPrincipals", "*"]}}]
  - from: [{source: {namespaces: ["ns", "ns-prefix-*", "*-ns-suffix", "*"], notNamespaces: ["not-ns", "not-ns-prefix-*", "*-not-ns-suffix", "*"]}}]
  - from: [{source: {ipBlocks: ["1.2.3.4", "5.6.0.0/16"], notIpBlocks: ["2.2.3.4", "6.6.0.0/16"]}}]
  - from: [{source: {remoteIpBlocks: ["1.2.3.4", "5.6.0.0/16"], notRemoteIpBlocks: ["2.2.3.4", "6.6.0.0/16"]}}]
  - to: [{operation: {methods: ["method", "*"], notMethods: ["not-method", "*"]}}]
  - to: [{operation: {hosts: ["exact.com", "*"], notHosts: ["not-exact.com", "*"]}}]
  - to: [{operation: {ports: ["80", "90"], notPorts: ["800", "900"]}}]
  - to: [{operation: {paths: ["/exact", "*"], notPaths: ["/not-exact", "*"]}}]
  - when: [{key: "request.headers[X-header]", values: ["header"], notValues: ["not-header"]}]
  - when: [{key: "source.ip", values: ["10.10.10.10", "192.168.10.0/24"], notValues: ["90.10.10.10", "90.168.10.0/24"]}]
  - when: [{key: "remote.ip", values: ["10.10.10.10"], notValues: ["90.10.10.10"]}]
  - when: [{key: "source.namespace", values: ["ns", "ns-prefix-*", "*-ns-suffix", "*"], notValues: ["not-ns", "not-ns-prefix-*", "*-not-ns-suffix", "*"]}]
  - when: [{key: "source.principal", values: ["principal", "principal-prefix-*", "*-suffix-principal", "*"], notValues: ["not-principal", "not-principal-prefix-*", "*-not-suffix-principal", "*"]}]
  - when: [{key: "request.auth.principal", values: ["requestPrincipals"]}]
  - when: [{key: "request.auth.claims[iss]", values: ["iss"]}]
  - when: [{key: "destination.ip", values: ["10.10.10.10", "192.168.10.0/24"], notValues: ["90.10.10.10", "90.168.10.0/24"]}]
  - when: [{key: "destination.port", values: ["91", "92"], notValues: ["9001", "9002"]}]
  - when: [{key: "connection.sni", values: ["exact.com"]}]
"#;
    let snapshot = mesh(yaml);
    let got = render(&snapshot.authorizations["cfg/allow"]);
    // Transcribed from istiod's allow-full.yaml. One difference: istiod's golden file lists
    // only the qualified service accounts, while its code (stringToServiceAccountMatch, same
    // commit) maps a bare name to the policy's namespace; Ambit follows the code.
    let expected = "\
allow scope=1 action=0
- principals=[exact:principal,prefix:principal-prefix-,suffix:-suffix-principal,presence] notPrincipals=[exact:not-principal,prefix:not-principal-prefix-,suffix:-suffix-not-principal,presence]
- serviceAccounts=[ns/sa,cfg/sa-only] notServiceAccounts=[ns/sa-not,cfg/sa-not-only]
- namespaces=[exact:ns,prefix:ns-prefix-,suffix:-ns-suffix,presence] notNamespaces=[exact:not-ns,prefix:not-ns-prefix-,suffix:-not-ns-suffix,presence]
- sourceIps=[1.2.3.4/32,5.6.0.0/16] notSourceIps=[2.2.3.4/32,6.6.0.0/16]
- destinationPorts=[80,90] notDestinationPorts=[800,900]
- sourceIps=[10.10.10.10/32,192.168.10.0/24] notSourceIps=[90.10.10.10/32,90.168.10.0/24]
- namespaces=[exact:ns,prefix:ns-prefix-,suffix:-ns-suffix,presence] notNamespaces=[exact:not-ns,prefix:not-ns-prefix-,suffix:-not-ns-suffix,presence]
- principals=[exact:principal,prefix:principal-prefix-,suffix:-suffix-principal,presence] notPrincipals=[exact:not-principal,prefix:not-principal-prefix-,suffix:-not-suffix-principal,presence]
- destinationIps=[10.10.10.10/32,192.168.10.0/24] notDestinationIps=[90.10.10.10/32,90.168.10.0/24]
- destinationPorts=[91,92] notDestinationPorts=[9001,9002]
";
    assert_eq!(got, expected);
    let issues: Vec<&str> = snapshot
        .policy_issues
        .iter()
        .map(|i| i.message.as_str())
        .collect();
    assert_eq!(issues.len(), 10, "one per left-out rule: {issues:#?}");
}

#[test]
fn clause_order_and_scopes() {
    let yaml = "
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh, namespace: istio-system}
spec: {action: DENY, rules: [{from: [{source: {namespaces: [a]}}, {source: {ipBlocks: [10.0.0.0/8]}}], to: [{operation: {ports: ['80']}}], when: [{key: source.principal, values: ['*']}]}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ns, namespace: a}
spec: {selector: {}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sel, namespace: a}
spec: {selector: {matchLabels: {app: x}}, action: DENY, rules: [{to: [{operation: {methods: [GET]}}], from: [{source: {namespaces: [b]}}]}]}
";
    let snapshot = mesh(yaml);
    assert_eq!(
        render(&snapshot.authorizations["istio-system/mesh"]),
        "mesh scope=0 action=1\n- destinationPorts=[80] & namespaces=[exact:a] | sourceIps=[10.0.0.0/8] & principals=[presence]\n"
    );
    assert_eq!(
        render(&snapshot.authorizations["a/ns"]),
        "ns scope=1 action=0\n"
    );
    // The HTTP-only `to` is left out of the DENY rule as a whole clause, not as an empty match
    // (which ztunnel would never match).
    assert_eq!(
        render(&snapshot.authorizations["a/sel"]),
        "sel scope=2 action=1\n- namespaces=[exact:b]\n"
    );
}

/// istiod's `peer-authn-strict-and-permissive-port-mtls.yaml` and
/// `peer-authn-permissive-root-permissive-namespace-strict-workload-ports.yaml`.
#[test]
fn peer_authentication_matches_istiod_goldens() {
    let strict_with_permissive_port = mesh(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict-and-permissive-mtls, namespace: foo}
spec: {selector: {matchLabels: {app: a}}, mtls: {mode: STRICT}, portLevelMtls: {9090: {mode: PERMISSIVE}}}
",
    );
    assert_eq!(
        render(
            &strict_with_permissive_port.authorizations["foo/converted_peer_authentication_strict-and-permissive-mtls"]
        ),
        "converted_peer_authentication_strict-and-permissive-mtls scope=2 action=1\n- notPrincipals=[presence] & notDestinationPorts=[9090]\n"
    );
    assert_eq!(
        render(
            &strict_with_permissive_port.authorizations["istio-system/istio_converted_static_strict"]
        ),
        "istio_converted_static_strict scope=2 action=1\n- notPrincipals=[presence]\n"
    );

    let permissive_with_strict_ports = mesh(
        "
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default-mesh, namespace: istio-system}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default-foo, namespace: foo}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: workload, namespace: foo}
spec: {selector: {matchLabels: {app: a}}, portLevelMtls: {9090: {mode: STRICT}, 8080: {mode: STRICT}}}
",
    );
    assert_eq!(
        render(
            &permissive_with_strict_ports.authorizations["foo/converted_peer_authentication_workload"]
        ),
        // (istiod's golden lists the fields as destinationPorts, notPrincipals; same match)
        "converted_peer_authentication_workload scope=2 action=1\n- notPrincipals=[presence] destinationPorts=[8080]\n- notPrincipals=[presence] destinationPorts=[9090]\n"
    );
    assert_eq!(permissive_with_strict_ports.authorizations.len(), 2);
}

const PODS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: foo, labels: {app: a}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: foo, labels: {app: b}}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: r, namespace: istio-system, labels: {app: a}}
status: {podIP: 10.0.0.3}
";

fn listed(snapshot: &MeshSnapshot, ns: &str, name: &str) -> Vec<String> {
    snapshot
        .workloads
        .values()
        .find(|w| w.namespace == ns && w.name == name)
        .unwrap()
        .authorization_policies
        .clone()
}

#[test]
fn workloads_list_selecting_policies_then_peer_authentications() {
    let yaml = format!(
        "{PODS}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: z-sel, namespace: foo}}
spec: {{selector: {{matchLabels: {{app: a}}}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: root-sel, namespace: istio-system}}
spec: {{selector: {{matchLabels: {{app: a}}}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ns-wide, namespace: foo}}
spec: {{}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: default, namespace: istio-system}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: b, namespace: foo}}
spec: {{selector: {{matchLabels: {{app: b}}}}, portLevelMtls: {{8080: {{mode: PERMISSIVE}}}}}}
"
    );
    let snapshot = mesh(&yaml);
    assert_eq!(
        listed(&snapshot, "foo", "a"),
        [
            "foo/z-sel",
            "istio-system/root-sel",
            "istio-system/istio_converted_static_strict"
        ]
    );
    assert_eq!(
        listed(&snapshot, "foo", "b"),
        ["foo/converted_peer_authentication_b"]
    );
    assert_eq!(
        listed(&snapshot, "istio-system", "r"),
        [
            "istio-system/root-sel",
            "istio-system/istio_converted_static_strict"
        ]
    );
    // The mesh is STRICT, so the converted policy merges it in after the port exception.
    assert_eq!(
        render(&snapshot.authorizations["foo/converted_peer_authentication_b"]),
        "converted_peer_authentication_b scope=2 action=1\n- notDestinationPorts=[8080] & notPrincipals=[presence]\n"
    );
}

#[test]
fn dry_run_policies_are_kept_but_not_served() {
    let yaml = format!(
        "{PODS}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: trial, namespace: foo, annotations: {{istio.io/dry-run: 'true'}}}}
spec: {{selector: {{matchLabels: {{app: a}}}}, action: DENY, rules: [{{}}]}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: typo, namespace: foo, annotations: {{istio.io/dry-run: 'yes'}}}}
spec: {{action: DENY}}
"
    );
    let snapshot = mesh(&yaml);
    assert!(snapshot.dry_run_authorizations.contains_key("foo/trial"));
    let served: Vec<&String> = snapshot.authorizations.keys().collect();
    assert_eq!(
        served,
        ["foo/typo"],
        "a non-boolean annotation leaves the policy enforced"
    );
    assert!(
        listed(&snapshot, "foo", "a").is_empty(),
        "workloads never list dry-run policies"
    );
    for (_, addr) in snapshot.addresses() {
        if let Some(address::Type::Workload(w)) = addr.r#type {
            assert!(w.authorization_policies.is_empty());
        }
    }
    let a = snapshot.workloads.values().find(|w| w.name == "a").unwrap();
    assert_eq!(
        snapshot.with_dry_run(a).authorization_policies,
        ["foo/trial"]
    );
    assert!(
        snapshot
            .policy_issues
            .iter()
            .any(|i| i.name == "typo" && i.message.contains("not a boolean"))
    );
}
