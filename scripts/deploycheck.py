#!/usr/bin/env python3
"""Checks of Ambit's Kubernetes packaging (deploy/), run by scripts/test-deploy.

Each subcommand checks one thing and exits non-zero, naming what is wrong and where, when it
fails. Runs with the Python of the venv that scripts/install-tools makes (kubernetes-validate,
jsonschema, PyYAML).

  validate FILE...           every object against its kind's schema (Kubernetes 1.33, strict;
                             custom resources against deploy/tests/schemas)
  rules RENDERED OUT         write the PrometheusRule's rule groups as a promtool rule file
  dashboards RENDERED OUT    dashboards: sidecar label, valid JSON, contract metrics only, and
                             their queries written as a rule file so promtool parses them
  dashboard-queries DIR      print every dashboard query, variables substituted, as JSON lines
                             (for running them against a real Prometheus)
  crds RENDERED EXAMPLES     the CRDs' schemas accept valid Istio policies and reject bad ones
  k0rdent DEPLOY             templates, HelmRepository and MultiClusterService agree with charts
  docs MARKDOWN DEPLOY RENDERED...   objects and templates the docs name exist
"""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT202012

KUBE_VERSION = "1.33.0"
SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "deploy" / "tests" / "schemas"

# Custom resources: (apiVersion, kind) -> hand-written schema file.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.json",
    ("k0rdent.mirantis.com/v1beta1", "ServiceTemplate"): "servicetemplate.json",
    ("k0rdent.mirantis.com/v1beta1", "MultiClusterService"): "multiclusterservice.json",
    ("source.toolkit.fluxcd.io/v1", "HelmRepository"): "helmrepository.json",
}
CLUSTER_SCOPED = {
    "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Namespace",
    "MultiClusterService", "PriorityClass", "StorageClass", "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
}

# The metrics the binary exports (deploy/README.md, "What the charts expect of the binary"), plus
# Prometheus' own `up`. Dashboards may use nothing else, so their queries return data wherever
# Ambit runs.
CONTRACT_METRICS = {
    "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
    "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total", "istio_build",
    "ambit_certificate_expiry_seconds", "ambit_xds_connection_state",
    "ambit_xds_connected_clients", "ambit_xds_pushes_total", "ambit_ca_certificates_issued_total",
}
# Dashboards every install must carry, by uid.
REQUIRED_DASHBOARDS = {"ambit-traffic", "ambit-mtls", "ambit-certificates", "ambit-xds"}
# Grafana variables and the values a query runner outside Grafana substitutes for them.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "${namespace}": ".*", "$namespace": ".*"}
PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "offset", "bool", "inf", "nan",
}


class Failures:
    """Collects problems; the subcommand fails if there is any."""

    def __init__(self):
        self.items = []

    def add(self, where, what):
        self.items.append(f"{where}: {what}")

    def finish(self, ok_message):
        for item in self.items:
            print(f"  {item}")
        if self.items:
            print(f"  {len(self.items)} problem(s)")
            return 1
        print(f"  {ok_message}")
        return 0


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def object_name(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{doc.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


# === validate ==================================================================================

_CRD_VALIDATORS = {}


def crd_validator(filename):
    """Validator for one hand-written schema; refs to _common.json resolve through $id."""
    if filename not in _CRD_VALIDATORS:
        registry = Registry().with_resources(
            (c["$id"], DRAFT202012.create_resource(c))
            for c in (json.loads(f.read_text()) for f in SCHEMAS.glob("*.json")))
        schema = json.loads((SCHEMAS / filename).read_text())
        _CRD_VALIDATORS[filename] = jsonschema.Draft202012Validator(schema, registry=registry)
    return _CRD_VALIDATORS[filename]


def validate_object(doc):
    """Problems of one object against its kind's schema, as strings."""
    key = (doc.get("apiVersion"), doc.get("kind"))
    if key in CRD_SCHEMAS:
        validator = crd_validator(CRD_SCHEMAS[key])
        return [f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
                for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.utils.SchemaNotFoundError as e:
        return [f"no schema: {e.message}"]
    except kubernetes_validate.utils.ValidationError as e:
        return [f"{'/'.join(str(p) for p in e.path) or '(root)'}: {e.message}"]
    return []


def cmd_validate(args):
    fail = Failures()
    count = 0
    for path in args.files:
        seen = set()
        for doc in load_docs(path):
            count += 1
            name = object_name(doc)
            for problem in validate_object(doc):
                fail.add(f"{path}: {name}", problem)
            namespaced = doc.get("kind") not in CLUSTER_SCOPED
            has_ns = bool((doc.get("metadata") or {}).get("namespace"))
            if namespaced and not has_ns:
                fail.add(f"{path}: {name}", "namespaced kind without metadata.namespace")
            if not namespaced and has_ns:
                fail.add(f"{path}: {name}", "cluster-scoped kind with metadata.namespace")
            if name in seen:
                fail.add(f"{path}: {name}", "defined twice")
            seen.add(name)
    if count == 0 and not args.allow_empty:
        fail.add(" ".join(args.files), "no objects")
    return fail.finish(f"{count} object(s) valid against their kinds' schemas")


# === rules =====================================================================================

def cmd_rules(args):
    fail = Failures()
    groups = []
    for doc in load_docs(args.rendered):
        if doc.get("kind") == "PrometheusRule":
            groups.extend(doc["spec"].get("groups", []))
    if not groups:
        fail.add(args.rendered, "no PrometheusRule with rule groups")
    with open(args.out, "w") as f:
        yaml.safe_dump({"groups": groups}, f, sort_keys=False)
    alerts = sum(1 for g in groups for r in g.get("rules", []) if "alert" in r)
    return fail.finish(f"{len(groups)} group(s), {alerts} alert(s) written to {args.out}")


# === dashboards ================================================================================

def panel_queries(dashboard):
    """(panel title, expr) of every query in a dashboard, rows' nested panels included."""
    def walk(panels):
        for p in panels:
            yield p
            yield from walk(p.get("panels", []))
    for p in walk(dashboard.get("panels", [])):
        if p.get("type") == "row":
            continue
        for t in p.get("targets", []):
            yield p.get("title", "?"), t.get("expr", "")


def substitute(expr):
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def metric_names(expr):
    """Metric names a PromQL expression selects (a lexical approximation that suffices for our
    queries: strings, label matchers, ranges and grouping lists are removed first)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", "{}", e)
    e = re.sub(r"\[[^\]]*\]", "[]", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def dashboards_in(rendered, label, value):
    """(configmap name, key, parsed or error) of every dashboard ConfigMap with the label."""
    for doc in load_docs(rendered):
        if doc.get("kind") != "ConfigMap":
            continue
        labels = (doc.get("metadata") or {}).get("labels") or {}
        if labels.get(label) != value:
            continue
        for key, text in (doc.get("data") or {}).items():
            try:
                yield doc["metadata"]["name"], key, json.loads(text)
            except json.JSONDecodeError as e:
                yield doc["metadata"]["name"], key, e


def cmd_dashboards(args):
    fail = Failures()
    uids = {}
    records = []
    for cm, key, dash in dashboards_in(args.rendered, args.label, args.label_value):
        where = f"ConfigMap {cm} {key}"
        if isinstance(dash, Exception):
            fail.add(where, f"not valid JSON: {dash}")
            continue
        for field in ("uid", "title", "panels"):
            if not dash.get(field):
                fail.add(where, f"missing {field}")
        if dash.get("uid") in uids:
            fail.add(where, f"uid {dash.get('uid')} also in {uids[dash.get('uid')]}")
        uids[dash.get("uid")] = where
        n = 0
        for title, expr in panel_queries(dash):
            n += 1
            if not expr.strip():
                fail.add(where, f"panel {title!r} has a target without expr")
                continue
            unknown = metric_names(substitute(expr)) - CONTRACT_METRICS - {"up"}
            if unknown:
                fail.add(where, f"panel {title!r} uses metrics outside the contract: {sorted(unknown)}")
            records.append({"record": f"dashboard:{dash.get('uid', 'x').replace('-', '_')}:q{n}",
                            "expr": substitute(expr)})
        if n == 0:
            fail.add(where, "no queries")
    missing = REQUIRED_DASHBOARDS - set(uids)
    if missing:
        fail.add(args.rendered, f"dashboards missing (by uid): {sorted(missing)}")
    mtls = [w for u, w in uids.items() if u == "ambit-mtls"]
    if mtls:
        exprs = [e for cm, key, d in dashboards_in(args.rendered, args.label, args.label_value)
                 if not isinstance(d, Exception) and d.get("uid") == "ambit-mtls"
                 for _, e in panel_queries(d)]
        if not any('connection_security_policy="mutual_tls"' in e for e in exprs):
            fail.add(mtls[0], 'no query on connection_security_policy="mutual_tls"')
    with open(args.out, "w") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": records}]}, f,
                       sort_keys=False, width=10000)
    return fail.finish(f"{len(uids)} dashboard(s), {len(records)} quer(ies) on contract metrics;"
                       f" queries written to {args.out} for promtool")


def cmd_dashboard_queries(args):
    for path in sorted(pathlib.Path(args.dir).glob("*.json")):
        dash = json.loads(path.read_text())
        for title, expr in panel_queries(dash):
            print(json.dumps({"dashboard": dash.get("uid"), "panel": title,
                              "expr": substitute(expr)}))
    return 0


# === crds ======================================================================================

def cmd_crds(args):
    fail = Failures()
    crds = {}
    for doc in load_docs(args.rendered):
        if doc.get("kind") == "CustomResourceDefinition":
            spec = doc["spec"]
            for v in spec["versions"]:
                crds[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = \
                    v["schema"]["openAPIV3Schema"]
    if not crds:
        fail.add(args.rendered, "no CustomResourceDefinition")
    checked = 0
    for expect in ("valid", "invalid"):
        for path in sorted(pathlib.Path(args.examples, expect).glob("*.yaml")):
            for doc in load_docs(path):
                key = (doc.get("apiVersion"), doc.get("kind"))
                if key not in crds:
                    fail.add(path, f"no CRD serves {key}")
                    continue
                checked += 1
                errors = list(jsonschema.Draft7Validator(crds[key]).iter_errors(doc))
                if expect == "valid" and errors:
                    fail.add(path, f"rejected: {errors[0].message}")
                if expect == "invalid" and not errors:
                    fail.add(path, "accepted, but it is invalid")
    return fail.finish(f"{len(crds)} CRD version(s); {checked} example polic(ies) judged right")


# === k0rdent ===================================================================================

def chart_dirs(deploy):
    dirs = sorted(p.parent for p in pathlib.Path(deploy).glob("charts/*/Chart.yaml"))
    dirs += [p.parent for p in pathlib.Path(deploy).glob("monitoring/Chart.yaml")]
    return {yaml.safe_load((d / "Chart.yaml").read_text())["name"]: d for d in dirs}


def template_name(chart, version):
    return f"{chart}-{version.replace('.', '-')}"


def cmd_k0rdent(args):
    fail = Failures()
    k = pathlib.Path(args.deploy) / "k0rdent"
    charts = {name: yaml.safe_load((d / "Chart.yaml").read_text())["version"]
              for name, d in chart_dirs(args.deploy).items()}
    dirs = chart_dirs(args.deploy)

    repos = [d for d in load_docs(k / "helmrepository.yaml") if d.get("kind") == "HelmRepository"]
    if len(repos) != 1:
        fail.add("helmrepository.yaml", f"expected one HelmRepository, found {len(repos)}")
        return fail.finish("")
    repo = repos[0]
    if repo["metadata"].get("labels", {}).get("k0rdent.mirantis.com/managed") != "true":
        fail.add("helmrepository.yaml", 'missing label k0rdent.mirantis.com/managed: "true"')

    templates = {}
    for t in load_docs(k / "servicetemplates.yaml"):
        name = t["metadata"]["name"]
        cs = t["spec"]["helm"]["chartSpec"]
        templates[name] = cs
        if name != template_name(cs["chart"], cs["version"]):
            fail.add(f"ServiceTemplate {name}",
                     f"name should be {template_name(cs['chart'], cs['version'])}")
        if cs["chart"] not in charts:
            fail.add(f"ServiceTemplate {name}", f"no chart {cs['chart']} under deploy/")
        if cs["sourceRef"] != {"kind": "HelmRepository", "name": repo["metadata"]["name"]}:
            fail.add(f"ServiceTemplate {name}", f"sourceRef is not HelmRepository/{repo['metadata']['name']}")
        if t["metadata"]["namespace"] != repo["metadata"]["namespace"]:
            fail.add(f"ServiceTemplate {name}", "not in the HelmRepository's namespace")
    for chart, version in charts.items():
        if template_name(chart, version) not in templates:
            fail.add("servicetemplates.yaml", f"no template for {chart} {version} "
                     f"({template_name(chart, version)})")

    external = {line.strip() for line in (k / "external-templates.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    (mcs,) = load_docs(k / "multiclusterservice.yaml")
    if mcs["spec"]["clusterSelector"].get("matchLabels") != {"group": "demo"}:
        fail.add("MultiClusterService", "clusterSelector is not matchLabels group: demo")
    services = mcs["spec"]["serviceSpec"]["services"]
    used_charts = set()
    kps_release = None
    monitoring_release_label = None
    for s in services:
        where = f"MultiClusterService service {s['name']}"
        values = yaml.safe_load(s.get("values") or "{}") or {}
        if not isinstance(values, dict):
            fail.add(where, "values are not a YAML mapping")
            continue
        if s["template"] in external:
            if s["template"].startswith("kube-prometheus-stack-"):
                kps_release = s["name"]
                if s.get("namespace") != "prometheus":
                    fail.add(where, "kube-prometheus-stack is not in namespace prometheus")
                storage = (values.get("kube-prometheus-stack", {}).get("prometheus", {})
                           .get("prometheusSpec", {}).get("storageSpec", {})
                           .get("volumeClaimTemplate", {}).get("spec", {}).get("resources", {})
                           .get("requests", {}).get("storage"))
                if storage != "20Gi":
                    fail.add(where, f"Prometheus storage request is {storage}, not 20Gi")
            continue
        if s["template"] not in templates:
            fail.add(where, f"template {s['template']} is neither shipped nor external")
            continue
        cs = templates[s["template"]]
        used_charts.add(cs["chart"])
        if cs["version"] != charts.get(cs["chart"]):
            fail.add(where, f"uses {cs['chart']} {cs['version']}, the chart is at "
                     f"{charts.get(cs['chart'])}")
        if cs["chart"] == "ambit-monitoring":
            monitoring_release_label = values.get("prometheus", {}).get("release", "prometheus")
        # The values must render with the chart, and what they render must be valid.
        with tempfile.TemporaryDirectory() as tmp:
            vf = pathlib.Path(tmp, "values.yaml")
            vf.write_text(s.get("values") or "")
            out = subprocess.run(
                [args.helm, "template", s["name"], str(dirs[cs["chart"]]),
                 "--namespace", s.get("namespace") or s["name"], "--kube-version", KUBE_VERSION,
                 "-f", str(vf)], capture_output=True, text=True)
            if out.returncode != 0:
                fail.add(where, f"helm template with its values fails: {out.stderr.strip()}")
                continue
            for doc in (d for d in yaml.safe_load_all(out.stdout) if d):
                for problem in validate_object(doc):
                    fail.add(f"{where}: {object_name(doc)}", problem)
    for chart in charts:
        if chart not in used_charts:
            fail.add("MultiClusterService", f"does not deploy {chart}")
    if kps_release is None:
        fail.add("MultiClusterService", "does not deploy kube-prometheus-stack")
    elif monitoring_release_label != kps_release:
        fail.add("MultiClusterService", f"ambit-monitoring labels release: "
                 f"{monitoring_release_label}, kube-prometheus-stack's release is {kps_release}")
    return fail.finish(f"{len(templates)} template(s) match {len(charts)} chart(s); "
                       f"MultiClusterService deploys {len(services)} service(s)")


# === docs ======================================================================================

KIND_ABBREV = {"ds": "DaemonSet", "daemonset": "DaemonSet", "deploy": "Deployment",
               "deployment": "Deployment", "svc": "Service", "service": "Service",
               "sa": "ServiceAccount", "cm": "ConfigMap", "configmap": "ConfigMap"}


def cmd_docs(args):
    fail = Failures()
    rendered = set()
    for path in args.rendered:
        for doc in load_docs(path):
            meta = doc.get("metadata") or {}
            rendered.add((doc.get("kind"), meta.get("namespace"), meta.get("name")))
    templates = {t["metadata"]["name"] for t in
                 load_docs(pathlib.Path(args.deploy, "k0rdent", "servicetemplates.yaml"))}
    external = {line.strip() for line in
                pathlib.Path(args.deploy, "k0rdent", "external-templates.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    repo_root = pathlib.Path(args.deploy).resolve().parent
    text = pathlib.Path(args.markdown).read_text()
    checked = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        where = f"{args.markdown}:{lineno}"
        if re.search(r"\bkubectl\b", line):
            ns = re.search(r"(?:-n|--namespace)[ =](\S+)", line)
            for m in re.finditer(r"(?<![\w/.-])(ds|daemonset|deploy|deployment|svc|service|sa|cm|configmap)/([a-z0-9-]+)(?![\w/.])", line):
                checked += 1
                kind = KIND_ABBREV[m.group(1)]
                namespace = ns.group(1) if ns else None
                if (kind, namespace, m.group(2)) not in rendered:
                    fail.add(where, f"{kind} {namespace}/{m.group(2)} is not installed by the charts")
        for m in re.finditer(r"\b((?:ambit-[a-z]+|kube-prometheus-stack)-\d+-\d+-\d+)\b", line):
            checked += 1
            if m.group(1) not in templates | external:
                fail.add(where, f"ServiceTemplate {m.group(1)} does not exist")
        for m in re.finditer(r"\b(deploy/(?:charts/[a-z0-9-]+|monitoring|k0rdent/[a-z0-9.-]+))", line):
            checked += 1
            if not (repo_root / m.group(1)).exists():
                fail.add(where, f"{m.group(1)} does not exist")
    if checked == 0:
        fail.add(args.markdown, "names no object, template or chart")
    return fail.finish(f"{checked} reference(s) in the docs match what the charts install")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("validate"); s.add_argument("files", nargs="+")
    s.add_argument("--allow-empty", action="store_true")
    s = sub.add_parser("rules"); s.add_argument("rendered"); s.add_argument("out")
    s = sub.add_parser("dashboards"); s.add_argument("rendered"); s.add_argument("out")
    s.add_argument("--label", default="grafana_dashboard"); s.add_argument("--label-value", default="1")
    s = sub.add_parser("dashboard-queries"); s.add_argument("dir")
    s = sub.add_parser("crds"); s.add_argument("rendered"); s.add_argument("examples")
    s = sub.add_parser("k0rdent"); s.add_argument("deploy")
    s.add_argument("--helm", default=os.environ.get("HELM", "helm"))
    s = sub.add_parser("docs"); s.add_argument("markdown"); s.add_argument("deploy")
    s.add_argument("rendered", nargs="+")
    args = p.parse_args()
    return {"validate": cmd_validate, "rules": cmd_rules, "dashboards": cmd_dashboards,
            "dashboard-queries": cmd_dashboard_queries, "crds": cmd_crds,
            "k0rdent": cmd_k0rdent, "docs": cmd_docs}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
