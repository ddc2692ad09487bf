//! Delta ADS server semantics, checked on the wire with a raw gRPC client.

mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ambit_proto::envoy::service::discovery::v3 as xds;
use ambit_testkit::eventually;
use ambit_xds::server::{AdsServer, Store};
use common::{ADDRESS, RawClient, TestServer, names, request, workload, workloads};
use xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn wildcard_client_gets_the_state_then_only_what_changed() {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(3, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let mut client = RawClient::subscribe(server.addr, &[]).await;

    let initial = client.recv_ack().await;
    assert_eq!(initial.type_url, ADDRESS);
    assert_eq!(names(&initial).len(), 3);
    assert!(initial.removed_resources.is_empty());
    assert!(!initial.nonce.is_empty() && !initial.system_version_info.is_empty());
    for resource in &initial.resources {
        assert_eq!(
            resource.version.len(),
            16,
            "version is a hex hash: {:?}",
            resource.version
        );
        assert!(
            resource.aliases.is_empty(),
            "a wildcard client subscribed to no alias"
        );
        assert_eq!(common::decode_workload(resource).uid, resource.name);
    }
    client.expect_silence(QUIET).await;

    // One workload changes: exactly that one is sent.
    let changed = workload(
        "Kubernetes//Pod/default/pod-1",
        Ipv4Addr::new(10, 0, 0, 2),
        "v2",
    );
    store.apply(ADDRESS, vec![changed], vec![]);
    let update = client.recv_ack().await;
    assert_eq!(names(&update), ["Kubernetes//Pod/default/pod-1"]);
    assert_eq!(
        common::decode_workload(&update.resources[0]).canonical_revision,
        "v2"
    );
    assert!(update.removed_resources.is_empty());
    assert_ne!(update.nonce, initial.nonce);

    // A removal is sent alone.
    store.apply(
        ADDRESS,
        vec![],
        vec!["Kubernetes//Pod/default/pod-0".into()],
    );
    let update = client.recv_ack().await;
    assert!(update.resources.is_empty());
    assert_eq!(update.removed_resources, ["Kubernetes//Pod/default/pod-0"]);

    // replace_all: upserts and removals in one response.
    let mut next = workloads(5, "v1");
    next.remove(1);
    next.remove(0);
    store.replace_all(ADDRESS, next);
    let update = client.recv_ack().await;
    assert_eq!(
        names(&update),
        [
            "Kubernetes//Pod/default/pod-3",
            "Kubernetes//Pod/default/pod-4"
        ]
    );
    assert_eq!(update.removed_resources, ["Kubernetes//Pod/default/pod-1"]);
    client.expect_silence(QUIET).await;

    // Unchanged bytes are no push at all.
    store.replace_all(ADDRESS, store.resources(ADDRESS));
    client.expect_silence(QUIET).await;

    assert_eq!(server.stats.pushes_total(), 4);
    assert_eq!(server.stats.resources_pushed_total(), 3 + 1 + 2);
    assert_eq!(server.stats.nacks_total(), 0);
    assert!(server.stats.bytes_pushed_total() > 0);
    assert_eq!(server.stats.connected_clients(), 1);
    drop(client);
    eventually!(observe = server.stats.connected_clients(), |n| n == 0);
}

#[tokio::test]
async fn named_subscription_by_alias_and_unknown_names() {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(3, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let mut client = RawClient::subscribe(server.addr, &["/10.0.0.1", "/10.9.9.9"]).await;

    let response = client.recv_ack().await;
    assert_eq!(names(&response), ["Kubernetes//Pod/default/pod-0"]);
    assert_eq!(response.resources[0].aliases, ["/10.0.0.1"]);
    assert_eq!(
        response.removed_resources,
        ["/10.9.9.9"],
        "unknown name: definite not-found"
    );

    // On-demand lookup on the live stream, by canonical name this time.
    client
        .send(request(&["Kubernetes//Pod/default/pod-2"]))
        .await;
    let response = client.recv_ack().await;
    assert_eq!(names(&response), ["Kubernetes//Pod/default/pod-2"]);
    assert!(response.resources[0].aliases.is_empty());

    // Resources nobody subscribed to do not reach the client.
    store.apply(
        ADDRESS,
        workloads(3, "v2").into_iter().skip(1).take(1).collect(),
        vec![],
    );
    client.expect_silence(QUIET).await;

    // The unknown address appears: it is pushed under its canonical name.
    let late = workload(
        "Kubernetes//Pod/default/late",
        Ipv4Addr::new(10, 9, 9, 9),
        "v1",
    );
    store.apply(ADDRESS, vec![late], vec![]);
    let response = client.recv_ack().await;
    assert_eq!(names(&response), ["Kubernetes//Pod/default/late"]);
    assert_eq!(response.resources[0].aliases, ["/10.9.9.9"]);
}

#[tokio::test]
async fn reconnect_with_initial_versions_resends_only_changes() {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(50, "v1"));
    let server = TestServer::with_store(store.clone()).await;

    let mut first = RawClient::subscribe(server.addr, &[]).await;
    let initial = first.recv_ack().await;
    assert_eq!(initial.resources.len(), 50);
    let held: Vec<(String, String)> = initial
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    drop(first);
    eventually!(observe = server.stats.connected_clients(), |n| n == 0);

    // While the client is away: one workload changes, one goes.
    let changed = workload(
        "Kubernetes//Pod/default/pod-7",
        Ipv4Addr::new(10, 0, 0, 8),
        "v2",
    );
    store.apply(
        ADDRESS,
        vec![changed],
        vec!["Kubernetes//Pod/default/pod-9".into()],
    );

    let pushed_before = server.stats.resources_pushed_total();
    let mut again = request(&[]);
    again.initial_resource_versions = held.into_iter().collect();
    let mut second = RawClient::connect(server.addr, again).await;
    let response = second.recv_ack().await;
    assert_eq!(names(&response), ["Kubernetes//Pod/default/pod-7"]);
    assert_eq!(
        response.removed_resources,
        ["Kubernetes//Pod/default/pod-9"]
    );
    assert_eq!(server.stats.resources_pushed_total() - pushed_before, 1);
    second.expect_silence(QUIET).await;
}

#[tokio::test]
async fn unknown_types_get_an_empty_answer_and_sotw_is_unimplemented() {
    let server = TestServer::start(AdsServer::new(Store::new())).await;
    let mut first = request(&[]);
    first.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
    let mut client = RawClient::connect(server.addr, first).await;
    let response = client.recv_ack().await;
    assert_eq!(
        response.type_url,
        "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    );
    assert!(response.resources.is_empty() && response.removed_resources.is_empty());

    let channel = common::connector(server.addr)().await.expect("connect");
    let mut sotw = AggregatedDiscoveryServiceClient::new(channel);
    let status = sotw
        .stream_aggregated_resources(tokio_stream::iter(vec![xds::DiscoveryRequest::default()]))
        .await
        .expect_err("SotW refused");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    assert!(
        status.message().contains("DeltaAggregatedResources"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_client_that_does_not_read_gets_coalesced_pushes() {
    const UPDATES: usize = 40;
    let store = Store::new();
    let server = TestServer::with_store(store.clone()).await;
    let mut client = RawClient::subscribe(server.addr, &[]).await;
    client.recv_ack().await;

    // Large bodies fill the HTTP/2 windows quickly, so the server's queue fills too.
    let big = |revision: usize| {
        let mut resource = workload("big", Ipv4Addr::new(10, 1, 1, 1), &"x".repeat(256 * 1024));
        resource
            .body
            .value
            .extend_from_slice(revision.to_string().as_bytes());
        resource
    };
    for revision in 0..UPDATES {
        store.apply(ADDRESS, vec![big(revision)], vec![]);
        // Give the stream time to push each one, as it would to a client that reads.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let last = big(UPDATES - 1).body.value;
    let mut received = 0;
    loop {
        let response = client.recv_ack().await;
        received += 1;
        let body = response.resources.first().and_then(|r| r.resource.as_ref());
        if body.is_some_and(|any| any.value == last) {
            break;
        }
    }
    eprintln!("{UPDATES} updates reached a slow client as {received} responses");
    assert!(
        received < UPDATES,
        "pushes were not coalesced ({received} responses)"
    );
    client.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_through_heavy_churn_still_converges() {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(10, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let mut client = RawClient::subscribe(server.addr, &[]).await;
    let mut held: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    apply(&mut held, &client.recv_ack().await);

    // Large bodies fill the HTTP/2 windows and the stream's queue; then more changes than the
    // change log keeps for a stream that cannot send: the stream lets go of the log, and must
    // still bring the client exactly up to date, removals included.
    for revision in 0..40 {
        let big = workload(
            "big",
            Ipv4Addr::new(10, 1, 1, 1),
            &format!("{revision}{}", "x".repeat(256 * 1024)),
        );
        store.apply(ADDRESS, vec![big], vec![]);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..1500 {
        let churn = workload("churn", Ipv4Addr::new(10, 2, 2, 2), &i.to_string());
        store.apply(ADDRESS, vec![churn], vec![]);
    }
    let late = workload("late", Ipv4Addr::new(10, 3, 3, 3), "v1");
    store.apply(
        ADDRESS,
        vec![late],
        vec!["Kubernetes//Pod/default/pod-3".into()],
    );

    let want: BTreeMap<String, Vec<u8>> = store
        .resources(ADDRESS)
        .into_iter()
        .map(|r| (r.name, r.body.value))
        .collect();
    let mut responses = 0;
    while held != want {
        apply(&mut held, &client.recv_ack().await);
        responses += 1;
    }
    eprintln!("the client converged after {responses} responses");
    client.expect_silence(QUIET).await;
}

/// Applies a response to a client's copy of the resources.
fn apply(held: &mut BTreeMap<String, Vec<u8>>, response: &xds::DeltaDiscoveryResponse) {
    for resource in &response.resources {
        let body = resource
            .resource
            .as_ref()
            .map(|any| any.value.clone())
            .unwrap_or_default();
        held.insert(resource.name.clone(), body);
    }
    for name in &response.removed_resources {
        assert!(held.remove(name).is_some(), "{name} removed but not held");
    }
}
