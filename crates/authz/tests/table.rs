//! The authorization table: policies as users write them (YAML manifests), through the real
//! translation, into the engine the node proxy runs, one connection each → allow or deny.
//!
//! Every case names the Istio documentation concept it checks (the AuthorizationPolicy and
//! PeerAuthentication reference pages and the "Authorization" / "Mutual TLS migration" tasks).
//! The mesh: namespaces `foo` and `bar` (ambient) and the root `istio-system`; pods
//! `foo/httpbin` (10.0.1.1), `foo/sleep` (10.0.1.2), `foo/db` (10.0.1.3), `bar/sleep`
//! (10.0.2.1), `bar/httpbin` (10.0.2.2); and a client outside the mesh at 192.168.5.5 that
//! speaks plaintext (no identity, as on 15006).

#![allow(clippy::unwrap_used)]

use ambit_authz::{Connection, PolicyIndex};
use ambit_identity::SpiffeId;
use ambit_model::{ClusterState, MeshConfig, MeshSnapshot, manifest, translate};

const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: istio-system}
---
apiVersion: v1
kind: Namespace
metadata: {name: foo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: bar, labels: {istio.io/dataplane-mode: ambient}}
";

const PODS: [(&str, &str, &str, &str); 5] = [
    // namespace, name (also app label and service account), IP, extra labels
    ("foo", "httpbin", "10.0.1.1", ", version: v1"),
    ("foo", "sleep", "10.0.1.2", ""),
    ("foo", "db", "10.0.1.3", ""),
    ("bar", "sleep", "10.0.2.1", ""),
    ("bar", "httpbin", "10.0.2.2", ""),
];

/// Where a connection comes from.
#[derive(Debug, Clone, Copy)]
enum Src {
    /// A mesh pod `namespace/name`: its identity over HBONE, its IP.
    Pod(&'static str),
    /// Plaintext from outside the mesh (no identity).
    Plain(&'static str),
}

#[derive(Debug)]
struct Case {
    /// The Istio concept checked.
    concept: &'static str,
    policies: Vec<String>,
    from: Src,
    /// Destination pod, `namespace/name`.
    to: &'static str,
    port: u16,
    allowed: bool,
    /// The policy expected to decide, when one should.
    by: Option<&'static str>,
    /// A fragment of a reported issue.
    issue: Option<&'static str>,
    /// A dry-run policy expected to report a denial.
    dry_run_denial: Option<&'static str>,
}

fn case(
    concept: &'static str,
    policies: &[String],
    from: Src,
    to: &'static str,
    port: u16,
    allowed: bool,
) -> Case {
    Case {
        concept,
        policies: policies.to_vec(),
        from,
        to,
        port,
        allowed,
        by: None,
        issue: None,
        dry_run_denial: None,
    }
}

impl Case {
    fn by(mut self, policy: &'static str) -> Self {
        self.by = Some(policy);
        self
    }
    fn issue(mut self, fragment: &'static str) -> Self {
        self.issue = Some(fragment);
        self
    }
    fn dry(mut self, policy: &'static str) -> Self {
        self.dry_run_denial = Some(policy);
        self
    }
}

/// An AuthorizationPolicy manifest; `spec` is YAML at two-space indentation under `spec:`.
fn ap(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{}",
        indent(spec)
    )
}

fn dry_ap(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}, annotations: {{istio.io/dry-run: 'true'}}}}\nspec:\n{}",
        indent(spec)
    )
}

fn pa(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{}",
        indent(spec)
    )
}

fn indent(spec: &str) -> String {
    spec.trim_matches('\n')
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect()
}

fn cases() -> Vec<Case> {
    use Src::{Plain, Pod};
    let from_foo_sleep_only = ap(
        "foo",
        "httpbin-from-sleep",
        "
selector: {matchLabels: {app: httpbin}}
rules:
- from:
  - source: {principals: [cluster.local/ns/foo/sa/sleep]}",
    );
    let strict_mesh = pa("istio-system", "default", "mtls: {mode: STRICT}");
    vec![
        // --- actions and their order ---
        case("no policy: allow", &[], Pod("bar/sleep"), "foo/httpbin", 8000, true),
        case("allow-nothing: an empty ALLOW policy denies everything",
            &[ap("foo", "allow-nothing", "{}")], Pod("foo/sleep"), "foo/httpbin", 8000, false),
        case("deny-all: a DENY policy with an empty rule denies everything",
            &[ap("foo", "deny-all", "action: DENY\nrules: [{}]")], Pod("foo/sleep"), "foo/httpbin", 8000, false)
            .by("foo/deny-all"),
        case("allow-all: an ALLOW policy with an empty rule allows everything",
            &[ap("foo", "allow-all", "rules: [{}]")], Plain("192.168.5.5"), "foo/httpbin", 8000, true)
            .by("foo/allow-all"),
        case("a DENY policy without rules matches nothing",
            &[ap("foo", "deny-none", "action: DENY")], Pod("bar/sleep"), "foo/httpbin", 8000, true),
        case("DENY wins over ALLOW",
            &[ap("foo", "allow-sleep", "rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]}]"),
              ap("foo", "deny-8000", "action: DENY\nrules: [{to: [{operation: {ports: ['8000']}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, false).by("foo/deny-8000"),
        case("several ALLOW policies: any one suffices",
            &[ap("foo", "allow-8000", "rules: [{to: [{operation: {ports: ['8000']}}]}]"),
              ap("foo", "allow-bar", "rules: [{from: [{source: {namespaces: [bar]}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 9000, true).by("foo/allow-bar"),
        case("with an ALLOW policy, a connection that matches none is denied",
            &[ap("foo", "allow-8000", "rules: [{to: [{operation: {ports: ['8000']}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 9000, false),
        // --- sources ---
        case("principals: exact identity allowed", std::slice::from_ref(&from_foo_sleep_only),
            Pod("foo/sleep"), "foo/httpbin", 8000, true).by("foo/httpbin-from-sleep"),
        case("principals: another identity denied", std::slice::from_ref(&from_foo_sleep_only),
            Pod("bar/sleep"), "foo/httpbin", 8000, false),
        case("principals: suffix match `*/sa/sleep`",
            &[ap("foo", "p", "rules: [{from: [{source: {principals: ['*/sa/sleep']}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true),
        case("principals: prefix match `cluster.local/ns/bar/*` allows bar",
            &[ap("foo", "p", "rules: [{from: [{source: {principals: ['cluster.local/ns/bar/*']}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true),
        case("principals: prefix match `cluster.local/ns/bar/*` denies foo",
            &[ap("foo", "p", "rules: [{from: [{source: {principals: ['cluster.local/ns/bar/*']}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, false),
        case("principals: presence `*` allows any authenticated peer",
            &[ap("foo", "mtls-only", "rules: [{from: [{source: {principals: ['*']}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true),
        case("principals: presence `*` denies plaintext",
            &[ap("foo", "mtls-only", "rules: [{from: [{source: {principals: ['*']}}]}]")],
            Plain("192.168.5.5"), "foo/httpbin", 8000, false),
        case("notPrincipals in DENY: everyone but foo/sleep is denied",
            &[ap("foo", "only-sleep", "action: DENY\nrules: [{from: [{source: {notPrincipals: [cluster.local/ns/foo/sa/sleep]}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, false).by("foo/only-sleep"),
        case("notPrincipals in DENY: the excepted identity passes",
            &[ap("foo", "only-sleep", "action: DENY\nrules: [{from: [{source: {notPrincipals: [cluster.local/ns/foo/sa/sleep]}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, true),
        case("notPrincipals in DENY: plaintext has no principal, so it is denied",
            &[ap("foo", "only-sleep", "action: DENY\nrules: [{from: [{source: {notPrincipals: [cluster.local/ns/foo/sa/sleep]}}]}]")],
            Plain("192.168.5.5"), "foo/httpbin", 8000, false),
        case("namespaces: same namespace allowed",
            &[ap("foo", "ns-foo", "rules: [{from: [{source: {namespaces: [foo]}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, true),
        case("namespaces: other namespace denied",
            &[ap("foo", "ns-foo", "rules: [{from: [{source: {namespaces: [foo]}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, false),
        case("namespaces need mTLS: plaintext never matches",
            &[ap("foo", "ns-foo", "rules: [{from: [{source: {namespaces: [foo]}}]}]")],
            Plain("10.0.1.2"), "foo/httpbin", 8000, false),
        case("notNamespaces in DENY: deny requests not from foo",
            &[ap("foo", "deny-others", "action: DENY\nrules: [{from: [{source: {notNamespaces: [foo]}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, false).by("foo/deny-others"),
        case("serviceAccounts: a bare name is in the policy's namespace",
            &[ap("foo", "sa", "rules: [{from: [{source: {serviceAccounts: [sleep]}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, false),
        case("serviceAccounts: `ns/name` names another namespace",
            &[ap("foo", "sa", "rules: [{from: [{source: {serviceAccounts: [bar/sleep]}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true),
        case("ipBlocks CIDR allows plaintext from that block",
            &[ap("foo", "ip", "rules: [{from: [{source: {ipBlocks: [192.168.5.0/24]}}]}]")],
            Plain("192.168.5.5"), "foo/httpbin", 8000, true),
        case("ipBlocks single address",
            &[ap("foo", "ip", "rules: [{from: [{source: {ipBlocks: [10.0.1.2]}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, false),
        case("notIpBlocks in DENY: outside 10.0.0.0/16 is denied",
            &[ap("foo", "internal-only", "action: DENY\nrules: [{from: [{source: {notIpBlocks: [10.0.0.0/16]}}]}]")],
            Plain("192.168.5.5"), "foo/httpbin", 8000, false).by("foo/internal-only"),
        case("notIpBlocks in DENY: inside passes",
            &[ap("foo", "internal-only", "action: DENY\nrules: [{from: [{source: {notIpBlocks: [10.0.0.0/16]}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true),
        // --- operations ---
        case("ports: listed port allowed",
            &[ap("foo", "p", "rules: [{to: [{operation: {ports: ['8000']}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true),
        case("notPorts in DENY: any other port denied",
            &[ap("foo", "p", "action: DENY\nrules: [{to: [{operation: {notPorts: ['8000']}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 9000, false),
        case("notPorts in DENY: the excepted port passes",
            &[ap("foo", "p", "action: DENY\nrules: [{to: [{operation: {notPorts: ['8000']}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true),
        case("from and to in one rule must both hold",
            &[ap("foo", "p", "rules: [{from: [{source: {namespaces: [bar]}}], to: [{operation: {ports: ['8000']}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 9000, false),
        // --- conditions ---
        case("when source.namespace",
            &[ap("foo", "p", "rules: [{when: [{key: source.namespace, values: [bar]}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true),
        case("when source.namespace notValues",
            &[ap("foo", "p", "rules: [{when: [{key: source.namespace, notValues: [bar]}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, false),
        case("when source.principal",
            &[ap("foo", "p", "rules: [{when: [{key: source.principal, values: [cluster.local/ns/foo/sa/sleep]}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, true),
        case("when source.ip CIDR",
            &[ap("foo", "p", "rules: [{when: [{key: source.ip, values: [10.0.2.0/24]}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, false),
        case("when destination.ip",
            &[ap("foo", "p", "rules: [{when: [{key: destination.ip, values: [10.0.1.1]}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true),
        case("when destination.port in DENY",
            &[ap("foo", "p", "action: DENY\nrules: [{when: [{key: destination.port, values: ['9000']}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 9000, false),
        // --- scope ---
        case("root namespace policy applies mesh-wide",
            &[ap("istio-system", "deny-bar", "action: DENY\nrules: [{from: [{source: {namespaces: [bar]}}]}]")],
            Pod("bar/sleep"), "bar/httpbin", 8000, false).by("istio-system/deny-bar"),
        case("root namespace policy with a selector applies to matching workloads in every namespace",
            &[ap("istio-system", "httpbins", "selector: {matchLabels: {app: httpbin}}\nrules: [{from: [{source: {namespaces: [foo]}}]}]")],
            Pod("bar/sleep"), "bar/httpbin", 8000, false),
        case("a namespace policy applies only to its namespace",
            &[ap("bar", "deny-all", "action: DENY\nrules: [{}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true),
        case("selector narrows: a workload it does not select is unaffected",
            &[ap("foo", "nothing-for-httpbin", "selector: {matchLabels: {app: httpbin}}")],
            Pod("foo/sleep"), "foo/db", 5432, true),
        case("selector narrows: the selected workload is affected",
            &[ap("foo", "nothing-for-httpbin", "selector: {matchLabels: {app: httpbin, version: v1}}")],
            Pod("foo/sleep"), "foo/httpbin", 8000, false),
        // A selector key other than matchLabels could only have narrowed what it selects: an ALLOW
        // with one must not let in what another ALLOW of the workload does not (review L3).
        case("selector with an unsupported key in ALLOW never widens access",
            &[ap("foo", "from-bar", "selector: {matchLabels: {app: httpbin}}\nrules: [{from: [{source: {namespaces: [bar]}}]}]"),
              ap("foo", "expr", "selector: {matchExpressions: [{key: app, operator: In, values: [db]}]}\nrules: [{from: [{source: {namespaces: [foo]}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, false).issue("matches nothing"),
        case("selector with an unsupported key in DENY still denies, more widely",
            &[ap("foo", "expr", "selector: {matchExpressions: [{key: app, operator: In, values: [db]}]}\naction: DENY\nrules: [{from: [{source: {namespaces: [bar]}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, false).by("foo/expr"),
        case("PERMISSIVE with an unsupported selector key is not used: STRICT stays",
            &[strict_mesh.clone(), pa("foo", "expr", "selector: {matchExpressions: [{key: app, operator: In, values: [db]}]}\nmtls: {mode: PERMISSIVE}")],
            Plain("192.168.5.5"), "foo/httpbin", 8000, false).issue("not used"),
        case("STRICT with an unsupported selector key applies to what matchLabels selects",
            &[pa("foo", "expr", "selector: {matchLabels: {app: httpbin}, matchExpressions: [{key: version, operator: In, values: [v2]}]}\nmtls: {mode: STRICT}\nportLevelMtls: {'8080': {mode: PERMISSIVE}}")],
            Plain("192.168.5.5"), "foo/httpbin", 8080, false).issue("without port exceptions"),
        // --- what an L4 proxy cannot enforce ---
        case("L7 field in ALLOW: the rule matches nothing",
            &[ap("foo", "get-only", "rules: [{to: [{operation: {methods: [GET]}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, false).issue("matches nothing"),
        case("L7 field in ALLOW: other rules still allow",
            &[ap("foo", "p", "rules:\n- to: [{operation: {paths: [/admin]}}]\n- from: [{source: {namespaces: [foo]}}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, true).by("foo/p"),
        case("L7 field in DENY: the rest of the rule still denies",
            &[ap("foo", "p", "action: DENY\nrules: [{from: [{source: {namespaces: [bar]}}], to: [{operation: {methods: [POST]}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, false).issue("enforced without them"),
        case("L7 field in DENY: what the rest does not match passes",
            &[ap("foo", "p", "action: DENY\nrules: [{from: [{source: {namespaces: [bar]}}], to: [{operation: {methods: [POST]}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, true),
        case("L7-only DENY rule denies everything (stricter than written)",
            &[ap("foo", "p", "action: DENY\nrules: [{to: [{operation: {paths: [/admin]}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, false).issue("paths"),
        case("L7 condition in DENY: the L4 parts still deny",
            &[ap("foo", "p", "action: DENY\nrules: [{from: [{source: {namespaces: [bar]}}], when: [{key: 'request.headers[x-token]', values: [abc]}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, false).issue("request.headers"),
        case("requestPrincipals in ALLOW: the rule matches nothing",
            &[ap("foo", "jwt", "rules: [{from: [{source: {requestPrincipals: ['*']}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, false).issue("requestPrincipals"),
        case("CUSTOM is reported and fails closed: what it would send to the authorizer is denied",
            &[ap("foo", "ext", "action: CUSTOM\nprovider: {name: my-ext-authz}\nrules: [{to: [{operation: {paths: [/admin]}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, false).by("foo/ext").issue("CUSTOM"),
        case("CUSTOM on L4 attributes denies only what it matches",
            &[ap("foo", "ext", "action: CUSTOM\nprovider: {name: my-ext-authz}\nrules: [{from: [{source: {namespaces: [bar]}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, true),
        case("AUDIT is reported and never changes a decision",
            &[ap("foo", "audit", "action: AUDIT\nrules: [{}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true).issue("AUDIT"),
        case("a port that does not parse: the ALLOW rule matches nothing",
            &[ap("foo", "p", "rules: [{to: [{operation: {ports: [http]}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, false).issue("not a port number"),
        case("a CIDR that does not parse in DENY: the field is dropped, so it denies more",
            &[ap("foo", "p", "action: DENY\nrules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, false).issue("not an IP address or CIDR"),
        case("targetRefs bind to a waypoint: reported, not enforced by the node proxy",
            &[ap("foo", "waypoint", "targetRefs: [{kind: Service, group: '', name: httpbin}]\naction: DENY\nrules: [{}]")],
            Pod("foo/sleep"), "foo/httpbin", 8000, true).issue("waypoint"),
        // --- PeerAuthentication ---
        case("PeerAuthentication STRICT (mesh-wide) denies plaintext",
            std::slice::from_ref(&strict_mesh), Plain("192.168.5.5"), "foo/httpbin", 8000, false)
            .by("istio-system/istio_converted_static_strict"),
        case("PeerAuthentication STRICT accepts mTLS",
            std::slice::from_ref(&strict_mesh), Pod("bar/sleep"), "foo/httpbin", 8000, true),
        case("PeerAuthentication PERMISSIVE accepts plaintext",
            &[pa("istio-system", "default", "mtls: {mode: PERMISSIVE}")], Plain("192.168.5.5"), "foo/httpbin", 8000, true),
        case("namespace PERMISSIVE overrides a STRICT mesh",
            &[strict_mesh.clone(), pa("foo", "default", "mtls: {mode: PERMISSIVE}")],
            Plain("192.168.5.5"), "foo/httpbin", 8000, true),
        case("workload STRICT overrides a PERMISSIVE namespace",
            &[pa("foo", "default", "mtls: {mode: PERMISSIVE}"),
              pa("foo", "httpbin", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: STRICT}")],
            Plain("192.168.5.5"), "foo/httpbin", 8000, false).by("istio-system/istio_converted_static_strict"),
        case("workload STRICT leaves other workloads PERMISSIVE",
            &[pa("foo", "default", "mtls: {mode: PERMISSIVE}"),
              pa("foo", "httpbin", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: STRICT}")],
            Plain("192.168.5.5"), "foo/db", 5432, true),
        case("STRICT workload, PERMISSIVE port override: that port accepts plaintext",
            &[pa("foo", "httpbin", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: STRICT}\nportLevelMtls: {'8080': {mode: PERMISSIVE}}")],
            Plain("192.168.5.5"), "foo/httpbin", 8080, true),
        case("STRICT workload, PERMISSIVE port override: other ports still refuse plaintext",
            &[pa("foo", "httpbin", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: STRICT}\nportLevelMtls: {'8080': {mode: PERMISSIVE}}")],
            Plain("192.168.5.5"), "foo/httpbin", 9000, false).by("foo/converted_peer_authentication_httpbin"),
        case("STRICT namespace, UNSET workload with a PERMISSIVE port",
            &[pa("foo", "default", "mtls: {mode: STRICT}"),
              pa("foo", "httpbin", "selector: {matchLabels: {app: httpbin}}\nportLevelMtls: {'8080': {mode: PERMISSIVE}}")],
            Plain("192.168.5.5"), "foo/httpbin", 8080, true),
        case("PERMISSIVE workload with a STRICT port refuses plaintext on that port",
            &[pa("foo", "httpbin", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: PERMISSIVE}\nportLevelMtls: {'9000': {mode: STRICT}}")],
            Plain("192.168.5.5"), "foo/httpbin", 9000, false).by("foo/converted_peer_authentication_httpbin"),
        case("PERMISSIVE workload with a STRICT port accepts plaintext elsewhere",
            &[pa("foo", "httpbin", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: PERMISSIVE}\nportLevelMtls: {'9000': {mode: STRICT}}")],
            Plain("192.168.5.5"), "foo/httpbin", 8000, true),
        case("DISABLE is reported and ignored: the STRICT mesh still applies",
            &[strict_mesh.clone(), pa("foo", "httpbin", "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: DISABLE}")],
            Plain("192.168.5.5"), "foo/httpbin", 8000, false).issue("DISABLE"),
        case("STRICT and an ALLOW policy: both apply",
            &[strict_mesh, ap("foo", "ip", "rules: [{from: [{source: {ipBlocks: [192.168.5.0/24]}}]}]")],
            Plain("192.168.5.5"), "foo/httpbin", 8000, false).by("istio-system/istio_converted_static_strict"),
        // --- dry run ---
        case("dry-run DENY allows and reports what it would deny",
            &[dry_ap("foo", "deny-bar", "action: DENY\nrules: [{from: [{source: {namespaces: [bar]}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true).dry("foo/deny-bar"),
        case("dry-run ALLOW-nothing allows and reports",
            &[dry_ap("foo", "allow-nothing", "{}")],
            Pod("bar/sleep"), "foo/httpbin", 8000, true).dry("foo/allow-nothing"),
        case("dry-run with a selector: reported for the selected workload",
            &[dry_ap("foo", "httpbin-8000-only", "selector: {matchLabels: {app: httpbin}}\nrules: [{to: [{operation: {ports: ['8000']}}]}]")],
            Pod("bar/sleep"), "foo/httpbin", 9000, true).dry("foo/httpbin-8000-only"),
        case("dry-run policies do not weaken enforced ones",
            &[dry_ap("foo", "allow-all", "rules: [{}]"), ap("foo", "allow-nothing", "{}")],
            Pod("bar/sleep"), "foo/httpbin", 8000, false),
    ]
}

fn mesh(policies: &[String]) -> MeshSnapshot {
    let mut yaml = MESH.to_owned();
    for (ns, name, ip, labels) in PODS {
        yaml.push_str(&format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: {name}{labels}}}}}
spec: {{serviceAccountName: {name}, nodeName: node-a, containers: [{{name: main}}]}}
status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}], conditions: [{{type: Ready, status: 'True'}}]}}
"
        ));
    }
    for p in policies {
        yaml.push_str("---\n");
        yaml.push_str(p);
        yaml.push('\n');
    }
    let mut state = ClusterState::default();
    for doc in manifest::parse(&yaml) {
        let objects = doc
            .result
            .unwrap_or_else(|e| panic!("document {} (line {}): {e}\n{yaml}", doc.index, doc.line));
        for object in objects {
            state.apply(object).unwrap();
        }
    }
    translate(&state, &MeshConfig::istio_defaults())
}

fn pod_ip(pod: &str) -> &'static str {
    PODS.iter()
        .find(|(ns, name, _, _)| format!("{ns}/{name}") == pod)
        .map(|(_, _, ip, _)| *ip)
        .unwrap()
}

#[test]
fn authorization_table() {
    let cases = cases();
    assert!(cases.len() >= 40, "the table must hold at least 40 cases");
    let mut failures = Vec::new();
    for case in &cases {
        let snapshot = mesh(&case.policies);
        let index = PolicyIndex::from_policies(
            snapshot.authorizations.values(),
            snapshot.dry_run_authorizations.values(),
        );
        let (dst_ns, dst_name) = case.to.split_once('/').unwrap();
        let workload = snapshot.with_dry_run(
            snapshot
                .workloads
                .values()
                .find(|w| w.namespace == dst_ns && w.name == dst_name)
                .unwrap(),
        );
        let workload = &workload;
        let (src_ip, identity) = match case.from {
            Src::Pod(pod) => {
                let (ns, sa) = pod.split_once('/').unwrap();
                let id: SpiffeId = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
                    .parse()
                    .unwrap();
                (pod_ip(pod), Some(id))
            }
            Src::Plain(ip) => (ip, None),
        };
        let conn = Connection {
            src_ip: src_ip.parse().unwrap(),
            src_identity: identity.as_ref(),
            dst_ip: pod_ip(case.to).parse().unwrap(),
            dst_port: case.port,
        };
        let decision = index.decide(workload, &conn);
        let mut wrong = Vec::new();
        if decision.allowed != case.allowed {
            wrong.push(format!("expected allowed={}", case.allowed));
        }
        if case.by.is_some() && decision.policy != case.by {
            wrong.push(format!("expected decided by {:?}", case.by));
        }
        if let Some(fragment) = case.issue
            && !snapshot
                .policy_issues
                .iter()
                .any(|i| i.message.contains(fragment))
        {
            wrong.push(format!(
                "expected an issue mentioning {fragment:?}, got {:?}",
                snapshot.policy_issues
            ));
        }
        if let Some(dry) = case.dry_run_denial
            && !decision.dry_run_denials.contains(&dry)
        {
            wrong.push(format!("expected dry-run denial by {dry}"));
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: {} — got \"{decision}\"\n  trace: {:?}",
                case.concept,
                wrong.join("; "),
                index.trace(workload, &conn).policies
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Every unsupported field is reported with a message naming it.
#[test]
fn unsupported_fields_are_reported_by_name() {
    let snapshot = mesh(&[
        ap(
            "foo",
            "l7",
            "rules: [{to: [{operation: {hosts: [x], notHosts: [y], methods: [GET], notMethods: [PUT], paths: [/a], notPaths: [/b]}}], from: [{source: {requestPrincipals: [a], notRequestPrincipals: [b], remoteIpBlocks: [1.1.1.1], notRemoteIpBlocks: [2.2.2.2]}}]}]",
        ),
        ap(
            "foo",
            "future",
            "futureField: 1\nrules: [{from: [{source: {futureSource: [x]}}]}]",
        ),
        ap("foo", "nonsense", "action: MAYBE"),
        pa(
            "foo",
            "ports",
            "selector: {matchLabels: {app: httpbin}}\nmtls: {mode: SOMETIMES}\nportLevelMtls: {'http': {mode: STRICT}, '80': {mode: DISABLE}}",
        ),
    ]);
    let messages: Vec<String> = snapshot
        .policy_issues
        .iter()
        .map(|i| format!("{}/{}: {}", i.namespace, i.name, i.message))
        .collect();
    let all = messages.join("\n");
    for needle in [
        "hosts",
        "notHosts",
        "methods",
        "notMethods",
        "paths",
        "notPaths",
        "requestPrincipals",
        "notRequestPrincipals",
        "remoteIpBlocks",
        "notRemoteIpBlocks",
        "spec.futureField",
        "futureSource",
        "MAYBE",
        "SOMETIMES",
        "\"http\"",
        "portLevelMtls[80].mode DISABLE",
    ] {
        assert!(all.contains(needle), "no issue mentions {needle}:\n{all}");
    }
}
