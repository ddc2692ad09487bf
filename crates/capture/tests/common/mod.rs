//! Real network namespaces for capture tests, and the node proxy's end of ZDS.
//!
//! These tests create namespaces and run `nft`/`iptables`/`ip`, so they need root; they fail
//! loudly otherwise rather than skip.

#![allow(dead_code, unreachable_pub)]

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ambit_netns::Netns;
use ambit_netns::seqpacket::SeqpacketStream;
use ambit_proto::zds::{
    Ack, Version, WorkloadRequest, WorkloadResponse, ZdsHello, workload_request, workload_response,
};
use prost::Message;

/// A new, empty namespace.
pub fn new_netns() -> Netns {
    Netns::create().expect(
        "these tests create network namespaces: run them as root (or inside `unshare --user --map-root-user`)",
    )
}

/// Runs `ip args…` inside `netns`, failing the test if it fails.
pub fn ip(netns: &Netns, args: &[&str]) {
    let mut command = Command::new("ip");
    command.args(args);
    let out = netns.output(command).expect("iproute2 `ip` is installed");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `program args…` inside `netns` and returns its stdout.
pub fn stdout_of(netns: &Netns, program: &str, args: &[&str]) -> String {
    let mut command = Command::new(program);
    command.args(args);
    let out = netns.output(command).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A pod: a namespace with `lo` up, kept alive and reachable by path through a holder process
/// (as a container runtime's pause process does). Dropping it kills the holder, so the path
/// vanishes.
#[derive(Debug)]
pub struct TestPod {
    pub netns: Netns,
    pub path: PathBuf,
    holder: Child,
}

impl TestPod {
    pub fn new() -> Self {
        let netns = new_netns();
        ip(&netns, &["link", "set", "lo", "up"]);
        let mut sleep = Command::new("sleep");
        sleep.arg("3600").stdin(Stdio::null());
        let holder = netns.spawn(sleep).expect("spawn the pod's holder process");
        let path = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        Self {
            netns,
            path,
            holder,
        }
    }

    pub fn pid(&self) -> u32 {
        self.holder.id()
    }
}

impl Default for TestPod {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestPod {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Connects `pod` to a new `peer` pod with a veth pair: `pod` gets 10.99.0.1/24, `peer`
/// 10.99.0.2/24.
pub fn link(pod: &TestPod, peer: &TestPod) {
    let pid = peer.pid().to_string();
    ip(
        &pod.netns,
        &[
            "link", "add", "veth0", "type", "veth", "peer", "name", "veth1", "netns", &pid,
        ],
    );
    ip(&pod.netns, &["addr", "add", "10.99.0.1/24", "dev", "veth0"]);
    ip(&pod.netns, &["link", "set", "veth0", "up"]);
    ip(
        &peer.netns,
        &["addr", "add", "10.99.0.2/24", "dev", "veth1"],
    );
    ip(&peer.netns, &["link", "set", "veth1", "up"]);
}

/// The node proxy's end of a ZDS connection, driven step by step by a test.
#[derive(Debug)]
pub struct NodeSide {
    stream: SeqpacketStream,
}

/// How long a test waits for the agent to send something it expects.
pub const WAIT: Duration = Duration::from_secs(10);

impl NodeSide {
    /// Connects to the agent at `path` and says hello.
    pub async fn connect(path: &Path) -> Self {
        let stream = SeqpacketStream::connect(path)
            .await
            .expect("connect to the agent's ZDS socket");
        let hello = ZdsHello {
            version: Version::V1 as i32,
        };
        stream.send(&hello.encode_to_vec(), &[]).await.unwrap();
        Self { stream }
    }

    /// The next request and the descriptors that came with it.
    pub async fn recv(&self) -> (workload_request::Payload, Vec<OwnedFd>) {
        let mut buf = vec![0; 4096];
        let (len, fds) = tokio::time::timeout(WAIT, self.stream.recv(&mut buf))
            .await
            .expect("the agent sent a request in time")
            .unwrap();
        assert!(
            len > 0 || !fds.is_empty(),
            "the agent closed the connection"
        );
        let request = WorkloadRequest::decode(&buf[..len]).expect("a WorkloadRequest");
        (request.payload.expect("a request with a payload"), fds)
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_nothing(&self, quiet: Duration) {
        let mut buf = vec![0; 4096];
        if let Ok(got) = tokio::time::timeout(quiet, self.stream.recv(&mut buf)).await {
            panic!("expected no ZDS message, got {got:?}");
        }
    }

    /// Whether the agent has closed this connection (waits up to [`WAIT`]).
    pub async fn closed_by_agent(&self) -> bool {
        let mut buf = vec![0; 4096];
        matches!(
            tokio::time::timeout(WAIT, self.stream.recv(&mut buf)).await,
            Ok(Ok((0, _))) | Ok(Err(_))
        )
    }

    /// Sends `bytes` as one datagram, whatever they are.
    pub async fn send_raw(&self, bytes: &[u8]) {
        self.stream.send(bytes, &[]).await.unwrap();
    }

    pub async fn ack(&self, error: &str) {
        let response = WorkloadResponse {
            payload: Some(workload_response::Payload::Ack(Ack {
                error: error.to_owned(),
            })),
        };
        self.stream
            .send(&response.encode_to_vec(), &[])
            .await
            .unwrap();
    }

    /// Reads and acks a replay up to and including `SnapshotSent`; returns the replayed
    /// requests in order, each with the inode of the namespace it carried (if any).
    pub async fn replay(&self) -> Vec<(workload_request::Payload, Option<u64>)> {
        let mut replayed = Vec::new();
        loop {
            let (payload, fds) = self.recv().await;
            self.ack("").await;
            if matches!(payload, workload_request::Payload::SnapshotSent(_)) {
                return replayed;
            }
            replayed.push((payload, inode_of(fds)));
        }
    }
}

/// The namespace inode of the single descriptor of a request, `None` without one.
pub fn inode_of(fds: Vec<OwnedFd>) -> Option<u64> {
    assert!(
        fds.len() <= 1,
        "at most one descriptor per request, got {}",
        fds.len()
    );
    let fd = fds.into_iter().next()?;
    Some(Netns::from_fd(fd, "the fd of a request").unwrap().inode())
}
