//! The monitoring chart against a real Prometheus: every dashboard query returns data, and every
//! alert expression is accepted, when Prometheus scrapes the real binaries.
//!
//! The mesh is the one an operator runs on one host (`ambit control` and two `ambit node`
//! processes on loopback, see `common`), carrying traffic continuously while Debian's
//! `/usr/bin/prometheus` (installed by `scripts/install-tools`) scrapes it every second. The
//! scrape targets carry the labels kube-prometheus-stack's relabeling gives them from the chart's
//! PodMonitor and ServiceMonitor (`job`, `namespace`, `pod`, …), so queries and alerts that select
//! on those are exercised too.
//!
//! - Dashboards: `deploy/monitoring/dashboards/*.json`, every target of every panel (rows'
//!   nested panels included), Grafana variables substituted as Grafana would with "All" selected.
//! - Alerts: the PrometheusRule as Helm renders it with default values, read from its golden
//!   file (`scripts/test-deploy` keeps that equal to the chart).

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use Expect::{Above, AtLeast, Between, Equal};
use common::{Mesh, Running, echo_server, http_get, manifests, namespace, pod, socks_connect};
use serde_json::Value;

/// Debian's Prometheus, from the `prometheus` package `scripts/install-tools` installs.
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// What `$__rate_interval` and `$__interval` become: with a 1 s scrape interval, 30 s holds
/// enough samples for `rate()` (Grafana's own rule is at least four scrape intervals).
const INTERVAL: &str = "30s";
/// How long queries may take to return data once Prometheus has scraped five times.
const QUERY_DEADLINE: Duration = Duration::from_secs(15);

/// Queries that legitimately return nothing in this setup, with the reason. Printed on every
/// run; keep it empty unless the setup truly cannot produce the data.
const EMPTY_ALLOWED: &[(&str, &str, &str)] = &[];

/// Panels whose value this setup determines: two node proxies connected to one control plane,
/// `demo/client` opening mTLS connections to `demo/server` and plaintext ones to `legacy/db`.
const EXPECTED_VALUES: &[(&str, &str, Expect)] = &[
    ("ambit-xds", "Node proxies connected", Equal(2.0)),
    ("ambit-xds", "Node proxies disconnected", Equal(0.0)),
    ("ambit-xds", "Clients of the control plane", Equal(2.0)),
    ("ambit-xds", "Node proxies reporting a build", Equal(2.0)),
    // At least the client's (node-a) and the server's (node-b).
    ("ambit-certificates", "Identities", AtLeast(2.0)),
    ("ambit-certificates", "Soonest expiry", AtLeast(3600.0)),
    ("ambit-mtls", "Connections over mTLS", Between(0.0, 1.0)),
    ("ambit-mtls", "Bytes over mTLS", Between(0.0, 1.0)),
    ("ambit-mtls", "Plaintext connections opened", Above(0.0)),
];

/// What every sample of a query must be.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Equal(f64),
    AtLeast(f64),
    Above(f64),
    /// Strictly between the bounds.
    Between(f64, f64),
}

impl Expect {
    fn holds(self, v: f64) -> bool {
        match self {
            Self::Equal(x) => v == x,
            Self::AtLeast(x) => v >= x,
            Self::Above(x) => v > x,
            Self::Between(lo, hi) => lo < v && v < hi,
        }
    }
}

#[test]
fn dashboard_queries_and_alerts_run_on_a_real_prometheus() {
    assert!(
        Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} not found: run scripts/install-tools (it installs Debian's prometheus package)"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let queries = dashboard_queries(&repo.join("deploy/monitoring/dashboards"));
    let alerts = alert_rules(&repo.join("deploy/tests/golden/ambit-monitoring/default.yaml"));
    assert!(!queries.is_empty() && !alerts.is_empty());

    // `demo` is enrolled; `legacy` is not, so its `db` is reached in plaintext.
    let ips = ambit_testkit::LoopbackAddrs::new();
    let (client_ip, server_ip, db_ip) = (ips.next_addr(), ips.next_addr(), ips.next_addr());
    let mesh = Mesh::start(
        &ips,
        &manifests(&[
            namespace("demo", true),
            namespace("legacy", false),
            pod("demo", "client", "node-a", client_ip),
            pod("demo", "server", "node-b", server_ip),
            pod("legacy", "db", "node-b", db_ip),
        ]),
    );
    let server = SocketAddr::new(server_ip.into(), 8080);
    let db = SocketAddr::new(db_ip.into(), 5432);
    echo_server(server);
    echo_server(db);
    let socks = Mesh::socks(mesh.node_a);
    common::wait_until("a tunnel from client to server", || {
        exchange(client_ip, socks, server)
    });
    let traffic = Traffic::start(client_ip, socks, &[server, db]);

    let prometheus = Prometheus::start(&ips, &mesh);
    prometheus.wait_for_scrapes(3, 5);

    // === dashboards ============================================================================
    println!("allowed to be empty in this setup: {}", EMPTY_ALLOWED.len());
    for (uid, title, why) in EMPTY_ALLOWED {
        println!("  {uid} / {title}: {why}");
    }
    let mut pending: Vec<&DashboardQuery> = queries
        .iter()
        .filter(|q| {
            !EMPTY_ALLOWED
                .iter()
                .any(|(u, t, _)| (*u, *t) == (&q.uid, &q.title))
        })
        .collect();
    let deadline = Instant::now() + QUERY_DEADLINE;
    let mut last = BTreeMap::new();
    loop {
        pending.retain(|q| {
            let answer = prometheus.query(&q.expr);
            let ok = has_data(&answer) && meets_expectation(q, &answer);
            last.insert(q.expr.clone(), answer);
            !ok
        });
        if pending.is_empty() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let failures: Vec<String> = pending
        .iter()
        .map(|q| {
            let expect = expectation(q).map_or(String::new(), |e| format!(" (expected {e:?})"));
            format!("{q}{expect}: {}\n    answer: {}", q.expr, last[&q.expr])
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries return no data or an unexpected value:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );
    println!("{} dashboard queries returned data", queries.len());
    // Those ending in `or vector(0)` always do: say which had nothing but the fallback.
    for q in &queries {
        if let Some(series) = q.expr.strip_suffix(" or vector(0)")
            && !has_data(&prometheus.query(series))
        {
            println!("  only the vector(0) fallback (no such series here): {q}");
        }
    }

    // === alerts ================================================================================
    // A healthy mesh: certificates fresh, xDS connected, every target up. The one alert with
    // data is the plaintext one, for `demo`'s connections to `legacy/db`: `demo` is enrolled,
    // so that is plaintext leaving an enrolled namespace, which the alert is for.
    for (name, expr) in &alerts {
        let answer = prometheus.query(expr);
        assert_eq!(
            answer["status"], "success",
            "alert {name}: {expr}\n{answer}"
        );
        let firing: Vec<&Value> = answer["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .collect();
        if name == "AmbitPlaintextFromEnrolledNamespace" {
            let sources: Vec<(&str, &str, &str)> = firing
                .iter()
                .map(|s| {
                    let label = |l: &str| s["metric"][l].as_str().unwrap_or("");
                    (
                        label("source_workload_namespace"),
                        label("source_workload"),
                        label("destination_workload"),
                    )
                })
                .collect();
            assert_eq!(
                sources,
                [("demo", "client", "db")],
                "alert {name} reports exactly the plaintext flow from enrolled `demo`: {answer}"
            );
        } else {
            assert!(
                firing.is_empty(),
                "alert {name} fires on a healthy mesh: {answer}"
            );
        }
    }
    println!("{} alert expressions accepted", alerts.len());

    let (ok, failed) = traffic.stop();
    assert!(ok > 0, "no connection succeeded ({failed} failed)");
}

// === dashboards ===============================================================================

/// One target of one dashboard panel, Grafana variables substituted.
#[derive(Debug)]
struct DashboardQuery {
    uid: String,
    title: String,
    expr: String,
}

impl std::fmt::Display for DashboardQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} / {}", self.uid, self.title)
    }
}

/// Every target `expr` of every dashboard in `dir`.
fn dashboard_queries(dir: &Path) -> Vec<DashboardQuery> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    let mut out = Vec::new();
    for file in files {
        let dashboard: Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let uid = dashboard["uid"].as_str().unwrap().to_owned();
        let variables = variables(&dashboard);
        let mut panels: Vec<&Value> = Vec::new();
        collect_panels(&dashboard["panels"], &mut panels);
        for panel in panels {
            let title = panel["title"].as_str().unwrap_or("?");
            for target in panel["targets"].as_array().into_iter().flatten() {
                let Some(expr) = target["expr"].as_str() else {
                    continue;
                };
                let expr = substitute(expr, &variables);
                assert!(
                    !unsubstituted(&expr),
                    "{uid} / {title}: a Grafana variable is left in {expr}"
                );
                out.push(DashboardQuery {
                    uid: uid.clone(),
                    title: title.to_owned(),
                    expr,
                });
            }
        }
    }
    out
}

fn collect_panels<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
    for panel in panels.as_array().into_iter().flatten() {
        out.push(panel);
        collect_panels(&panel["panels"], out);
    }
}

/// The dashboard's template variables and what Grafana substitutes with "All" selected (its
/// `allValue`), or else the current value; longest names first, so `$ns` never eats `$nsx`.
fn variables(dashboard: &Value) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = ["__rate_interval", "__interval", "__range"]
        .into_iter()
        .map(|v| (v.to_owned(), INTERVAL.to_owned()))
        .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = var["name"].as_str().unwrap().to_owned();
        if var["type"] == "datasource" {
            continue;
        }
        let value = if var["includeAll"] == true {
            var["allValue"].as_str().unwrap_or(".*")
        } else {
            var["current"]["value"]
                .as_str()
                .unwrap_or_else(|| panic!("variable {name} has no current value"))
        };
        vars.push((name, value.to_owned()));
    }
    vars.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    vars
}

/// Replaces `${name}`, `[[name]]` and `$name` by each variable's value.
fn substitute(expr: &str, variables: &[(String, String)]) -> String {
    let mut expr = expr.to_owned();
    for (name, value) in variables {
        expr = expr
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("[[{name}]]"), value)
            .replace(&format!("${name}"), value);
    }
    expr
}

/// Whether `expr` still holds something shaped like a Grafana variable (a `$` in a regex
/// anchor, `"a$"`, is not).
fn unsubstituted(expr: &str) -> bool {
    expr.match_indices('$').any(|(i, _)| {
        expr[i + 1..]
            .chars()
            .next()
            .is_some_and(|c| c == '{' || c == '_' || c.is_ascii_alphabetic())
    })
}

fn has_data(answer: &Value) -> bool {
    answer["status"] == "success"
        && answer["data"]["result"]
            .as_array()
            .is_some_and(|r| !r.is_empty())
}

/// What [`EXPECTED_VALUES`] says of `query`'s value, if anything.
fn expectation(query: &DashboardQuery) -> Option<Expect> {
    EXPECTED_VALUES
        .iter()
        .find(|(uid, title, _)| (*uid, *title) == (&query.uid, &query.title))
        .map(|(_, _, expect)| *expect)
}

/// Whether every sample of `answer` meets the query's [`expectation`], if any.
fn meets_expectation(query: &DashboardQuery, answer: &Value) -> bool {
    let Some(expect) = expectation(query) else {
        return true;
    };
    answer["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|sample| {
            sample["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| expect.holds(v))
        })
}

// === alerts ===================================================================================

/// (alert name, expr) of every alert in the rendered PrometheusRule in `rendered`: a
/// line-based read of what Helm emits (`- alert: X`, then `expr: |-` and an indented block),
/// which is all the chart uses.
fn alert_rules(rendered: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(rendered).unwrap();
    let rule = text
        .split("\n---\n")
        .find(|doc| doc.contains("\nkind: PrometheusRule\n"))
        .unwrap_or_else(|| panic!("no PrometheusRule in {}", rendered.display()));
    let mut alerts = Vec::new();
    let mut lines = rule.lines().peekable();
    let mut name = None;
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(alert) = trimmed.strip_prefix("- alert: ") {
            name = Some(alert.to_owned());
        } else if let Some(value) = trimmed.strip_prefix("expr: ") {
            let name = name
                .take()
                .unwrap_or_else(|| panic!("expr outside an alert: {line}"));
            let indent = line.len() - trimmed.len();
            let expr = if value == "|-" || value == "|" {
                let mut block = Vec::new();
                while let Some(next) = lines
                    .next_if(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                {
                    block.push(next.trim());
                }
                block.join("\n")
            } else {
                value.to_owned()
            };
            alerts.push((name, expr));
        }
    }
    alerts
}

// === Prometheus ===============================================================================

/// Debian's Prometheus, scraping the mesh every second with the target labels the chart's
/// PodMonitor and ServiceMonitor get from kube-prometheus-stack.
struct Prometheus {
    addr: SocketAddr,
    _process: Running,
}

impl Prometheus {
    fn start(ips: &ambit_testkit::LoopbackAddrs, mesh: &Mesh) -> Self {
        let dir = mesh.dir().join("prometheus");
        std::fs::create_dir(&dir).unwrap();
        let addr = free_port(ips.next_addr());
        // The PodMonitor's job is `<namespace>/<PodMonitor name>`; the ServiceMonitor's is
        // the Service's name. Pod names stand in for the DaemonSet's and Deployment's.
        let node = |ip: Ipv4Addr, pod: &str| {
            format!(
                "      - targets: ['{}']\n        labels: {{namespace: istio-system, pod: {pod}, \
                 container: istio-proxy, endpoint: ztunnel-stats}}\n",
                Mesh::stats(ip)
            )
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n\
             \x20 - job_name: istio-system/ztunnel\n    metrics_path: /stats/prometheus\n    static_configs:\n{}{}\
             \x20 - job_name: istiod\n    metrics_path: /metrics\n    static_configs:\n\
             \x20     - targets: ['{}']\n        labels: {{namespace: istio-system, pod: istiod-6d5f7c9b8-x2x4q, \
             service: istiod, container: discovery, endpoint: http-monitoring}}\n",
            node(mesh.node_a, "ztunnel-a7k2m"),
            node(mesh.node_b, "ztunnel-b9p4q"),
            mesh.monitoring(),
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let path = |p: PathBuf| p.to_str().unwrap().to_owned();
        let process = Running::spawn(
            Command::new(PROMETHEUS).args([
                format!("--config.file={}", path(dir.join("prometheus.yml"))),
                format!("--storage.tsdb.path={}", path(dir.join("data"))),
                format!("--web.listen-address={addr}"),
                "--log.level=warn".to_owned(),
            ]),
            &dir.join("prometheus.log"),
        );
        let log = dir.join("prometheus.log");
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(addr, "/-/ready").is_none_or(|(code, _)| code != 200) {
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready on {addr}; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Self {
            addr,
            _process: process,
        }
    }

    /// Waits until each of `targets` is up and has been scraped at least `scrapes` times.
    fn wait_for_scrapes(&self, targets: usize, scrapes: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let last = self.query("count_over_time(up[1m]) and on (instance) up == 1");
            let counts: Vec<f64> = last["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["value"][1].as_str()?.parse().ok())
                .collect();
            if counts.len() == targets && counts.iter().all(|c| *c >= scrapes as f64) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus has not scraped {targets} targets {scrapes} times: {last}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `GET /api/v1/query` at the current time; the decoded JSON answer (errors included).
    fn query(&self, expr: &str) -> Value {
        let path = format!("/api/v1/query?query={}", percent_encode(expr));
        let Some((_, response)) = http_get(self.addr, &path) else {
            return Value::String(format!("no answer from Prometheus on {}", self.addr));
        };
        let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        serde_json::from_str(body).unwrap_or_else(|e| Value::String(format!("{e}: {response}")))
    }
}

/// A port nobody listens on at `ip` (a fresh loopback address: nobody else binds there).
fn free_port(ip: Ipv4Addr) -> SocketAddr {
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
}

/// RFC 3986 percent-encoding of everything but the unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// === traffic ==================================================================================

/// Connections from a client workload to each destination in turn, every 100 ms, until
/// stopped: counters keep increasing between scrapes, so `rate()` and `increase()` see them.
struct Traffic {
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 2]>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(client: Ipv4Addr, socks: SocketAddr, destinations: &[SocketAddr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let destinations = destinations.to_vec();
        let thread = std::thread::spawn({
            let (stop, counts) = (stop.clone(), counts.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    for &dst in &destinations {
                        let ok = exchange(client, socks, dst);
                        counts[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        Self {
            stop,
            counts,
            thread: Some(thread),
        }
    }

    /// Stops the traffic; (connections that echoed, connections that failed).
    fn stop(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One connection from `client` through the node proxy's SOCKS5 listener to `dst`: a message
/// echoed back, then closed.
fn exchange(client: Ipv4Addr, socks: SocketAddr, dst: SocketAddr) -> bool {
    let Ok(mut conn) = socks_connect(client, socks, dst) else {
        return false;
    };
    let mut echoed = [0u8; 16];
    conn.write_all(b"dashboards test!").is_ok()
        && conn.read_exact(&mut echoed).is_ok()
        && &echoed == b"dashboards test!"
}
