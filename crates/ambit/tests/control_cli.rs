//! `ambit control --config-dir DIR` as a user runs it, inspected with `ambit config`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ambit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ambit"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `ambit config …` until its output satisfies `check` (the control plane polls its
/// directory, so edits show up shortly after they are written).
fn config_until(args: &[&str], check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ambit(args);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && check(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "`ambit {}` never matched; last output:\n{text}\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: prometheus, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: scraper, namespace: prometheus, labels: {app: scraper}, annotations: {ambient.istio.io/redirection: enabled}}
spec: {serviceAccountName: prometheus, nodeName: node-a, containers: [{name: c}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, annotations: {ambient.istio.io/redirection: enabled}}
spec: {nodeName: node-a, containers: [{name: c}]}
status: {podIP: 10.0.0.9}
";

#[test]
fn control_serves_a_directory_and_config_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("mesh.yaml"), MESH).unwrap();
    let ip = ambit_testkit::LoopbackAddrs::new().next_addr();
    let monitoring = format!("{ip}:15014");
    let _control = Running(
        Command::new(env!("CARGO_BIN_EXE_ambit"))
            .args([
                "control",
                "--config-dir",
                manifests.to_str().unwrap(),
                "--ca-dir",
                dir.path().join("ca").to_str().unwrap(),
            ])
            .args([
                "--plaintext-addr",
                &format!("{ip}:15010"),
                "--monitoring-addr",
                &monitoring,
                "--poll-ms",
                "50",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let table = config_until(
        &["config", "workloads", "--control-plane", &monitoring],
        |t| t.contains("scraper"),
    );
    let scraper = table.lines().find(|l| l.contains("scraper")).unwrap();
    assert!(
        scraper.contains("HBONE")
            && scraper.contains("spiffe://cluster.local/ns/prometheus/sa/prometheus"),
        "{table}"
    );
    let web = table.lines().find(|l| l.contains("web")).unwrap();
    assert!(
        web.contains("NONE"),
        "an unlabeled namespace is not enrolled: {table}"
    );

    // Enroll `default` by editing the file; the running control plane follows.
    std::fs::write(manifests.join("default-ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {istio.io/dataplane-mode: ambient}}\n").unwrap();
    let table = config_until(
        &["config", "workloads", "--control-plane", &monitoring],
        |t| t.lines().any(|l| l.contains("web") && l.contains("HBONE")),
    );
    assert!(table.contains("10.0.0.9"), "{table}");

    let pods = config_until(
        &[
            "config",
            "pods",
            "--control-plane",
            &monitoring,
            "-o",
            "json",
        ],
        |t| t.contains("\"pods\""),
    );
    let pods: serde_json::Value = serde_json::from_str(&pods).unwrap();
    assert_eq!(pods["pods"].as_array().unwrap().len(), 2);
}
