//! Without a control plane: two node proxies read the same local-config file and sign with an
//! in-process CA from one directory, and HBONE between them works as with WDS.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::IpAddr;

use ambit_identity::TrustDomain;
use ambit_node::NodeProxy;
use ambit_node::config::{CertificateSource, ConfigSource, ListenerConfig, NodeConfig};
use ambit_testkit::{LoopbackAddrs, eventually};
use common::{echo, echo_roundtrip, metric, socks_connect, wait_hbone};

#[tokio::test]
async fn a_local_config_file_and_a_local_ca_need_no_control_plane() {
    common::init_tracing();
    let addrs = LoopbackAddrs::new();
    let (client, server) = (addrs.next_addr(), addrs.next_addr());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mesh.yaml");
    std::fs::write(
        &file,
        format!(
            "workloads:\n\
             - {{name: client, namespace: demo, serviceAccount: client, workloadIps: [{client}], protocol: HBONE, node: node-a}}\n\
             - {{name: server, namespace: demo, serviceAccount: server, workloadIps: [{server}], protocol: HBONE, node: node-b}}\n"
        ),
    )
    .unwrap();
    let config = |node: &str| {
        let mut config = NodeConfig::new(
            node,
            TrustDomain::new("cluster.local").unwrap(),
            ConfigSource::LocalFile(file.clone()),
            CertificateSource::LocalCa(dir.path().join("ca")),
        );
        config.listeners = ListenerConfig::ephemeral(IpAddr::V4(addrs.next_addr()));
        config
    };
    let a = NodeProxy::start(config("node-a")).await.unwrap();
    let b = NodeProxy::start(config("node-b")).await.unwrap();
    assert!(
        a.is_ready() && b.is_ready(),
        "a file is a complete view at once"
    );
    assert_eq!(a.control_plane_connected(), None);
    let _app = echo((server, 8080).into()).await;
    wait_hbone(&b, server, 15008).await;

    let stream = socks_connect(
        a.addrs().socks5.unwrap(),
        client.into(),
        (server, 8080).into(),
    )
    .await
    .unwrap();
    assert_eq!(
        echo_roundtrip(stream, b"no control plane").await,
        b"no control plane"
    );
    let mtls = [
        ("reporter", "destination"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/demo/sa/client",
        ),
        ("connection_security_policy", "mutual_tls"),
    ];
    eventually!(
        observe = metric(
            &b.telemetry().metrics().render(),
            "istio_tcp_connections_closed_total",
            &mtls
        ),
        |n| n == 1
    );
}
