//! Telemetry as a dashboard or `kubectl logs` reader sees it: the exact metric lines and label
//! sets ztunnel exports, and the exact access log lines the binaries' formatter
//! (`ambit_logging`) prints, in text and JSON: golden files for fixed records, and the line a
//! real connection through two node proxies leaves.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ambit_logging::{Capture, Clock, Format};
use ambit_node::telemetry::access_log::AccessRecord;
use ambit_node::telemetry::{
    ConnectionInfo, Direction, LogFormat, Metrics, PeerInfo, ResponseFlags, SecurityPolicy,
    ServiceInfo, Telemetry,
};
use ambit_testkit::{LoopbackAddrs, eventually};
use common::{Mesh, Pod, echo, echo_roundtrip, socks_connect, wait_hbone};

const SLEEP_ID: &str = "spiffe://cluster.local/ns/default/sa/sleep";
const HTTPBIN_ID: &str = "spiffe://cluster.local/ns/default/sa/httpbin";

/// Labels of an outbound HBONE connection sleep → httpbin service, ztunnel's order.
const OUTBOUND_LABELS: &str = concat!(
    r#"reporter="source",source_workload="sleep",source_canonical_service="sleep","#,
    r#"source_canonical_revision="v1",source_workload_namespace="default","#,
    r#"source_principal="spiffe://cluster.local/ns/default/sa/sleep",source_app="sleep","#,
    r#"source_version="v1",source_cluster="Kubernetes","#,
    r#"destination_service="httpbin.default.svc.cluster.local","#,
    r#"destination_service_namespace="default",destination_service_name="httpbin","#,
    r#"destination_workload="httpbin",destination_canonical_service="httpbin","#,
    r#"destination_canonical_revision="v2",destination_workload_namespace="default","#,
    r#"destination_principal="spiffe://cluster.local/ns/default/sa/httpbin","#,
    r#"destination_app="httpbin",destination_version="v2",destination_cluster="Kubernetes","#,
    r#"request_protocol="tcp",response_flags="-",connection_security_policy="mutual_tls""#,
);

/// Labels of plaintext from outside the mesh into httpbin (`:15006`).
const INBOUND_UNKNOWN_LABELS: &str = concat!(
    r#"reporter="destination",source_workload="unknown",source_canonical_service="unknown","#,
    r#"source_canonical_revision="unknown",source_workload_namespace="unknown","#,
    r#"source_principal="unknown",source_app="unknown",source_version="unknown","#,
    r#"source_cluster="unknown",destination_service="unknown","#,
    r#"destination_service_namespace="unknown",destination_service_name="unknown","#,
    r#"destination_workload="httpbin",destination_canonical_service="httpbin","#,
    r#"destination_canonical_revision="v2",destination_workload_namespace="default","#,
    r#"destination_principal="spiffe://cluster.local/ns/default/sa/httpbin","#,
    r#"destination_app="httpbin",destination_version="v2",destination_cluster="Kubernetes","#,
    r#"request_protocol="tcp",response_flags="-",connection_security_policy="unknown""#,
);

fn peer(workload: &str, identity: &str, version: &str) -> PeerInfo {
    PeerInfo {
        workload: workload.into(),
        namespace: "default".into(),
        identity: identity.into(),
        app: workload.into(),
        version: version.into(),
        cluster: "Kubernetes".into(),
    }
}

fn outbound_mtls() -> ConnectionInfo {
    ConnectionInfo {
        direction: Direction::Outbound,
        src_addr: "10.0.0.1:41234".parse().unwrap(),
        src: peer("sleep", SLEEP_ID, "v1"),
        dst_addr: "10.0.0.2:8080".parse().unwrap(),
        dst_hbone_addr: Some("10.0.0.2:15008".parse().unwrap()),
        dst_service: Some(ServiceInfo {
            hostname: "httpbin.default.svc.cluster.local".into(),
            name: "httpbin".into(),
            namespace: "default".into(),
        }),
        dst: peer("httpbin", HTTPBIN_ID, "v2"),
        security: SecurityPolicy::MutualTls,
    }
}

fn inbound_unknown() -> ConnectionInfo {
    ConnectionInfo {
        direction: Direction::Inbound,
        src_addr: "192.168.1.5:50000".parse().unwrap(),
        src: PeerInfo::default(),
        dst_addr: "10.0.0.2:8080".parse().unwrap(),
        dst_hbone_addr: None,
        dst_service: None,
        dst: peer("httpbin", HTTPBIN_ID, "v2"),
        security: SecurityPolicy::Unknown,
    }
}

fn telemetry() -> Telemetry {
    Telemetry::new(Arc::new(Metrics::with_build_tag("1.26.0")), LogFormat::Text)
}

/// The sample lines of `family` in `text`.
fn samples<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
    let prefix = format!("{family}{{");
    text.lines().filter(|l| l.starts_with(&prefix)).collect()
}

// === metrics ===

#[test]
fn outbound_mtls_connection_metrics() {
    let t = telemetry();
    let mut conn = t.open(outbound_mtls());
    conn.add_sent(100);
    conn.add_sent(20);
    conn.add_recv(560);

    let text = t.metrics().render();
    let opened = format!("istio_tcp_connections_opened_total{{{OUTBOUND_LABELS}}} 1");
    assert_eq!(
        samples(&text, "istio_tcp_connections_opened_total"),
        [opened.as_str()]
    );
    assert!(samples(&text, "istio_tcp_connections_closed_total").is_empty());
    for family in [
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
    ] {
        let zero = format!("{family}{{{OUTBOUND_LABELS}}} 0");
        assert_eq!(
            samples(&text, family),
            [zero.as_str()],
            "{family} before close"
        );
    }

    conn.finish(None);
    let text = t.metrics().render();
    // Istio's "received" is what the client sent (the request), "sent" what the server answered.
    for (family, value) in [
        ("istio_tcp_connections_opened_total", 1),
        ("istio_tcp_connections_closed_total", 1),
        ("istio_tcp_received_bytes_total", 120),
        ("istio_tcp_sent_bytes_total", 560),
    ] {
        let want = format!("{family}{{{OUTBOUND_LABELS}}} {value}");
        assert_eq!(samples(&text, family), [want.as_str()], "{family}");
    }
    for (family, kind) in [
        ("istio_tcp_connections_opened_total", "counter"),
        ("istio_tcp_connections_closed_total", "counter"),
        ("istio_tcp_received_bytes_total", "counter"),
        ("istio_tcp_sent_bytes_total", "counter"),
        ("istio_build", "gauge"),
        ("ambit_certificate_expiry_seconds", "gauge"),
        ("ambit_xds_connection_state", "gauge"),
    ] {
        assert!(
            text.contains(&format!("\n# TYPE {family} {kind}\n")),
            "{family}"
        );
        assert!(text.contains(&format!("# HELP {family} ")), "{family}");
    }
    assert!(text.contains("\nistio_build{component=\"ztunnel\",tag=\"1.26.0\"} 1\n"));
}

#[test]
fn inbound_plaintext_connection_metrics() {
    let t = telemetry();
    let mut conn = t.open(inbound_unknown());
    conn.add_recv(7); // the outside client's request
    conn.add_sent(3); // httpbin's answer
    conn.finish(Some("peer reset".into()));

    let text = t.metrics().render();
    for (family, value) in [
        ("istio_tcp_connections_opened_total", 1),
        ("istio_tcp_connections_closed_total", 1),
        ("istio_tcp_received_bytes_total", 7),
        ("istio_tcp_sent_bytes_total", 3),
    ] {
        let want = format!("{family}{{{INBOUND_UNKNOWN_LABELS}}} {value}");
        assert_eq!(samples(&text, family), [want.as_str()], "{family}");
    }
}

#[test]
fn denied_connections_close_with_the_deny_flag() {
    let t = telemetry();
    t.open(inbound_unknown())
        .finish_with_flags(ResponseFlags::Deny, Some("denied by policy".into()));
    let text = t.metrics().render();
    let dash = format!("{{{INBOUND_UNKNOWN_LABELS}}} 1");
    let deny = dash.replace("response_flags=\"-\"", "response_flags=\"DENY\"");
    let opened = format!("istio_tcp_connections_opened_total{dash}");
    let closed = format!("istio_tcp_connections_closed_total{deny}");
    assert_eq!(
        samples(&text, "istio_tcp_connections_opened_total"),
        [opened.as_str()]
    );
    assert_eq!(
        samples(&text, "istio_tcp_connections_closed_total"),
        [closed.as_str()]
    );
}

#[test]
fn label_values_are_escaped() {
    let t = telemetry();
    let mut info = inbound_unknown();
    info.src.workload = "we\"ird\\na\nme".into();
    t.open(info).finish(None);
    let text = t.metrics().render();
    let line = samples(&text, "istio_tcp_connections_opened_total")[0];
    assert!(
        line.contains(r#",source_workload="we\"ird\\na\nme","#),
        "{line}"
    );
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("source_workload"))
            .count(),
        4
    );
}

#[test]
fn process_and_identity_gauges_are_exported() {
    let t = telemetry();
    let expiry = std::time::UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    t.metrics().set_certificate_expiry(SLEEP_ID, expiry);
    t.metrics()
        .set_xds_connection_state("istiod.istio-system.svc:15012", true);
    let text = t.metrics().render();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(
        &format!("ambit_certificate_expiry_seconds{{identity=\"{SLEEP_ID}\"}} 1900000000").as_str()
    ));
    assert!(
        lines.contains(&"ambit_xds_connection_state{target=\"istiod.istio-system.svc:15012\"} 1")
    );
    for (name, kind) in [
        ("process_resident_memory_bytes", "gauge"),
        ("process_cpu_seconds_total", "counter"),
        ("process_open_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        assert!(
            lines.contains(&format!("# TYPE {name} {kind}").as_str()),
            "{name}"
        );
        let sample = lines
            .iter()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap();
        let value: f64 = sample.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(
            value > 0.0 || name == "process_cpu_seconds_total",
            "{sample}"
        );
    }
}

// === access logs ===

fn fixed_record() -> AccessRecord {
    AccessRecord::new(&outbound_mtls(), 120, 560, Duration::from_millis(12), None)
}

/// 2026-03-01T12:34:56.789012Z.
fn clock() -> Clock {
    Clock::Fixed(UNIX_EPOCH + Duration::new(1_772_368_496, 789_012_000))
}

/// Runs `f` under the binaries' formatter in `format` (every level, a fixed clock) and returns
/// its lines.
fn capture(format: Format, f: impl FnOnce()) -> Vec<String> {
    let out = Capture::new();
    tracing::subscriber::with_default(ambit_logging::subscriber(format, clock(), out.clone()), f);
    out.lines()
}

fn golden(name: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(str::to_owned).collect()
}

/// The golden files' records: an outbound mutual TLS connection, plaintext from outside the
/// mesh that ended in error, and a connection refused before it was opened.
fn golden_records() {
    let t = telemetry();
    fixed_record().emit();
    AccessRecord::new(
        &inbound_unknown(),
        3,
        7,
        Duration::from_millis(1500),
        Some("peer reset".into()),
    )
    .emit();
    t.log_refused(&inbound_unknown(), "no such workload");
}

#[test]
fn access_log_text_matches_the_golden_file() {
    // tests/golden/access_log.log, column by column (TAB-separated):
    // time, level, target, message, then ztunnel's fields in ztunnel's order, strings quoted,
    // addresses and numbers bare, unknown fields and unproven identities left out.
    assert_eq!(
        capture(Format::Text, golden_records),
        golden("access_log.log")
    );
}

#[test]
fn access_log_json_matches_the_golden_file() {
    let lines = capture(Format::Json, golden_records);
    assert_eq!(lines, golden("access_log.jsonl"));
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["scope"], "access");
    assert_eq!(first["bytes_sent"], 120);
    assert_eq!(first["duration"], "12ms");
}

#[test]
fn a_guard_logs_once_and_a_dropped_one_says_so() {
    let t = telemetry();
    let lines = capture(Format::Json, || {
        let mut conn = t.open(outbound_mtls());
        conn.add_sent(5);
        conn.add_recv(9);
        conn.finish(None);
        drop(t.open(inbound_unknown()));
    });
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["level"], "info");
    assert_eq!(first["message"], "connection complete");
    assert_eq!(
        (first["bytes_sent"].as_u64(), first["bytes_recv"].as_u64()),
        (Some(5), Some(9))
    );
    let duration = first["duration"].as_str().unwrap();
    assert!(
        duration.strip_suffix("ms").unwrap().parse::<u64>().is_ok(),
        "{duration}"
    );
    assert!(first.get("error").is_none());

    let dropped: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(dropped["level"], "error");
    assert_eq!(dropped["error"], "connection dropped");
    assert_eq!(dropped["direction"], "inbound");
    assert!(dropped.get("src.identity").is_none());

    let text = t.metrics().render();
    assert_eq!(
        samples(&text, "istio_tcp_connections_closed_total").len(),
        2
    );
}

#[test]
fn refused_connections_are_logged_like_an_early_deny() {
    let t = telemetry();
    let lines = capture(Format::Text, || {
        t.log_refused(&inbound_unknown(), "no such workload")
    });
    assert_eq!(
        lines,
        [
            "2026-03-01T12:34:56.789012Z\twarn\taccess\tconnection failed\t\
             src.addr=192.168.1.5:50000 dst.addr=10.0.0.2:8080 direction=\"inbound\" \
             error=\"no such workload\""
        ]
    );
    assert!(samples(&t.metrics().render(), "istio_tcp_connections_opened_total").is_empty());
}

// === a real connection ===

/// The `connection complete` line of `direction` in `lines`, with its time column and the
/// duration's number replaced by `<time>` and `<n>` (the only parts a test cannot know).
fn complete_line(lines: &[String], direction: &str) -> Option<String> {
    let line = lines.iter().find(|l| {
        l.contains("\taccess\tconnection complete\t")
            && l.contains(&format!("direction=\"{direction}\""))
    })?;
    let (time, rest) = line.split_once('\t')?;
    assert!(is_rfc3339_micros(time), "{line}");
    let (before, after) = rest.split_once("duration=\"")?;
    let (millis, after) = after.split_once("ms\"")?;
    assert!(millis.parse::<u64>().is_ok(), "{line}");
    Some(format!("<time>\t{before}duration=\"<n>ms\"{after}"))
}

/// `2026-03-01T12:34:56.789012Z`: RFC 3339, UTC, microseconds.
fn is_rfc3339_micros(time: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let Some((date, clock)) = time.split_once('T') else {
        return false;
    };
    let date: Vec<&str> = date.split('-').collect();
    let Some(clock) = clock.strip_suffix('Z') else {
        return false;
    };
    let Some((hms, micros)) = clock.split_once('.') else {
        return false;
    };
    let hms: Vec<&str> = hms.split(':').collect();
    date.len() == 3
        && date
            .iter()
            .zip([4, 2, 2])
            .all(|(p, n)| p.len() == n && digits(p))
        && hms.len() == 3
        && hms.iter().all(|p| p.len() == 2 && digits(p))
        && micros.len() == 6
        && digits(micros)
}

#[tokio::test]
async fn a_real_connection_logs_the_golden_shape_on_both_proxies() {
    // The test runtime has one thread: the proxies' tasks, and the access log's writer thread
    // (which writes under the dispatcher the line was recorded with), all log here.
    let out = Capture::new();
    let _guard = tracing::subscriber::set_default(ambit_logging::subscriber(
        Format::Text,
        Clock::System,
        out.clone(),
    ));
    let addrs = LoopbackAddrs::new();
    let (scraper, server) = (addrs.next_addr(), addrs.next_addr());
    let mut manifests = [
        common::namespace("client", true),
        common::namespace("server", true),
    ]
    .concat();
    for (name, namespace, node, ip) in [
        ("scraper", "client", "node-a", scraper),
        ("echo", "server", "node-b", server),
    ] {
        manifests.push_str(&common::pod(&Pod {
            name,
            namespace,
            service_account: name,
            node,
            ip,
        }));
    }
    let mesh = Mesh::start(addrs, &manifests, &["node-a", "node-b"]).await;
    let _echo = echo((server, 8080).into()).await;
    let a = mesh.node(mesh.node_config("node-a")).await;
    let b = mesh.node(mesh.node_config("node-b")).await;
    wait_hbone(&b, server, 15008).await;

    let stream = socks_connect(
        a.addrs().socks5.unwrap(),
        scraper.into(),
        (server, 8080).into(),
    )
    .await
    .unwrap();
    let client: SocketAddr = stream.local_addr().unwrap();
    assert_eq!(echo_roundtrip(stream, b"sixteen bytes!!!").await.len(), 16);

    eventually!(observe = complete_line(&out.lines(), "outbound"), |l| l
        .is_some());
    let outbound = complete_line(&out.lines(), "outbound").unwrap();
    let ids = "src.identity=\"spiffe://cluster.local/ns/client/sa/scraper\"";
    assert_eq!(
        outbound,
        format!(
            "<time>\tinfo\taccess\tconnection complete\t\
             src.addr={client} src.workload=\"scraper\" src.namespace=\"client\" {ids} \
             dst.addr={server}:15008 dst.hbone_addr={server}:8080 dst.workload=\"echo\" \
             dst.namespace=\"server\" dst.identity=\"spiffe://cluster.local/ns/server/sa/echo\" \
             direction=\"outbound\" bytes_sent=16 bytes_recv=16 duration=\"<n>ms\""
        )
    );
    // The destination's line: the same shape, the source named by its verified identity.
    eventually!(observe = complete_line(&out.lines(), "inbound"), |l| l
        .is_some());
    let inbound = complete_line(&out.lines(), "inbound").unwrap();
    let (head, fields) = inbound.rsplit_once('\t').unwrap();
    assert_eq!(head, "<time>\tinfo\taccess\tconnection complete");
    let keys: Vec<&str> = fields
        .split(' ')
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .collect();
    assert_eq!(
        keys,
        [
            "src.addr",
            "src.workload",
            "src.namespace",
            "src.identity",
            "dst.addr",
            "dst.hbone_addr",
            "dst.workload",
            "dst.namespace",
            "dst.identity",
            "direction",
            "bytes_sent",
            "bytes_recv",
            "duration"
        ],
        "{inbound}"
    );
    for field in [
        ids,
        "dst.identity=\"spiffe://cluster.local/ns/server/sa/echo\"",
        "bytes_sent=16",
        "bytes_recv=16",
    ] {
        assert!(fields.contains(field), "{field} missing in {inbound}");
    }
}
