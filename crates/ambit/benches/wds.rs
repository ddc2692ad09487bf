//! WDS at scale: 10,000 pods and 2,000 services served by a real `ambit control` process to 100
//! delta-xDS clients. Prints its figures; asserts nothing about time.
//!
//! Run: `cargo bench -p ambit --bench wds` (release build). Figures:
//! - control plane RSS with 100 clients synced (target < 150 MB);
//! - time for a new client to receive the full state (target < 2 s);
//! - time for one pod change (a manifest file edited on disk) to reach all 100 clients, p50/p99
//!   over repeated changes (target p99 < 100 ms) — it includes the directory poll interval;
//! - bytes pushed per change per client (only the changed resource should travel).
//!
//! Profiling knobs (environment): `AMBIT_BENCH_NAMESPACES` and `AMBIT_BENCH_CLIENTS` scale the
//! run down; `AMBIT_BENCH_VERBOSE` prints RSS at each stage; `AMBIT_BENCH_WRAPPER` prefixes the
//! control plane's command (e.g. `valgrind --tool=massif`) and `AMBIT_BENCH_STAGE_HOOK` runs a
//! shell command at each stage (see `stage`).

#![allow(clippy::unwrap_used, clippy::print_stdout)] // a benchmark program, not library code

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_identity::grpc::plaintext_channel;
use ambit_proto::envoy::config::core::v3::Node;
use ambit_xds::client::{ClientConfig, ClientHandle, Handler, Subscription, Update, XdsClient};

/// Overridable with `AMBIT_BENCH_NAMESPACES` (e.g. 1, to measure per-client overhead alone).
fn namespaces() -> usize {
    std::env::var("AMBIT_BENCH_NAMESPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}
/// Overridable with `AMBIT_BENCH_CLIENTS` (fewer clients for profiling: the slope per client is
/// what matters).
fn clients() -> usize {
    std::env::var("AMBIT_BENCH_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}
const PODS_PER_NAMESPACE: usize = 200;
const SERVICES_PER_NAMESPACE: usize = 40;
const CHANGES: usize = 40;
const POLL_MS: u64 = 10;
const DEBOUNCE_MS: u64 = 10;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Counts resources and remembers the last revision seen of the pod being changed.
#[derive(Default)]
struct Counter {
    resources: Mutex<HashMap<String, Vec<u8>>>,
    updates: AtomicUsize,
    marker_hits: Mutex<Vec<(String, Instant)>>,
}

impl Handler for Counter {
    fn handle(&self, _type_url: &str, update: Update) -> Result<(), String> {
        let now = Instant::now();
        let mut resources = self.resources.lock().unwrap();
        for r in update.upserts {
            if r.name.ends_with("/pod-0-0") {
                self.marker_hits
                    .lock()
                    .unwrap()
                    .push((String::from_utf8_lossy(&r.body.value).into_owned(), now));
            }
            resources.insert(r.name, r.body.value);
        }
        for name in update.removals {
            resources.remove(&name);
        }
        self.updates.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn namespace_manifest(ns: usize, revision: &str) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns}, labels: {{istio.io/dataplane-mode: ambient}}}}\n"
    );
    for p in 0..PODS_PER_NAMESPACE {
        let version = if p == 0 { revision } else { "v1" };
        let svc = p % SERVICES_PER_NAMESPACE;
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{ns}-{p}, namespace: ns-{ns}, labels: {{app: app-{svc}, version: {version}}}}}\n\
             spec: {{serviceAccountName: sa-{svc}, nodeName: node-{n}, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
             status: {{podIP: 10.{a}.{b}.{c}, conditions: [{{type: Ready, status: 'True'}}]}}\n",
            n = p % 20,
            a = 1 + ns / 200,
            b = ns % 200,
            c = p + 1,
        );
    }
    for s in 0..SERVICES_PER_NAMESPACE {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata: {{name: app-{s}, namespace: ns-{ns}}}\n\
             spec: {{clusterIP: 10.96.{ns}.{ip}, selector: {{app: app-{s}}}, ports: [{{name: http, port: 80, targetPort: http}}]}}\n",
            ip = s + 1,
        );
    }
    out
}

fn write_namespace(dir: &Path, ns: usize, revision: &str) {
    let path = dir.join(format!("ns-{ns}.yaml"));
    let tmp = dir.join(format!(".ns-{ns}.yaml.tmp"));
    std::fs::write(&tmp, namespace_manifest(ns, revision)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

fn rss_mb(pid: u32) -> f64 {
    status_mb(pid, "VmRSS:")
}

/// A `/proc/<pid>/status` field given in kB, in MB.
fn status_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// Measurement hooks, for profiling only: prints RSS at each stage when
/// `AMBIT_BENCH_VERBOSE` is set, and runs `AMBIT_BENCH_STAGE_HOOK` through `sh -c` with `PID`
/// and `STAGE` in its environment (e.g. `vgdb --pid=$PID detailed_snapshot /tmp/$STAGE.ms`
/// when `AMBIT_BENCH_WRAPPER` runs the control plane under massif).
fn stage(pid: u32, name: &str) {
    if std::env::var_os("AMBIT_BENCH_VERBOSE").is_some() {
        println!(
            "  [{name}] RSS {:.1} MB (anon {:.1} MB)",
            rss_mb(pid),
            status_mb(pid, "RssAnon:")
        );
    }
    if let Ok(hook) = std::env::var("AMBIT_BENCH_STAGE_HOOK") {
        let status = Command::new("sh")
            .args(["-c", &hook])
            .env("PID", pid.to_string())
            .env("STAGE", name)
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            println!("  [{name}] stage hook failed: {status:?}");
        }
    }
}

fn metric(addr: &str, name: &str) -> u64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn client(addr: &str, counter: Arc<Counter>) -> ClientHandle {
    let channel = plaintext_channel(addr).unwrap();
    let config = ClientConfig::new(Node {
        id: "bench".into(),
        ..Node::default()
    })
    .subscribe(ambit_proto::ADDRESS_TYPE_URL, Subscription::Wildcard);
    XdsClient::spawn(
        move || std::future::ready(Ok(channel.clone())),
        config,
        counter,
    )
}

async fn wait_for(counters: &[Arc<Counter>], total: usize, limit: Duration) -> Duration {
    let start = Instant::now();
    while counters
        .iter()
        .any(|c| c.resources.lock().unwrap().len() < total)
    {
        assert!(
            start.elapsed() < limit,
            "clients did not sync within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    for ns in 0..namespaces() {
        write_namespace(&manifests, ns, "r0");
    }
    let total = namespaces() * (PODS_PER_NAMESPACE + SERVICES_PER_NAMESPACE);
    let ip = "127.77.0.1";
    let (xds_addr, mon_addr) = (format!("{ip}:15010"), format!("{ip}:15014"));
    let started = Instant::now();
    // `AMBIT_BENCH_WRAPPER`: a command prefix for the control plane, e.g. `valgrind
    // --tool=massif` (profiling only).
    let wrapper = std::env::var("AMBIT_BENCH_WRAPPER").unwrap_or_default();
    let mut command = wrapper.split_whitespace();
    let mut control = match command.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(command).arg(env!("CARGO_BIN_EXE_ambit"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_ambit")),
    };
    let control = Running(
        control
            .args([
                "--log-level",
                &std::env::var("AMBIT_BENCH_LOG").unwrap_or_else(|_| "warn".to_owned()),
                "control",
                "--config-dir",
                manifests.to_str().unwrap(),
                "--ca-dir",
                dir.path().join("ca").to_str().unwrap(),
            ])
            .args([
                "--plaintext-addr",
                &xds_addr,
                "--monitoring-addr",
                &mon_addr,
            ])
            .args([
                "--poll-ms",
                &POLL_MS.to_string(),
                "--debounce-ms",
                &DEBOUNCE_MS.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = control.0.id();
    while std::net::TcpStream::connect(&mon_addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "control plane did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let startup = started.elapsed();
    let idle_rss = rss_mb(pid);
    stage(pid, "idle");

    // One new client on a loaded control plane: time to the full state.
    let first = Arc::new(Counter::default());
    let _first_handle = client(&xds_addr, first.clone());
    let full_state = wait_for(
        std::slice::from_ref(&first),
        total,
        Duration::from_secs(300),
    )
    .await;
    stage(pid, "first-client");

    // 100 clients.
    let counters: Vec<Arc<Counter>> = (0..clients())
        .map(|_| Arc::new(Counter::default()))
        .collect();
    let handles: Vec<ClientHandle> = counters
        .iter()
        .map(|c| client(&xds_addr, c.clone()))
        .collect();
    let all_synced = wait_for(&counters, total, Duration::from_secs(600)).await;
    let rss_clients = rss_mb(pid);
    stage(pid, "synced");

    // Pod changes: rewrite one namespace file with a new version label on pod-0-0.
    let bytes_before = metric(&mon_addr, "ambit_xds_pushed_bytes_total");
    let mut latencies = Vec::with_capacity(CHANGES);
    for i in 1..=CHANGES {
        let revision = format!("r{i}");
        let needle = revision.clone();
        let t0 = Instant::now();
        write_namespace(&manifests, 0, &revision);
        loop {
            let done = counters.iter().all(|c| {
                c.marker_hits
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(body, _)| body.contains(&needle))
            });
            if done {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "change {i} did not reach all clients"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let last = counters
            .iter()
            .filter_map(|c| {
                c.marker_hits
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(body, _)| body.contains(&needle))
                    .map(|(_, t)| *t)
            })
            .max()
            .unwrap();
        latencies.push(last.duration_since(t0));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let bytes_after = metric(&mon_addr, "ambit_xds_pushed_bytes_total");
    latencies.sort();
    let per_change_per_client =
        (bytes_after - bytes_before) as f64 / (CHANGES * (clients() + 1)) as f64;
    let rss_end = rss_mb(pid);
    stage(pid, "after-changes");
    drop(handles);

    let n_clients = clients();
    println!(
        "WDS benchmark: {} pods, {} services, {n_clients} clients (+1), {CHANGES} changes",
        namespaces() * PODS_PER_NAMESPACE,
        namespaces() * SERVICES_PER_NAMESPACE
    );
    println!(
        "  control plane start-up (parse + translate + listen)  {:>8.0} ms",
        startup.as_secs_f64() * 1e3
    );
    println!("  control plane RSS, no clients                        {idle_rss:>8.1} MB");
    println!(
        "  control plane RSS, {n_clients} clients synced             {rss_clients:>8.1} MB   (target < 150 MB)"
    );
    println!("  control plane RSS, after changes                     {rss_end:>8.1} MB");
    println!(
        "  new client receives full state ({total} resources)  {:>8.0} ms   (target < 2000 ms)",
        full_state.as_secs_f64() * 1e3
    );
    println!(
        "  {n_clients} clients connect and sync                       {:>8.0} ms",
        all_synced.as_secs_f64() * 1e3
    );
    println!(
        "  one pod change (file edit) reaches all clients       p50 {:>5.1} ms  p99 {:>5.1} ms  max {:>5.1} ms   (target p99 < 100 ms; includes {POLL_MS} ms poll + {DEBOUNCE_MS} ms debounce)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3
    );
    println!(
        "  bytes pushed per change per client                   {per_change_per_client:>8.0} B    (one Workload resource)"
    );
}
