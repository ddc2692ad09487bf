//! Golden wire tests: each message is encoded and compared with bytes derived by
//! hand from the protobuf encoding rules and the upstream field numbers (the
//! derivation is in `tests/fixtures/*.hex`), then those bytes are decoded back.
//! A wrong field number or type in `proto/` changes the bytes and fails here.
//!
//! The last tests pin the gRPC paths a stock istiod or ztunnel calls.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use prost::Message;
use tonic::codegen::{http, tokio_stream};

use ambit_proto::ca::istio_certificate_service_client::IstioCertificateServiceClient;
use ambit_proto::ca::{IstioCertificateRequest, istio_certificate_service_server};
use ambit_proto::envoy::config::core::v3::Node;
use ambit_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use ambit_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource, aggregated_discovery_service_server,
};
use ambit_proto::security::{
    Action, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch, StringMatch,
    string_match,
};
use ambit_proto::workload::{
    Address, NetworkAddress, Port, PortList, Service, TunnelProtocol, Workload, address,
};
use ambit_proto::zds::{AddWorkload, WorkloadInfo, WorkloadRequest, workload_request};
use ambit_proto::{ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL};

// === wire fixtures ===

#[test]
fn workload() {
    let workload = Workload {
        uid: "uid-1".into(),
        name: "pod-a".into(),
        namespace: "ns".into(),
        addresses: vec![vec![10, 0, 0, 1]],
        tunnel_protocol: TunnelProtocol::Hbone.into(),
        trust_domain: "cluster.local".into(),
        service_account: "sa".into(),
        node: "node-1".into(),
        services: BTreeMap::from([(
            "ns/svc".to_owned(),
            PortList {
                ports: vec![port_80_8080()],
            },
        )]),
        ..Default::default()
    };
    assert_golden("workload.hex", &workload);
}

#[test]
fn address_wrapping_service() {
    let service = Service {
        name: "svc".into(),
        namespace: "ns".into(),
        hostname: "svc.ns".into(),
        addresses: vec![NetworkAddress {
            network: String::new(),
            address: vec![10, 0, 0, 10],
        }],
        ports: vec![port_80_8080()],
        canonical: true,
        ..Default::default()
    };
    let address = Address {
        r#type: Some(address::Type::Service(service)),
    };
    assert_golden("address_service.hex", &address);
}

#[test]
fn authorization() {
    let matched = Match {
        namespaces: vec![StringMatch {
            match_type: Some(string_match::MatchType::Exact("ns".into())),
        }],
        destination_ports: vec![8080],
        service_accounts: vec![ServiceAccountMatch {
            namespace: "ns".into(),
            service_account: "sa".into(),
        }],
        ..Default::default()
    };
    let policy = Authorization {
        name: "allow".into(),
        namespace: "ns".into(),
        scope: Scope::Namespace.into(),
        action: Action::Deny.into(),
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![matched],
            }],
        }],
    };
    assert_golden("authorization.hex", &policy);
}

#[test]
fn certificate_request() {
    let identity = prost_types::Value {
        kind: Some(prost_types::value::Kind::StringValue(
            "spiffe://td/ns/a/sa/b".into(),
        )),
    };
    let request = IstioCertificateRequest {
        csr: "CSR".into(),
        validity_duration: 3600,
        metadata: Some(prost_types::Struct {
            fields: [("ImpersonatedIdentity".to_owned(), identity)].into(),
        }),
    };
    assert_golden("certificate_request.hex", &request);
}

#[test]
fn zds_add_workload() {
    let request = WorkloadRequest {
        payload: Some(workload_request::Payload::Add(AddWorkload {
            uid: "uid-1".into(),
            workload_info: Some(WorkloadInfo {
                name: "pod-a".into(),
                namespace: "ns".into(),
                service_account: "sa".into(),
                windows_namespace: None,
            }),
        })),
    };
    assert_golden("zds_add.hex", &request);
}

#[test]
fn delta_discovery_request() {
    let request = DeltaDiscoveryRequest {
        node: Some(Node {
            id: "n1".into(),
            ..Default::default()
        }),
        type_url: ADDRESS_TYPE_URL.into(),
        resource_names_subscribe: vec!["*".into()],
        initial_resource_versions: BTreeMap::from([("a".to_owned(), "1".to_owned())]),
        response_nonce: "n".into(),
        ..Default::default()
    };
    assert_golden("delta_request.hex", &request);
}

#[test]
fn delta_discovery_response() {
    let service = Address {
        r#type: Some(address::Type::Service(Service {
            name: "s".into(),
            ..Default::default()
        })),
    };
    let response = DeltaDiscoveryResponse {
        system_version_info: "v1".into(),
        resources: vec![Resource {
            name: "ns/s".into(),
            version: "1".into(),
            resource: Some(prost_types::Any {
                type_url: ADDRESS_TYPE_URL.into(),
                value: service.encode_to_vec(),
            }),
            ..Default::default()
        }],
        type_url: ADDRESS_TYPE_URL.into(),
        nonce: "n".into(),
        removed_resources: vec!["ns/old".into()],
        ..Default::default()
    };
    assert_golden("delta_response.hex", &response);
}

#[test]
fn type_urls() {
    assert_eq!(
        ADDRESS_TYPE_URL,
        "type.googleapis.com/istio.workload.Address"
    );
    assert_eq!(
        AUTHORIZATION_TYPE_URL,
        "type.googleapis.com/istio.security.Authorization"
    );
}

// === gRPC paths ===

#[test]
fn ads_delta_path() {
    assert_eq!(
        aggregated_discovery_service_server::SERVICE_NAME,
        "envoy.service.discovery.v3.AggregatedDiscoveryService"
    );
    let recorder = PathRecorder::default();
    let mut client = AggregatedDiscoveryServiceClient::new(recorder.clone());
    let requests = tokio_stream::iter(Vec::<DeltaDiscoveryRequest>::new());
    assert!(poll_once(client.delta_aggregated_resources(requests)).is_err());
    assert_eq!(
        recorder.paths(),
        ["/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"]
    );
}

#[test]
fn ca_create_certificate_path() {
    assert_eq!(
        istio_certificate_service_server::SERVICE_NAME,
        "istio.v1.auth.IstioCertificateService"
    );
    let recorder = PathRecorder::default();
    let mut client = IstioCertificateServiceClient::new(recorder.clone());
    assert!(poll_once(client.create_certificate(IstioCertificateRequest::default())).is_err());
    assert_eq!(
        recorder.paths(),
        ["/istio.v1.auth.IstioCertificateService/CreateCertificate"]
    );
}

// === helpers ===

fn port_80_8080() -> Port {
    Port {
        service_port: 80,
        target_port: 8080,
    }
}

/// Encodes `message` and checks it against the fixture, then decodes the fixture
/// and checks it against `message`.
fn assert_golden<M: Message + Default + PartialEq + std::fmt::Debug>(fixture: &str, message: &M) {
    let expected = read_fixture(fixture);
    assert_eq!(
        hex::encode(message.encode_to_vec()),
        hex::encode(&expected),
        "encoding of {fixture} differs"
    );
    let decoded = M::decode(expected.as_slice()).expect("fixture decodes");
    assert_eq!(&decoded, message, "decoding of {fixture} differs");
}

/// Reads a `.hex` fixture: hex byte pairs separated by whitespace, `#` starts a comment.
fn read_fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = fs::read_to_string(&path).expect("fixture is readable");
    let digits: String = text
        .lines()
        .map(|line| line.split('#').next().unwrap_or_default())
        .flat_map(str::split_whitespace)
        .collect();
    hex::decode(&digits).expect("fixture is valid hex")
}

/// Polls a future once. The recorder answers synchronously, so a client call
/// completes on its first poll without a runtime.
fn poll_once<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("client call did not complete on first poll"),
    }
}

/// A gRPC transport that records each request's path and fails it.
#[derive(Clone, Default)]
struct PathRecorder(Arc<Mutex<Vec<String>>>);

impl PathRecorder {
    fn paths(&self) -> Vec<String> {
        self.0.lock().expect("not poisoned").clone()
    }
}

impl tonic::codegen::Service<http::Request<tonic::body::Body>> for PathRecorder {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        self.0
            .lock()
            .expect("not poisoned")
            .push(request.uri().path().to_owned());
        std::future::ready(Err(std::io::Error::other("recorded")))
    }
}
