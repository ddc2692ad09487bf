//! Hostile and heavy traffic: garbage and oversized requests, many clients at once.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_proto::envoy::config::core::v3::Node;
use ambit_testkit::eventually;
use ambit_xds::client::{ClientConfig, ClientHandle, Subscription, XdsClient};
use ambit_xds::server::{MAX_REQUEST_BYTES, Store};
use bytes::{BufMut as _, Bytes, BytesMut};
use common::{ADDRESS, RawClient, Recorder, TestServer, connector, request, workload, workloads};

const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

fn wildcard_client(addr: SocketAddr, name: &str, recorder: &Arc<Recorder>) -> ClientHandle {
    let node = Node {
        id: name.to_owned(),
        ..Default::default()
    };
    let config = ClientConfig::new(node).subscribe(ADDRESS, Subscription::Wildcard);
    XdsClient::spawn(connector(addr), config, recorder.clone())
}

/// A gRPC length-prefixed frame around `message`, declaring `declared` bytes.
fn grpc_frame(message: &[u8], declared: usize) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(declared).expect("frame length fits"));
    frame.put_slice(message);
    frame.freeze()
}

/// Sends `payload` as the request body of a raw HTTP/2 call to the delta ADS method and
/// returns the `grpc-status` and `grpc-message` the server ended the call with.
async fn raw_call(addr: SocketAddr, payload: Bytes) -> anyhow::Result<(i32, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await?;
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("http://{addr}{DELTA_PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())?;
    let (response, mut send) = client.send_request(request, false)?;
    send.send_data(payload, true)?;
    let (head, mut body) = response.await?.into_parts();
    let mut status = head.headers.clone();
    if !status.contains_key("grpc-status") {
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        status = body.trailers().await?.unwrap_or_default();
    }
    let code = status
        .get("grpc-status")
        .map(|v| v.to_str())
        .transpose()?
        .unwrap_or("missing");
    let message = status
        .get("grpc-message")
        .map(|v| v.to_str())
        .transpose()?
        .unwrap_or("");
    Ok((code.parse()?, message.to_owned()))
}

#[tokio::test]
async fn garbage_ends_only_its_own_stream() -> anyhow::Result<()> {
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(2, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let good = Arc::new(Recorder::default());
    let _good = wildcard_client(server.addr, "good", &good);
    eventually!(good.with(|r| r.resources.len()) == 2);

    // Sixteen 0xff bytes: a varint that never ends, not a protobuf message.
    let garbage = [0xffu8; 16];
    let (code, message) = raw_call(server.addr, grpc_frame(&garbage, garbage.len())).await?;
    assert_eq!(code, tonic::Code::InvalidArgument as i32, "{message}");
    assert!(message.contains("malformed"), "{message}");

    store.apply(
        ADDRESS,
        vec![workload("after", Ipv4Addr::new(10, 8, 8, 8), "v1")],
        vec![],
    );
    eventually!(good.has("after"));
    eventually!(observe = server.stats.connected_clients(), |n| n == 1);
    Ok(())
}

#[tokio::test]
async fn oversized_requests_are_refused() -> anyhow::Result<()> {
    let server = TestServer::with_store(Store::new()).await;
    let good = Arc::new(Recorder::default());
    let good_handle = wildcard_client(server.addr, "good", &good);
    eventually!(good_handle.connected());

    // A raw frame declaring (and carrying) more than the limit.
    let size = MAX_REQUEST_BYTES + 1024;
    let (code, message) = raw_call(server.addr, grpc_frame(&vec![0u8; size], size)).await?;
    assert_ne!(code, tonic::Code::Ok as i32, "{message}");
    eprintln!("oversized raw frame refused: code {code}, {message}");

    // A well-formed request that is simply too big, from a tonic client.
    let mut huge = request(&[]);
    huge.resource_names_subscribe = vec!["n".repeat(1024); (MAX_REQUEST_BYTES / 1024) + 16];
    let mut client = RawClient::connect(server.addr, huge).await;
    let status = client.recv_status().await;
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");

    assert!(good_handle.connected());
    eventually!(observe = server.stats.connected_clients(), |n| n == 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_all_receive_an_update() {
    const CLIENTS: usize = 100;
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(100, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let recorders: Vec<Arc<Recorder>> = (0..CLIENTS).map(|_| Arc::default()).collect();
    let _handles: Vec<ClientHandle> = recorders
        .iter()
        .enumerate()
        .map(|(i, recorder)| wildcard_client(server.addr, &format!("node-{i}"), recorder))
        .collect();
    let synced = || {
        recorders
            .iter()
            .filter(|r| r.with(|r| r.resources.len()) == 100)
            .count()
    };
    eventually!(timeout = Duration::from_secs(60), observe = synced(), |n| n
        == CLIENTS);

    let target = "Kubernetes//Pod/default/pod-42";
    let started = Instant::now();
    store.apply(
        ADDRESS,
        vec![workload(target, Ipv4Addr::new(10, 0, 0, 43), "v2")],
        vec![],
    );
    let updated = || {
        recorders
            .iter()
            .filter(|r| r.revision(target).as_deref() == Some("v2"))
            .count()
    };
    eventually!(
        timeout = Duration::from_secs(60),
        observe = updated(),
        |n| n == CLIENTS
    );

    let mut latencies: Vec<Duration> = recorders
        .iter()
        .filter_map(|r| r.with(|r| r.updated_at.get(target).copied()))
        .map(|at| at.saturating_duration_since(started))
        .collect();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1)];
    eprintln!(
        "update reached {CLIENTS} clients: p50 {:?}, p99 {:?}, max {:?}",
        p(0.5),
        p(0.99),
        p(1.0)
    );
    assert_eq!(server.stats.connected_clients(), CLIENTS as u64);
    assert_eq!(server.stats.nacks_total(), 0);
}
