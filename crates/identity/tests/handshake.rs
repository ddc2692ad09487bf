//! Real TLS 1.3 handshakes over loopback TCP between CA-issued workload identities: the
//! success case (both sides see the peer's SPIFFE id, post-quantum key exchange) and each
//! refusal, asserted by its classified cause on the side that refused and on the other side.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a panic is a test failure

mod common;

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use ambit_identity::clock::ManualClock;
use ambit_identity::tls::{self, FixedCert, HandshakeFailure, IdentityMismatch};
use ambit_identity::{CertificateAuthority, LocalSigner, SpiffeId, WorkloadCertificate};
use common::{id, manager, root_ca};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, NamedGroup, ServerConfig, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// What one side saw of a completed handshake and a ping/pong over it.
#[derive(Debug)]
struct Seen {
    peer: Option<SpiffeId>,
    group: Option<NamedGroup>,
    alpn: Option<Vec<u8>>,
}

/// Runs a handshake and a one-message exchange each way; returns each side's result.
async fn connect(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> (io::Result<Seen>, io::Result<Seen>) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = TlsAcceptor::from(server).accept(tcp).await?;
        let (_, conn) = tls.get_ref();
        let seen = Seen {
            peer: tls::peer_identity(conn),
            group: conn.negotiated_key_exchange_group().map(|g| g.name()),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        };
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await?;
        assert_eq!(&ping, b"ping");
        tls.write_all(b"pong").await?;
        tls.shutdown().await?;
        Ok::<_, io::Error>(seen)
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::IpAddress(IpAddr::from(Ipv4Addr::LOCALHOST).into());
        let mut tls = TlsConnector::from(client).connect(name, tcp).await?;
        let (_, conn) = tls.get_ref();
        let seen = Seen {
            peer: tls::peer_identity(conn),
            group: conn.negotiated_key_exchange_group().map(|g| g.name()),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        };
        // In TLS 1.3 the server judges the client certificate after the client has finished;
        // a refusal arrives as an alert on the first read.
        tls.write_all(b"ping").await?;
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong).await?;
        assert_eq!(&pong, b"pong");
        Ok::<_, io::Error>(seen)
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        let client = client_side.await;
        let server = server_side.await.unwrap();
        (client, server)
    })
    .await
    .expect("handshake timed out")
}

/// A mesh of one CA and a manager issuing from it.
struct Mesh {
    _dir: tempfile::TempDir,
    ca: Arc<CertificateAuthority>,
    clock: ManualClock,
}

impl Mesh {
    fn new() -> Self {
        Self::with_clock(ManualClock::starting_now())
    }

    fn with_clock(clock: ManualClock) -> Self {
        let (dir, ca) = root_ca(&clock);
        Self {
            _dir: dir,
            ca,
            clock,
        }
    }

    async fn issue(&self, identity: &SpiffeId) -> Arc<WorkloadCertificate> {
        manager(LocalSigner::new(Arc::clone(&self.ca)), &self.clock)
            .fetch(identity)
            .await
            .unwrap()
    }

    fn server(
        &self,
        cert: Arc<WorkloadCertificate>,
        roots: &[CertificateDer<'static>],
    ) -> Arc<ServerConfig> {
        let resolver = Arc::new(FixedCert::new(cert, Arc::new(self.clock.clone())));
        tls::server_config(resolver, roots, vec![common::td()]).unwrap()
    }
}

fn failure(result: &io::Result<Seen>) -> HandshakeFailure {
    match result {
        Ok(seen) => panic!("expected a refused handshake, got {seen:?}"),
        Err(e) => tls::classify_io(e),
    }
}

#[tokio::test]
async fn mutual_tls_succeeds_between_expected_identities_with_post_quantum_kx() {
    let mesh = Mesh::new();
    let (client_id, server_id) = (id("shop", "frontend"), id("shop", "cart"));
    let client_cert = mesh.issue(&client_id).await;
    let server_cert = mesh.issue(&server_id).await;

    let client =
        tls::client_config(&client_cert, mesh.ca.roots(), vec![server_id.clone()]).unwrap();
    let (client, server) = connect(client, mesh.server(server_cert, mesh.ca.roots())).await;
    let (client, server) = (client.unwrap(), server.unwrap());

    assert_eq!(
        client.peer,
        Some(server_id),
        "the client sees the server's identity"
    );
    assert_eq!(
        server.peer,
        Some(client_id),
        "the server sees the client's identity"
    );
    assert_eq!(client.group, Some(NamedGroup::X25519MLKEM768));
    assert_eq!(server.group, Some(NamedGroup::X25519MLKEM768));
    assert_eq!(client.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(server.alpn.as_deref(), Some(&b"h2"[..]));
}

#[tokio::test]
async fn client_refuses_a_server_with_another_identity() {
    let mesh = Mesh::new();
    let client_cert = mesh.issue(&id("shop", "frontend")).await;
    let server_cert = mesh.issue(&id("shop", "cart")).await;
    let expected = id("shop", "payments");

    let client = tls::client_config(&client_cert, mesh.ca.roots(), vec![expected.clone()]).unwrap();
    let (client, server) = connect(client, mesh.server(server_cert, mesh.ca.roots())).await;
    assert_eq!(failure(&client), HandshakeFailure::WrongIdentity);
    assert_eq!(
        failure(&server),
        HandshakeFailure::WrongIdentity,
        "certificate_unknown alert"
    );

    // The refusal carries who was expected and who answered.
    let err = client.unwrap_err();
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = err
        .get_ref()
        .unwrap()
        .downcast_ref::<rustls::Error>()
        .unwrap()
    else {
        panic!("{err:?}");
    };
    let mismatch = other.0.downcast_ref::<IdentityMismatch>().unwrap();
    assert_eq!(mismatch.expected, [expected]);
    assert_eq!(mismatch.actual, Ok(id("shop", "cart")));
}

#[tokio::test]
async fn client_refuses_a_server_certificate_from_a_foreign_ca() {
    let mesh = Mesh::new();
    let foreign = Mesh::new();
    let server_id = id("shop", "cart");
    let client_cert = mesh.issue(&id("shop", "frontend")).await;
    // Same trust domain and identity, issued by another root.
    let server_cert = foreign.issue(&server_id).await;

    let client = tls::client_config(&client_cert, mesh.ca.roots(), vec![server_id]).unwrap();
    let (client, server) = connect(client, foreign.server(server_cert, foreign.ca.roots())).await;
    // Both roots are named "Ambit root CA, O=cluster.local" (as every Istio root of a mesh is
    // "O=cluster.local"): webpki finds the name but not the signature, and reports BadSignature,
    // which `classify` counts as an unknown issuer.
    assert_eq!(failure(&client), HandshakeFailure::UnknownIssuer);
    assert!(server.is_err(), "the server must see the refusal");
}

#[tokio::test]
async fn server_refuses_a_client_certificate_from_a_foreign_ca() {
    let mesh = Mesh::new();
    let foreign = Mesh::new();
    let server_id = id("shop", "cart");
    let client_cert = foreign.issue(&id("shop", "frontend")).await;
    let server_cert = mesh.issue(&server_id).await;

    let client = tls::client_config(&client_cert, mesh.ca.roots(), vec![server_id]).unwrap();
    let (client, server) = connect(client, mesh.server(server_cert, mesh.ca.roots())).await;
    assert_eq!(failure(&server), HandshakeFailure::UnknownIssuer);
    assert!(client.is_err(), "the client must see the refusal");
}

#[tokio::test]
async fn client_refuses_an_expired_server_certificate() {
    let mesh = Mesh::new();
    // A CA and a server whose clocks are two days behind: the server believes its 24-hour
    // certificate is valid and presents it; the client, on the real clock, must refuse it.
    let behind = Mesh::with_clock(ManualClock::new(
        std::time::SystemTime::now() - Duration::from_secs(48 * 3600),
    ));
    let server_id = id("shop", "cart");
    let client_cert = mesh.issue(&id("shop", "frontend")).await;
    let server_cert = behind.issue(&server_id).await;
    assert!(server_cert.not_after() < std::time::SystemTime::now());

    let roots = [mesh.ca.roots(), behind.ca.roots()].concat();
    let client = tls::client_config(&client_cert, &roots, vec![server_id]).unwrap();
    let (client, server) = connect(client, behind.server(server_cert, &roots)).await;
    assert_eq!(failure(&client), HandshakeFailure::Expired);
    assert_eq!(
        failure(&server),
        HandshakeFailure::Expired,
        "certificate_expired alert"
    );
}

#[tokio::test]
async fn server_refuses_a_client_without_a_certificate() {
    let mesh = Mesh::new();
    let server_cert = mesh.issue(&id("shop", "cart")).await;
    let mut client = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer))
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];

    let (client, server) =
        connect(Arc::new(client), mesh.server(server_cert, mesh.ca.roots())).await;
    assert_eq!(failure(&server), HandshakeFailure::NoCertificate);
    assert_eq!(
        failure(&client),
        HandshakeFailure::NoCertificate,
        "certificate_required alert"
    );
}

#[tokio::test]
async fn server_refuses_a_client_from_an_untrusted_trust_domain() {
    let mesh = Mesh::new();
    let other_dir = tempfile::tempdir().unwrap();
    let other_td: ambit_identity::TrustDomain = "other.mesh".parse().unwrap();
    let other_ca = Arc::new(
        CertificateAuthority::init(
            other_dir.path(),
            &ambit_identity::CaConfig::new(other_td.clone()),
        )
        .unwrap(),
    );
    let client_id = SpiffeId::new(other_td, "shop", "frontend").unwrap();
    let client_cert = manager(LocalSigner::new(Arc::clone(&other_ca)), &mesh.clock)
        .fetch(&client_id)
        .await
        .unwrap();
    let server_id = id("shop", "cart");
    let server_cert = mesh.issue(&server_id).await;

    // The server can verify the other mesh's chain, but only trusts its own trust domain.
    let roots = [mesh.ca.roots(), other_ca.roots()].concat();
    let client = tls::client_config(&client_cert, &roots, vec![server_id]).unwrap();
    let (client, server) = connect(client, mesh.server(server_cert, &roots)).await;
    assert_eq!(failure(&server), HandshakeFailure::WrongIdentity);
    assert_eq!(failure(&client), HandshakeFailure::WrongIdentity);
}

#[tokio::test]
async fn a_tampered_csr_gets_no_certificate() {
    let mesh = Mesh::new();
    let mut csr = common::csr_der("spiffe://cluster.local/ns/shop/sa/cart");
    let last = csr.len() - 1;
    csr[last] ^= 0x01;
    let err = mesh.ca.sign(&csr, &id("shop", "cart"), None).unwrap_err();
    assert!(
        matches!(err, ambit_identity::CaError::CsrSignature),
        "{err:?}"
    );
}

/// Accepts any server (the no-client-certificate case is about the server's refusal).
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

/// The control-plane channel: the server proves its DNS name with a CA-issued serving
/// certificate; a client trusting only another root, or dialing another name, refuses it.
#[tokio::test]
async fn control_plane_tls_checks_dns_name_and_root() {
    use ambit_identity::tls::{control_plane_client_config, control_plane_server_config};

    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::init(
        dir.path(),
        &ambit_identity::CaConfig::new("cluster.local".parse().unwrap()),
    )
    .unwrap();
    let names = vec!["istiod.istio-system.svc".to_owned(), "localhost".to_owned()];
    let serving = ca
        .issue_serving_certificate(&names, std::time::Duration::from_secs(3600))
        .unwrap();
    let server = tokio_rustls::TlsAcceptor::from(control_plane_server_config(serving).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = server.accept(tcp).await {
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });

    let dial = |roots: Vec<rustls::pki_types::CertificateDer<'static>>, name: &'static str| async move {
        let connector =
            tokio_rustls::TlsConnector::from(control_plane_client_config(&roots).unwrap());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name).unwrap();
        let mut tls = connector.connect(server_name, tcp).await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };

    assert_eq!(
        dial(ca.roots().to_vec(), "istiod.istio-system.svc")
            .await
            .unwrap(),
        b"ok"
    );
    let wrong_name = dial(ca.roots().to_vec(), "evil.example").await.unwrap_err();
    assert!(
        wrong_name.to_string().contains("not valid for name"),
        "{wrong_name}"
    );

    let other_dir = tempfile::tempdir().unwrap();
    let other = CertificateAuthority::init(
        other_dir.path(),
        &ambit_identity::CaConfig::new("cluster.local".parse().unwrap()),
    )
    .unwrap();
    let foreign = dial(other.roots().to_vec(), "istiod.istio-system.svc")
        .await
        .unwrap_err();
    let failure = ambit_identity::tls::classify_io(&foreign);
    assert_eq!(
        failure,
        ambit_identity::tls::HandshakeFailure::UnknownIssuer,
        "{foreign}"
    );
}
