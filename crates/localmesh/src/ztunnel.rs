//! A stock ztunnel as a node's proxy, beside Ambit's own, for side-by-side measurements and
//! interoperability runs. The binary is never part of this project: it comes only from the
//! caller (the benchmark takes it from `ZTUNNEL_BIN`).
//!
//! A ztunnel node is configured as a cluster's DaemonSet configures one: `PROXY_MODE=shared`,
//! in-pod mode through the node's capture agent (`INPOD_UDS`), XDS and CA at the control plane
//! over TLS with the node's bootstrap token (`AUTH_TOKEN`), the control plane's certificate
//! checked against the mesh root and the name `istiod.istio-system.svc`
//! (`ALT_XDS_HOSTNAME`/`ALT_CA_HOSTNAME`), `NODE_NAME`, and `ZTUNNEL_WORKER_THREADS`.
//!
//! ztunnel binds its readiness and stats ports on every address and its admin port on
//! loopback, so two of them cannot share a network namespace. Each ztunnel node therefore gets
//! a namespace of its own (as on a real node, the proxy runs in the node's network namespace;
//! its in-pod listeners and outbound sockets live in the pods' namespaces, which the agent
//! hands over). That namespace has only a loopback interface: a forwarder listens on its
//! `127.0.0.1:15012` and carries each connection to the control plane's TLS port, the only
//! address the proxy itself dials.
//!
//! `ENABLE_ORIG_SRC=false`: with ztunnel's default (the client's address kept toward the
//! application) the inbound path needs in-pod reply routing that Ambit's capture rules do not
//! install yet.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ambit_netns::Netns;
use ambit_proto::ports;

use crate::process::{LineSink, Role};
use crate::topology;

/// Which nodes run a stock ztunnel as their proxy, and which binary.
#[derive(Debug, Clone)]
pub struct ZtunnelNodes {
    pub exe: PathBuf,
    pub nodes: Vec<String>,
}

/// How to start one node's ztunnel.
pub(crate) struct Start<'a> {
    pub(crate) node: &'a str,
    pub(crate) exe: &'a Path,
    /// The control plane's XDS/CA TLS address (in this process's namespace).
    pub(crate) control: SocketAddr,
    pub(crate) zds_socket: PathBuf,
    pub(crate) root_cert: PathBuf,
    pub(crate) token_file: PathBuf,
    pub(crate) worker_threads: Option<usize>,
    pub(crate) log_level: &'a str,
    pub(crate) sink: Option<LineSink>,
}

/// A ztunnel node's own network namespace and the forwarder to the control plane. Dropped
/// after the proxy process.
#[derive(Debug)]
pub struct Host {
    netns: Netns,
    _forwarder: Forwarder,
}

impl Host {
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
}

/// Creates the node's namespace, its forwarder, and starts ztunnel in it.
pub(crate) fn start(s: Start<'_>) -> io::Result<(Role, Host)> {
    let netns = Netns::create().map_err(io::Error::other)?;
    topology::run(&netns, &["link", "set", "lo", "up"]).map_err(io::Error::other)?;
    let forwarder = Forwarder::start(
        &netns,
        SocketAddr::from((Ipv4Addr::LOCALHOST, ports::XDS_TLS)),
        s.control,
    )?;
    let xds = format!("https://127.0.0.1:{}", ports::XDS_TLS);
    let mut command = Command::new(s.exe);
    command
        .arg("proxy")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("RUST_LOG", s.log_level)
        .env("PROXY_MODE", "shared")
        .env("INPOD_UDS", &s.zds_socket)
        .env("NODE_NAME", s.node)
        .env("XDS_ADDRESS", &xds)
        .env("CA_ADDRESS", &xds)
        .env("ALT_XDS_HOSTNAME", "istiod.istio-system.svc")
        .env("ALT_CA_HOSTNAME", "istiod.istio-system.svc")
        .env("XDS_ROOT_CA", &s.root_cert)
        .env("CA_ROOT_CA", &s.root_cert)
        .env("AUTH_TOKEN", &s.token_file)
        .env("ENABLE_ORIG_SRC", "false");
    if let Some(threads) = s.worker_threads {
        command.env("ZTUNNEL_WORKER_THREADS", threads.to_string());
    }
    let role = Role::spawn_command(
        &format!("ztunnel/{}", s.node),
        command,
        Some(&netns),
        s.sink,
    )?;
    Ok((
        role,
        Host {
            netns,
            _forwarder: forwarder,
        },
    ))
}

/// `GET /healthz/ready` on the node's readiness port, from inside its namespace: whether it
/// answered 200.
pub(crate) fn ready(host: &Host) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ports::READINESS));
    let timeout = Duration::from_secs(2);
    host.netns
        .run_io(move || TcpStream::connect_timeout(&addr, timeout))
        .ok()
        .and_then(|stream| crate::http::get_on(stream, addr, "/healthz/ready", timeout).ok())
        .is_some_and(|(status, _)| status == 200)
}

/// Accepts connections on a listener inside a namespace and splices each to `target`, dialled
/// from this process's namespace. Stops accepting when dropped.
#[derive(Debug)]
struct Forwarder {
    stop: Arc<AtomicBool>,
}

/// How often the accept loop looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

impl Forwarder {
    fn start(netns: &Netns, listen: SocketAddr, target: SocketAddr) -> io::Result<Self> {
        let listener = netns.run_io(move || TcpListener::bind(listen))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name(format!("forward-{listen}"))
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let _ = client.set_nonblocking(false);
                            std::thread::spawn(move || splice(client, target));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(ACCEPT_POLL);
                        }
                        Err(_) => std::thread::sleep(ACCEPT_POLL),
                    }
                }
            })?;
        Ok(Self { stop })
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies both ways between `client` and a new connection to `target` until either ends.
fn splice(client: TcpStream, target: SocketAddr) {
    let Ok(upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(5)) else {
        return;
    };
    let (Ok(client_read), Ok(upstream_write)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || copy_then_shutdown(client_read, upstream_write));
    copy_then_shutdown(upstream, client);
    let _ = up.join();
}

fn copy_then_shutdown(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}
