//! In-pod mode with real network namespaces: pods "client" (10.77.0.1) and "server"
//! (10.77.0.2) are namespaces on a veth pair with the capture contract's nftables rules, a
//! test-side capture agent hands them to the node proxy over ZDS, and the proxy serves each from
//! listeners inside its namespace.
//!
//! Needs root; every test fails loudly when it cannot create namespaces.

#![allow(clippy::unwrap_used)]

mod common;
mod netns_pods;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

use ambit_identity::TrustDomain;
use ambit_netns::Netns;
use ambit_node::NodeProxy;
use ambit_node::config::{
    CertificateSource, ConfigSource, InPodConfig, ListenerConfig, NodeConfig,
};
use ambit_node::inpod::{InPodStatus, PodState};
use ambit_testkit::eventually;
use common::metric;
use netns_pods::{
    A_IP, Agent, AgentConn, B_IP, MARK, connect_bound, connect_from, echo_app, echo_over,
    roundtrip, two_pods,
};
use tempfile::TempDir;

const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";
const SERVER_ID: &str = "spiffe://cluster.local/ns/demo/sa/server";
const NEIGHBOUR_ID: &str = "spiffe://cluster.local/ns/demo/sa/neighbour";
/// A workload on the node that no namespace of the test serves: the address a hostile pod
/// borrows.
const NEIGHBOUR_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);

/// A node proxy in in-pod mode for both pods (local config, local CA), with no shared
/// listeners, connecting to ZDS at `zds`.
async fn start_proxy(dir: &Path, zds: &Path) -> NodeProxy {
    common::init_tracing();
    let file = dir.join("mesh.yaml");
    std::fs::write(
        &file,
        format!(
            "workloads:\n\
             - {{name: client, namespace: demo, serviceAccount: client, workloadIps: [{A_IP}], protocol: HBONE, node: node-a}}\n\
             - {{name: server, namespace: demo, serviceAccount: server, workloadIps: [{B_IP}], protocol: HBONE, node: node-a}}\n\
             - {{name: neighbour, namespace: demo, serviceAccount: neighbour, workloadIps: [{NEIGHBOUR_IP}], protocol: HBONE, node: node-a}}\n"
        ),
    )
    .unwrap();
    let mut config = NodeConfig::new(
        "node-a",
        TrustDomain::new("cluster.local").unwrap(),
        ConfigSource::LocalFile(file),
        CertificateSource::LocalCa(dir.join("ca")),
    );
    config.listeners = ListenerConfig {
        outbound: None,
        inbound_passthrough: None,
        socks5: None,
        hbone_port: 15008,
    };
    config.timeouts.connect = Duration::from_secs(3);
    config.timeouts.handshake = Duration::from_secs(3);
    config.inpod = Some(InPodConfig::new(zds));
    NodeProxy::start(config).await.unwrap()
}

/// An in-pod node proxy and the test's capture agent, with the agent's first ZDS connection.
/// Fields in reverse order of setup: they are dropped in declaration order, so this way round
/// the connection goes first and the folder last.
struct InPod {
    zds: AgentConn,
    proxy: NodeProxy,
    agent: Agent,
    /// Holds the ZDS socket, the mesh file and the CA.
    _dir: TempDir,
}

impl InPod {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let agent = Agent::bind(&dir.path().join("zds.sock"));
        let proxy = start_proxy(dir.path(), &dir.path().join("zds.sock")).await;
        let zds = agent.accept().await;
        Self {
            zds,
            proxy,
            agent,
            _dir: dir,
        }
    }

    /// Pods "client" (in the first namespace) and "server" (the second), both added over ZDS.
    async fn with_two_pods() -> (Netns, Netns, Self) {
        let (a, b) = two_pods();
        let inpod = Self::start().await;
        assert_eq!(inpod.zds.add("client", &a).await, "");
        assert_eq!(inpod.zds.add("server", &b).await, "");
        (a, b, inpod)
    }
}

fn pod<'a>(pods: &'a [InPodStatus], name: &str) -> Option<&'a InPodStatus> {
    pods.iter().find(|p| p.info.name == name)
}

fn names(proxy: &NodeProxy) -> Vec<String> {
    proxy
        .inpod_pods()
        .into_iter()
        .map(|p| p.info.name)
        .collect()
}

/// Samples of `name` for a connection from `source` to the server pod as `reporter` saw it.
fn mtls_count_from(proxy: &NodeProxy, name: &str, reporter: &str, source: &str) -> u64 {
    metric(
        &proxy.telemetry().metrics().render(),
        name,
        &[
            ("reporter", reporter),
            ("connection_security_policy", "mutual_tls"),
            ("source_principal", source),
            ("destination_principal", SERVER_ID),
        ],
    )
}

/// Samples of `name` for a connection between the two pods as `reporter` saw it.
fn mtls_count(proxy: &NodeProxy, name: &str, reporter: &str) -> u64 {
    metric(
        &proxy.telemetry().metrics().render(),
        name,
        &[
            ("reporter", reporter),
            ("connection_security_policy", "mutual_tls"),
            ("source_principal", CLIENT_ID),
            ("destination_principal", SERVER_ID),
        ],
    )
}

#[tokio::test]
async fn a_pod_reaches_another_over_hbone_from_inside_their_namespaces() {
    let (a, b, inpod) = InPod::with_two_pods().await;
    let proxy = &inpod.proxy;
    assert_eq!(proxy.zds_connected(), Some(true));
    let pods = proxy.inpod_pods();
    let (client, server) = (pod(&pods, "client").unwrap(), pod(&pods, "server").unwrap());
    assert_eq!(
        (client.netns_inode, server.netns_inode),
        (a.inode(), b.inode())
    );
    assert_eq!(client.uid, "uid-client");
    assert_eq!(client.info.service_account, "client");
    assert_eq!(client.outbound, "127.0.0.1:15001".parse().unwrap());
    assert_eq!(client.inbound_passthrough, "0.0.0.0:15006".parse().unwrap());
    assert_eq!(client.hbone, "0.0.0.0:15008".parse().unwrap());
    assert_eq!(client.state, PodState::Serving);

    // The client app connects to the server's address as if there were no mesh.
    let app = echo_app(&b, 8080);
    let server_addr = SocketAddr::from((B_IP, 8080));
    let back = roundtrip(&a, server_addr, None, b"hello from pod a")
        .await
        .unwrap();
    assert_eq!(back, b"hello from pod a");
    // The app was dialed from inside its own namespace by the proxy (its 15008 → the app),
    // not by the client pod directly.
    assert_eq!(
        app.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(),
        [B_IP],
        "the server app saw {:?}",
        app.peers()
    );
    // Both halves of the proxy carried it as mutual TLS between the pods' identities.
    for reporter in ["source", "destination"] {
        eventually!(
            observe = mtls_count(proxy, "istio_tcp_connections_closed_total", reporter),
            |n| n == 1
        );
        assert_eq!(
            mtls_count(proxy, "istio_tcp_received_bytes_total", reporter)
                + mtls_count(proxy, "istio_tcp_sent_bytes_total", reporter),
            2 * 16,
            "{reporter} counted the bytes both ways"
        );
    }
    assert_eq!(
        proxy.pool_stats().0,
        1,
        "one HBONE connection, pooled for the client pod"
    );

    // Plaintext that skipped the client pod's capture (marked) is redirected to the server
    // pod's 15006 and reaches the app as a connection from outside the mesh.
    let back = roundtrip(&a, server_addr, Some(MARK), b"plain")
        .await
        .unwrap();
    assert_eq!(back, b"plain");
    eventually!(
        observe = metric(
            &proxy.telemetry().metrics().render(),
            "istio_tcp_connections_closed_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "unknown"),
                ("destination_principal", SERVER_ID),
            ],
        ),
        |n| n == 1
    );

    // /config_dump lists both pods.
    let dump = proxy.admin_view().config_dump();
    let listed = dump["inpod"]["pods"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{dump}");
    assert_eq!(dump["inpod"]["zdsConnected"], true);
    let server_dump = listed.iter().find(|p| p["name"] == "server").unwrap();
    assert_eq!(server_dump["uid"], "uid-server");
    assert_eq!(server_dump["namespace"], "demo");
    assert_eq!(server_dump["serviceAccount"], "server");
    assert_eq!(server_dump["netnsInode"], b.inode());
    assert_eq!(server_dump["hbone"], "0.0.0.0:15008");
    assert_eq!(server_dump["state"], "serving");
    assert_eq!(dump["listeners"]["hbone"].as_array().unwrap().len(), 0);
    proxy.shutdown().await;
}

/// A pod that adds a neighbour's address to its interface and connects from it speaks only as
/// itself: the identity comes from the namespace the capture agent handed over, never from the
/// source address (security review H2).
#[tokio::test]
async fn a_pod_borrowing_a_neighbours_address_speaks_only_as_itself() {
    let (a, b, inpod) = InPod::with_two_pods().await;
    let proxy = &inpod.proxy;
    let _app = echo_app(&b, 8080);
    netns_pods::ip(&a, &format!("addr add {NEIGHBOUR_IP}/32 dev eth0"));
    let stream = connect_bound(&a, NEIGHBOUR_IP, (B_IP, 8080).into())
        .await
        .unwrap();
    assert_eq!(echo_over(stream, b"borrowed").await.unwrap(), b"borrowed");
    for reporter in ["source", "destination"] {
        eventually!(
            observe = mtls_count_from(
                proxy,
                "istio_tcp_connections_closed_total",
                reporter,
                CLIENT_ID
            ),
            |n| n == 1
        );
        assert_eq!(
            mtls_count_from(
                proxy,
                "istio_tcp_connections_opened_total",
                reporter,
                NEIGHBOUR_ID
            ),
            0,
            "{reporter}: the neighbour's identity was used"
        );
    }
}

#[tokio::test]
async fn deleting_a_pod_closes_its_listeners() {
    let (a, b, inpod) = InPod::with_two_pods().await;
    let InPod { proxy, zds, .. } = &inpod;
    let _app = echo_app(&b, 8080);
    let server_addr = SocketAddr::from((B_IP, 8080));
    let hbone = SocketAddr::from((B_IP, 15008));
    assert_eq!(
        roundtrip(&a, server_addr, None, b"before").await.unwrap(),
        b"before"
    );
    drop(connect_from(&a, hbone, Some(MARK)).await.unwrap());

    assert_eq!(zds.del("server").await, "");
    assert_eq!(names(proxy), ["client"]);
    // The Ack came after the listeners closed: nothing answers on the server's 15008 now.
    let refused = connect_from(&a, hbone, Some(MARK)).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    // The client's proxy still takes the connection, but cannot reach the server over HBONE.
    let after = roundtrip(&a, server_addr, None, b"after").await;
    assert!(
        after.as_ref().map_or(true, |back| back.is_empty()),
        "{after:?}"
    );
    eventually!(
        observe = metric(
            &proxy.telemetry().metrics().render(),
            "istio_tcp_connections_closed_total",
            &[("reporter", "source"), ("response_flags", "CONNECT")],
        ),
        |n| n == 1
    );
    // Deletion is idempotent.
    assert_eq!(zds.del("server").await, "");
    assert_eq!(zds.del("nobody").await, "");
    assert_eq!(names(proxy), ["client"]);
}

#[tokio::test]
async fn after_a_reconnection_the_snapshot_forgets_pods_it_does_not_name() {
    let (a, b, inpod) = InPod::with_two_pods().await;
    let (agent, proxy) = (&inpod.agent, &inpod.proxy);
    let client_before = pod(&proxy.inpod_pods(), "client").unwrap().clone();
    let _server_app = echo_app(&b, 8080);
    let _client_app = echo_app(&a, 9090);
    let (server_addr, client_addr) = (
        SocketAddr::from((B_IP, 8080)),
        SocketAddr::from((A_IP, 9090)),
    );

    // The agent goes away: both pods keep being served.
    drop(inpod.zds);
    eventually!(proxy.zds_connected() == Some(false));
    assert_eq!(names(proxy), ["client", "server"]);
    assert_eq!(
        roundtrip(&a, server_addr, None, b"while away")
            .await
            .unwrap(),
        b"while away"
    );

    // It comes back and replays only the client pod.
    let zds = agent.accept().await;
    eventually!(
        observe = proxy
            .inpod_pods()
            .iter()
            .map(|p| p.state)
            .collect::<Vec<_>>(),
        |s| s == [PodState::Unconfirmed, PodState::Unconfirmed]
    );
    assert_eq!(zds.add("client", &a).await, "");
    let client_after = pod(&proxy.inpod_pods(), "client").unwrap().clone();
    assert_eq!(
        client_after, client_before,
        "the same pod in the same namespace is not rebound"
    );
    assert_eq!(zds.snapshot_sent().await, "");
    assert_eq!(names(proxy), ["client"]);
    let refused = connect_from(&a, (B_IP, 15008).into(), Some(MARK))
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

    // The client pod is still served: plaintext from outside the mesh reaches its app through
    // its 15006.
    assert_eq!(
        roundtrip(&b, client_addr, Some(MARK), b"still here")
            .await
            .unwrap(),
        b"still here"
    );
    assert_eq!(zds.keep("client").await, "");
}

#[tokio::test]
async fn bad_requests_get_an_error_ack_and_the_stream_goes_on() {
    let pod_ns = netns_pods::namespace();
    let inpod = InPod::start().await;
    let InPod { proxy, zds, .. } = &inpod;

    let corrupt = zds.send_raw(&[0xff, 0xff, 0xff, 0xff], &[]).await;
    assert!(corrupt.contains("undecodable WorkloadRequest"), "{corrupt}");
    // Field 9 only: a valid message carrying no request.
    let empty = zds.send_raw(&[0x48, 0x01], &[]).await;
    assert!(empty.contains("without a payload"), "{empty}");
    let no_fd = zds.request(netns_pods::add("client"), &[]).await;
    assert!(no_fd.contains("0 file descriptors"), "{no_fd}");
    let two = zds
        .request(netns_pods::add("client"), &[pod_ns.as_fd(), pod_ns.as_fd()])
        .await;
    assert!(two.contains("2 file descriptors"), "{two}");
    let file = std::fs::File::open("/dev/null").unwrap();
    let not_netns = zds
        .request(netns_pods::add("client"), &[file.as_fd()])
        .await;
    assert!(not_netns.contains("not a namespace"), "{not_netns}");
    let unknown = zds.keep("nobody").await;
    assert!(unknown.contains("no such pod"), "{unknown}");
    assert!(proxy.inpod_pods().is_empty());

    // A namespace whose 15008 is taken (without SO_REUSEPORT): the Ack says why, and no
    // half-bound pod is left behind.
    let taken = netns_pods::namespace();
    let _squatter = taken
        .run_io(|| std::net::TcpListener::bind("0.0.0.0:15008"))
        .unwrap();
    let busy = zds.add("client", &taken).await;
    assert!(busy.contains("cannot bind the HBONE listener"), "{busy}");
    assert!(proxy.inpod_pods().is_empty());

    // The stream goes on: a good request is served, and adding it again changes nothing.
    assert_eq!(zds.add("client", &pod_ns).await, "");
    let first = proxy.inpod_pods();
    assert_eq!(zds.add("client", &pod_ns).await, "");
    assert_eq!(proxy.inpod_pods(), first, "adding again is idempotent");
    // The same uid in a new namespace (a new sandbox) replaces it.
    let sandbox = netns_pods::namespace();
    assert_eq!(zds.add("client", &sandbox).await, "");
    let replaced = proxy.inpod_pods();
    assert_eq!(replaced.len(), 1);
    assert_eq!(replaced[0].netns_inode, sandbox.inode());
    assert_eq!(zds.snapshot_sent().await, "");
    assert_eq!(
        proxy.inpod_pods().len(),
        1,
        "added on this connection: kept"
    );
}
