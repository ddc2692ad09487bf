//! `ambit demo`: a whole ambient mesh on this machine for a newcomer to watch, with real capture:
//! pods as network namespaces on a bridge, and the mesh's roles as processes of the running
//! binary (control plane, and per node a capture agent and an in-pod node proxy), composed by
//! [`LocalMesh`]. This process plays the container runtime (it creates pods and calls
//! `ambit cni plugin`) and runs the pods' applications.
//!
//! Namespace `prometheus` is enrolled (`istio.io/dataplane-mode: ambient`): `prometheus-0`
//! scrapes `node-exporter` (over HBONE with mutual TLS, across nodes when there are two);
//! `default` is not: `client` talks to the echo `server` in plaintext. Everything shown comes
//! from the node proxies' own metrics ([`flows`]); the roles' access logs and problems go to
//! stderr. On exit every process and namespace is gone and the temporary directory removed; the
//! result says whether the enrolled traffic was carried over mutual TLS and the rest left alone.
//!
//! When not root, the demo first re-runs itself inside a user namespace, so nothing on the
//! host changes and no privilege is needed.

mod flows;
mod prometheus;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::signal::unix::{Signal, SignalKind, signal};

use self::flows::Flows;
use crate::workloads::{self, Tally};
use crate::{Cluster, LocalMesh, Namespace, Options, Pod};

/// What `ambit demo` was asked for.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Stop after this many seconds of traffic (`None`: at Ctrl-C).
    pub duration: Option<u64>,
    /// Pods on `10.<block>.0.0/16`, the roles on `127.<block>.0.1`.
    pub loopback_block: u8,
    /// Nodes (each a capture agent and a node proxy): 1 or 2.
    pub nodes: u8,
    /// Scrape with Debian's real `prometheus` instead of the built-in scraper.
    pub with_prometheus: bool,
}

const REFRESH: Duration = Duration::from_secs(2);
const EXPORTER_PORT: u16 = 9100;
const ECHO_PORT: u16 = 8080;

/// The cluster the demo builds, on `10.<block>.0.0/16`.
fn cluster(block: u8, nodes: &[String]) -> Cluster {
    let ip = |c, d| Ipv4Addr::new(10, block, c, d);
    let last = nodes.last().map_or("node-a", String::as_str);
    let first = nodes.first().map_or("node-a", String::as_str);
    Cluster {
        namespaces: vec![
            Namespace::new("prometheus", true),
            Namespace::new("default", false),
        ],
        pods: vec![
            Pod::new("prometheus", "prometheus-0", first, ip(1, 1)),
            Pod::new("prometheus", "node-exporter", last, ip(1, 2)),
            Pod::new("default", "client", first, ip(2, 1)),
            Pod::new("default", "server", last, ip(2, 2)),
        ],
        extra: Vec::new(),
    }
}

/// Builds the mesh, runs the applications until the duration ends or Ctrl-C, tears everything
/// down and prints the verdict; fails if the enrolled traffic was not carried over mutual TLS.
pub fn run(args: &DemoOptions) -> anyhow::Result<()> {
    crate::userns::reexec_unless_root().context("the demo needs its own network namespaces")?;
    check_prerequisites(args.with_prometheus)?;
    let nodes: Vec<String> = (0..args.nodes)
        .map(|k| format!("node-{}", char::from(b'a' + k)))
        .collect();
    let stopping = Arc::new(AtomicBool::new(false));
    let stopping_sink = stopping.clone();
    let dir = tempfile::Builder::new()
        .prefix("ambit-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let options = Options {
        exe: std::env::current_exe().context("cannot find the ambit binary")?,
        // One binary for the whole demo.
        node_exe: None,
        block: args.loopback_block,
        roles: Ipv4Addr::new(127, args.loopback_block, 0, 1),
        nodes: nodes.clone(),
        dir: dir.path().to_owned(),
        log_level: "warn,access=info".to_owned(),
        sink: Some(Arc::new(move |role: &str, line: &str| {
            // The roles write ztunnel's text lines: time, level, target, message, fields.
            let mut columns = line.split('\t').skip(1);
            let (level, target) = (columns.next(), columns.next());
            let shown = target == Some("access") || matches!(level, Some("warn" | "error"));
            // Stopping the roles makes them report lost peers: expected, so not shown.
            if shown && !stopping_sink.load(Ordering::Relaxed) {
                eprintln!("[{role}] {line}");
            }
        })),
    };
    let cluster = cluster(args.loopback_block, &nodes);
    println!(
        "ambit demo: {} node(s), pods as network namespaces on 10.{}.0.0/16{}",
        nodes.len(),
        args.loopback_block,
        if crate::userns::is_root() && std::env::var_os(crate::userns::MARKER).is_some() {
            " (inside a user namespace: nothing on the host changes)"
        } else {
            ""
        }
    );
    println!(
        "  namespace prometheus: istio.io/dataplane-mode=ambient (enrolled); default: not enrolled"
    );
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    // From here on Ctrl-C is caught (and acted on once the mesh is up), so it never leaves
    // roles or namespaces behind.
    let mut interrupt = {
        let _runtime = runtime.enter();
        signal(SignalKind::interrupt()).context("cannot catch Ctrl-C")?
    };
    println!("starting control plane, capture agent(s) and node proxy(ies), creating pods…");
    let started = Instant::now();
    let mesh = LocalMesh::start(options, cluster).context("cannot build the local mesh")?;
    println!(
        "mesh ready in {:.1}s; files in {}",
        started.elapsed().as_secs_f64(),
        dir.path().display()
    );
    for pod in &mesh.cluster().pods {
        println!(
            "  pod {:<26} {:<14} on {}  identity {}",
            pod.key(),
            pod.ip.to_string(),
            pod.node,
            pod.identity()
        );
    }

    let outcome = runtime.block_on(run_workloads(args, &mesh, &mut interrupt));
    runtime.shutdown_timeout(Duration::from_secs(2));
    stopping.store(true, Ordering::Relaxed);
    let flows = flows(&mesh);
    println!("\nFLOWS (final)\n{}", flows.table());
    drop(mesh);
    let path = dir.path().to_owned();
    dir.close()
        .with_context(|| format!("cannot remove {}", path.display()))?;
    println!(
        "removed every namespace and process, and {}",
        path.display()
    );
    let (scrapes, echoes) = outcome?;
    verdict(&flows, scrapes, echoes)
}

/// Runs the applications until the duration ends or Ctrl-C, printing FLOWS as it goes;
/// returns (scrapes ok/failed, echoes ok/failed).
async fn run_workloads(
    args: &DemoOptions,
    mesh: &LocalMesh,
    interrupt: &mut Signal,
) -> anyhow::Result<((u64, u64), (u64, u64))> {
    let pod = |key: &str| {
        mesh.topology()
            .pod(key)
            .map(|p| (p.netns().clone(), p.ip()))
            .with_context(|| format!("pod {key} is missing"))
    };
    let (exporter_ns, exporter_ip) = pod("prometheus/node-exporter")?;
    let (prom_ns, _) = pod("prometheus/prometheus-0")?;
    let (server_ns, server_ip) = pod("default/server")?;
    let (client_ns, _) = pod("default/client")?;
    let exporter = SocketAddr::from((exporter_ip, EXPORTER_PORT));
    let server = SocketAddr::from((server_ip, ECHO_PORT));
    let mut tasks = vec![
        workloads::serve_metrics(&exporter_ns, exporter).context("node-exporter")?,
        workloads::serve_echo(&server_ns, server).context("server")?,
    ];
    let mut prometheus = None;
    let scrapes: Arc<Tally> = if args.with_prometheus {
        prometheus = Some(prometheus::start(&prom_ns, exporter, mesh.dir())?);
        Arc::new(Tally::default())
    } else {
        let (tally, task) =
            workloads::scrape_every(prom_ns.clone(), exporter, Duration::from_secs(1));
        tasks.push(task);
        tally
    };
    let (echoes, task) = workloads::echo_every(client_ns, server, Duration::from_secs(1));
    tasks.push(task);
    print_endpoints(mesh);

    match args.duration {
        Some(seconds) => println!("\nrunning for {seconds}s (Ctrl-C stops earlier)"),
        None => println!("\nrunning until Ctrl-C"),
    }
    let started = Instant::now();
    let end = async {
        match args.duration {
            Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end);
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + REFRESH, REFRESH);
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                let scraped = match &prometheus {
                    Some(p) => p.target_health(&prom_ns).await,
                    None => format!("scrapes {} ok, {} failed", scrapes.ok(), scrapes.failed()),
                };
                println!(
                    "\nFLOWS at {}s (from the node proxies' istio_tcp_* metrics) · {scraped} · echoes {} ok, {} failed",
                    started.elapsed().as_secs(), echoes.ok(), echoes.failed(),
                );
                print!("{}", flows(mesh).table());
            }
            () = &mut end => break,
            _ = interrupt.recv() => { println!("\ninterrupted"); break }
        }
    }
    let scrape_counts = match &prometheus {
        Some(p) => p.scrape_counts(&prom_ns).await,
        None => (scrapes.ok(), scrapes.failed()),
    };
    // Clients first, so no exchange is cut short by its server going away.
    for task in tasks.into_iter().rev() {
        task.abort();
    }
    drop(prometheus);
    Ok((scrape_counts, (echoes.ok(), echoes.failed())))
}

fn flows(mesh: &LocalMesh) -> Flows {
    let texts: Vec<(String, String)> = mesh
        .nodes()
        .iter()
        .map(|n| (n.name.clone(), mesh.metrics(&n.name).unwrap_or_default()))
        .collect();
    Flows::from_metrics(texts.iter().map(|(n, t)| (n.as_str(), t.clone())))
}

fn verdict(flows: &Flows, scrapes: (u64, u64), echoes: (u64, u64)) -> anyhow::Result<()> {
    let enrolled = flows.link("prometheus-0", "node-exporter");
    println!("\nSUMMARY");
    println!(
        "  prometheus-0 → node-exporter: {} scrapes ok, {} failed; {} connection(s) over mutual TLS, {} in plaintext{}",
        scrapes.0,
        scrapes.1,
        enrolled.mtls_connections,
        enrolled.plaintext_connections,
        enrolled
            .principals
            .as_ref()
            .map(|(s, d)| format!(" ({s} → {d})"))
            .unwrap_or_default()
    );
    println!(
        "  client → server (namespace default, not enrolled): {} echoes ok, {} failed; not captured, plaintext as expected",
        echoes.0, echoes.1
    );
    if scrapes.0 == 0 || enrolled.mtls_connections == 0 || enrolled.plaintext_connections > 0 {
        bail!("the demo did not show the enrolled namespace's traffic carried over mutual TLS");
    }
    if echoes.0 == 0 {
        bail!("the namespace outside the mesh could not talk plaintext");
    }
    println!(
        "  verdict: the enrolled namespace's traffic was carried over mutual TLS; the other was left alone"
    );
    Ok(())
}

fn print_endpoints(mesh: &LocalMesh) {
    println!("\nTry, while it runs (from this machine's shell):");
    for node in mesh.nodes() {
        if let Some(a) = mesh.node_addrs(&node.name) {
            println!(
                "  curl http://{}/stats/prometheus   # {} metrics",
                a.stats, node.name
            );
            println!(
                "  curl http://{}/healthz/ready      # {} readiness",
                a.readiness, node.name
            );
            println!(
                "  curl http://{}/config_dump        # {} pods, workloads, certificates",
                a.admin, node.name
            );
        }
    }
    println!(
        "  curl http://{}/debug/workloads     # the control plane's view",
        mesh.control_monitoring()
    );
    // Proof from the wire: capture every pod's packets on the bridge and check they are TLS.
    let mut verify = format!(
        "ambit verify --capture 5 --capture-netns {} --interface any",
        mesh.topology().wire_path().display()
    );
    for node in mesh.nodes() {
        if let Some(a) = mesh.node_addrs(&node.name) {
            verify.push_str(&format!(" --admin {} --stats {}", a.admin, a.stats));
        }
    }
    if std::env::var_os(crate::userns::MARKER).is_some() {
        // The pods' namespaces belong to this run's user namespace: capturing in them needs
        // its root, which the same user becomes by joining it (the network stays the host's,
        // where the node proxies' admin ports listen).
        verify = format!(
            "nsenter --user --preserve-credentials --target {} {verify}",
            std::process::id()
        );
    }
    println!("  {verify}");
}

/// Fails early, saying how to install what is missing.
fn check_prerequisites(with_prometheus: bool) -> anyhow::Result<()> {
    let mut needed = vec![("ip", "iproute2"), ("sleep", "coreutils")];
    if !has("nft") && !has("iptables") {
        needed.push(("nft", "nftables"));
    }
    if !crate::userns::is_root() {
        needed.push(("unshare", "util-linux"));
    }
    if with_prometheus {
        needed.push(("prometheus", "prometheus"));
    }
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(bin, _)| !has(bin))
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        bail!(
            "missing prerequisites; install them with: sudo apt-get install {}",
            missing.join(" ")
        );
    }
    Ok(())
}

fn has(binary: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .output()
        .is_ok_and(|o| o.status.success())
}
