//! The stats, readiness and admin servers over real loopback sockets.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_node::admin::{self, Admin, AdminError, LogControl};
use ambit_node::telemetry::{LogFormat, Metrics, Telemetry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, watch};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

const ANY_LOOPBACK: &str = "127.0.0.1:0";

struct Reply {
    status: u16,
    headers: String,
    body: String,
}

/// One HTTP/1.1 request on a fresh connection.
async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

fn telemetry() -> Telemetry {
    Telemetry::new(Arc::new(Metrics::with_build_tag("1.26.0")), LogFormat::Json)
}

#[tokio::test]
async fn stats_serves_prometheus_text_on_both_paths() {
    let t = telemetry();
    t.metrics().set_xds_connection_state("istiod:15012", true);
    let server = admin::serve_stats(ANY_LOOPBACK.parse().unwrap(), t.metrics().clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);

    let stats = request(addr, "GET", "/stats/prometheus").await;
    let metrics = request(addr, "GET", "/metrics").await;
    for reply in [&stats, &metrics] {
        assert_eq!(reply.status, 200);
        assert!(
            reply
                .headers
                .contains("content-type: text/plain; version=0.0.4")
        );
        assert!(
            reply
                .body
                .contains("\nambit_xds_connection_state{target=\"istiod:15012\"} 1\n")
        );
    }
    // Same text, except process metrics that move between two scrapes.
    let stable = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with("process_"))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(stable(&stats.body), stable(&metrics.body));

    assert_eq!(request(addr, "GET", "/nope").await.status, 404);
    assert_eq!(request(addr, "POST", "/metrics").await.status, 405);
    let put = request(addr, "PUT", "/stats/prometheus").await;
    assert_eq!(put.status, 405);
    assert!(put.headers.contains("allow: get, post"));
    server.abort();
}

#[tokio::test]
async fn readiness_flips_from_503_to_200() {
    let (ready_tx, ready_rx) = watch::channel(false);
    let check = admin::ready_when(ready_rx, "certificates and WDS not synced");
    let server = admin::serve_readiness(ANY_LOOPBACK.parse().unwrap(), check)
        .await
        .unwrap();
    let addr = server.local_addr();

    let before = request(addr, "GET", "/healthz/ready").await;
    assert_eq!(before.status, 503);
    assert_eq!(before.body, "not ready: certificates and WDS not synced\n");

    ready_tx.send(true).unwrap();
    let after = request(addr, "GET", "/healthz/ready").await;
    assert_eq!((after.status, after.body.as_str()), (200, "ready\n"));
    assert_eq!(request(addr, "DELETE", "/healthz/ready").await.status, 405);
}

/// An admin server wired the way the binary wires it: `/logging` drives a real
/// tracing-subscriber reload handle.
struct Fixture {
    addr: SocketAddr,
    shutdown: Arc<Notify>,
    handle: reload::Handle<EnvFilter, Registry>,
    _subscriber: Box<dyn tracing::Subscriber + Send + Sync>,
    set_calls: Arc<Mutex<Vec<String>>>,
}

async fn admin_fixture() -> Fixture {
    let (filter, handle) = reload::Layer::new(EnvFilter::new("info"));
    let subscriber = Box::new(Registry::default().with(filter));
    let set_calls = Arc::new(Mutex::new(Vec::new()));
    let logging = {
        let (current, set) = (handle.clone(), handle.clone());
        let calls = set_calls.clone();
        LogControl::new(
            move || current.with_current(|f| f.to_string()).unwrap_or_default(),
            move |new| {
                calls.lock().unwrap().push(new.to_owned());
                let filter = EnvFilter::try_new(new).map_err(|e| e.to_string())?;
                set.reload(filter).map_err(|e| e.to_string())?;
                set.with_current(|f| f.to_string())
                    .map_err(|e| e.to_string())
            },
        )
    };
    let shutdown = Arc::new(Notify::new());
    let t = telemetry();
    t.metrics().set_certificate_expiry(
        "spiffe://cluster.local/ns/default/sa/sleep",
        std::time::UNIX_EPOCH + Duration::from_secs(1_900_000_000),
    );
    let admin = Admin {
        telemetry: t,
        config_dump: Arc::new(|| {
            serde_json::json!({
                "workloads": [{"name": "sleep", "namespace": "default"}],
                "services": [],
            })
        }),
        logging,
        shutdown: shutdown.clone(),
    };
    let server = admin::serve_admin(ANY_LOOPBACK.parse().unwrap(), admin)
        .await
        .unwrap();
    Fixture {
        addr: server.local_addr(),
        shutdown,
        handle,
        _subscriber: subscriber,
        set_calls,
    }
}

#[tokio::test]
async fn config_dump_serves_the_providers_json_and_a_telemetry_summary() {
    let f = admin_fixture().await;
    let reply = request(f.addr, "GET", "/config_dump").await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers.contains("content-type: application/json"));
    let dump: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(dump["workloads"][0]["name"], "sleep");
    assert_eq!(dump["services"], serde_json::json!([]));
    let telemetry = &dump["telemetry"];
    assert_eq!(telemetry["connections"]["active"], 0);
    assert_eq!(
        telemetry["certificateExpiry"]["spiffe://cluster.local/ns/default/sa/sleep"],
        1_900_000_000u64
    );
    assert_eq!(telemetry["logFormat"], "json");
    assert_eq!(request(f.addr, "POST", "/config_dump").await.status, 405);
}

#[tokio::test]
async fn logging_changes_levels_through_the_callback() {
    let f = admin_fixture().await;
    let get = request(f.addr, "GET", "/logging").await;
    assert_eq!(
        (get.status, get.body.as_str()),
        (200, "current log filter is info\n")
    );

    let post = request(f.addr, "POST", "/logging?level=debug").await;
    assert_eq!(
        (post.status, post.body.as_str()),
        (200, "current log filter is debug\n")
    );
    let current = f.handle.with_current(|f| f.to_string()).unwrap();
    assert_eq!(current, "debug");

    let post = request(f.addr, "POST", "/logging?access=info").await;
    assert_eq!(post.status, 200, "{}", post.body);
    let current = f.handle.with_current(|f| f.to_string()).unwrap();
    assert!(
        current.contains("access=info") && current.contains("debug"),
        "{current}"
    );
    assert_eq!(*f.set_calls.lock().unwrap(), ["debug", "debug,access=info"]);

    // Refused before or by the callback: 400, filter unchanged.
    assert_eq!(
        request(f.addr, "POST", "/logging?access=loud").await.status,
        400
    );
    assert_eq!(request(f.addr, "POST", "/logging").await.status, 400);
    let bad = request(f.addr, "POST", "/logging?level=%5B").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(f.handle.with_current(|f| f.to_string()).unwrap(), current);
    assert_eq!(request(f.addr, "PATCH", "/logging").await.status, 405);
}

#[tokio::test]
async fn quitquitquit_fires_the_shutdown_notify() {
    let f = admin_fixture().await;
    assert_eq!(request(f.addr, "GET", "/quitquitquit").await.status, 405);
    let reply = request(f.addr, "POST", "/quitquitquit").await;
    assert_eq!(reply.status, 200);
    tokio::time::timeout(Duration::from_secs(5), f.shutdown.notified())
        .await
        .expect("POST /quitquitquit notifies shutdown");
    assert_eq!(request(f.addr, "GET", "/unknown").await.status, 404);
}

#[tokio::test]
async fn admin_refuses_non_loopback_addresses() {
    let admin = Admin {
        telemetry: telemetry(),
        config_dump: Arc::new(|| serde_json::Value::Null),
        logging: LogControl::new(String::new, |_| Err("no".into())),
        shutdown: Arc::new(Notify::new()),
    };
    let err = admin::serve_admin("0.0.0.0:0".parse().unwrap(), admin)
        .await
        .unwrap_err();
    assert!(matches!(err, AdminError::NotLoopback(_)), "{err}");
    assert_eq!(admin::DEFAULT_ADMIN_ADDR.to_string(), "127.0.0.1:15000");
}

#[test]
fn logging_queries_merge_into_the_filter() {
    use admin::{LoggingQueryError, merge_log_filter};
    let cases = [
        ("info", "level=debug", "debug"),
        ("info", "access=debug", "info,access=debug"),
        ("info,access=debug", "access=off", "info,access=off"),
        ("warn", "level=info%2Caccess%3Dtrace", "info,access=trace"),
        (
            "info",
            "level=debug&ambit_node=trace",
            "debug,ambit_node=trace",
        ),
    ];
    for (current, query, want) in cases {
        assert_eq!(
            merge_log_filter(current, query),
            Ok(want.to_owned()),
            "{query}"
        );
    }
    for bad in ["", "level", "=debug", "level=%zz"] {
        assert!(
            matches!(
                merge_log_filter("info", bad),
                Err(LoggingQueryError::Malformed(_))
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        merge_log_filter("info", "access=loud"),
        Err(LoggingQueryError::UnknownLevel { .. })
    ));
}
