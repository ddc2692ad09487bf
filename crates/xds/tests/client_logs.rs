//! The xDS client's log lines as an operator reads them in `kubectl logs ds/ztunnel`: per push,
//! `received response` with `type_url`, `size` and `removes` at info, inside the connection's
//! `xds{id=N}` span under the target `xds::client`, printed by the binaries' real formatter.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ambit_logging::{Capture, Clock, Format};
use ambit_proto::envoy::config::core::v3::Node;
use ambit_testkit::eventually;
use ambit_xds::client::{ClientConfig, ClientHandle, Subscription, XdsClient};
use ambit_xds::server::Store;
use common::{ADDRESS, Recorder, Relay, TestServer, connector, workload, workloads};

/// The fixed time of every line: 2026-03-01T12:34:56.000000Z.
const TIME: &str = "2026-03-01T12:34:56.000000Z";

fn logs(format: Format) -> (Capture, tracing::subscriber::DefaultGuard) {
    let out = Capture::new();
    let clock = Clock::Fixed(UNIX_EPOCH + Duration::from_secs(1_772_368_496));
    // The tests run on a current-thread runtime: every task logs to this subscriber.
    let guard =
        tracing::subscriber::set_default(ambit_logging::subscriber(format, clock, out.clone()));
    (out, guard)
}

fn spawn(
    addr: std::net::SocketAddr,
    recorder: &Arc<Recorder>,
    names: Subscription,
) -> ClientHandle {
    let mut config = ClientConfig::new(Node {
        id: "ztunnel~logs".to_owned(),
        ..Default::default()
    })
    .subscribe(ADDRESS, names);
    config.backoff_initial = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(100);
    XdsClient::spawn(connector(addr), config, recorder.clone())
}

/// The client's lines at info and above (the server logs to the same subscriber).
fn client_lines(out: &Capture) -> Vec<String> {
    out.lines()
        .into_iter()
        .filter(|l| l.contains("\txds::client:") && !l.contains("\tdebug\t"))
        .collect()
}

fn line(level: &str, id: u64, message: &str, fields: &str) -> String {
    format!("{TIME}\t{level}\txds::client:xds{{id={id}}}\t{message}\t{fields}")
}

#[tokio::test]
async fn every_push_is_logged_as_ztunnel_logs_it() {
    let (out, _guard) = logs(Format::Text);
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(3, "v1"));
    let server = TestServer::with_store(store.clone()).await;
    let recorder = Arc::new(Recorder::rejecting("poison"));
    let _handle = spawn(server.addr, &recorder, Subscription::Wildcard);
    eventually!(observe = recorder.with(|r| r.resources.len()), |n| n == 3);

    // A removal, then an update the handler rejects (NACK).
    store.apply(
        ADDRESS,
        vec![],
        vec!["Kubernetes//Pod/default/pod-2".into()],
    );
    eventually!(observe = recorder.with(|r| r.resources.len()), |n| n == 2);
    let poison = workload("poison", Ipv4Addr::new(10, 6, 6, 6), "v1");
    store.apply(ADDRESS, vec![poison], vec![]);
    eventually!(observe = server.stats.nacks_total(), |n| n == 1);

    let lines = client_lines(&out);
    let url = r#"type_url="type.googleapis.com/istio.workload.Address""#;
    assert_eq!(
        lines[..4],
        [
            line("info", 1, "Stream established", ""),
            line(
                "info",
                1,
                "received response",
                &format!("{url} size=3 removes=0")
            ),
            line(
                "info",
                1,
                "received response",
                &format!("{url} size=0 removes=1")
            ),
            line(
                "info",
                1,
                "received response",
                &format!("{url} size=1 removes=0")
            ),
        ],
        "{lines:#?}"
    );
    // The NACK: ztunnel's `sending response` at error, with the nonce, `type=Nack` and why.
    let nack = &lines[4];
    let prefix =
        format!("{TIME}\terror\txds::client:xds{{id=1}}\tsending response\t{url} nonce=\"");
    assert!(nack.starts_with(&prefix), "{nack}");
    assert!(
        nack.contains("\" type=Nack error=\"") && nack.contains("poison"),
        "{nack}"
    );
    assert_eq!(lines.len(), 5, "{lines:#?}");

    // Each accepted response is ACKed at debug.
    let acks = out
        .lines()
        .into_iter()
        .filter(|l| l.contains("\tdebug\txds::client:xds{id=1}\tsending response\t"))
        .filter(|l| l.ends_with(" type=Ack"))
        .count();
    assert_eq!(acks, 2);
}

#[tokio::test]
async fn an_on_demand_name_is_logged_when_asked_for() {
    let (out, _guard) = logs(Format::Text);
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(2, "v1"));
    let server = TestServer::with_store(store).await;
    let recorder = Arc::new(Recorder::default());
    let handle = spawn(server.addr, &recorder, Subscription::Names(Vec::new()));
    eventually!(handle.connected());
    handle.subscribe(ADDRESS, ["/10.0.0.2"]);
    eventually!(observe = recorder.with(|r| r.updates.len()), |n| n == 1);

    let lines = client_lines(&out);
    let asked = format!(
        "{TIME}\tinfo\txds::client:xds{{id=1}}\treceived on demand request {ADDRESS}//10.0.0.2\t"
    );
    assert!(lines.contains(&asked), "{lines:#?}");
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("\treceived response\ttype_url=\"type.googleapis.com/istio.workload.Address\" size=1 removes=0")),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn each_connection_attempt_has_its_own_span_id() {
    let (out, _guard) = logs(Format::Text);
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(1, "v1"));
    let server = TestServer::with_store(store).await;
    let relay = Relay::start(server.addr).await;
    let recorder = Arc::new(Recorder::default());
    let handle = spawn(relay.addr, &recorder, Subscription::Wildcard);
    let mut state = handle.connection_state();
    state.wait_for(|up| *up).await.unwrap();
    eventually!(observe = recorder.with(|r| r.updates.len()), |n| n == 1);

    relay.pause();
    state.wait_for(|up| !*up).await.unwrap();
    relay.resume();
    state.wait_for(|up| *up).await.unwrap();
    eventually!(observe = recorder.with(|r| r.updates.len()), |n| n == 2);

    let lines = client_lines(&out);
    // The stream that broke says so under its own id, with ztunnel's wording.
    let lost = lines
        .iter()
        .find(|l| l.contains("\twarn\t"))
        .unwrap_or_else(|| panic!("no warn line: {lines:#?}"));
    assert!(
        lost.starts_with(&format!(
            "{TIME}\twarn\txds::client:xds{{id=1}}\tXDS client error: "
        )),
        "{lost}"
    );
    assert!(
        lost.contains(", retrying in ") && lost.ends_with('\t'),
        "{lost}"
    );
    // The stream after it is a later attempt, and its pushes are logged under that id.
    let established: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("\tStream established\t"))
        .collect();
    assert_eq!(established.len(), 2, "{lines:#?}");
    let id = |l: &str| -> u64 {
        let rest = l.split("xds{id=").nth(1).unwrap();
        rest[..rest.find('}').unwrap()].parse().unwrap()
    };
    let second = id(established[1]);
    assert!(second >= 2, "{lines:#?}");
    let last = lines.last().unwrap();
    assert!(last.contains("\treceived response\t"), "{last}");
    assert_eq!(id(last), second, "{lines:#?}");
}

#[tokio::test]
async fn json_lines_carry_the_span_as_an_object() {
    let (out, _guard) = logs(Format::Json);
    let store = Store::new();
    store.replace_all(ADDRESS, workloads(2, "v1"));
    let server = TestServer::with_store(store).await;
    let recorder = Arc::new(Recorder::default());
    let _handle = spawn(server.addr, &recorder, Subscription::Wildcard);
    eventually!(observe = recorder.with(|r| r.resources.len()), |n| n == 2);

    let received = out
        .lines()
        .into_iter()
        .find(|l| l.contains("\"message\":\"received response\""))
        .unwrap();
    assert_eq!(
        received,
        format!(
            "{{\"level\":\"info\",\"time\":\"{TIME}\",\"scope\":\"xds::client\",\
             \"message\":\"received response\",\"type_url\":\"{ADDRESS}\",\"size\":2,\
             \"removes\":0,\"xds\":{{\"id\":1}}}}"
        )
    );
}
