//! The WDS decoder's tests: every field a resource can get wrong is refused by name.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use ambit_identity::TrustDomain;
use ambit_proto::workload::{self as pb, address};
use prost::Message;

use super::decode::{Address, decode_address, decode_authorization, ip_from_bytes};
use super::error::DecodeError;
use super::types::{Protocol, Service, Workload};
use crate::Resource;

fn td() -> TrustDomain {
    TrustDomain::new("cluster.local").unwrap()
}

fn pod() -> pb::Workload {
    pb::Workload {
        uid: "Kubernetes//Pod/ns/a".into(),
        name: "a".into(),
        namespace: "ns".into(),
        addresses: vec![vec![10, 0, 0, 1]],
        service_account: "sa".into(),
        tunnel_protocol: pb::TunnelProtocol::Hbone as i32,
        ..pb::Workload::default()
    }
}

#[test]
fn a_pod_becomes_a_typed_workload() {
    let w = Workload::from_proto(pod(), &td()).unwrap();
    assert_eq!(w.identity.as_str(), "spiffe://cluster.local/ns/ns/sa/sa");
    assert_eq!(w.addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    assert_eq!(w.protocol, Protocol::Hbone);
    assert_eq!(w.workload_name, "a", "defaults to the pod name");
    assert!(w.healthy);
}

#[test]
fn bad_resources_are_refused_with_the_reason() {
    type Mutation = fn(&mut pb::Workload);
    let cases: [(Mutation, &str); 4] = [
        (|w| w.uid.clear(), "no uid"),
        (|w| w.addresses = vec![vec![1, 2, 3]], "3 bytes"),
        (|w| w.tunnel_protocol = 7, "unknown tunnel protocol 7"),
        (|w| w.service_account = "bad/sa".into(), "invalid identity"),
    ];
    for (mutate, expected) in cases {
        let mut w = pod();
        mutate(&mut w);
        let err = Workload::from_proto(w, &td()).unwrap_err().to_string();
        assert!(err.contains(expected), "{err} should mention {expected}");
    }
}

#[test]
fn ipv4_mapped_ipv6_is_canonical() {
    let mapped = "::ffff:10.0.0.1".parse::<std::net::Ipv6Addr>().unwrap();
    assert_eq!(
        ip_from_bytes(&mapped.octets()),
        Some("10.0.0.1".parse().unwrap())
    );
}

fn resource(name: &str, body: pb::Address) -> Resource {
    Resource::new(
        name,
        prost_types::Any {
            type_url: ambit_proto::ADDRESS_TYPE_URL.into(),
            value: body.encode_to_vec(),
        },
    )
}

#[test]
fn a_rejected_resource_names_itself_and_the_field() {
    let mut bad = pod();
    bad.addresses = vec![vec![10, 0, 0, 1], vec![1, 2, 3]];
    let body = pb::Address {
        r#type: Some(address::Type::Workload(bad)),
    };
    let err = decode_address(&resource("Kubernetes//Pod/ns/a", body), &td()).unwrap_err();
    assert_eq!(err.resource, "Kubernetes//Pod/ns/a");
    assert_eq!(
        err.error,
        DecodeError::BadAddress {
            field: "addresses",
            index: 1,
            len: 3
        }
    );
    let text = err.to_string();
    assert!(
        text.starts_with("Kubernetes//Pod/ns/a: address 1 is 3 bytes long")
            && text.ends_with("in field `addresses`"),
        "{text}"
    );

    let service = pb::Service {
        name: "web".into(),
        namespace: "ns".into(),
        hostname: "web.ns.svc.cluster.local".into(),
        addresses: vec![pb::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0],
        }],
        ..pb::Service::default()
    };
    let body = pb::Address {
        r#type: Some(address::Type::Service(service)),
    };
    let text = decode_address(&resource("ns/web", body), &td())
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with("ns/web: address 0 is 3 bytes long")
            && text.ends_with("in field `addresses.address`"),
        "{text}"
    );

    let empty = decode_address(&resource("x", pb::Address { r#type: None }), &td())
        .unwrap_err()
        .to_string();
    assert!(
        empty.starts_with("x: ") && empty.contains("field `type`"),
        "{empty}"
    );
    let garbage = Resource::new(
        "garbage",
        prost_types::Any {
            type_url: ambit_proto::AUTHORIZATION_TYPE_URL.into(),
            value: vec![0xff, 0xff, 0xff],
        },
    );
    let text = decode_authorization(&garbage).unwrap_err().to_string();
    assert!(
        text.starts_with("garbage: not a valid protobuf message"),
        "{text}"
    );
}

#[test]
fn a_good_resource_decodes_to_its_type() {
    let body = pb::Address {
        r#type: Some(address::Type::Workload(pod())),
    };
    let Address::Workload(w) = decode_address(&resource("a", body), &td()).unwrap() else {
        panic!("not a workload")
    };
    assert_eq!(w.uid, "Kubernetes//Pod/ns/a");
    let service = pb::Service {
        hostname: "web.ns.svc.cluster.local".into(),
        namespace: "ns".into(),
        ..pb::Service::default()
    };
    let body = pb::Address {
        r#type: Some(address::Type::Service(service)),
    };
    let Address::Service(s) = decode_address(&resource("ns/web", body), &td()).unwrap() else {
        panic!("not a service")
    };
    assert_eq!(
        s,
        Service::from_proto(pb::Service {
            hostname: "web.ns.svc.cluster.local".into(),
            namespace: "ns".into(),
            ..pb::Service::default()
        })
        .unwrap()
    );
}
