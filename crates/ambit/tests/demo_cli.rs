//! `ambit demo` as a newcomer runs it: pods as network namespaces and real capture (as root,
//! and re-run inside a user namespace when not). Traffic for a few seconds, then the verdicts.
//! Each test uses its own `--loopback-block` (outside testkit's 10..=250, and 253 of the
//! namespace tier) so it never meets another test's listeners.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const NODE_EXPORTER: &str = "spiffe://cluster.local/ns/prometheus/sa/node-exporter";

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `ambit demo <args>` to completion (or kills it after a minute), output to files so a
/// chatty child never blocks on a full pipe.
fn demo(args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = Running(
        Command::new(env!("CARGO_BIN_EXE_ambit"))
            .arg("demo")
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "`ambit demo {}` still running after a minute; stdout so far:\n{}",
            args.join(" "),
            std::fs::read_to_string(&out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    Run {
        status,
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    }
}

/// Checks a namespace-mode run: verdicts, access logs with both identities, cleanup.
fn assert_namespace_demo(run: &Run) {
    let context = format!("stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    assert!(
        run.status.success(),
        "exit status {}; {context}",
        run.status
    );
    assert!(
        run.stdout
            .contains("verdict: the enrolled namespace's traffic was carried over mutual TLS"),
        "no verdict; {context}"
    );
    let summary = run
        .stdout
        .lines()
        .find(|l| l.contains("prometheus-0 → node-exporter:"))
        .unwrap_or_else(|| panic!("no summary line; {context}"));
    assert!(summary.contains(", 0 in plaintext"), "{summary}");
    assert!(
        summary.contains(&format!("{PROMETHEUS_0} → {NODE_EXPORTER}")),
        "{summary}"
    );
    assert!(
        run.stderr
            .lines()
            .any(|l| l.contains("\tinfo\taccess\tconnection complete\t")
                && l.contains(&format!("src.identity=\"{PROMETHEUS_0}\""))
                && l.contains(&format!("dst.identity=\"{NODE_EXPORTER}\""))),
        "no access log line for the mTLS scrape; {context}"
    );
    // Only access logs and problems by default: no start-up chatter from the roles.
    assert!(
        !run.stderr.contains("node proxy started"),
        "info logs of the roles are hidden by default; {context}"
    );
    let dir = removed_dir_ns(&run.stdout);
    assert!(!Path::new(&dir).exists(), "{} still exists", dir.display());
}

const PROMETHEUS_0: &str = "spiffe://cluster.local/ns/prometheus/sa/prometheus-0";

fn removed_dir_ns(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("removed every namespace and process, and "))
        .unwrap_or_else(|| panic!("no cleanup line in:\n{stdout}"));
    PathBuf::from(line.trim())
}

#[test]
fn the_namespace_demo_captures_pods_and_carries_two_nodes_over_mtls() {
    let run = demo(&["--duration", "5", "--loopback-block", "249"]);
    assert_namespace_demo(&run);
    assert!(run.stdout.contains("2 node(s)"), "{}", run.stdout);
}

#[test]
fn the_namespace_demo_runs_without_root_inside_a_user_namespace() {
    // As root (CI), drop to nobody first; as anyone else the demo is already unprivileged.
    let exe = env!("CARGO_BIN_EXE_ambit");
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut command = if running_as_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let mut child = Running(
        command
            .args([
                "demo",
                "--duration",
                "4",
                "--nodes",
                "1",
                "--loopback-block",
                "248",
            ])
            .env_remove("RUST_LOG")
            .env("TMPDIR", "/tmp")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the demo did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    let run = Run {
        status,
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
    };
    assert!(
        run.stdout.contains("inside a user namespace"),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert_namespace_demo(&run);
}

#[test]
fn the_namespace_demo_scrapes_with_the_real_prometheus() {
    let run = demo(&[
        "--with-prometheus",
        "--duration",
        "8",
        "--nodes",
        "1",
        "--loopback-block",
        "247",
    ]);
    assert_namespace_demo(&run);
    assert!(
        run.stdout.contains("prometheus: target up"),
        "Prometheus's own API never reported its target up:\n{}",
        run.stdout
    );
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap()
}
