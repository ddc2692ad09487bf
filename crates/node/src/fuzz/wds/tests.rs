//! Seeds for the `wds` target: what the control plane serves for a small mesh, translated by
//! `ambit_model` from manifests and wrapped as the xDS server sends it, then removals.

use ambit_model::{ClusterState, MeshConfig, manifest, translate};
use ambit_proto::envoy::service::discovery::v3::{DeltaDiscoveryResponse, Resource};
use std::collections::BTreeMap;

use prost::Message;

use super::*;

const MESH: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: echo-0, namespace: demo, labels: {app: echo, version: v1}}
spec: {serviceAccountName: echo, nodeName: node-a, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.0.0.2, podIPs: [{ip: 10.0.0.2}, {ip: 'fd00::2'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client-0, namespace: demo, labels: {app: client}}
spec: {serviceAccountName: client, nodeName: node-b, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 10.0.0.3, podIPs: [{ip: 10.0.0.3}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {clusterIP: 10.96.0.10, selector: {app: echo}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]
    to: [{operation: {ports: ['8080']}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-outside, namespace: demo}
spec:
  action: DENY
  rules:
  - from: [{source: {notIpBlocks: [10.0.0.0/8]}}]
";

fn any(type_url: &str, value: Vec<u8>) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_owned(),
        value,
    }
}

fn response(type_url: &str, resources: Vec<Resource>, removed: Vec<String>) -> Vec<u8> {
    DeltaDiscoveryResponse {
        type_url: type_url.to_owned(),
        resources,
        removed_resources: removed,
        nonce: "1".to_owned(),
        ..Default::default()
    }
    .encode_length_delimited_to_vec()
}

fn generated() -> Vec<(String, Vec<u8>)> {
    let mut state = ClusterState::default();
    for document in manifest::parse(MESH) {
        for object in document.result.unwrap_or_else(|e| panic!("{e}")) {
            state.apply(object).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let snapshot = translate(&state, &MeshConfig::istio_defaults());
    assert_eq!((snapshot.workloads.len(), snapshot.services.len()), (2, 1));
    assert_eq!(snapshot.authorizations.len(), 2);
    let addresses: Vec<Resource> = snapshot
        .addresses()
        .map(|(name, address)| Resource {
            name: name.to_owned(),
            resource: Some(any(ambit_proto::ADDRESS_TYPE_URL, address.encode_to_vec())),
            version: "1".to_owned(),
            ..Default::default()
        })
        .collect();
    let policies: Vec<Resource> = snapshot
        .authorizations
        .iter()
        .map(|(name, authorization)| Resource {
            name: name.clone(),
            resource: Some(any(
                ambit_proto::AUTHORIZATION_TYPE_URL,
                authorization.encode_to_vec(),
            )),
            version: "1".to_owned(),
            ..Default::default()
        })
        .collect();
    let names: Vec<String> = addresses.iter().map(|r| r.name.clone()).collect();
    let push = [
        response(
            ambit_proto::AUTHORIZATION_TYPE_URL,
            policies.clone(),
            vec![],
        ),
        response(ambit_proto::ADDRESS_TYPE_URL, addresses.clone(), vec![]),
    ]
    .concat();
    let mut with_removals = push.clone();
    with_removals.extend(response(ambit_proto::ADDRESS_TYPE_URL, vec![], names));
    with_removals.extend(response(
        ambit_proto::AUTHORIZATION_TYPE_URL,
        vec![],
        vec!["demo/allow-client".to_owned()],
    ));
    let workloads_only = response(ambit_proto::ADDRESS_TYPE_URL, addresses.clone(), vec![]);
    // A workload whose address is 3 bytes long, beside good ones: it is refused, by name, and
    // the others are applied.
    let mut bad = snapshot
        .workloads
        .values()
        .next()
        .cloned()
        .unwrap_or_default();
    bad.uid = "Kubernetes//Pod/demo/bad-0".to_owned();
    bad.addresses = vec![vec![10, 0, 0]];
    let mut with_bad = addresses.clone();
    with_bad.push(Resource {
        name: bad.uid.clone(),
        resource: Some(any(
            ambit_proto::ADDRESS_TYPE_URL,
            ambit_proto::workload::Address {
                r#type: Some(ambit_proto::workload::address::Type::Workload(bad)),
            }
            .encode_to_vec(),
        )),
        version: "1".to_owned(),
        ..Default::default()
    });
    let bad_address = response(ambit_proto::ADDRESS_TYPE_URL, with_bad, vec![]);
    let unknown_type = response(
        "type.googleapis.com/envoy.config.cluster.v3.Cluster",
        addresses,
        vec![],
    );
    vec![
        ("mesh".to_owned(), push),
        ("mesh-then-removed".to_owned(), with_removals),
        ("workloads-without-policies".to_owned(), workloads_only),
        ("bad-address".to_owned(), bad_address),
        ("unknown-type".to_owned(), unknown_type),
    ]
}

#[test]
fn seed_corpus() {
    ambit_testkit::corpus::run("wds", generated(), wds);
}

#[test]
fn the_seeds_apply_cleanly() {
    let trust_domain = TrustDomain::new("cluster.local").unwrap_or_else(|e| panic!("{e}"));
    for (name, seed) in generated() {
        if ["bad-address", "unknown-type"].contains(&name.as_str()) {
            continue;
        }
        let mut buf = &seed[..];
        while let Ok(response) = DeltaDiscoveryResponse::decode_length_delimited(&mut buf) {
            let update = update(&response).unwrap_or_else(|| panic!("{name}: refused"));
            let mut addresses = BTreeSet::new();
            let refused = refusals(&response.type_url, &update, &trust_domain, &mut addresses);
            assert!(refused.is_empty(), "{name}: {refused:?}");
        }
    }
}

#[test]
fn a_bad_resource_is_refused_by_name_and_the_rest_applied() {
    let seeds: BTreeMap<String, Vec<u8>> = generated().into_iter().collect();
    let trust_domain = TrustDomain::new("cluster.local").unwrap_or_else(|e| panic!("{e}"));
    let mut buf = &seeds["bad-address"][..];
    let response = DeltaDiscoveryResponse::decode_length_delimited(&mut buf).unwrap();
    let update = update(&response).unwrap();
    let refused = refusals(
        &response.type_url,
        &update,
        &trust_domain,
        &mut BTreeSet::new(),
    );
    assert_eq!(refused, ["Kubernetes//Pod/demo/bad-0"]);
    let state = ProxyState::new(
        NodeInfo {
            node_name: "node-a".to_owned(),
            cluster_id: "Kubernetes".to_owned(),
            trust_domain,
        },
        None,
    );
    let error = WdsHandler::new(state.clone())
        .handle(&response.type_url, update)
        .unwrap_err();
    assert!(error.contains("Kubernetes//Pod/demo/bad-0"), "{error}");
    assert!(error.contains("field `addresses`"), "{error}");
    let uids: Vec<String> = state.read(|mesh| mesh.workloads().map(|w| w.uid.clone()).collect());
    assert_eq!(uids.len(), 2, "{uids:?}");
    assert!(!uids.iter().any(|uid| uid.ends_with("bad-0")), "{uids:?}");
}
