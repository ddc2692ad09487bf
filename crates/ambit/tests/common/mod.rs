//! What the binary-level tests share: the real `ambit control` and two `ambit node` processes
//! on loopback ([`Mesh`]), workloads as plain sockets on their own `127.x` addresses, and the
//! small blocking clients the tests talk to them with (HTTP/1.0 GET, SOCKS5 CONNECT).
//!
//! Every child process is held by a [`Running`] guard, so a failing assertion still kills it.

// Each test binary compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ambit_testkit::LoopbackAddrs;
pub(crate) use rustix::process::Signal;
use rustix::process::{Pid, kill_process};

/// The bootstrap token each node proxy presents to the control plane.
const TOKENS: [(&str, &str); 2] = [
    ("node-a", "node-a-token-0123456789abcdef"),
    ("node-b", "node-b-token-0123456789abcdef"),
];

/// A control plane (TLS with bootstrap tokens, monitoring on) and node proxies `node-a` and
/// `node-b`, each on its own loopback address, serving the manifests it was started with.
pub(crate) struct Mesh {
    /// Killed before `dir` is removed: fields drop in declaration order.
    processes: Vec<Running>,
    pub(crate) control_ip: Ipv4Addr,
    pub(crate) node_a: Ipv4Addr,
    pub(crate) node_b: Ipv4Addr,
    dir: tempfile::TempDir,
}

impl Mesh {
    /// Starts the control plane on `manifests` (YAML documents, see [`namespace`] and [`pod`]),
    /// then both node proxies, and returns once both report ready.
    pub(crate) fn start(ips: &LoopbackAddrs, manifests: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (control_ip, node_a, node_b) = (ips.next_addr(), ips.next_addr(), ips.next_addr());

        std::fs::create_dir(d.join("manifests")).unwrap();
        std::fs::write(d.join("manifests/mesh.yaml"), manifests).unwrap();
        let tokens: String = TOKENS.iter().map(|(n, t)| format!("{t} {n}\n")).collect();
        std::fs::write(d.join("tokens"), tokens).unwrap();
        for (node, token) in TOKENS {
            std::fs::write(d.join(format!("token-{node}")), format!("{token}\n")).unwrap();
        }

        let s = |v: &str| v.to_owned();
        let p = |path: &Path| path.to_str().unwrap().to_owned();
        let control = Running::ambit(
            &[
                s("control"),
                s("--config-dir"),
                p(&d.join("manifests")),
                s("--ca-dir"),
                p(&d.join("ca")),
                s("--bootstrap-tokens"),
                p(&d.join("tokens")),
                s("--plaintext-addr"),
                s("off"),
                s("--tls-addr"),
                format!("{control_ip}:15012"),
                s("--monitoring-addr"),
                format!("{control_ip}:15014"),
            ],
            &d.join("control.log"),
        );
        wait_until("the control plane", || {
            d.join("ca/root-cert.pem").exists()
                && http_get(SocketAddr::new(control_ip.into(), 15014), "/ready").is_some()
        });

        let node = |name: &str, ip: Ipv4Addr| {
            let args = [
                s("node"),
                s("--node-name"),
                s(name),
                s("--xds-address"),
                format!("{control_ip}:15012"),
                s("--server-name"),
                s("istiod.istio-system.svc"),
                s("--token-file"),
                p(&d.join(format!("token-{name}"))),
                s("--root-cert"),
                p(&d.join("ca/root-cert.pem")),
                s("--outbound-addr"),
                s("off"),
                s("--inbound-passthrough-addr"),
                s("off"),
                s("--socks5-addr"),
                format!("{ip}:15080"),
                s("--admin-addr"),
                format!("{ip}:15000"),
                s("--stats-addr"),
                format!("{ip}:15020"),
                s("--readiness-addr"),
                format!("{ip}:15021"),
            ];
            Running::ambit(&args, &d.join(format!("{name}.log")))
        };
        let processes = vec![control, node("node-a", node_a), node("node-b", node_b)];
        for ip in [node_a, node_b] {
            wait_until("node proxy readiness", || {
                http_get(SocketAddr::new(ip.into(), 15021), "/healthz/ready")
                    .is_some_and(|(code, _)| code == 200)
            });
        }
        Self {
            processes,
            control_ip,
            node_a,
            node_b,
            dir,
        }
    }

    /// The temporary folder holding the manifests, the CA and every process's log.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log (stderr) of `control`, `node-a` or `node-b`.
    pub(crate) fn log(&self, process: &str) -> PathBuf {
        self.dir.path().join(format!("{process}.log"))
    }

    /// Sends `signal` to `control`, `node-a` or `node-b` and waits (at most 20 s) for it to
    /// exit; its exit status.
    pub(crate) fn stop(&mut self, process: &str, signal: Signal) -> ExitStatus {
        let index = ["control", "node-a", "node-b"]
            .iter()
            .position(|p| *p == process)
            .unwrap_or_else(|| panic!("no process {process}"));
        self.processes[index].stop(signal)
    }

    /// The control plane's monitoring listener (`/ready`, `/metrics`).
    pub(crate) fn monitoring(&self) -> SocketAddr {
        SocketAddr::new(self.control_ip.into(), 15014)
    }

    /// A node proxy's SOCKS5 listener (its outbound capture here).
    pub(crate) fn socks(node: Ipv4Addr) -> SocketAddr {
        SocketAddr::new(node.into(), 15080)
    }

    /// A node proxy's stats listener (`/stats/prometheus`).
    pub(crate) fn stats(node: Ipv4Addr) -> SocketAddr {
        SocketAddr::new(node.into(), 15020)
    }

    /// A node proxy's admin listener (`/config_dump`).
    pub(crate) fn admin(node: Ipv4Addr) -> SocketAddr {
        SocketAddr::new(node.into(), 15000)
    }
}

/// A `Namespace` manifest, labelled `istio.io/dataplane-mode: ambient` when `ambient`.
pub(crate) fn namespace(name: &str, ambient: bool) -> String {
    let labels = if ambient {
        ", labels: {istio.io/dataplane-mode: ambient}"
    } else {
        ""
    };
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}{labels}}}\n")
}

/// A ready `Pod` manifest named `name` (label `app: <name>`, ServiceAccount `name`) on `node`,
/// marked `ambient.istio.io/redirection: enabled` as a captured pod is (the control plane
/// advertises an enrolled pod over HBONE only once marked; these pods' capture is the SOCKS5
/// listener, or the local mesh's agent, which marks them itself).
pub(crate) fn pod(namespace: &str, name: &str, node: &str, ip: Ipv4Addr) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{app: {name}}}, \
         annotations: {{ambient.istio.io/redirection: enabled}}}}\n\
         spec: {{serviceAccountName: {name}, nodeName: {node}, containers: [{{name: c}}]}}\n\
         status: {{podIP: {ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n"
    )
}

/// Joins manifests into one multi-document YAML stream.
pub(crate) fn manifests(docs: &[String]) -> String {
    docs.join("---\n")
}

/// A child process, killed and reaped when dropped.
pub(crate) struct Running(Child);

impl Running {
    /// Runs the `ambit` binary under test with `args`, stderr to `log`.
    pub(crate) fn ambit(args: &[String], log: &Path) -> Self {
        Self::spawn(Command::new(env!("CARGO_BIN_EXE_ambit")).args(args), log)
    }

    /// Runs `command`, stdout and stderr to `log` (a file: a chatty child never blocks on a
    /// full pipe).
    pub(crate) fn spawn(command: &mut Command, log: &Path) -> Self {
        let log = std::fs::File::create(log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", command.get_program()));
        Self(child)
    }
}

impl Running {
    /// Sends `signal` and waits (at most 20 s) for the process to exit; its exit status.
    pub(crate) fn stop(&mut self, signal: Signal) -> ExitStatus {
        let pid = i32::try_from(self.0.id())
            .ok()
            .and_then(Pid::from_raw)
            .unwrap();
        kill_process(pid, signal).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running 20 s after {signal:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An echo server for a workload: serves every connection on its own thread, until the process
/// ends.
pub(crate) fn echo_server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// `GET path` over HTTP/1.0; the status code and the whole response (headers included).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out))
}

/// Polls `check` every 100 ms; panics naming `what` after 30 s.
pub(crate) fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Connects from `src` through the SOCKS5 listener at `socks` to `dst` (RFC 1928, no auth).
pub(crate) fn socks_connect(
    src: Ipv4Addr,
    socks: SocketAddr,
    dst: SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(src.into(), 0).into())?;
    socket.connect_timeout(&socks.into(), Duration::from_secs(5))?;
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&[5, 1, 0])?;
    let mut greeting = [0u8; 2];
    s.read_exact(&mut greeting)?;
    let SocketAddr::V4(dst) = dst else {
        unreachable!("IPv4 only here")
    };
    let mut request = vec![5, 1, 0, 1];
    request.extend(dst.ip().octets());
    request.extend(dst.port().to_be_bytes());
    s.write_all(&request)?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)?;
    if reply[1] != 0 {
        return Err(std::io::Error::other(format!(
            "SOCKS5 reply code {}",
            reply[1]
        )));
    }
    Ok(s)
}
