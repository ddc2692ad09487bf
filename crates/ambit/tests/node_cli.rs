//! The binaries together, as an operator runs them on one host: `ambit control` (WDS + CA over
//! TLS with bootstrap tokens) and two `ambit node` processes; a client workload reaches a server
//! workload on the other "node" through SOCKS5 → HBONE → the server, and both node proxies
//! report the connection as mutual TLS with the workloads' SPIFFE identities.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;

use common::{Mesh, echo_server, http_get, manifests, namespace, pod, socks_connect, wait_until};

#[test]
fn two_node_proxies_carry_a_connection_over_hbone() {
    let ips = ambit_testkit::LoopbackAddrs::new();
    let (client_ip, server_ip) = (ips.next_addr(), ips.next_addr());
    let mesh = Mesh::start(
        &ips,
        &manifests(&[
            namespace("demo", true),
            pod("demo", "client", "node-a", client_ip),
            pod("demo", "server", "node-b", server_ip),
        ]),
    );
    let (node_a, node_b) = (mesh.node_a, mesh.node_b);

    // The server workload: an echo server on its own address.
    echo_server(SocketAddr::new(server_ip.into(), 8080));

    let mut conn = None;
    wait_until("a tunnel from client to server", || {
        conn = socks_connect(
            client_ip,
            Mesh::socks(node_a),
            SocketAddr::new(server_ip.into(), 8080),
        )
        .ok();
        conn.is_some()
    });
    let mut conn = conn.unwrap();
    conn.write_all(b"hello over hbone").unwrap();
    let mut echoed = [0u8; 16];
    conn.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"hello over hbone");
    drop(conn);

    // Both sides count it as mutual TLS between the two SPIFFE identities.
    let client_id = "spiffe://cluster.local/ns/demo/sa/client";
    let server_id = "spiffe://cluster.local/ns/demo/sa/server";
    for (ip, reporter) in [(node_a, "source"), (node_b, "destination")] {
        wait_until("connection metrics", || {
            let (_, text) = http_get(Mesh::stats(ip), "/stats/prometheus").unwrap_or_default();
            text.lines().any(|l| {
                l.starts_with("istio_tcp_connections_closed_total{")
                    && l.contains(&format!("reporter=\"{reporter}\""))
                    && l.contains("connection_security_policy=\"mutual_tls\"")
                    && l.contains(&format!("source_principal=\"{client_id}\""))
                    && l.contains(&format!("destination_principal=\"{server_id}\""))
            })
        });
    }
    // And the destination's access log has the `connection complete` line with both identities.
    wait_until("the access log line", || {
        let log = std::fs::read_to_string(mesh.log("node-b")).unwrap_or_default();
        log.lines().any(|l| {
            l.contains("\tinfo\taccess\tconnection complete\t")
                && l.contains(client_id)
                && l.contains(server_id)
                && l.contains("direction=\"inbound\"")
        })
    });
    // The admin endpoint of node-a shows its workloads and certificates.
    let (code, dump) = http_get(Mesh::admin(node_a), "/config_dump").unwrap();
    assert_eq!(code, 200);
    assert!(
        dump.contains(client_id),
        "config_dump names the client's certificate: {dump}"
    );
}
