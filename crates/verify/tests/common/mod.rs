//! What the capture tests share: namespaces, plain and TLS 1.3 exchanges between two ends on
//! port 15008, and reading the capture back.
#![allow(clippy::unwrap_used, dead_code)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use ambit_netns::Netns;
use ambit_verify::flows::{self, Flow};
use ambit_verify::pcap;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub(crate) const HBONE: u16 = 15008;
pub(crate) const NEEDLE: &str = "istio_tcp_sent_bytes_total";

/// A new, empty network namespace; panics saying why when this process may not make one.
pub(crate) fn new_netns() -> Netns {
    Netns::create().unwrap_or_else(|e| {
        panic!("this test needs root (CAP_SYS_ADMIN) to create a network namespace: {e}")
    })
}

/// Runs `ip <args>` inside `netns`, panicking with its output on failure.
pub(crate) fn ip(netns: &Netns, args: &[&str]) {
    let mut command = Command::new("ip");
    command.args(args);
    let out = netns.output(command).unwrap();
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

fn listener(netns: &Netns, addr: SocketAddr) -> TcpListener {
    let std = netns
        .run_io(move || {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .unwrap();
    TcpListener::from_std(std).unwrap()
}

/// Connects from `from` (any port) to `to`, with the socket made inside `netns`.
async fn connect(netns: &Netns, from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = netns.run_io(TcpSocket::new_v4).unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0)).unwrap();
    socket.connect(to).await.unwrap()
}

fn tls_configs() -> (TlsAcceptor, TlsConnector) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = rcgen::generate_simple_self_signed(vec!["verify.test".to_owned()]).unwrap();
    let cert: CertificateDer<'static> = key.cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], private)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        TlsAcceptor::from(Arc::new(server)),
        TlsConnector::from(Arc::new(client)),
    )
}

/// One end of an exchange: an address and the namespace holding it.
pub(crate) type End<'a> = (&'a Netns, Ipv4Addr);

/// client → server:15008 in plaintext: a request naming the metric, echoed back.
pub(crate) async fn plaintext_exchange(client: End<'_>, server: End<'_>) {
    let request = format!("GET /stats/prometheus HTTP/1.0\r\n\r\n{NEEDLE}{{}} 42\n");
    echo_exchange(client, server, None, request.as_bytes()).await;
}

/// client → server:15008 over TLS 1.3, carrying the same metric name inside, echoed back.
pub(crate) async fn tls_exchange(client: End<'_>, server: End<'_>) {
    let secret = format!("{NEEDLE}{{reporter=\"destination\"}} 42\n").repeat(50);
    echo_exchange(client, server, Some(tls_configs()), secret.as_bytes()).await;
}

/// One connection to an echo server on `server`:15008: `message` sent, read back whole, both
/// ends closed; over TLS when `tls` is given.
async fn echo_exchange(
    (client_ns, client): End<'_>,
    (server_ns, server_ip): End<'_>,
    tls: Option<(TlsAcceptor, TlsConnector)>,
    message: &[u8],
) {
    let (acceptor, connector) = tls.unzip();
    let to = SocketAddr::new(IpAddr::V4(server_ip), HBONE);
    let server = listener(server_ns, to);
    let len = message.len();
    let serve = tokio::spawn(async move {
        let (tcp, _) = server.accept().await.unwrap();
        match acceptor {
            Some(acceptor) => echo(acceptor.accept(tcp).await.unwrap(), len).await,
            None => echo(tcp, len).await,
        }
    });
    let tcp = connect(client_ns, client, to).await;
    let echoed = match connector {
        Some(connector) => {
            let name = ServerName::try_from("verify.test").unwrap();
            let tls = connector.connect(name, tcp).await.unwrap();
            send_and_read_back(tls, message).await
        }
        None => send_and_read_back(tcp, message).await,
    };
    assert_eq!(echoed, message);
    serve.await.unwrap();
}

/// Reads `len` bytes, writes them back, closes.
async fn echo(mut stream: impl AsyncRead + AsyncWrite + Unpin, len: usize) {
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await.unwrap();
    stream.write_all(&buf).await.unwrap();
    stream.shutdown().await.unwrap();
}

/// Writes `message`, reads until the peer closes, closes too.
async fn send_and_read_back(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    message: &[u8],
) -> Vec<u8> {
    stream.write_all(message).await.unwrap();
    let mut echoed = Vec::new();
    stream.read_to_end(&mut echoed).await.unwrap();
    stream.shutdown().await.unwrap();
    echoed
}

/// The flows in the file so far, once `expected` of them are closed both ways.
pub(crate) fn closed_flows(path: &Path, expected: usize) -> Option<Vec<Flow>> {
    let trace = pcap::read_file(path).ok()?;
    let flows = flows::assemble(&trace.segments);
    let closed = flows.iter().filter(|f| f.closed && f.opened).count();
    (closed >= expected).then_some(flows)
}

pub(crate) fn flow_to(flows: &[Flow], server: Ipv4Addr) -> &Flow {
    flows
        .iter()
        .find(|f| f.server == SocketAddr::new(IpAddr::V4(server), HBONE))
        .unwrap_or_else(|| panic!("no flow to {server}:{HBONE} in {flows:#?}"))
}
