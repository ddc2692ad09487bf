//! Hostile peers against a node proxy's HBONE port and its outbound side: each is refused,
//! bounded in time and memory, and never disturbs the other connections.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_identity::tls;
use ambit_node::NodeProxy;
use ambit_testkit::{LoopbackAddrs, eventually};
use bytes::Bytes;
use common::{Mesh, Pod, echo, id, socks_connect, wait_hbone};
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Setup {
    mesh: Mesh,
    scraper: Ipv4Addr,
    echo: Ipv4Addr,
    b: NodeProxy,
    _echo: common::Echo,
}

/// The scraper (node-a) and echo (node-b); only node-b's proxy runs, with a 1 s handshake
/// timeout.
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
    let mut config = mesh.node_config("node-b");
    config.timeouts.handshake = Duration::from_secs(1);
    let b = mesh.node(config).await;
    wait_hbone(&b, echo_ip, 15008).await;
    Setup {
        mesh,
        scraper,
        echo: echo_ip,
        b,
        _echo: echo_app,
    }
}

impl Setup {
    fn hbone(&self) -> SocketAddr {
        (self.echo, 15008).into()
    }

    /// A genuine mutual TLS connection as the scraper.
    async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let cert = self
            .mesh
            .ca_manager("node-a")
            .fetch(&id("client", "scraper"))
            .await
            .unwrap();
        let roots = self.mesh.control.ca().roots().to_vec();
        let config = tls::client_config(&cert, &roots, vec![id("server", "echo")]).unwrap();
        let tcp = TcpStream::connect(self.hbone()).await.unwrap();
        let name = ServerName::IpAddress(IpAddr::from(self.echo).into());
        TlsConnector::from(config).connect(name, tcp).await.unwrap()
    }

    /// An HTTP/2 connection over [`Self::tls`].
    async fn h2(&self) -> SendRequest<Bytes> {
        let (sender, conn) = h2::client::handshake(self.tls().await).await.unwrap();
        tokio::spawn(conn);
        sender
    }
}

/// Sends a request and waits for the response status (and the streams, for CONNECT).
async fn request(
    sender: &mut SendRequest<Bytes>,
    method: Method,
    authority: &str,
) -> (StatusCode, h2::SendStream<Bytes>, h2::RecvStream) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{authority}/"))
        .body(())
        .unwrap();
    let req = if req.method() == Method::CONNECT {
        Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())
            .unwrap()
    } else {
        req
    };
    std::future::poll_fn(|cx| sender.poll_ready(cx))
        .await
        .unwrap();
    let (response, send) = sender.send_request(req, false).unwrap();
    let response = response.await.unwrap();
    (response.status(), send, response.into_body())
}

async fn tunnel_echoes(sender: &mut SendRequest<Bytes>, echo: Ipv4Addr) {
    let (status, mut send, mut recv) =
        request(sender, Method::CONNECT, &format!("{echo}:8080")).await;
    assert_eq!(status, StatusCode::OK);
    send.send_data(Bytes::from_static(b"ping"), true).unwrap();
    let data = recv.data().await.unwrap().unwrap();
    assert_eq!(&data[..], b"ping");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let s = setup().await;
    let config = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_no_client_auth();
    let tcp = TcpStream::connect(s.hbone()).await.unwrap();
    let name = ServerName::IpAddress(IpAddr::from(s.echo).into());
    // In TLS 1.3 the client finishes first; the server's refusal arrives on the first read.
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Err(_) | Ok(0)), "server answered: {read:?}");
    let err = read.unwrap_err();
    assert_eq!(
        tls::classify_io(&err),
        tls::HandshakeFailure::NoCertificate,
        "{err}"
    );
    assert_eq!(
        s._echo.accepted.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn garbage_after_the_handshake_closes_only_that_connection() {
    let s = setup().await;
    let mut good = s.h2().await;
    tunnel_echoes(&mut good, s.echo).await;

    let mut garbage = s.tls().await;
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), garbage.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection stays open after garbage");

    tunnel_echoes(&mut good, s.echo).await;
}

#[tokio::test]
async fn tunnels_reach_only_the_local_workload() {
    let s = setup().await;
    let mut sender = s.h2().await;
    let cases = [
        (
            Method::CONNECT,
            format!("{}:8080", s.scraper),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::CONNECT,
            "1.2.3.4:80".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            format!("{}:8080", s.echo),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        // Nothing listens there: the application refused.
        (
            Method::CONNECT,
            format!("{}:9", s.echo),
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ];
    for (method, authority, expected) in cases {
        let (status, _, _) = request(&mut sender, method.clone(), &authority).await;
        assert_eq!(status, expected, "{method} {authority}");
    }
    tunnel_echoes(&mut sender, s.echo).await;
}

#[tokio::test]
async fn a_stalled_peer_is_dropped_after_the_handshake_timeout() {
    let s = setup().await;
    let mut stalled = TcpStream::connect(s.hbone()).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "still open: {read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    // Meanwhile others are served.
    tunnel_echoes(&mut s.h2().await, s.echo).await;
}

#[tokio::test]
async fn a_stream_flood_is_held_to_the_concurrency_limit() {
    let s = setup().await;
    let mut sender = s.h2().await;
    let mut open = Vec::new();
    for _ in 0..100 {
        let (status, send, recv) =
            request(&mut sender, Method::CONNECT, &format!("{}:8080", s.echo)).await;
        assert_eq!(status, StatusCode::OK);
        open.push((send, recv));
    }
    assert_eq!(sender.current_max_send_streams(), 100);
    // The 101st waits for a slot rather than being served.
    let mut extra = sender.clone();
    let authority = format!("{}:8080", s.echo);
    let waiting =
        tokio::spawn(async move { request(&mut extra, Method::CONNECT, &authority).await.0 });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "a 101st stream was opened");
    // Another connection is unaffected.
    tunnel_echoes(&mut s.h2().await, s.echo).await;
    // (The first stream: h2's `SendRequest` keeps a reference to the one it opened last.)
    drop(open.remove(0));
    let status = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(s.b.open_connections() >= 100);
}

#[tokio::test]
async fn outbound_fails_closed_for_sources_that_are_not_local_workloads() {
    let s = setup().await;
    let a = s.mesh.node(s.mesh.node_config("node-a")).await;
    let socks = a.addrs().socks5.unwrap();
    // An address the mesh does not know.
    let stranger = s.mesh.addrs.next_addr();
    let refused = socks_connect(socks, stranger.into(), (s.echo, 8080).into()).await;
    assert_eq!(refused.err(), Some(2));
    // A workload of another node cannot send through node-a.
    let refused = socks_connect(socks, s.echo.into(), (s.echo, 8080).into()).await;
    assert_eq!(refused.err(), Some(2));
    // The scraper can.
    let ok = socks_connect(socks, s.scraper.into(), (s.echo, 8080).into()).await;
    assert!(ok.is_ok());
}

#[tokio::test]
async fn unredirected_connections_to_the_capture_ports_are_refused() {
    let s = setup().await;
    // Connected directly, 15001 and 15006 have no original destination but themselves.
    for addr in [
        s.b.addrs().outbound.unwrap(),
        s.b.addrs().inbound_passthrough.unwrap(),
    ] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0) | Err(_))), "{addr}: {read:?}");
    }
    assert_eq!(s.b.open_connections(), 0);
}

/// A meshed client holding a genuine certificate forges `Forwarded: for=`: policy judges it by
/// the TCP peer address the kernel saw, never by the header (security review H1). Against an
/// ipBlocks ALLOW (only the scraper's address) and an ipBlocks DENY (the intruder's address).
#[tokio::test]
async fn a_forged_forwarded_header_is_judged_by_the_real_address() {
    let addrs = LoopbackAddrs::new();
    let (scraper, intruder) = (addrs.next_addr(), addrs.next_addr());
    let (allow_ip, deny_ip) = (addrs.next_addr(), addrs.next_addr());
    let mut manifests = [
        common::namespace("client", true),
        common::namespace("server", true),
    ]
    .concat();
    for (name, namespace, node, ip) in [
        ("scraper", "client", "node-a", scraper),
        ("allow-scraper-ip", "server", "node-b", allow_ip),
        ("deny-intruder-ip", "server", "node-b", deny_ip),
    ] {
        manifests.push_str(&common::pod(&Pod {
            name,
            namespace,
            service_account: name,
            node,
            ip,
        }));
    }
    let policy = |name: &str, action: &str, source: &str| {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: {name}, namespace: server}}\nspec:\n  \
             selector: {{matchLabels: {{app: {name}}}}}\n  action: {action}\n  \
             rules: [{{from: [{{source: {{ipBlocks: ['{source}/32']}}}}]}}]\n"
        )
    };
    manifests.push_str(&policy("allow-scraper-ip", "ALLOW", &scraper.to_string()));
    manifests.push_str(&policy("deny-intruder-ip", "DENY", &intruder.to_string()));
    let mesh = Mesh::start(addrs, &manifests, &["node-a", "node-b"]).await;
    let _apps = [
        echo((allow_ip, 8080).into()).await,
        echo((deny_ip, 8080).into()).await,
    ];
    let a = mesh.node(mesh.node_config("node-a")).await;
    let b = mesh.node(mesh.node_config("node-b")).await;
    wait_hbone(&b, allow_ip, 15008).await;
    wait_hbone(&b, deny_ip, 15008).await;
    eventually!(observe = b.state().policies().len(), |n| n >= 2);

    // The genuine scraper, through its node proxy, is allowed by the ipBlocks ALLOW: its tunnel
    // leaves from its own address.
    let socks = a.addrs().socks5.unwrap();
    let stream = socks_connect(socks, scraper.into(), (allow_ip, 8080).into())
        .await
        .unwrap();
    assert_eq!(common::echo_roundtrip(stream, b"genuine").await, b"genuine");

    // The intruder holds the scraper's certificate but connects from its own address.
    let cert = mesh
        .ca_manager("node-a")
        .fetch(&id("client", "scraper"))
        .await
        .unwrap();
    let roots = mesh.control.ca().roots().to_vec();
    let forge = |claimed: Ipv4Addr| format!("for=\"{claimed}:40000\"");
    let connect = async |from: Ipv4Addr, to: Ipv4Addr, forwarded: String| {
        let server = id(
            "server",
            if to == allow_ip {
                "allow-scraper-ip"
            } else {
                "deny-intruder-ip"
            },
        );
        let config = tls::client_config(&cert, &roots, vec![server]).unwrap();
        let mut sender = h2_from(from, to, config).await;
        connect_status(&mut sender, &format!("{to}:8080"), &forwarded).await
    };
    // Claiming the allowed address does not satisfy the ALLOW.
    assert_eq!(
        connect(intruder, allow_ip, forge(scraper)).await,
        StatusCode::FORBIDDEN
    );
    // Claiming another address does not escape the DENY.
    assert_eq!(
        connect(intruder, deny_ip, forge(scraper)).await,
        StatusCode::FORBIDDEN
    );
    // And a claim of a denied address does not deny a client connecting from elsewhere.
    assert_eq!(
        connect(scraper, deny_ip, forge(intruder)).await,
        StatusCode::OK
    );
    // The refusals are logged and counted with the real source.
    let denied = common::metric(
        &b.telemetry().metrics().render(),
        "istio_tcp_connections_closed_total",
        &[("response_flags", "DENY")],
    );
    assert_eq!(denied, 2);
}

/// A tunnel to one of the proxy's own ports on the workload's address (nested HBONE, ztunnel's
/// `illegal_ports`) is refused before anything is dialed (security review L1).
#[tokio::test]
async fn a_tunnel_to_the_proxys_own_ports_is_refused() {
    let s = setup().await;
    let mut sender = s.h2().await;
    let (status, _, _) = request(&mut sender, Method::CONNECT, &format!("{}:15008", s.echo)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    for port in [15000, 15001, 15006, 15020, 15021] {
        let (status, _, _) =
            request(&mut sender, Method::CONNECT, &format!("{}:{port}", s.echo)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "port {port}");
    }
    // The connection is still good for the application, and nothing nested was opened.
    tunnel_echoes(&mut sender, s.echo).await;
    assert_eq!(s.b.open_connections(), 0);
}

/// An HTTP/2 connection to `to`:15008 from source address `from`, with `config`.
async fn h2_from(from: Ipv4Addr, to: Ipv4Addr, config: Arc<ClientConfig>) -> SendRequest<Bytes> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let tcp = socket.connect((to, 15008).into()).await.unwrap();
    let name = ServerName::IpAddress(IpAddr::from(to).into());
    let tls = TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let (sender, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// The status of a CONNECT to `authority` carrying `Forwarded: <forwarded>`.
async fn connect_status(
    sender: &mut SendRequest<Bytes>,
    authority: &str,
    forwarded: &str,
) -> StatusCode {
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri(authority)
        .header(http::header::FORWARDED, forwarded)
        .body(())
        .unwrap();
    std::future::poll_fn(|cx| sender.poll_ready(cx))
        .await
        .unwrap();
    let (response, _send) = sender.send_request(req, false).unwrap();
    response.await.unwrap().status()
}

/// Accepts any server certificate: the test is about the server's side.
#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        tls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
