//! `XdsClient` against `AdsServer`: ACK and NACK, on-demand lookups, reconnects, tokens.

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::envoy::config::core::v3::Node;
use ambit_testkit::eventually;
use ambit_xds::client::{ClientConfig, ClientHandle, Subscription, XdsClient};
use ambit_xds::server::{AdsServer, Authenticator, ClientId, MAX_REQUEST_BYTES, Store};
use common::{ADDRESS, Recorder, Relay, TestServer, connector, workload, workloads};
use tonic::Status;
use tonic::metadata::MetadataMap;

fn config(name: &str, subscription: Subscription) -> ClientConfig {
    let node = Node {
        id: format!("ztunnel~{name}"),
        ..Default::default()
    };
    let mut config = ClientConfig::new(node).subscribe(ADDRESS, subscription);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    config
}

fn spawn(addr: std::net::SocketAddr, name: &str, recorder: &Arc<Recorder>) -> ClientHandle {
    XdsClient::spawn(
        connector(addr),
        config(name, Subscription::Wildcard),
        recorder.clone(),
    )
}

#[tokio::test]
async fn client_syncs_acks_and_follows_changes() {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(3, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let recorder = Arc::new(Recorder::default());
    let handle = spawn(server.addr, "node-a", &recorder);

    eventually!(observe = recorder.with(|r| r.resources.len()), |n| n == 3);
    assert!(handle.connected());
    assert_eq!(recorder.with(|r| r.connection_changes.clone()), [true]);
    let first = recorder.with(|r| r.updates[0].clone());
    assert!(first.initial);
    assert_eq!(first.upserts[0].aliases, Vec::<String>::new());

    store.apply(
        ADDRESS,
        vec![workload(
            "Kubernetes//Pod/default/pod-2",
            Ipv4Addr::new(10, 0, 0, 3),
            "v2",
        )],
        vec![],
    );
    eventually!(
        observe = recorder.revision("Kubernetes//Pod/default/pod-2"),
        |r| r.as_deref() == Some("v2")
    );
    let last = recorder
        .with(|r| r.updates.last().cloned())
        .expect("an update");
    assert!(!last.initial);
    assert_eq!(last.upserts.len(), 1);
    // Both responses were ACKed: nothing was NACKed and the stream is still up.
    eventually!(observe = server.stats.pushes_total(), |n| n == 2);
    assert_eq!(server.stats.nacks_total(), 0);

    handle.shutdown();
    eventually!(observe = server.stats.connected_clients(), |n| n == 0);
    eventually!(!handle.connected());
}

#[tokio::test]
async fn a_nack_is_counted_and_harms_no_one() {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(2, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let picky = Arc::new(Recorder::rejecting("poison"));
    let easy = Arc::new(Recorder::default());
    let picky_handle = spawn(server.addr, "picky", &picky);
    let _easy_handle = spawn(server.addr, "easy", &easy);
    eventually!(picky.with(|r| r.resources.len()) == 2 && easy.with(|r| r.resources.len()) == 2);

    store.apply(
        ADDRESS,
        vec![workload("poison", Ipv4Addr::new(10, 6, 6, 6), "v1")],
        vec![],
    );
    eventually!(observe = server.stats.nacks_total(), |n| n == 1);
    assert!(easy.has("poison"));
    assert!(!picky.has("poison"));

    // The rejecting client keeps its stream; both clients get what comes next.
    store.apply(
        ADDRESS,
        vec![workload("fine", Ipv4Addr::new(10, 7, 7, 7), "v1")],
        vec![],
    );
    eventually!(picky.has("fine") && easy.has("fine"));
    assert!(picky_handle.connected());
    assert_eq!(server.stats.connected_clients(), 2);
    assert_eq!(
        picky.with(|r| r.connection_changes.clone()),
        [true],
        "never reconnected"
    );
}

#[tokio::test]
async fn on_demand_lookup_by_alias() {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(3, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let recorder = Arc::new(Recorder::default());
    let named = config("lookup", Subscription::Names(Vec::new()));
    let handle = XdsClient::spawn(connector(server.addr), named, recorder.clone());
    eventually!(handle.connected());

    handle.subscribe(ADDRESS, ["/10.0.0.2", "/10.9.9.9"]);
    eventually!(observe = recorder.with(|r| r.updates.len()), |n| n == 1);
    let update = recorder.with(|r| r.updates[0].clone());
    assert_eq!(update.upserts.len(), 1);
    assert_eq!(update.upserts[0].name, "Kubernetes//Pod/default/pod-1");
    assert_eq!(update.upserts[0].aliases, ["/10.0.0.2"]);
    assert_eq!(update.removals, ["/10.9.9.9"]);
    assert!(update.initial);
}

#[tokio::test]
async fn reconnect_resends_only_what_changed() {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(20, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let relay = Relay::start(server.addr).await;
    let recorder = Arc::new(Recorder::default());
    let handle = spawn(relay.addr, "roamer", &recorder);
    eventually!(observe = recorder.with(|r| r.resources.len()), |n| n == 20);
    // An on-demand name the server reports absent is forgotten: the next stream does not ask.
    handle.subscribe(ADDRESS, ["/10.9.9.9"]);
    eventually!(observe = recorder.with(|r| r.updates.len()), |n| n == 2);

    let mut state = handle.connection_state();
    relay.pause();
    state
        .wait_for(|connected| !connected)
        .await
        .expect("client alive");
    let changed = workload(
        "Kubernetes//Pod/default/pod-4",
        Ipv4Addr::new(10, 0, 0, 5),
        "v2",
    );
    store.apply(ADDRESS, vec![changed], vec![]);
    let pushed_before = server.stats.resources_pushed_total();
    relay.resume();
    state
        .wait_for(|connected| *connected)
        .await
        .expect("client alive");

    let pod4 = "Kubernetes//Pod/default/pod-4";
    eventually!(observe = recorder.revision(pod4), |r| r.as_deref()
        == Some("v2"));
    let after = recorder
        .with(|r| r.updates.last().cloned())
        .expect("an update");
    assert!(after.initial, "first update of the new connection");
    assert_eq!(
        after.upserts.len(),
        1,
        "only the changed workload is resent"
    );
    assert_eq!(
        after.removals,
        Vec::<String>::new(),
        "the absent on-demand name was not asked again"
    );
    assert_eq!(server.stats.resources_pushed_total() - pushed_before, 1);
    assert_eq!(
        recorder.with(|r| r.connection_changes.clone()),
        [true, false, true]
    );
}

#[derive(Debug)]
struct Token(&'static str);

impl Authenticator for Token {
    fn authenticate<'a>(&'a self, metadata: &'a MetadataMap) -> ambit_xds::server::AuthFuture<'a> {
        let expected = format!("Bearer {}", self.0);
        let result = match metadata.get("authorization").and_then(|v| v.to_str().ok()) {
            Some(value) if value == expected => Ok(ClientId::new("token-holder")),
            _ => Err(Status::unauthenticated("bad or missing bearer token")),
        };
        Box::pin(std::future::ready(result))
    }
}

#[tokio::test]
async fn bearer_token_gates_the_stream() {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(1, "v1"));
    let server = AdsServer::new(store).with_authenticator(Arc::new(Token("s3cret")));
    let server = TestServer::start(server).await;

    let good = Arc::new(Recorder::default());
    let good_config = config("good", Subscription::Wildcard);
    let _good = XdsClient::new(connector(server.addr), good_config, good.clone())
        .with_bearer_token(|| Some("s3cret".to_owned()))
        .start();
    let bad = Arc::new(Recorder::default());
    let bad_config = config("bad", Subscription::Wildcard);
    let bad_handle = XdsClient::new(connector(server.addr), bad_config, bad.clone())
        .with_bearer_token(|| Some("guess".to_owned()))
        .start();

    eventually!(good.with(|r| r.resources.len()) == 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!bad_handle.connected());
    assert!(bad.with(|r| r.updates.is_empty()));
    assert_eq!(server.stats.connected_clients(), 1);
}

/// How many accepted updates upserted `name`.
fn upserts_of(recorder: &Recorder, name: &str) -> usize {
    recorder.with(|r| {
        r.updates
            .iter()
            .filter(|u| u.upserts.iter().any(|x| x.name == name))
            .count()
    })
}

/// How many accepted updates removed `name`.
fn removals_of(recorder: &Recorder, name: &str) -> usize {
    recorder.with(|r| {
        r.updates
            .iter()
            .filter(|u| u.removals.iter().any(|x| x == name))
            .count()
    })
}

const POD: [&str; 3] = [
    "Kubernetes//Pod/default/pod-0",
    "Kubernetes//Pod/default/pod-1",
    "Kubernetes//Pod/default/pod-2",
];

/// On-demand names are bounded (security review M1): past the cap, the name asked for longest
/// ago is unsubscribed, so its resource's changes stop coming; a name the server reports absent
/// is forgotten, so asking again asks the server again.
#[tokio::test]
async fn on_demand_names_are_capped_and_absent_ones_forgotten() {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(3, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let recorder = Arc::new(Recorder::default());
    let mut named = config("capped", Subscription::Names(Vec::new()));
    named.on_demand_max = 2;
    let handle = XdsClient::spawn(connector(server.addr), named, recorder.clone());
    eventually!(handle.connected());

    for (ip, pod) in [
        ("/10.0.0.2", POD[1]),
        ("/10.0.0.3", POD[2]),
        ("/10.0.0.1", POD[0]),
    ] {
        handle.subscribe(ADDRESS, [ip]);
        eventually!(observe = upserts_of(&recorder, pod), |n| n == 1);
    }
    // `/10.0.0.2` made room for `/10.0.0.1`: pod-1's change no longer comes, pod-2's does.
    store.apply(
        ADDRESS,
        vec![
            workload(POD[1], Ipv4Addr::new(10, 0, 0, 2), "v2"),
            workload(POD[2], Ipv4Addr::new(10, 0, 0, 3), "v2"),
        ],
        vec![],
    );
    eventually!(observe = upserts_of(&recorder, POD[2]), |n| n == 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        upserts_of(&recorder, POD[1]),
        1,
        "an evicted name still gets updates"
    );

    // Absent: reported, forgotten, and asked for again when asked again.
    handle.subscribe(ADDRESS, ["/10.9.9.9"]);
    eventually!(observe = removals_of(&recorder, "/10.9.9.9"), |n| n == 1);
    handle.subscribe(ADDRESS, ["/10.9.9.9"]);
    eventually!(observe = removals_of(&recorder, "/10.9.9.9"), |n| n == 2);
}

/// An on-demand name not asked for within its time to live is unsubscribed (security review M1),
/// and asking for it later subscribes it afresh.
#[tokio::test]
async fn unused_on_demand_names_are_forgotten() {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(3, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let recorder = Arc::new(Recorder::default());
    let mut named = config("ttl", Subscription::Names(Vec::new()));
    named.on_demand_ttl = Duration::from_millis(300);
    let handle = XdsClient::spawn(connector(server.addr), named, recorder.clone());
    eventually!(handle.connected());

    handle.subscribe(ADDRESS, ["/10.0.0.2"]);
    eventually!(observe = upserts_of(&recorder, POD[1]), |n| n == 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    store.apply(
        ADDRESS,
        vec![workload(POD[1], Ipv4Addr::new(10, 0, 0, 2), "v2")],
        vec![],
    );
    // A later subscription as a barrier: its answer comes after any push of pod-1's change.
    tokio::time::sleep(Duration::from_millis(100)).await;
    handle.subscribe(ADDRESS, ["/10.0.0.3"]);
    eventually!(observe = upserts_of(&recorder, POD[2]), |n| n == 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        upserts_of(&recorder, POD[1]),
        1,
        "a forgotten name still gets updates"
    );

    handle.subscribe(ADDRESS, ["/10.0.0.2"]);
    eventually!(observe = upserts_of(&recorder, POD[1]), |n| n == 2);
}

/// A pod connecting to many addresses outside the mesh (security review M1): each connection
/// asks for its address on demand. Were the names kept, the reconnect request would carry them
/// all, past the server's request limit, and the server would refuse every reconnect, freezing
/// the node's updates. Bounded and forgotten, the reconnect succeeds and updates keep coming.
#[tokio::test]
async fn many_on_demand_addresses_never_outgrow_the_reconnect_request() {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(3, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let relay = Relay::start(server.addr).await;
    let recorder = Arc::new(Recorder::default());
    // Names live longer than the test: only the cap and forgetting absent names bound them.
    let mut node_like = config("busy-node", Subscription::Wildcard);
    node_like.on_demand_ttl = Duration::from_secs(3600);
    let handle = XdsClient::spawn(connector(relay.addr), node_like, recorder.clone());
    eventually!(observe = recorder.with(|r| r.resources.len()), |n| n == 3);

    // IPv6 names of 40 bytes: enough of them that all together exceed the request limit.
    let name = |i: usize| {
        format!(
            "/2001:db8:aaaa:bbbb:cccc:dddd:{:04x}:{:04x}",
            i >> 16,
            i & 0xffff
        )
    };
    let count = MAX_REQUEST_BYTES / name(0).len() + 1;
    for i in 0..count {
        handle.subscribe(ADDRESS, [name(i)]);
    }
    let last = name(count - 1);
    eventually!(
        timeout = Duration::from_secs(60),
        observe = removals_of(&recorder, &last),
        |n| n == 1
    );

    let mut state = handle.connection_state();
    relay.sever();
    state
        .wait_for(|connected| !connected)
        .await
        .expect("client alive");
    state
        .wait_for(|connected| *connected)
        .await
        .expect("client alive");
    store.apply(
        ADDRESS,
        vec![workload(
            "Kubernetes//Pod/default/late",
            Ipv4Addr::new(10, 0, 9, 9),
            "v1",
        )],
        vec![],
    );
    eventually!(recorder.has("Kubernetes//Pod/default/late"));
    assert!(handle.connected());
}
