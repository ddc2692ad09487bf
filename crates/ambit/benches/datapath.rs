//! The data-path benchmark: what Ambit costs against direct TCP, measured in one run on one
//! machine.
//!
//! Two nodes (`node-a`, `node-b`), each a real `ambit node --inpod` with a real capture agent,
//! and two namespaces of two pods each: in `bench` (enrolled) the client pod on node-a talks to
//! the server pod on node-b through both node proxies over HBONE (mutual TLS 1.3, HTTP/2
//! CONNECT); in `plain` (not enrolled) the same two pods on the same bridge talk directly. With
//! `ZTUNNEL_BIN` naming a stock ztunnel binary, two more nodes (`zt-a`, `zt-b`) run it as their
//! proxy, each in a network namespace of its own, fed by the same control plane and their own
//! capture agents, with a third pair in the enrolled namespace `zt` between them. The same
//! clients and servers run on every pair, the order rotating every round (latency tests in
//! short blocks that take turns) so drift hits all. `docs/performance.md` explains the figures
//! and what limits them.
//!
//! Figures: iperf3 throughput with 1 and 8 streams; 1 B and 1 KiB request/response latency on
//! one connection; connect + 1 B echo + close latency; new connections per second; HTTP
//! requests per second with wrk (keep-alive) and ab (a connection per request); CPU seconds per
//! GB and per 10,000 requests; node-proxy RSS idle and with 1,000 and 10,000 idle connections.
//! Printed as a Markdown table and written to `<target dir>/bench/report.json`.
//!
//! Run: `scripts/bench` (installs iperf3, wrk and ab, raises the open-file limit), or
//! `cargo bench -p ambit --bench datapath` as root. Settings (environment):
//! `AMBIT_BENCH_SECONDS` per throughput/rate run (4), `AMBIT_BENCH_ROUNDS` (2),
//! `AMBIT_BENCH_SAMPLES` latency samples per round (4000), `AMBIT_BENCH_IDLE` idle connection
//! counts (`1000,10000`), `AMBIT_BENCH_ONLY` a comma list of tests (stream1, stream8, rr1,
//! rr1k, connect, rate, wrk, ab, idle), `AMBIT_BENCH_LOG` the roles' log filter (`info`, the
//! node proxy's default: access logs on), `AMBIT_BENCH_REPORT` the JSON path,
//! `AMBIT_BENCH_EXE` another `ambit` binary to measure (e.g. a build with a proposed change;
//! the node proxies run as the `ambit-node` beside it if there is one, else as `ambit node`),
//! `AMBIT_BENCH_SAMPLES_DIR` a folder to append every latency sample to (nanoseconds, one per
//! line, a file per test and side), `ZTUNNEL_BIN` a stock ztunnel to measure beside Ambit
//! (without it the report says the ztunnel column was not run).

#![allow(clippy::unwrap_used, clippy::print_stdout, clippy::print_stderr)] // a benchmark program

#[path = "datapath/clients.rs"]
mod clients;
#[path = "datapath/figures.rs"]
mod figures;
#[path = "datapath/probe.rs"]
mod probe;
#[path = "datapath/report.rs"]
mod report;
#[path = "datapath/servers.rs"]
mod servers;
#[path = "datapath/suite.rs"]
mod suite;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use ambit_localmesh::process::Role;
use ambit_localmesh::ztunnel::ZtunnelNodes;
use ambit_localmesh::{Cluster, LocalMesh, Namespace, Options, Pod};

use crate::clients::ClientPod;
use crate::probe::Machine;
use crate::servers::Servers;
use crate::suite::{Pair, Settings, Side, Suite};

/// The nodes whose proxy is the stock ztunnel, when `ZTUNNEL_BIN` is set.
const ZTUNNEL_NODES: [&str; 2] = ["zt-a", "zt-b"];

/// Pods on 10.97.0.0/16, roles on 127.253.97.x: apart from the tests' and the demo's blocks.
const BLOCK: u8 = 97;
/// Open files this process needs beyond one per idle connection (it holds their client ends).
const SPARE_FILES: u64 = 4096;

fn main() {
    if let Ok(addr) = std::env::var(servers::HOLD_ENV) {
        if let Err(e) = servers::hold(&addr) {
            eprintln!("idle-connection holder on {addr}: {e}");
            std::process::exit(1);
        }
        return;
    }
    if let Err(e) = ambit_localmesh::userns::reexec_unless_root() {
        panic!("the data-path benchmark builds network namespaces and needs root: {e}");
    }
    let settings = Settings::from_env();
    raise_open_files(settings.idle.iter().max().copied().unwrap_or(0) as u64 + SPARE_FILES);
    let machine = Machine::describe();
    eprintln!("data-path benchmark on {}", machine.line());

    // Sized explicitly: `TOKIO_WORKER_THREADS` in the environment is meant for the roles.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(machine.cpus.max(1))
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let ztunnel = settings.ztunnel.clone().map(|exe| ZtunnelNodes {
        exe,
        nodes: ZTUNNEL_NODES.map(str::to_owned).to_vec(),
    });
    match (&settings.ztunnel, &settings.ztunnel_version) {
        (Some(exe), Some(version)) => eprintln!("ztunnel column: {} ({version})", exe.display()),
        _ => eprintln!("ztunnel column not run: ZTUNNEL_BIN is not set"),
    }
    let with_ztunnel = ztunnel.is_some();
    let mesh = LocalMesh::start_with(
        options(&settings, dir.path().to_owned(), with_ztunnel),
        cluster(with_ztunnel),
        ztunnel,
    )
    .unwrap_or_else(|e| panic!("cannot build the local mesh: {e:?}"));
    let mut proxies: BTreeMap<Side, Vec<u32>> = BTreeMap::new();
    for node in mesh.nodes() {
        let side = if node.host.is_some() {
            Side::Ztunnel
        } else {
            Side::Mesh
        };
        if let Some(pid) = node.proxy.as_ref().map(Role::pid) {
            proxies.entry(side).or_default().push(pid);
        }
    }
    eprintln!(
        "mesh up in {:.1} s; node proxies: pids {proxies:?}",
        started.elapsed().as_secs_f64()
    );

    let pair = |ns: &str| {
        let client = mesh.topology().pod(&format!("{ns}/client")).unwrap();
        let server = mesh.topology().pod(&format!("{ns}/server")).unwrap();
        for pod in [client, server] {
            tune(pod.netns());
        }
        Pair {
            client: ClientPod {
                netns: client.netns().clone(),
                path: client.netns_path(),
            },
            server: server.ip(),
            servers: Servers::start(server.netns(), server.ip())
                .unwrap_or_else(|e| panic!("cannot start the servers of {ns}: {e}")),
        }
    };
    let mut pairs = vec![(Side::Direct, pair("plain")), (Side::Mesh, pair("bench"))];
    if with_ztunnel {
        pairs.push((Side::Ztunnel, pair("zt")));
    }
    let others = pairs.iter().flat_map(|(_, p)| p.servers.pids()).collect();
    let mut suite = Suite::new(settings, proxies, others);
    suite.warm_up(&pairs);
    suite.run(&mut pairs);

    let figures = suite.figures();
    let text = report::table(&figures, &machine, &suite.settings.describe());
    println!("\n{text}");
    for error in &suite.errors {
        println!("error: {error}");
    }
    let path = report_path();
    match report::write_json(
        &path,
        &figures,
        &machine,
        suite.settings.json(),
        &suite.errors,
    ) {
        Ok(()) => println!("report: {}", path.display()),
        Err(e) => println!("cannot write {}: {e}", path.display()),
    }
    eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
    drop(pairs);
    drop(mesh);
    if !suite.errors.is_empty() {
        std::process::exit(1);
    }
}

fn options(settings: &Settings, dir: PathBuf, with_ztunnel: bool) -> Options {
    let mut nodes = vec!["node-a".to_owned(), "node-b".to_owned()];
    if with_ztunnel {
        nodes.extend(ZTUNNEL_NODES.map(str::to_owned));
    }
    Options {
        exe: settings.exe.clone(),
        node_exe: settings.node_exe.clone(),
        block: BLOCK,
        roles: Ipv4Addr::new(127, 253, BLOCK, 1),
        nodes,
        dir,
        log_level: settings.log.clone(),
        sink: None,
    }
}

/// `bench` is enrolled, `plain` is not; each has a client on node-a and a server on node-b.
/// With a ztunnel column, `zt` (enrolled) has a client on zt-a and a server on zt-b.
fn cluster(with_ztunnel: bool) -> Cluster {
    let ip = |subnet, host| Ipv4Addr::new(10, BLOCK, subnet, host);
    let mut cluster = Cluster {
        namespaces: vec![
            Namespace::new("bench", true),
            Namespace::new("plain", false),
        ],
        pods: vec![
            Pod::new("bench", "client", "node-a", ip(1, 1)),
            Pod::new("bench", "server", "node-b", ip(1, 2)),
            Pod::new("plain", "client", "node-a", ip(2, 1)),
            Pod::new("plain", "server", "node-b", ip(2, 2)),
        ],
        ..Cluster::default()
    };
    if with_ztunnel {
        cluster.namespaces.push(Namespace::new("zt", true));
        cluster
            .pods
            .push(Pod::new("zt", "client", "zt-a", ip(3, 1)));
        cluster
            .pods
            .push(Pod::new("zt", "server", "zt-b", ip(3, 2)));
    }
    cluster
}

/// `ztunnel version`'s first line (its build: version and git revision), for the report.
fn ztunnel_version(exe: &std::path::Path) -> String {
    Command::new(exe)
        .arg("version")
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "version unknown".to_owned())
}

/// Lets a pod open connections as fast as the benchmark asks: a wide ephemeral port range and
/// reuse of TIME_WAIT ports for new outgoing connections (both per namespace; the same in every
/// pod, so direct and mesh are treated alike).
fn tune(netns: &ambit_netns::Netns) {
    netns
        .run_io(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "10000 65535")?;
            std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")
        })
        .unwrap_or_else(|e| panic!("cannot tune a pod's TCP settings: {e}"));
}

/// Raises this process's open-file limit (inherited by the node proxies and servers it
/// starts) to at least `needed`, with util-linux's `prlimit`: to 65,536 if this process may
/// raise its hard limit, else to the hard limit. Fails loudly if it stays below `needed`.
fn raise_open_files(needed: u64) {
    let (soft, hard) = open_files();
    if soft >= needed.max(65_536) {
        return;
    }
    let want = needed.max(65_536);
    let pid = std::process::id().to_string();
    for limit in [format!("{want}:{want}"), format!("{hard}:{hard}")] {
        let quiet = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={limit}")])
            .stderr(std::process::Stdio::null())
            .status();
        if quiet.is_ok_and(|s| s.success()) {
            break;
        }
    }
    let (soft, _) = open_files();
    assert!(
        soft >= needed,
        "the open-file limit is {soft}, the idle-connection test needs {needed}: run \
         scripts/bench, or `ulimit -n {needed}` first, or lower AMBIT_BENCH_IDLE"
    );
}

/// The soft and hard open-file limits of this process.
fn open_files() -> (u64, u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default();
    let mut numbers = line
        .split_whitespace()
        .skip(3)
        .map(|v| v.parse().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0))
}

/// `AMBIT_BENCH_REPORT`, else `<target dir>/bench/report.json`, the target dir found from this
/// program's own path (`<target>/release/deps/datapath-…`).
fn report_path() -> PathBuf {
    if let Some(path) = std::env::var_os("AMBIT_BENCH_REPORT") {
        return path.into();
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let target = exe
        .ancestors()
        .nth(3)
        .map_or_else(|| PathBuf::from("target"), PathBuf::from);
    target.join("bench").join("report.json")
}

/// Waits until `check` holds, up to `limit`.
pub(crate) fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !check() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
