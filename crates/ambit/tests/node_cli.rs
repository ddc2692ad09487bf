//! The binaries together, as an operator runs them on one host: `ambit control` (WDS + CA over
//! TLS with bootstrap tokens) and two `ambit node` processes; a client workload reaches a server
//! workload on the other "node" through SOCKS5 → HBONE → the server, and both node proxies
//! report the connection as mutual TLS with the workloads' SPIFFE identities.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[String], log: &Path) -> Running {
    let log = std::fs::File::create(log).unwrap();
    Running(
        Command::new(env!("CARGO_BIN_EXE_ambit"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out))
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Connects from `src` through the SOCKS5 listener at `socks` to `dst` (RFC 1928, no auth).
fn socks_connect(src: Ipv4Addr, socks: SocketAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
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

#[test]
fn two_node_proxies_carry_a_connection_over_hbone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ips = ambit_testkit::LoopbackAddrs::new();
    let (control_ip, node_a, node_b, client_ip, server_ip) = (
        ips.next_addr(),
        ips.next_addr(),
        ips.next_addr(),
        ips.next_addr(),
        ips.next_addr(),
    );

    std::fs::create_dir(d.join("manifests")).unwrap();
    std::fs::write(
        d.join("manifests/mesh.yaml"),
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: demo, labels: {{istio.io/dataplane-mode: ambient}}}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: demo, labels: {{app: client}}}}\n\
             spec: {{serviceAccountName: client, nodeName: node-a, containers: [{{name: c}}]}}\n\
             status: {{podIP: {client_ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n\
             ---\napiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: demo, labels: {{app: server}}}}\n\
             spec: {{serviceAccountName: server, nodeName: node-b, containers: [{{name: c}}]}}\n\
             status: {{podIP: {server_ip}, conditions: [{{type: Ready, status: 'True'}}]}}\n"
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("tokens"),
        "node-a-token-0123456789abcdef node-a\nnode-b-token-0123456789abcdef node-b\n",
    )
    .unwrap();
    std::fs::write(d.join("token-a"), "node-a-token-0123456789abcdef\n").unwrap();
    std::fs::write(d.join("token-b"), "node-b-token-0123456789abcdef\n").unwrap();

    let s = |v: &str| v.to_owned();
    let p = |path: &Path| path.to_str().unwrap().to_owned();
    let _control = spawn(
        &[
            s("control"),
            s("--config-dir"),
            p(&d.join("manifests")),
            s("--ca-dir"),
            p(&d.join("ca")),
            s("--bootstrap-tokens"),
            p(&d.join("tokens")),
        ]
        .into_iter()
        .chain([
            s("--plaintext-addr"),
            s("off"),
            s("--tls-addr"),
            format!("{control_ip}:15012"),
            s("--monitoring-addr"),
            format!("{control_ip}:15014"),
        ])
        .collect::<Vec<_>>(),
        &d.join("control.log"),
    );
    wait_until("the control plane", || {
        d.join("ca/root-cert.pem").exists()
            && http_get(SocketAddr::new(control_ip.into(), 15014), "/ready").is_some()
    });

    let node = |name: &str, ip: Ipv4Addr, token: &str| {
        let args: Vec<String> = [
            s("node"),
            s("--node-name"),
            s(name),
            s("--xds-address"),
            format!("{control_ip}:15012"),
            s("--server-name"),
            s("istiod.istio-system.svc"),
            s("--token-file"),
            p(&d.join(token)),
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
        ]
        .into();
        spawn(&args, &d.join(format!("{name}.log")))
    };
    let _a = node("node-a", node_a, "token-a");
    let _b = node("node-b", node_b, "token-b");
    for ip in [node_a, node_b] {
        wait_until("node proxy readiness", || {
            http_get(SocketAddr::new(ip.into(), 15021), "/healthz/ready")
                .is_some_and(|(code, _)| code == 200)
        });
    }

    // The server workload: an echo server on its own address.
    let server = TcpListener::bind((server_ip, 8080)).unwrap();
    std::thread::spawn(move || {
        for stream in server.incoming().flatten() {
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

    let mut conn = None;
    wait_until("a tunnel from client to server", || {
        conn = socks_connect(
            client_ip,
            SocketAddr::new(node_a.into(), 15080),
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
            let (_, text) = http_get(SocketAddr::new(ip.into(), 15020), "/stats/prometheus")
                .unwrap_or_default();
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
        let log = std::fs::read_to_string(d.join("node-b.log")).unwrap_or_default();
        log.lines().any(|l| {
            l.contains("connection complete")
                && l.contains(client_id)
                && l.contains(server_id)
                && l.contains("direction=\"inbound\"")
        })
    });
    // The admin endpoint of node-a shows its workloads and certificates.
    let (code, dump) = http_get(SocketAddr::new(node_a.into(), 15000), "/config_dump").unwrap();
    assert_eq!(code, 200);
    assert!(
        dump.contains(client_id),
        "config_dump names the client's certificate: {dump}"
    );
}
