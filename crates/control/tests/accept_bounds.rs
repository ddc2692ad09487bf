//! The control plane's gRPC ports out of descriptors: a child process (this test binary again,
//! with `AMBIT_CONTROL_CHILD` set) runs the control plane under `ulimit -n 128`; the test holds
//! more connections to its plaintext (15010) and TLS (15012) ports than it has descriptors and
//! measures its CPU time from `/proc/<pid>/stat` meanwhile (an accept loop retrying at once
//! would spin a core). Once the connections close, a WDS client must get the mesh.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_control::{ControlConfig, ControlPlane, SourceConfig};
use ambit_identity::grpc::plaintext_channel;
use ambit_model::MeshConfig;
use ambit_proto::envoy::config::core::v3::Node;
use ambit_testkit::eventually;
use ambit_xds::client::{ClientConfig, Handler, Subscription, Update, XdsClient};

const CHILD_ENV: &str = "AMBIT_CONTROL_CHILD";
const POD: &str = "---\napiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: default, labels: {app: web}}\n\
spec: {serviceAccountName: web, nodeName: node-a, containers: [{name: c}]}\n\
status: {podIP: 10.0.0.1, conditions: [{type: Ready, status: 'True'}]}\n";

/// The child: a control plane on loopback; prints `addrs <plaintext> <tls>` and runs for ever.
#[test]
fn child_control_plane() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let control = ControlPlane::start(ControlConfig {
            source: SourceConfig::Dir {
                path: dir.join("manifests"),
                poll: Duration::from_millis(50),
            },
            mesh: MeshConfig::istio_defaults(),
            ca_dir: dir.join("ca"),
            bootstrap_tokens: Some(dir.join("tokens")),
            plaintext_addr: Some(any),
            tls_addr: Some(any),
            monitoring_addr: None,
            debug_addr: None,
            debounce: Duration::from_millis(20),
            serving_names: vec!["istiod.istio-system.svc".to_owned()],
        })
        .await
        .unwrap();
        let addrs = control.addrs();
        println!("addrs {} {}", addrs.plaintext.unwrap(), addrs.tls.unwrap());
        std::future::pending::<()>().await;
    });
}

struct ControlChild {
    child: Child,
    plaintext: SocketAddr,
    tls: SocketAddr,
}

impl ControlChild {
    fn start(dir: &std::path::Path, max_fds: u32) -> Self {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n {max_fds} && exec \"$0\" --exact child_control_plane --nocapture --test-threads 1"
            ))
            .arg(exe)
            .env(CHILD_ENV, dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let (plaintext, tls) = loop {
            let line = lines
                .next()
                .expect("the child printed no addresses")
                .unwrap();
            // libtest may have begun the line with `test child_control_plane ... `.
            if let Some((_, addrs)) = line.rsplit_once("addrs ") {
                let (plaintext, tls) = addrs.trim().split_once(' ').unwrap();
                break (plaintext.parse().unwrap(), tls.parse().unwrap());
            }
        };
        Self {
            child,
            plaintext,
            tls,
        }
    }

    /// User plus system CPU time used so far, in clock ticks (1/100 s).
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        // utime and stime: fields 14 and 15 of the line, 12 and 13 after the command name.
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|dir| dir.count())
            .unwrap_or(0)
    }
}

impl Drop for ControlChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Default)]
struct Names(Mutex<BTreeSet<String>>);

impl Handler for Names {
    fn handle(&self, _type_url: &str, update: Update) -> Result<(), String> {
        let mut names = self.0.lock().unwrap();
        names.extend(update.upserts.into_iter().map(|r| r.name));
        for name in update.removals {
            names.remove(&name);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_grpc_ports_pause_then_serve_again() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
    std::fs::write(dir.path().join("manifests/mesh.yaml"), POD).unwrap();
    std::fs::write(
        dir.path().join("tokens"),
        "node-a-bootstrap-token-0123456789 node-a\n",
    )
    .unwrap();
    let child = ControlChild::start(dir.path(), 128);

    let (plaintext, tls) = (child.plaintext, child.tls);
    let held: Vec<TcpStream> = tokio::task::spawn_blocking(move || {
        (0..300)
            .map(|i| TcpStream::connect(if i % 2 == 0 { plaintext } else { tls }).unwrap())
            .collect()
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fds = child.open_fds();
    assert!(
        fds >= 120,
        "the child is not out of descriptors: {fds} open"
    );
    let window = Duration::from_secs(3);
    let (before, started) = (child.cpu_ticks(), Instant::now());
    tokio::time::sleep(window).await;
    let used = child.cpu_ticks() - before;
    let share = used as f64 / (started.elapsed().as_secs_f64() * 100.0);
    eprintln!(
        "control plane CPU while out of descriptors ({fds} open): {used} ticks in {window:?} ({share:.3} of a core)"
    );
    assert!(
        share < 0.2,
        "an accept loop spins while out of descriptors: {share:.3} of a core"
    );

    drop(held);
    let names = Arc::new(Names::default());
    let node = Node {
        id: "ztunnel~after".to_owned(),
        ..Node::default()
    };
    let config =
        ClientConfig::new(node).subscribe(ambit_proto::ADDRESS_TYPE_URL, Subscription::Wildcard);
    let channel = plaintext_channel(&plaintext.to_string()).unwrap();
    let _client = XdsClient::spawn(
        move || std::future::ready(Ok(channel.clone())),
        config,
        names.clone(),
    );
    eventually!(
        timeout = Duration::from_secs(20),
        names
            .0
            .lock()
            .unwrap()
            .contains("Kubernetes//Pod/default/web")
    );
}
