//! Two node proxies on loopback behind a real control plane: HBONE between them carries an
//! echo, is counted on both sides, refuses a destination holding the wrong identity, shows a
//! relay on the path nothing but TLS, and non-mesh destinations pass through unencrypted.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use ambit_identity::tls::{self, FixedCert};
use ambit_node::NodeProxy;
use ambit_testkit::{LoopbackAddrs, eventually};
use common::{Mesh, Pod, echo, echo_roundtrip, id, metric, socks_connect, wait_hbone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Addresses of the test mesh's pods.
struct Ips {
    scraper: Ipv4Addr,
    echo: Ipv4Addr,
    legacy: Ipv4Addr,
    victim: Ipv4Addr,
    vip: Ipv4Addr,
}

/// `client` (ambient) has the scraper on node-a; `server` (ambient) has echo on node-b and
/// victim on node-c (which runs no proxy); `legacy` (not enrolled) has legacy on node-b.
async fn mesh() -> (Mesh, Ips) {
    let addrs = LoopbackAddrs::new();
    let ips = Ips {
        scraper: addrs.next_addr(),
        echo: addrs.next_addr(),
        legacy: addrs.next_addr(),
        victim: addrs.next_addr(),
        vip: addrs.next_addr(),
    };
    let pods = [
        ("scraper", "client", "scraper", "node-a", ips.scraper),
        ("echo", "server", "echo", "node-b", ips.echo),
        ("victim", "server", "victim", "node-c", ips.victim),
        ("legacy", "legacy", "legacy", "node-b", ips.legacy),
    ];
    let mut manifests = [
        common::namespace("client", true),
        common::namespace("server", true),
        common::namespace("legacy", false),
        common::service("echo", "server", ips.vip, 80, 8080, "echo"),
    ]
    .concat();
    for (name, namespace, service_account, node, ip) in pods {
        manifests.push_str(&common::pod(&Pod {
            name,
            namespace,
            service_account,
            node,
            ip,
        }));
    }
    let mesh = Mesh::start(addrs, &manifests, &["node-a", "node-b", "node-c"]).await;
    (mesh, ips)
}

fn socks(proxy: &NodeProxy) -> SocketAddr {
    proxy.addrs().socks5.unwrap()
}

#[tokio::test]
async fn echo_across_hbone_is_counted_on_both_sides() {
    let (mesh, ips) = mesh().await;
    let _echo = echo((ips.echo, 8080).into()).await;
    let a = mesh.node(mesh.node_config("node-a")).await;
    let b = mesh.node(mesh.node_config("node-b")).await;
    wait_hbone(&b, ips.echo, 15008).await;

    let stream = socks_connect(socks(&a), ips.scraper.into(), (ips.echo, 8080).into())
        .await
        .unwrap();
    let payload = b"hello over hbone";
    assert_eq!(echo_roundtrip(stream, payload).await, payload);

    // Both reporters close the connection with 16 bytes each way, as mutual TLS, naming both
    // workloads and the verified principals.
    let labels = |reporter| {
        [
            ("reporter", reporter),
            ("source_workload", "scraper"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/client/sa/scraper",
            ),
            ("destination_workload", "echo"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/server/sa/echo",
            ),
            ("connection_security_policy", "mutual_tls"),
        ]
    };
    for (proxy, reporter) in [(&a, "source"), (&b, "destination")] {
        let render = || proxy.telemetry().metrics().render();
        eventually!(
            observe = metric(
                &render(),
                "istio_tcp_connections_closed_total",
                &labels(reporter)
            ),
            |n| n == 1
        );
        let text = render();
        assert_eq!(
            metric(&text, "istio_tcp_received_bytes_total", &labels(reporter)),
            16,
            "{text}"
        );
        assert_eq!(
            metric(&text, "istio_tcp_sent_bytes_total", &labels(reporter)),
            16,
            "{text}"
        );
    }

    // Through the service VIP: port 80 maps to the endpoint's 8080, on the pooled connection.
    let stream = socks_connect(socks(&a), ips.scraper.into(), (ips.vip, 80).into())
        .await
        .unwrap();
    assert_eq!(echo_roundtrip(stream, b"via the vip").await, b"via the vip");
    let service = [
        ("reporter", "source"),
        ("destination_service", "echo.server.svc.cluster.local"),
    ];
    eventually!(
        observe = metric(
            &a.telemetry().metrics().render(),
            "istio_tcp_connections_closed_total",
            &service
        ),
        |n| n == 1
    );
    assert_eq!(
        a.pool_stats().0,
        1,
        "both tunnels rode one HBONE connection"
    );

    // The admin view lists what the data path used.
    let dump = a.admin_view().config_dump();
    let certs = dump["certificates"].as_array().unwrap();
    assert!(
        certs.iter().any(
            |c| c["identity"] == "spiffe://cluster.local/ns/client/sa/scraper"
                && c["state"] == "Available"
        ),
        "{dump}"
    );
    assert!(dump["workloads"].as_array().unwrap().len() >= 4);
    assert_eq!(dump["connections"]["total"], 0);
    assert_eq!(dump["hbonePool"]["connections"], 1, "{dump}");
    assert_eq!(dump["ready"], true);
    assert_eq!(a.admin_view().readiness(), Ok(()));
}

#[tokio::test]
async fn a_large_transfer_flows_both_ways_at_once() {
    const SIZE: usize = 4 * 1024 * 1024;
    let (mesh, ips) = mesh().await;
    let _echo = echo((ips.echo, 8080).into()).await;
    let a = mesh.node(mesh.node_config("node-a")).await;
    let b = mesh.node(mesh.node_config("node-b")).await;
    wait_hbone(&b, ips.echo, 15008).await;
    let stream = socks_connect(socks(&a), ips.scraper.into(), (ips.echo, 8080).into())
        .await
        .unwrap();
    let payload: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
    let (mut read, mut write) = stream.into_split();
    // Writing everything before reading would deadlock on full buffers without flow control
    // doing its job end to end; both halves run together.
    let writer = async {
        write.write_all(&payload).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let reader = async {
        let mut back = Vec::with_capacity(SIZE);
        read.read_to_end(&mut back).await.unwrap();
        back
    };
    let ((), back) = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("transfer stalled");
    assert!(back == payload, "payload corrupted");
}

#[tokio::test]
async fn a_destination_with_the_wrong_identity_is_refused() {
    let (mesh, ips) = mesh().await;
    let a = mesh.node(mesh.node_config("node-a")).await;

    // A rogue server on the victim's HBONE port presents a genuine mesh certificate, but for
    // the echo service account (node-b may hold it), not the victim's.
    let stolen = mesh
        .ca_manager("node-b")
        .fetch(&id("server", "echo"))
        .await
        .unwrap();
    let roots = mesh.control.ca().roots().to_vec();
    let config = tls::server_config(
        Arc::new(FixedCert::system(stolen)),
        &roots,
        vec![ambit_identity::TrustDomain::new("cluster.local").unwrap()],
    )
    .unwrap();
    let listener = TcpListener::bind((ips.victim, 15008)).await.unwrap();
    let rogue_saw = Arc::new(Mutex::new(Vec::<String>::new()));
    let saw = rogue_saw.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
            let saw = saw.clone();
            tokio::spawn(async move {
                let outcome = match acceptor.accept(tcp).await {
                    Err(e) => format!("handshake failed: {e}"),
                    Ok(mut tls) => {
                        let mut buf = [0u8; 1024];
                        match tls.read(&mut buf).await {
                            Ok(0) => "closed".to_owned(),
                            Ok(n) => format!("received {n} application bytes"),
                            Err(e) => format!("read failed: {e}"),
                        }
                    }
                };
                saw.lock().unwrap().push(outcome);
            });
        }
    });

    let refused = socks_connect(socks(&a), ips.scraper.into(), (ips.victim, 8080).into()).await;
    assert_eq!(refused.err(), Some(2), "SOCKS5 'not allowed by ruleset'");
    eventually!(observe = rogue_saw.lock().unwrap().clone(), |s| !s
        .is_empty());
    let saw = rogue_saw.lock().unwrap().clone();
    assert!(
        saw.iter().all(|s| !s.contains("application bytes")),
        "the rogue server got data: {saw:?}"
    );
    let text = a.telemetry().metrics().render();
    assert_eq!(
        metric(
            &text,
            "istio_tcp_connections_closed_total",
            &[("response_flags", "CONNECT")]
        ),
        1,
        "{text}"
    );
}

#[tokio::test]
async fn a_relay_on_the_path_sees_only_tls() {
    let (mesh, ips) = mesh().await;
    let _echo = echo((ips.echo, 8080).into()).await;
    let a = mesh.node(mesh.node_config("node-a")).await;
    // Node B serves HBONE on 25008; the relay takes 15008, where node A dials.
    let mut config_b = mesh.node_config("node-b");
    config_b.listeners.hbone_port = 25008;
    let b = mesh.node(config_b).await;
    wait_hbone(&b, ips.echo, 25008).await;
    let relay = Relay::start((ips.echo, 15008).into(), (ips.echo, 25008).into()).await;

    let secret = b"PLAINTEXT-THE-RELAY-MUST-NEVER-SEE-0123456789";
    let stream = socks_connect(socks(&a), ips.scraper.into(), (ips.echo, 8080).into())
        .await
        .unwrap();
    assert_eq!(echo_roundtrip(stream, secret).await, secret);

    let (up, down) = relay.seen();
    assert!(
        up.len() > secret.len() && down.len() > secret.len(),
        "the relay carried the tunnel"
    );
    for (what, bytes) in [("client to server", &up), ("server to client", &down)] {
        assert_eq!(
            &bytes[..2],
            &[0x16, 0x03],
            "{what} starts with a TLS handshake record"
        );
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret),
            "{what} carried the plaintext"
        );
    }
}

#[tokio::test]
async fn non_mesh_destinations_pass_through_unencrypted() {
    let (mesh, ips) = mesh().await;
    let a = mesh.node(mesh.node_config("node-a")).await;

    // A workload in a namespace that is not enrolled: plain TCP, labelled as such.
    let _legacy = echo((ips.legacy, 8080).into()).await;
    let stream = socks_connect(socks(&a), ips.scraper.into(), (ips.legacy, 8080).into())
        .await
        .unwrap();
    assert_eq!(echo_roundtrip(stream, b"plain").await, b"plain");
    let legacy = [
        ("destination_workload", "legacy"),
        ("connection_security_policy", "unknown"),
    ];
    eventually!(
        observe = metric(
            &a.telemetry().metrics().render(),
            "istio_tcp_connections_closed_total",
            &legacy
        ),
        |n| n == 1
    );

    // An address the mesh does not know at all (after asking the control plane).
    let outside = mesh.addrs.next_addr();
    let _outside = echo((outside, 9000).into()).await;
    let stream = socks_connect(socks(&a), ips.scraper.into(), (outside, 9000).into())
        .await
        .unwrap();
    assert_eq!(echo_roundtrip(stream, b"outside").await, b"outside");
    let unknown = [
        ("destination_workload", "unknown"),
        ("connection_security_policy", "unknown"),
    ];
    eventually!(
        observe = metric(
            &a.telemetry().metrics().render(),
            "istio_tcp_connections_closed_total",
            &unknown
        ),
        |n| n == 1
    );
}

/// A transparent TCP relay recording what crosses it each way.
struct Relay {
    up: Arc<Mutex<Vec<u8>>>,
    down: Arc<Mutex<Vec<u8>>>,
}

impl Relay {
    async fn start(listen: SocketAddr, target: SocketAddr) -> Self {
        let listener = TcpListener::bind(listen).await.unwrap();
        let (up, down) = (Arc::new(Mutex::default()), Arc::new(Mutex::default()));
        let (u, d) = (up.clone(), down.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(target).await.unwrap();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(pump(cr, sw, u.clone()));
                tokio::spawn(pump(sr, cw, d.clone()));
            }
        });
        Self { up, down }
    }

    fn seen(&self) -> (Vec<u8>, Vec<u8>) {
        (
            self.up.lock().unwrap().clone(),
            self.down.lock().unwrap().clone(),
        )
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    seen: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown().await;
}

/// A pod outside the mesh has no identity on the data path: even to an enrolled destination its
/// traffic stays plain TCP (as if never captured), and its node proxy never asks the CA for a
/// certificate in its name.
#[tokio::test]
async fn a_source_outside_the_mesh_gets_no_tunnel_and_no_certificate() {
    let (mesh, ips) = mesh().await;
    let b = mesh.node(mesh.node_config("node-b")).await;
    wait_hbone(&b, ips.echo, 15008).await;

    let _echo = echo((ips.echo, 8080).into()).await;
    let stream = socks_connect(socks(&b), ips.legacy.into(), (ips.echo, 8080).into())
        .await
        .unwrap();
    assert_eq!(echo_roundtrip(stream, b"not meshed").await, b"not meshed");
    let plain = [
        ("source_workload", "legacy"),
        ("destination_workload", "echo"),
        ("connection_security_policy", "unknown"),
    ];
    eventually!(
        observe = metric(
            &b.telemetry().metrics().render(),
            "istio_tcp_connections_closed_total",
            &plain
        ),
        |n| n == 1
    );
    let dump = b.admin_view().config_dump();
    let certificates: Vec<&str> = dump["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["identity"].as_str())
        .collect();
    assert_eq!(
        certificates,
        [id("server", "echo").as_str()],
        "only the enrolled pod on node-b has a certificate"
    );
}
