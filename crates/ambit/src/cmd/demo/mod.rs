//! `ambit demo`: a whole ambient mesh on loopback, in one process, for a newcomer to watch.
//!
//! Loopback mode (this module) needs no privileges: "pods" are addresses in `127.N.0.0/16`
//! (`--loopback-block N`) and applications reach the mesh through their node proxy's SOCKS5
//! listener, as on a host without traffic redirection. The full demo, with network namespaces
//! and real capture, builds on the same pieces later.
//!
//! What runs (see [`manifests`] for the addresses):
//!
//! - the control plane, reading Kubernetes manifests from a temporary directory: namespace
//!   `prometheus` is enrolled (`istio.io/dataplane-mode: ambient`), `default` is not;
//! - node proxies `node-a` and `node-b`, following the control plane over TLS with bootstrap
//!   tokens, each with its stats, readiness and admin servers;
//! - four workloads ([`workloads`]): `prometheus-0` scrapes `node-exporter` (enrolled, so over
//!   HBONE with mutual TLS), `client` talks to the echo `server` (not enrolled, so plaintext).
//!
//! Everything shown comes from the node proxies' own metrics ([`report`]); access logs go to
//! stderr through the normal logger. On exit everything stops, the temporary directory is
//! removed, and the exit status says whether the enrolled traffic was carried over mutual TLS.

mod manifests;
mod mesh;
mod netns;
mod prometheus;
mod report;
mod workloads;

use std::pin::Pin;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use self::manifests::Layout;
use self::mesh::Mesh;
use self::report::Outcome;
use self::workloads::Workloads;
use crate::logging::LogHandle;

/// The log filter unless `--log-level` or `RUST_LOG` say otherwise: access logs and problems
/// only, so the terminal stays readable.
pub(crate) const DEFAULT_LOG_FILTER: &str = "warn,access=info";

/// How often the FLOWS table is printed.
const REFRESH: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Stop after this many seconds of traffic (default: run until Ctrl-C).
    #[arg(long, value_name = "SECONDS")]
    duration: Option<u64>,

    /// Run on the addresses 127.N.0.0/16; pick another N to run a second demo beside this one.
    #[arg(long, value_name = "N", default_value_t = 42,
          value_parser = clap::value_parser!(u8).range(1..=254))]
    loopback_block: u8,

    /// Loopback mode: no namespaces and no capture; applications reach the mesh through SOCKS5.
    #[arg(long)]
    loopback: bool,

    /// Node proxies (and capture agents) to run; with 2, enrolled traffic crosses nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    nodes: u8,

    /// Scrape with Debian's real `prometheus` instead of the built-in scraper.
    #[arg(long)]
    with_prometheus: bool,
}

pub(crate) fn run(args: DemoArgs, log: LogHandle, json_logs: bool) -> anyhow::Result<()> {
    if !args.loopback {
        return netns::run(&args);
    }
    let layout = Layout::new(args.loopback_block);
    println!(
        "ambit demo: a two-node ambient mesh on {} (loopback only, no privileges)",
        layout.cidr()
    );
    check_addresses_free(&layout)?;
    let dir = tempfile::Builder::new()
        .prefix("ambit-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let outcome = runtime.block_on(run_mesh(&args, &layout, dir.path(), &log, json_logs));
    // Every task (proxies, servers, workloads) ends with the runtime, before the files go.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let path = dir.path().to_owned();
    dir.close()
        .with_context(|| format!("cannot remove {}", path.display()))?;
    println!("removed {}", path.display());

    let outcome = outcome?;
    let (summary, passed) = outcome.summary(&layout);
    println!("\nSUMMARY");
    for line in summary.lines() {
        println!("  {line}");
    }
    if !passed {
        bail!("the demo did not show the enrolled namespace's traffic carried over mutual TLS");
    }
    Ok(())
}

/// Builds the mesh, runs the workloads until the duration ends or Ctrl-C, stops everything
/// and reads the node proxies' final counters.
async fn run_mesh(
    args: &DemoArgs,
    layout: &Layout,
    dir: &std::path::Path,
    log: &LogHandle,
    json_logs: bool,
) -> anyhow::Result<Outcome> {
    println!("writing manifests… {}", dir.display());
    let files = manifests::write(layout, dir)?;
    println!(
        "  namespaces prometheus (istio.io/dataplane-mode: ambient) and default (not enrolled)"
    );
    for pod in layout.pods() {
        println!(
            "  pod {}/{} on {} at {} (service account {})",
            pod.namespace, pod.name, pod.node, pod.ip, pod.service_account
        );
    }

    // Registered now, so Ctrl-C during start-up also stops cleanly (and removes the files).
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mesh = tokio::select! {
        mesh = Mesh::start(layout, &files, log, json_logs) => mesh.map_err(|e| busy_hint(e, layout))?,
        _ = &mut ctrl_c => bail!("interrupted while starting"),
    };

    println!("starting workloads…");
    let workloads = Workloads::start(layout)
        .await
        .map_err(|e| busy_hint(e, layout))?;
    print_endpoints(layout);
    match args.duration {
        Some(seconds) => println!("\nrunning for {seconds}s (Ctrl-C stops earlier)"),
        None => println!("\nrunning until Ctrl-C"),
    }

    let stopped_by = watch_traffic(args.duration, &mesh, &workloads, ctrl_c).await?;
    println!("\nstopping ({stopped_by})…");
    quiet_expected_shutdown_warnings(log);
    let (scrapes, echoes) = (workloads.scrapes.clone(), workloads.echoes.clone());
    workloads.stop().await;
    let flows = mesh.stop().await;
    println!("\nFLOWS (final)\n{}", flows.table());
    Ok(Outcome {
        scrapes: scrapes.counts(),
        echoes: echoes.counts(),
        flows,
    })
}

/// Prints the FLOWS table every [`REFRESH`] until the duration ends, Ctrl-C, or a node's
/// `/quitquitquit`; says which.
async fn watch_traffic(
    duration: Option<u64>,
    mesh: &Mesh,
    workloads: &Workloads,
    mut ctrl_c: Pin<&mut impl Future<Output = std::io::Result<()>>>,
) -> anyhow::Result<&'static str> {
    let started = Instant::now();
    let end = async {
        match duration {
            Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end);
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + REFRESH, REFRESH);
    loop {
        tokio::select! {
            _ = refresh.tick() => {
                let (scrapes, echoes) = (workloads.scrapes.counts(), workloads.echoes.counts());
                println!(
                    "\nFLOWS at {}s (from the node proxies' istio_tcp_* metrics) · scrapes {} ok, {} failed · echoes {} ok, {} failed",
                    started.elapsed().as_secs(),
                    scrapes.ok, scrapes.failed, echoes.ok, echoes.failed,
                );
                print!("{}", mesh.flows().table());
            }
            () = &mut end => return Ok("duration reached"),
            () = mesh.quit.notified() => return Ok("/quitquitquit"),
            signal = &mut ctrl_c => {
                signal.context("cannot wait for Ctrl-C")?;
                return Ok("interrupted");
            }
        }
    }
}

/// Stopping a proxy makes its WDS client report the control plane as lost, at WARN: expected
/// here, so hidden, unless the user chose the log filter.
fn quiet_expected_shutdown_warnings(log: &LogHandle) {
    if log.current() == DEFAULT_LOG_FILTER {
        let _ = log.set(&format!(
            "{DEFAULT_LOG_FILTER},ambit_node::state::handler=error"
        ));
    }
}

fn print_endpoints(layout: &Layout) {
    println!("\nTry, while it runs:");
    for node in &layout.nodes {
        let name = node.name;
        println!(
            "  curl http://{}/stats/prometheus   # {name} metrics",
            node.stats()
        );
        println!(
            "  curl http://{}/healthz/ready      # {name} readiness",
            node.readiness()
        );
        println!(
            "  curl http://{}/config_dump        # {name} workloads and certificates",
            node.admin()
        );
    }
    let monitoring = layout.control_monitoring();
    println!("  curl http://{monitoring}/debug/workloads     # the control plane's view");
    println!("  ambit config workloads --control-plane {monitoring}");
}

/// Fails before anything starts if one of the demo's addresses is taken, most likely by
/// another demo on the same block.
fn check_addresses_free(layout: &Layout) -> anyhow::Result<()> {
    for (what, addr) in layout.listeners() {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            let error = anyhow::Error::new(e).context(format!("cannot listen on {addr} ({what})"));
            return Err(busy_hint(error, layout));
        }
    }
    Ok(())
}

/// Adds what to do about a busy port to an error caused by one.
fn busy_hint(error: anyhow::Error, layout: &Layout) -> anyhow::Error {
    let busy = error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
    });
    if !busy {
        return error;
    }
    let other = if layout.block == 43 { 44 } else { 43 };
    error.context(format!(
        "something (another `ambit demo`?) already listens on {}; run this demo on other \
         addresses with `--loopback-block {other}` (any of 1-254)",
        layout.cidr()
    ))
}
