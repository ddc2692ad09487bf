//! Shared pieces of the xDS integration tests: a real tonic server on loopback, WDS resources
//! with real `istio.workload.Address` bodies, a raw ADS client that shows exactly what is on the
//! wire, a recording handler for `XdsClient`, and a TCP relay that can sever connections.

// Each test binary uses its own subset of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_proto::envoy::service::discovery::v3 as xds;
use ambit_proto::workload::{Address, Workload, address};
use ambit_xds::Resource;
use ambit_xds::client::{BoxError, Handler, Update};
use ambit_xds::server::{AdsServer, ServerStats, Store};
use prost::Message as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Endpoint};
use xds::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;

pub(crate) const ADDRESS: &str = ambit_proto::ADDRESS_TYPE_URL;

/// How long a raw client waits for a response before failing the test.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// A WDS workload `uid` at `ip`, with the alias ztunnel looks addresses up by (`/<ip>`).
pub(crate) fn workload(uid: &str, ip: Ipv4Addr, revision: &str) -> Resource {
    let body = Address {
        r#type: Some(address::Type::Workload(Workload {
            uid: uid.to_owned(),
            name: uid.rsplit('/').next().unwrap_or(uid).to_owned(),
            namespace: "default".to_owned(),
            addresses: vec![ip.octets().to_vec()],
            service_account: "default".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            canonical_revision: revision.to_owned(),
            ..Default::default()
        })),
    };
    let any = prost_types::Any {
        type_url: ADDRESS.to_owned(),
        value: body.encode_to_vec(),
    };
    Resource::new(uid, any).with_aliases([format!("/{ip}")])
}

/// `n` workloads `Kubernetes//Pod/default/pod-<i>` at `10.0.<i/250>.<i%250+1>`.
pub(crate) fn workloads(n: usize, revision: &str) -> Vec<Resource> {
    (0..n)
        .map(|i| {
            let ip = Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 1) as u8);
            workload(&format!("Kubernetes//Pod/default/pod-{i}"), ip, revision)
        })
        .collect()
}

/// Decodes the workload in a wire resource.
pub(crate) fn decode_workload(resource: &xds::Resource) -> Workload {
    let any = resource.resource.as_ref().expect("resource has a body");
    match Address::decode(any.value.as_slice())
        .expect("valid Address")
        .r#type
    {
        Some(address::Type::Workload(w)) => w,
        other => panic!("not a workload: {other:?}"),
    }
}

// === test server ===

/// An `AdsServer` behind a real tonic server on `127.0.0.1:<ephemeral>`.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) store: Store,
    pub(crate) stats: Arc<ServerStats>,
    task: JoinHandle<()>,
}

impl TestServer {
    pub(crate) async fn start(server: AdsServer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let store = server.store().clone();
        let stats = server.stats();
        let task = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(server.into_service())
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .expect("server runs");
        });
        Self {
            addr,
            store,
            stats,
            task,
        }
    }

    pub(crate) async fn with_store(store: Store) -> Self {
        Self::start(AdsServer::new(store)).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What `XdsClient` wants: a closure opening a channel to `addr`.
pub(crate) fn connector(
    addr: SocketAddr,
) -> impl Fn() -> Pin<Box<dyn Future<Output = Result<Channel, BoxError>> + Send>> + Send + Sync + 'static
{
    move || {
        Box::pin(async move {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))?;
            Ok(endpoint.connect().await?)
        })
    }
}

// === raw client ===

/// A bare ADS stream: what the test sends and receives is exactly what crosses the wire.
pub(crate) struct RawClient {
    tx: mpsc::Sender<xds::DeltaDiscoveryRequest>,
    inbound: tonic::Streaming<xds::DeltaDiscoveryResponse>,
}

impl RawClient {
    pub(crate) async fn connect(addr: SocketAddr, first: xds::DeltaDiscoveryRequest) -> Self {
        let channel = connector(addr)().await.expect("connect");
        let mut client = AggregatedDiscoveryServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(16);
        tx.send(first).await.expect("queue first request");
        let inbound = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream accepted")
            .into_inner();
        Self { tx, inbound }
    }

    /// A client subscribing to `names` of the address type (`[]`: wildcard).
    pub(crate) async fn subscribe(addr: SocketAddr, names: &[&str]) -> Self {
        Self::connect(addr, request(names)).await
    }

    pub(crate) async fn send(&self, request: xds::DeltaDiscoveryRequest) {
        self.tx.send(request).await.expect("stream open");
    }

    pub(crate) async fn recv(&mut self) -> xds::DeltaDiscoveryResponse {
        match tokio::time::timeout(RECV_TIMEOUT, self.inbound.message()).await {
            Ok(Ok(Some(response))) => response,
            Ok(other) => panic!("stream ended: {other:?}"),
            Err(_) => panic!("no response within {RECV_TIMEOUT:?}"),
        }
    }

    /// Receives a response and ACKs it.
    pub(crate) async fn recv_ack(&mut self) -> xds::DeltaDiscoveryResponse {
        let response = self.recv().await;
        self.send(ack(&response)).await;
        response
    }

    /// The status the server ended the stream with (fails if it sends a response instead).
    pub(crate) async fn recv_status(&mut self) -> tonic::Status {
        match tokio::time::timeout(RECV_TIMEOUT, self.inbound.message()).await {
            Ok(Err(status)) => status,
            Ok(other) => panic!("expected the stream to fail, got {other:?}"),
            Err(_) => panic!("stream still open after {RECV_TIMEOUT:?}"),
        }
    }

    /// Fails if a response arrives within `wait`.
    pub(crate) async fn expect_silence(&mut self, wait: Duration) {
        if let Ok(message) = tokio::time::timeout(wait, self.inbound.message()).await {
            panic!("expected no response, got {message:?}");
        }
    }
}

/// A first request of the address type for `names` (`[]`: wildcard).
pub(crate) fn request(names: &[&str]) -> xds::DeltaDiscoveryRequest {
    xds::DeltaDiscoveryRequest {
        type_url: ADDRESS.to_owned(),
        resource_names_subscribe: names.iter().map(|n| n.to_string()).collect(),
        ..Default::default()
    }
}

pub(crate) fn ack(response: &xds::DeltaDiscoveryResponse) -> xds::DeltaDiscoveryRequest {
    xds::DeltaDiscoveryRequest {
        type_url: response.type_url.clone(),
        response_nonce: response.nonce.clone(),
        ..Default::default()
    }
}

/// Names of the resources in a response, in order.
pub(crate) fn names(response: &xds::DeltaDiscoveryResponse) -> Vec<&str> {
    response.resources.iter().map(|r| r.name.as_str()).collect()
}

// === recording handler ===

/// A handler that keeps what it was given, and rejects resources whose name contains `reject`.
#[derive(Debug, Default)]
pub(crate) struct Recorder {
    pub(crate) reject: Option<String>,
    inner: Mutex<Recorded>,
}

#[derive(Debug, Default)]
pub(crate) struct Recorded {
    pub(crate) updates: Vec<Update>,
    pub(crate) resources: BTreeMap<String, Resource>,
    /// When each name was last upserted.
    pub(crate) updated_at: BTreeMap<String, Instant>,
    pub(crate) connection_changes: Vec<bool>,
}

impl Recorder {
    pub(crate) fn rejecting(name_part: &str) -> Self {
        Self {
            reject: Some(name_part.to_owned()),
            ..Self::default()
        }
    }

    pub(crate) fn with<T>(&self, f: impl FnOnce(&Recorded) -> T) -> T {
        f(&self.inner.lock().expect("recorder lock"))
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.with(|r| r.resources.contains_key(name))
    }

    pub(crate) fn revision(&self, name: &str) -> Option<String> {
        self.with(|r| {
            r.resources
                .get(name)
                .map(|res| decode_body(res).canonical_revision)
        })
    }
}

fn decode_body(resource: &Resource) -> Workload {
    match Address::decode(resource.body.value.as_slice())
        .expect("valid Address")
        .r#type
    {
        Some(address::Type::Workload(w)) => w,
        other => panic!("not a workload: {other:?}"),
    }
}

impl Handler for Recorder {
    fn handle(&self, _type_url: &str, update: Update) -> Result<(), String> {
        let rejected = self
            .reject
            .as_deref()
            .and_then(|bad| update.upserts.iter().find(|r| r.name.contains(bad)));
        if let Some(resource) = rejected {
            return Err(format!("refusing {}", resource.name));
        }
        let mut recorded = self.inner.lock().expect("recorder lock");
        let now = Instant::now();
        for resource in &update.upserts {
            recorded.updated_at.insert(resource.name.clone(), now);
            recorded
                .resources
                .insert(resource.name.clone(), resource.clone());
        }
        for name in &update.removals {
            recorded.resources.remove(name);
        }
        recorded.updates.push(update);
        Ok(())
    }

    fn on_connection_state(&self, connected: bool) {
        self.inner
            .lock()
            .expect("recorder lock")
            .connection_changes
            .push(connected);
    }
}

// === severable relay ===

/// A TCP relay to `target` whose connections can be cut, to make clients reconnect.
pub(crate) struct Relay {
    pub(crate) addr: SocketAddr,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
    paused: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl Relay {
    pub(crate) async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let paused = Arc::new(AtomicBool::new(false));
        let tracked = connections.clone();
        let refusing = paused.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refusing.load(Ordering::SeqCst) {
                    continue;
                }
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().expect("relay lock").push(relay);
            }
        });
        Self {
            addr,
            connections,
            paused,
            task,
        }
    }

    /// Severs every connection and refuses new ones until [`Relay::resume`].
    pub(crate) fn pause(&self) {
        self.paused.store(true, Ordering::SeqCst);
        self.sever();
    }

    pub(crate) fn resume(&self) {
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Drops every relayed connection (both sockets close).
    pub(crate) fn sever(&self) {
        for connection in self.connections.lock().expect("relay lock").drain(..) {
            connection.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.sever();
        self.task.abort();
    }
}
