//! Pods as real network namespaces for in-pod tests: two namespaces joined by a veth pair,
//! the capture contract's nftables redirection installed in each, apps and clients whose
//! sockets live inside a pod, and a test-side capture agent speaking ZDS.
//!
//! Everything here needs root (creating namespaces, moving links, loading nft rules, SO_MARK)
//! and fails loudly without it. Namespaces vanish when the test drops its last handle.

#![allow(dead_code, unreachable_pub)] // each test uses a different subset
#![allow(clippy::unwrap_used)] // test helpers: a panic is a test failure

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_netns::Netns;
use ambit_netns::seqpacket::{SeqpacketListener, SeqpacketStream};
use ambit_proto::zds::{
    AddWorkload, DelWorkload, KeepWorkload, SnapshotSent, Version, WorkloadInfo, WorkloadRequest,
    WorkloadResponse, ZdsHello, workload_request::Payload, workload_response,
};
use prost::Message;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The node proxy's mark (Istio's 1337).
pub const MARK: u32 = 0x539;
const WAIT: Duration = Duration::from_secs(10);

/// The capture contract's in-pod redirection rules (what the capture agent installs).
const RULES: &str = r#"
table inet ambit {
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        ip saddr 169.254.7.127 accept
        tcp dport 15008 accept
        meta l4proto tcp redirect to :15006
    }
    chain output {
        type nat hook output priority -100; policy accept;
        meta mark & 0xfff == 0x539 accept
        oifname "lo" accept
        meta l4proto tcp redirect to :15001
    }
}
"#;

/// A fresh network namespace with loopback up.
pub fn namespace() -> Netns {
    let netns = Netns::create().expect(
        "in-pod tests need root (CAP_SYS_ADMIN, CAP_NET_ADMIN): cannot create a network namespace",
    );
    ip(&netns, "link set lo up");
    netns
}

/// Pods A (10.77.0.1) and B (10.77.0.2) on one veth pair, both with the redirection rules.
pub fn two_pods() -> (Netns, Netns) {
    let (a, b) = (namespace(), namespace());
    ip(&a, "link add eth0 type veth peer name peer0");
    // `ip` moves a link into a namespace named by a process in it: hold B with a sleeper.
    let mut sleeper = Command::new("sleep");
    sleeper.arg("infinity");
    let mut holder = b.spawn(sleeper).expect("cannot start a process in pod B");
    ip(&a, &format!("link set peer0 netns {}", holder.id()));
    holder.kill().unwrap();
    holder.wait().unwrap();
    ip(&b, "link set peer0 name eth0");
    for (netns, addr) in [(&a, A_IP), (&b, B_IP)] {
        ip(netns, &format!("addr add {addr}/24 dev eth0"));
        ip(netns, "link set eth0 up");
        install_rules(netns);
    }
    (a, b)
}

/// Runs `ip <args>` inside `netns`, failing the test on error.
pub fn ip(netns: &Netns, args: &str) {
    let mut command = Command::new("ip");
    command.args(args.split_whitespace());
    let out = netns.output(command).unwrap();
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Loads [`RULES`] with `nft -f -` inside `netns`.
pub fn install_rules(netns: &Netns) {
    let mut command = Command::new("nft");
    command
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = netns.spawn(command).unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(RULES.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft -f -: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A TCP connection made from inside `netns`, optionally marked (a marked socket skips the
/// pod's outbound capture, like traffic that never went through the proxy).
pub async fn connect_from(
    netns: &Netns,
    dst: SocketAddr,
    mark: Option<u32>,
) -> std::io::Result<TcpStream> {
    let socket = netns.run_io(|| Socket::new(Domain::IPV4, Type::STREAM, None))?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    tokio::time::timeout(WAIT, socket.connect(dst))
        .await
        .unwrap_or_else(|_| panic!("connecting to {dst} timed out"))
}

/// A TCP connection made from inside `netns`, bound to source address `src` (which the test
/// added to the namespace).
pub async fn connect_bound(
    netns: &Netns,
    src: Ipv4Addr,
    dst: SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = netns.run_io(|| Socket::new(Domain::IPV4, Type::STREAM, None))?;
    socket.bind(&SocketAddr::from((src, 0)).into())?;
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    tokio::time::timeout(WAIT, socket.connect(dst))
        .await
        .unwrap_or_else(|_| panic!("connecting to {dst} from {src} timed out"))
}

/// Sends `payload` on `stream`, half-closes, and reads everything back.
pub async fn echo_over(mut stream: TcpStream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(payload).await?;
    stream.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut back))
        .await
        .map_err(|_| std::io::Error::other("echo timed out"))??;
    Ok(back)
}

/// Sends `payload` from a client socket in `netns`, half-closes, and reads everything back.
pub async fn roundtrip(
    netns: &Netns,
    dst: SocketAddr,
    mark: Option<u32>,
    payload: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut stream = connect_from(netns, dst, mark).await?;
    stream.write_all(payload).await?;
    stream.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut back))
        .await
        .map_err(|_| std::io::Error::other("echo timed out"))??;
    Ok(back)
}

/// An echo application listening inside a pod on `0.0.0.0:port`; records its peers.
pub struct App {
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl App {
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

pub fn echo_app(netns: &Netns, port: u16) -> App {
    let listener = netns
        .run_io(move || {
            let listener = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))?;
            listener.set_nonblocking(true)?;
            Ok(listener)
        })
        .unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            seen.lock().unwrap().push(peer);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    App { peers, task }
}

// === the capture agent's side of ZDS ===

/// A test-side capture agent: the ZDS server.
pub struct Agent {
    listener: SeqpacketListener,
}

/// One accepted ZDS connection.
pub struct AgentConn {
    stream: SeqpacketStream,
}

impl Agent {
    pub fn bind(path: &Path) -> Self {
        Self {
            listener: SeqpacketListener::bind(path).unwrap(),
        }
    }

    /// Accepts the node proxy's connection and checks its hello.
    pub async fn accept(&self) -> AgentConn {
        let stream = tokio::time::timeout(WAIT, self.listener.accept())
            .await
            .expect("the node proxy did not connect to ZDS")
            .unwrap();
        let mut buf = [0u8; 1024];
        let (len, fds) = tokio::time::timeout(WAIT, stream.recv(&mut buf))
            .await
            .expect("no ZdsHello")
            .unwrap();
        assert!(fds.is_empty());
        let hello = ZdsHello::decode(&buf[..len]).unwrap();
        assert_eq!(hello.version, Version::V1 as i32);
        AgentConn { stream }
    }
}

impl AgentConn {
    /// Sends one datagram and returns the `Ack.error` it got.
    pub async fn send_raw(&self, datagram: &[u8], fds: &[BorrowedFd<'_>]) -> String {
        self.stream.send(datagram, fds).await.unwrap();
        let mut buf = [0u8; 4096];
        let (len, fds) = tokio::time::timeout(WAIT, self.stream.recv(&mut buf))
            .await
            .expect("no Ack")
            .unwrap();
        assert!(len > 0, "the node proxy closed ZDS");
        assert!(fds.is_empty());
        match WorkloadResponse::decode(&buf[..len]).unwrap().payload {
            Some(workload_response::Payload::Ack(ack)) => ack.error,
            None => panic!("a WorkloadResponse without an Ack"),
        }
    }

    pub async fn request(&self, payload: Payload, fds: &[BorrowedFd<'_>]) -> String {
        let request = WorkloadRequest {
            payload: Some(payload),
        };
        self.send_raw(&request.encode_to_vec(), fds).await
    }

    /// `AddWorkload` for pod `name` (uid `uid-<name>`, namespace `demo`, service account
    /// `name`) with `netns` attached.
    pub async fn add(&self, name: &str, netns: &Netns) -> String {
        self.request(add(name), &[netns.as_fd()]).await
    }

    pub async fn keep(&self, name: &str) -> String {
        let keep = KeepWorkload {
            uid: format!("uid-{name}"),
        };
        self.request(Payload::Keep(keep), &[]).await
    }

    pub async fn del(&self, name: &str) -> String {
        let del = DelWorkload {
            uid: format!("uid-{name}"),
        };
        self.request(Payload::Del(del), &[]).await
    }

    pub async fn snapshot_sent(&self) -> String {
        self.request(Payload::SnapshotSent(SnapshotSent {}), &[])
            .await
    }
}

pub fn add(name: &str) -> Payload {
    Payload::Add(AddWorkload {
        uid: format!("uid-{name}"),
        workload_info: Some(WorkloadInfo {
            name: name.to_owned(),
            namespace: "demo".to_owned(),
            service_account: name.to_owned(),
            ..WorkloadInfo::default()
        }),
    })
}
