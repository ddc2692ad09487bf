//! Draining: a proxy being replaced stops accepting at once, lets its open connections run
//! until the deadline, then aborts them; a new proxy bound beside it (`SO_REUSEPORT`) takes
//! every new connection.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_node::NodeProxy;
use ambit_node::config::ListenerConfig;
use ambit_node::telemetry::{LogFormat, Metrics, Telemetry};
use ambit_testkit::{LoopbackAddrs, eventually};
use common::{Mesh, Pod, echo, echo_roundtrip, metric, socks_connect, wait_hbone};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Setup {
    mesh: Mesh,
    scraper: Ipv4Addr,
    echo: Ipv4Addr,
    _b: NodeProxy,
    _echo: common::Echo,
}

async fn setup() -> Setup {
    let addrs = LoopbackAddrs::new();
    let (scraper, echo_ip) = (addrs.next_addr(), addrs.next_addr());
    let manifests = [
        common::namespace("client", true),
        common::namespace("server", true),
        common::pod(&Pod {
            name: "scraper",
            namespace: "client",
            service_account: "scraper",
            node: "node-a",
            ip: scraper,
        }),
        common::pod(&Pod {
            name: "echo",
            namespace: "server",
            service_account: "echo",
            node: "node-b",
            ip: echo_ip,
        }),
    ]
    .concat();
    let mesh = Mesh::start(addrs, &manifests, &["node-a", "node-b"]).await;
    let echo_app = echo((echo_ip, 8080).into()).await;
    let b = mesh.node(mesh.node_config("node-b")).await;
    wait_hbone(&b, echo_ip, 15008).await;
    Setup {
        mesh,
        scraper,
        echo: echo_ip,
        _b: b,
        _echo: echo_app,
    }
}

async fn ping(stream: &mut TcpStream, text: &[u8]) {
    stream.write_all(text).await.unwrap();
    let mut back = vec![0u8; text.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, text);
}

#[tokio::test]
async fn an_open_connection_outlives_the_drain_until_the_deadline_and_a_successor_takes_new_ones() {
    let s = setup().await;
    let config = s.mesh.node_config("node-a");
    let old = Arc::new(s.mesh.node(config.clone()).await);
    let socks = old.addrs().socks5.unwrap();
    let dst = (s.echo, 8080).into();
    let mut long_lived = socks_connect(socks, s.scraper.into(), dst).await.unwrap();
    ping(&mut long_lived, b"before").await;

    // The successor binds the very same addresses while the old proxy still listens.
    let mut successor = config;
    successor.listeners = ListenerConfig {
        outbound: old.addrs().outbound,
        inbound_passthrough: old.addrs().inbound_passthrough,
        socks5: old.addrs().socks5,
        hbone_port: successor.listeners.hbone_port,
    };
    successor.telemetry = Telemetry::new(Arc::new(Metrics::new()), LogFormat::Text);
    let new = s.mesh.node(successor).await;
    assert_eq!(new.addrs(), old.addrs());

    let deadline = Duration::from_secs(2);
    let started = Instant::now();
    let draining = {
        let old = old.clone();
        tokio::spawn(async move { old.drain(deadline).await })
    };
    eventually!(!old.is_ready());

    // Every new connection lands on the successor.
    for i in 0..5u8 {
        let stream = socks_connect(socks, s.scraper.into(), dst).await.unwrap();
        assert_eq!(echo_roundtrip(stream, &[i; 3]).await, [i; 3]);
    }
    let handled = |proxy: &NodeProxy| {
        metric(
            &proxy.telemetry().metrics().render(),
            "istio_tcp_connections_closed_total",
            &[("reporter", "source")],
        )
    };
    eventually!(observe = handled(&new), |n| n == 5);
    assert_eq!(old.open_connections(), 1, "the old proxy took nothing new");

    // The old connection still works during the drain...
    ping(&mut long_lived, b"during").await;
    // ...and is aborted at the deadline.
    let aborted = draining.await.unwrap();
    assert_eq!(aborted, 1);
    assert!(started.elapsed() >= deadline);
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), long_lived.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the aborted connection was closed");
    assert_eq!(old.open_connections(), 0);
    let text = old.telemetry().metrics().render();
    assert_eq!(handled(&old), 1, "{text}");
}

#[tokio::test]
async fn a_drain_ends_as_soon_as_the_connections_do() {
    let s = setup().await;
    let a = s.mesh.node(s.mesh.node_config("node-a")).await;
    let socks = a.addrs().socks5.unwrap();
    let stream = socks_connect(socks, s.scraper.into(), (s.echo, 8080).into())
        .await
        .unwrap();
    let (aborted, echoed) = tokio::join!(a.drain(Duration::from_secs(30)), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        echo_roundtrip(stream, b"last words").await
    });
    assert_eq!(echoed, b"last words");
    assert_eq!(aborted, 0);
    // Nothing listens any more.
    assert!(TcpStream::connect(socks).await.is_err());
}
