//! Every role stops the same way: SIGTERM (the kubelet deleting its pod) and SIGINT (Ctrl-C)
//! alike make `ambit control`, `ambit node` and `ambit cni` log why, drain or stop what they
//! run, and exit 0.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Mesh, Running, Signal, manifests, namespace};

/// Waits (at most 30 s) until the log at `path` has a line containing `needle`.
fn wait_for_line(path: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().any(|l| l.contains(needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needle:?} in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

#[test]
fn sigterm_and_sigint_stop_the_node_proxy_and_the_control_plane_with_exit_0() {
    let ips = ambit_testkit::LoopbackAddrs::new();
    let mut mesh = Mesh::start(&ips, &manifests(&[namespace("demo", true)]));
    for node in ["node-a", "node-b"] {
        wait_for_line(&mesh.log(node), "node proxy started");
    }
    wait_for_line(&mesh.log("control"), "control plane started");

    let status = mesh.stop("node-a", Signal::TERM);
    let text = log(&mesh.log("node-a"));
    assert!(status.success(), "node-a after SIGTERM: {status}\n{text}");
    assert!(
        text.contains("SIGTERM: draining") && text.contains("drained; exiting"),
        "node-a logs the signal and its drain:\n{text}"
    );

    let status = mesh.stop("node-b", Signal::INT);
    let text = log(&mesh.log("node-b"));
    assert!(status.success(), "node-b after SIGINT: {status}\n{text}");
    assert!(
        text.contains("interrupted: draining") && text.contains("drained; exiting"),
        "node-b logs the signal and its drain:\n{text}"
    );

    let status = mesh.stop("control", Signal::TERM);
    let text = log(&mesh.log("control"));
    assert!(status.success(), "control after SIGTERM: {status}\n{text}");
    assert!(
        text.contains("SIGTERM; stopping"),
        "the control plane logs the signal:\n{text}"
    );
}

#[test]
fn sigint_stops_the_control_plane_with_exit_0() {
    let ips = ambit_testkit::LoopbackAddrs::new();
    let mut mesh = Mesh::start(&ips, &manifests(&[namespace("demo", true)]));
    wait_for_line(&mesh.log("control"), "control plane started");
    let status = mesh.stop("control", Signal::INT);
    let text = log(&mesh.log("control"));
    assert!(status.success(), "control after SIGINT: {status}\n{text}");
    assert!(
        text.contains("interrupted; stopping"),
        "the control plane logs the signal:\n{text}"
    );
}

#[test]
fn sigterm_and_sigint_stop_the_capture_agent_with_exit_0() {
    let ips = ambit_testkit::LoopbackAddrs::new();
    let mesh = Mesh::start(&ips, &manifests(&[namespace("demo", true)]));
    let d = mesh.dir();
    let path = |name: &str| d.join(name).to_str().unwrap().to_owned();
    let control_tls = format!("{}:15012", mesh.control_ip);
    for (signal, logged) in [
        (Signal::TERM, "SIGTERM: stopping"),
        (Signal::INT, "interrupted: stopping"),
    ] {
        // One agent after the other, each with sockets and a state of its own.
        let own = |name: &str| path(&format!("{name}-{signal:?}"));
        let args: Vec<String> = [
            "cni",
            "--node-name",
            "node-a",
            "--xds-address",
            &control_tls,
            "--server-name",
            "istiod.istio-system.svc",
            "--token-file",
            &path("token-node-a"),
            "--root-cert",
            &path("ca/root-cert.pem"),
            "--state-dir",
            &own("cni-state"),
            "--zds-socket",
            &own("zds.sock"),
            "--plugin-socket",
            &own("plugin.sock"),
            // No API server here: captured pods would be marked in the manifest directory.
            "--pod-manifests",
            &path("manifests"),
        ]
        .map(str::to_owned)
        .to_vec();
        let cni_log = d.join(format!("cni-{signal:?}.log"));
        let mut cni = Running::ambit(&args, &cni_log);
        wait_for_line(&cni_log, "capture agent started");

        let status = cni.stop(signal);
        let text = log(&cni_log);
        assert!(status.success(), "cni after {signal:?}: {status}\n{text}");
        assert!(text.contains(logged), "the agent logs {signal:?}:\n{text}");
    }
}
