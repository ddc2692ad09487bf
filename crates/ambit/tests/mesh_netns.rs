//! The namespace tier: a whole mesh on this machine with real capture — pods as network
//! namespaces on a bridge, `ambit control`, and per node `ambit cni` and `ambit node --inpod`
//! as processes, the CNI plugin invoked as a runtime would. Needs root (CI) or a user namespace
//! (`scripts/test` re-runs itself under `unshare --user --map-root-user` when not root); fails
//! loudly otherwise.
//!
//! Each test owns its loopback addresses (`127.253.<n>.*`) and pod network (`10.<n>.0.0/16`).

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_localmesh::workloads::{self, EXPORTER_METRIC, Tally};
use ambit_localmesh::{Cluster, LocalMesh, Namespace, Options, Pod};
use ambit_netns::Netns;
use tokio::task::JoinHandle;

const PROMETHEUS_ID: &str = "spiffe://cluster.local/ns/prometheus/sa/prometheus-0";
const EXPORTER_ID: &str = "spiffe://cluster.local/ns/prometheus/sa/node-exporter";

fn mesh(n: u8, nodes: &[&str], cluster: Cluster) -> (LocalMesh, tempfile::TempDir) {
    assert!(
        ambit_localmesh::userns::is_root(),
        "the namespace tier needs root or a user namespace: run `scripts/test`, or \
         `unshare --user --map-root-user cargo test`"
    );
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        exe: env!("CARGO_BIN_EXE_ambit").into(),
        node_exe: Some(env!("CARGO_BIN_EXE_ambit-node").into()),
        block: n,
        roles: Ipv4Addr::new(127, 253, n, 1),
        nodes: nodes.iter().map(|s| (*s).to_owned()).collect(),
        dir: dir.path().to_owned(),
        log_level: "info".to_owned(),
        // AMBIT_TEST_ROLE_LOGS=1 prints every role's lines to stderr (for a failing test).
        sink: std::env::var_os("AMBIT_TEST_ROLE_LOGS").map(|_| {
            let sink: ambit_localmesh::process::LineSink =
                Arc::new(|role: &str, line: &str| eprintln!("[{role}] {line}"));
            sink
        }),
    };
    let mesh = LocalMesh::start(options, cluster).unwrap();
    (mesh, dir)
}

fn seed_cluster(n: u8, exporter_node: &str) -> Cluster {
    Cluster {
        namespaces: vec![
            Namespace::new("prometheus", true),
            Namespace::new("default", false),
        ],
        pods: vec![
            Pod::new(
                "prometheus",
                "prometheus-0",
                "node-a",
                Ipv4Addr::new(10, n, 1, 1),
            ),
            Pod::new(
                "prometheus",
                "node-exporter",
                exporter_node,
                Ipv4Addr::new(10, n, 1, 2),
            ),
            Pod::new("default", "client", "node-a", Ipv4Addr::new(10, n, 2, 1)),
            Pod::new(
                "default",
                "server",
                exporter_node,
                Ipv4Addr::new(10, n, 2, 2),
            ),
        ],
        extra: Vec::new(),
    }
}

fn netns(mesh: &LocalMesh, key: &str) -> Netns {
    mesh.topology().pod(key).unwrap().netns().clone()
}

/// Serves `/metrics` from the node-exporter pod on port 9100 until the test's runtime ends;
/// returns its address.
fn serve_exporter(mesh: &LocalMesh, n: u8) -> SocketAddr {
    let exporter = SocketAddr::from((Ipv4Addr::new(10, n, 1, 2), 9100));
    workloads::serve_metrics(&netns(mesh, "prometheus/node-exporter"), exporter).unwrap();
    exporter
}

/// Serves echo on `addr` from pod `key` until the test's runtime ends.
fn serve_echo(mesh: &LocalMesh, key: &str, addr: SocketAddr) {
    workloads::serve_echo(&netns(mesh, key), addr).unwrap();
}

/// Sends a line to the echo server at `server` from pod `key` every 200 ms.
fn echo_from(mesh: &LocalMesh, key: &str, server: SocketAddr) -> (Arc<Tally>, JoinHandle<()>) {
    workloads::echo_every(netns(mesh, key), server, Duration::from_millis(200))
}

/// Waits until `tally` counts at least `ok` successful exchanges.
fn wait_for_ok(what: &str, timeout: Duration, tally: &Tally, ok: u64) {
    eventually(what, timeout, || {
        if tally.ok() >= ok {
            Ok(())
        } else {
            Err(format!("{} ok, {:?}", tally.ok(), tally.last_error()))
        }
    });
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Whether `netns` holds Ambit's capture table.
fn captured(netns: &Netns) -> bool {
    let mut nft = Command::new("nft");
    nft.args(["list", "tables"]);
    let out = netns.output(nft).unwrap();
    String::from_utf8_lossy(&out.stdout).contains("ambit")
}

/// Sum of `name` samples whose labels contain every `labels` fragment.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A packet capture of the whole wire (every pod's veth), through `ambit verify`'s capture.
struct Capture(ambit_verify::capture::RunningCapture);

impl Capture {
    fn start(mesh: &LocalMesh, dir: &std::path::Path) -> Self {
        let spec = ambit_verify::capture::CaptureSpec::tcp("any", dir.join("wire.pcap"))
            .in_netns(mesh.topology().wire().clone(), "wire");
        // From the return on, every frame on the wire is queued for the file.
        Self(ambit_verify::capture::start(spec).expect("a packet socket in the wire namespace"))
    }

    /// Stops and returns the captured TCP flows.
    fn stop(self) -> Vec<ambit_verify::flows::Flow> {
        std::thread::sleep(Duration::from_millis(300));
        let path = self.0.output().to_owned();
        self.0.stop().unwrap();
        let trace = ambit_verify::pcap::read_file(&path).unwrap();
        ambit_verify::flows::assemble(&trace.segments)
    }
}

fn any_contains(flows: &[ambit_verify::flows::Flow], needle: &str) -> bool {
    flows.iter().any(|f| f.contains(needle.as_bytes()))
}

#[test]
fn the_seed_scenario_prometheus_scrapes_over_mutual_tls_across_nodes() {
    let n = 71;
    let (mesh, dir) = mesh(n, &["node-a", "node-b"], seed_cluster(n, "node-b"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let exporter = serve_exporter(&mesh, n);
    let capture = Capture::start(&mesh, dir.path());

    // Debian's real Prometheus, inside the enrolled pod, scraping every second.
    let prom_dir = dir.path().join("prom");
    std::fs::create_dir_all(&prom_dir).unwrap();
    std::fs::write(
        prom_dir.join("prometheus.yml"),
        format!("global: {{scrape_interval: 1s, scrape_timeout: 900ms}}\nscrape_configs:\n  - job_name: node-exporter\n    static_configs: [{{targets: ['{exporter}']}}]\n"),
    )
    .unwrap();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!(
        "--config.file={}",
        prom_dir.join("prometheus.yml").display()
    ))
    .arg(format!(
        "--storage.tsdb.path={}",
        prom_dir.join("data").display()
    ))
    .arg("--web.listen-address=127.0.0.1:9090")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let prom_ns = netns(&mesh, "prometheus/prometheus-0");
    let mut prometheus = prom_ns
        .spawn(cmd)
        .expect("prometheus (apt-get install prometheus)");

    eventually(
        "Prometheus reports its target up",
        Duration::from_secs(45),
        || {
            let body = rt.block_on(async {
                let mut s = workloads::connect_in(&prom_ns, "127.0.0.1:9090".parse().unwrap())
                    .await
                    .map_err(|e| e.to_string())?;
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                s.write_all(
                    b"GET /api/v1/targets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                )
                .await
                .map_err(|e| e.to_string())?;
                let mut body = String::new();
                s.read_to_string(&mut body)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(body)
            })?;
            if body.contains("\"health\":\"up\"") {
                Ok(())
            } else {
                Err(body)
            }
        },
    );
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let wire = capture.stop();

    // The access log names the source workload, its namespace and both identities.
    let logs = mesh.proxy_lines("node-a").join("\n") + &mesh.proxy_lines("node-b").join("\n");
    let line = logs
        .lines()
        .find(|l| {
            l.contains("\tinfo\taccess\tconnection complete\t")
                && l.contains("src.workload=\"prometheus-0\"")
        })
        .unwrap_or_else(|| panic!("no access log line for prometheus-0:\n{logs}"));
    for field in ["src.namespace=\"prometheus\"", PROMETHEUS_ID, EXPORTER_ID] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    // Istio's metrics counted mutual TLS on both ends.
    let opened = metric(
        &mesh.metrics("node-b").unwrap(),
        "istio_tcp_connections_opened_total",
        &[
            "reporter=\"destination\"",
            "connection_security_policy=\"mutual_tls\"",
            "source_workload=\"prometheus-0\"",
        ],
    );
    assert!(
        opened >= 1.0,
        "destination-reported mTLS connections: {opened}"
    );
    // The wire carried the scrapes over HBONE (TLS both ways), never the metric names or the
    // request in plaintext.
    use ambit_verify::flows::Class;
    let exporter_ip = std::net::IpAddr::from(Ipv4Addr::new(10, n, 1, 2));
    let hbone: Vec<_> = wire
        .iter()
        .filter(|f| f.server.ip() == exporter_ip && f.server.port() == 15008)
        .collect();
    assert!(
        !hbone.is_empty(),
        "no HBONE flow to the exporter on the wire"
    );
    for flow in &hbone {
        for class in [flow.to_server.class, flow.to_client.class] {
            assert!(matches!(class, Class::Tls | Class::Empty), "{flow:?}");
        }
    }
    assert!(
        !wire
            .iter()
            .any(|f| f.server.ip() == exporter_ip && f.server.port() == 9100),
        "a scrape went to the exporter's port directly"
    );
    for needle in ["node_cpu_seconds_total", EXPORTER_METRIC, "GET /metrics"] {
        assert!(
            !any_contains(&wire, needle),
            "{needle:?} crossed the wire in plaintext"
        );
    }
}

#[test]
fn a_namespace_outside_the_mesh_stays_plaintext_and_untouched() {
    let n = 72;
    let (mesh, dir) = mesh(n, &["node-a"], seed_cluster(n, "node-a"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    assert!(!captured(&netns(&mesh, "default/client")));
    assert!(!captured(&netns(&mesh, "default/server")));
    assert!(captured(&netns(&mesh, "prometheus/prometheus-0")));

    let server = SocketAddr::from((Ipv4Addr::new(10, n, 2, 2), 8080));
    serve_echo(&mesh, "default/server", server);
    let capture = Capture::start(&mesh, dir.path());
    let (tally, task) = echo_from(&mesh, "default/client", server);
    wait_for_ok("plaintext echoes", Duration::from_secs(10), &tally, 3);
    task.abort();
    let wire = capture.stop();
    assert!(
        any_contains(&wire, "hello 1"),
        "the unenrolled echo is visible on the wire, as it should be"
    );
    let text = mesh.metrics("node-a").unwrap();
    assert_eq!(
        metric(
            &text,
            "istio_tcp_connections_opened_total",
            &["source_workload=\"client\""]
        ),
        0.0,
        "the node proxy never saw the unenrolled pod's traffic"
    );
}

#[test]
fn a_running_pod_is_enrolled_by_label_and_opted_out_without_restart() {
    let n = 73;
    let (mut mesh, _dir) = mesh(n, &["node-a"], seed_cluster(n, "node-a"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let client = netns(&mesh, "default/client");
    let inode = client.inode();
    let server = SocketAddr::from((Ipv4Addr::new(10, n, 2, 2), 8080));
    serve_echo(&mesh, "default/server", server);

    mesh.relabel(|c| {
        c.namespace_mut("default")
            .unwrap()
            .labels
            .insert("istio.io/dataplane-mode".into(), "ambient".into())
            .map(drop)
            .unwrap_or(())
    })
    .unwrap();
    eventually("default's pods captured", Duration::from_secs(20), || {
        if captured(&client) && captured(&netns(&mesh, "default/server")) {
            Ok(())
        } else {
            Err("not yet".into())
        }
    });
    assert_eq!(
        netns(&mesh, "default/client").inode(),
        inode,
        "same pod, not restarted"
    );
    let (tally, task) = echo_from(&mesh, "default/client", server);
    eventually("echoes over mutual TLS", Duration::from_secs(20), || {
        let text = mesh.metrics("node-a").map_err(|e| e.to_string())?;
        let m = metric(
            &text,
            "istio_tcp_connections_opened_total",
            &[
                "source_workload=\"client\"",
                "connection_security_policy=\"mutual_tls\"",
            ],
        );
        if m >= 1.0 && tally.ok() >= 1 {
            Ok(())
        } else {
            Err(format!(
                "mtls {m}, ok {}, {:?}",
                tally.ok(),
                tally.last_error()
            ))
        }
    });
    task.abort();

    // Opt the client out with the pod label: its capture goes, the running pod stays.
    mesh.relabel(|c| {
        c.pod_mut("default", "client")
            .unwrap()
            .labels
            .insert("istio.io/dataplane-mode".into(), "none".into());
    })
    .unwrap();
    eventually("client released", Duration::from_secs(20), || {
        if captured(&client) {
            Err("still captured".into())
        } else {
            Ok(())
        }
    });
    assert!(
        captured(&netns(&mesh, "default/server")),
        "the server stays enrolled"
    );
}

/// A pod created in a cluster's order (its object without an IP, then its sandbox, then CNI ADD
/// with the IP in `prevResult`, then kubelet's `status.podIP`) is captured, handed to the node
/// proxy and marked `ambient.istio.io/redirection: enabled` by the time ADD returns, so its
/// very first connection, opened before kubelet wrote its IP, is carried over mutual TLS and
/// nothing it sends crosses the wire in plaintext.
#[test]
fn a_pod_created_in_a_clusters_order_is_captured_before_add_returns() {
    let n = 78;
    let (mut mesh, dir) = mesh(n, &["node-a"], seed_cluster(n, "node-a"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let exporter = serve_exporter(&mesh, n);
    let admin = mesh.node_addrs("node-a").unwrap().admin;

    mesh.create_pod_object(Pod::new(
        "prometheus",
        "fresh",
        "node-a",
        Ipv4Addr::new(10, n, 1, 9),
    ))
    .unwrap();
    mesh.create_sandbox("prometheus", "fresh").unwrap();
    let fresh = netns(&mesh, "prometheus/fresh");
    assert!(!captured(&fresh), "nothing in the sandbox before ADD");
    mesh.cni_add("prometheus", "fresh").unwrap();

    // The moment ADD returned: rules, node proxy, mark.
    assert!(captured(&fresh), "rules in place when ADD returned");
    let dump = ambit_localmesh::http::get(admin, "/config_dump", Duration::from_secs(5))
        .unwrap()
        .1;
    assert!(
        dump.contains("\"fresh\""),
        "the node proxy has the pod: {dump}"
    );
    let objects = std::fs::read_to_string(dir.path().join("manifests/prometheus.yaml")).unwrap();
    let annotations = ambit_model::manifest_dir::pod_annotations(&objects);
    let (_, fresh_annotations) = annotations
        .iter()
        .find(|((ns, name, _), _)| ns == "prometheus" && name == "fresh")
        .unwrap_or_else(|| panic!("the pod's object is in the directory: {objects}"));
    assert_eq!(
        fresh_annotations
            .get("ambient.istio.io/redirection")
            .map(String::as_str),
        Some("enabled"),
        "marked when ADD returned: {objects}"
    );
    let fresh_object = objects
        .split("\n---\n")
        .find(|d| d.contains("fresh") && !d.contains("ServiceAccount"))
        .unwrap();
    assert!(
        !fresh_object.contains("podIP"),
        "kubelet has not written the IP yet: {fresh_object}"
    );

    // The pod's first connection, opened before kubelet writes its status: the node proxy
    // holds it (as ztunnel does, for up to 5 s) until the control plane serves the pod's
    // workload, which it does once kubelet wrote the IP, and then carries it over mTLS.
    let capture = Capture::start(&mesh, dir.path());
    let (tally, task) =
        workloads::scrape_every(fresh.clone(), exporter, Duration::from_millis(200));
    std::thread::sleep(Duration::from_millis(500));
    mesh.write_pod_status("prometheus", "fresh").unwrap();
    wait_for_ok("the first scrape", Duration::from_secs(20), &tally, 1);
    task.abort();
    let wire = capture.stop();
    assert_eq!(
        tally.failed(),
        0,
        "no attempt failed: {:?}",
        tally.last_error()
    );
    assert!(
        !any_contains(&wire, "GET /metrics"),
        "nothing in plaintext on the wire"
    );
    let text = mesh.metrics("node-a").unwrap();
    let opened = |policy: &str| {
        metric(
            &text,
            "istio_tcp_connections_opened_total",
            &[
                "source_workload=\"fresh\"",
                &format!("connection_security_policy=\"{policy}\""),
            ],
        )
    };
    assert!(opened("mutual_tls") >= 1.0, "{text}");
    assert_eq!(opened("unknown"), 0.0, "no plaintext connection: {text}");
}

#[test]
fn a_node_proxy_restart_refuses_rather_than_leaks_and_then_recovers() {
    let n = 74;
    let (mut mesh, dir) = mesh(n, &["node-a"], seed_cluster(n, "node-a"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let exporter = serve_exporter(&mesh, n);
    let prom = netns(&mesh, "prometheus/prometheus-0");

    mesh.restart_proxy("node-a", false).unwrap();
    let capture = Capture::start(&mesh, dir.path());
    let (tally, task) = workloads::scrape_every(prom.clone(), exporter, Duration::from_millis(200));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        tally.ok(),
        0,
        "no scrape may succeed while the node proxy is down"
    );
    assert!(tally.failed() >= 1);
    let wire = capture.stop();
    assert!(
        !any_contains(&wire, "GET /metrics"),
        "nothing escaped in plaintext while the proxy was down"
    );

    mesh.restart_proxy("node-a", true).unwrap();
    wait_for_ok(
        "scrapes work after the restart",
        Duration::from_secs(20),
        &tally,
        1,
    );
    task.abort();
}

#[test]
fn a_capture_agent_restart_reconciles_pods_added_and_removed_meanwhile() {
    let n = 75;
    let (mut mesh, _dir) = mesh(n, &["node-a"], seed_cluster(n, "node-a"));
    let admin = mesh.node_addrs("node-a").unwrap().admin;
    let dump = || {
        ambit_localmesh::http::get(admin, "/config_dump", Duration::from_secs(5))
            .unwrap()
            .1
    };
    assert!(dump().contains("node-exporter"));

    mesh.restart_agent("node-a", false).unwrap();
    // Removed while the agent is away: DEL still succeeds (the runtime must be able to clean up).
    mesh.remove_pod("prometheus", "node-exporter").unwrap();
    mesh.restart_agent("node-a", true).unwrap();
    // Added after the restart.
    mesh.add_pod(Pod::new(
        "prometheus",
        "late",
        "node-a",
        Ipv4Addr::new(10, n, 1, 9),
    ))
    .unwrap();
    eventually(
        "the node proxy holds exactly the surviving pods",
        Duration::from_secs(20),
        || {
            let d = dump();
            if d.contains("\"late\"") && !d.contains("node-exporter") && d.contains("prometheus-0")
            {
                Ok(())
            } else {
                Err(d)
            }
        },
    );
}

#[test]
fn strict_peer_authentication_refuses_plaintext_from_outside_the_mesh() {
    let n = 76;
    let (mut mesh, _dir) = mesh(n, &["node-a"], seed_cluster(n, "node-a"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    // An enrolled server, reached in plaintext by the unenrolled client (through the server
    // pod's 15006) and over HBONE by the enrolled prometheus-0.
    let server = SocketAddr::from((Ipv4Addr::new(10, n, 1, 2), 8080));
    serve_echo(&mesh, "prometheus/node-exporter", server);
    let (outside, outside_task) = echo_from(&mesh, "default/client", server);
    let (inside, inside_task) = echo_from(&mesh, "prometheus/prometheus-0", server);
    eventually("PERMISSIVE accepts both", Duration::from_secs(15), || {
        if outside.ok() >= 2 && inside.ok() >= 2 {
            Ok(())
        } else {
            Err(format!(
                "outside {} {:?}, inside {} {:?}",
                outside.ok(),
                outside.last_error(),
                inside.ok(),
                inside.last_error()
            ))
        }
    });

    mesh.relabel(|c| {
        c.extra.push(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {name: strict, namespace: prometheus}\nspec: {mtls: {mode: STRICT}}\n"
                .to_owned(),
        )
    })
    .unwrap();
    eventually(
        "STRICT refuses the plaintext client",
        Duration::from_secs(20),
        || {
            let before = outside.failed();
            std::thread::sleep(Duration::from_millis(600));
            if outside.failed() > before + 1 {
                Ok(())
            } else {
                Err(format!("failed {before} → {}", outside.failed()))
            }
        },
    );
    let (ok, mtls_before) = (outside.ok(), inside.ok());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        outside.ok(),
        ok,
        "no plaintext exchange succeeds under STRICT"
    );
    assert!(
        inside.ok() > mtls_before,
        "mutual TLS still gets through: {:?}",
        inside.last_error()
    );
    let text = mesh.metrics("node-a").unwrap();
    assert!(
        metric(
            &text,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"destination\"",
                "connection_security_policy=\"mutual_tls\"",
                "source_workload=\"prometheus-0\""
            ]
        ) >= 1.0
    );
    outside_task.abort();
    inside_task.abort();
}

/// Runs `ambit verify` capturing the whole wire for `seconds`; returns (success, stdout).
fn verify(mesh: &LocalMesh, seconds: u32) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ambit"));
    command
        .args([
            "verify",
            "--capture",
            &seconds.to_string(),
            "--interface",
            "any",
        ])
        .arg("--capture-netns")
        .arg(mesh.topology().wire_path());
    for node in mesh.nodes() {
        let addrs = mesh.node_addrs(&node.name).unwrap();
        command
            .args(["--admin", &addrs.admin.to_string()])
            .args(["--stats", &addrs.stats.to_string()]);
    }
    let out = command.output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn verify_passes_on_the_mesh_and_fails_on_a_pod_whose_capture_was_removed() {
    let n = 77;
    let (mesh, _dir) = mesh(n, &["node-a"], seed_cluster(n, "node-a"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _guard = rt.enter();
    let exporter = serve_exporter(&mesh, n);
    let prom = netns(&mesh, "prometheus/prometheus-0");
    let (tally, task) = workloads::scrape_every(prom.clone(), exporter, Duration::from_millis(100));

    let (ok, out) = verify(&mesh, 2);
    assert!(ok, "verify fails on a healthy mesh:\n{out}");
    assert!(
        out.contains("prometheus-0") && out.contains("node-exporter"),
        "{out}"
    );
    assert!(!out.contains("PLAINTEXT"), "{out}");

    // Someone deletes the pod's capture rules: its scrapes now cross the wire in plaintext (the
    // exporter's own rules still take them, through 15006, as PERMISSIVE allows).
    let mut nft = Command::new("nft");
    nft.args(["delete", "table", "inet", "ambit"]);
    assert!(prom.output(nft).unwrap().status.success());
    let before = tally.ok();
    // Three more succeed, with the client pod's rules gone.
    wait_for_ok(
        "plaintext scrapes",
        Duration::from_secs(10),
        &tally,
        before + 3,
    );
    let (ok, out) = verify(&mesh, 2);
    assert!(
        !ok,
        "verify passed although an enrolled pod sent plaintext:\n{out}"
    );
    assert!(out.contains("PLAINTEXT"), "{out}");
    task.abort();
}
