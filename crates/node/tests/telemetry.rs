//! Telemetry as a dashboard or `kubectl logs` reader sees it: the exact metric lines and label
//! sets ztunnel exports, and the exact access log line tracing-subscriber prints, in text and
//! JSON.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] functions

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_node::telemetry::access_log::{self, AccessRecord};
use ambit_node::telemetry::{
    ConnectionInfo, Direction, LogFormat, Metrics, PeerInfo, ResponseFlags, SecurityPolicy,
    ServiceInfo, Telemetry,
};

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

#[test]
fn access_log_text_has_ztunnels_fields_in_order() {
    let want = [
        "connection complete",
        // dst.addr is where the proxy connected (the peer's HBONE port), dst.hbone_addr the
        // original destination, as in ztunnel.
        "src.addr=10.0.0.1:41234",
        r#"src.workload="sleep""#,
        r#"src.namespace="default""#,
        r#"src.identity="spiffe://cluster.local/ns/default/sa/sleep""#,
        "dst.addr=10.0.0.2:15008",
        "dst.hbone_addr=10.0.0.2:8080",
        r#"dst.service="httpbin.default.svc.cluster.local""#,
        r#"dst.workload="httpbin""#,
        r#"dst.namespace="default""#,
        r#"dst.identity="spiffe://cluster.local/ns/default/sa/httpbin""#,
        r#"direction="outbound""#,
        "bytes_sent=120",
        "bytes_recv=560",
        r#"duration="12ms""#,
    ];
    assert_eq!(access_log::render_text(&fixed_record()), want.join(" "));
}

#[test]
fn access_log_text_leaves_out_what_is_unknown() {
    let r = AccessRecord::new(
        &inbound_unknown(),
        3,
        7,
        Duration::from_millis(1500),
        Some("peer reset".into()),
    );
    let want = [
        "connection complete",
        "src.addr=192.168.1.5:50000",
        "dst.addr=10.0.0.2:8080",
        r#"dst.workload="httpbin""#,
        r#"dst.namespace="default""#,
        // No identity: the connection was not mutual TLS.
        r#"direction="inbound""#,
        "bytes_sent=3",
        "bytes_recv=7",
        r#"duration="1500ms""#,
        r#"error="peer reset""#,
    ];
    assert_eq!(access_log::render_text(&r), want.join(" "));
    assert_eq!(r.level(), tracing::Level::ERROR);
}

/// A `MakeWriter` into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

/// Runs `f` under the binary's subscriber (`--log-format` text or json) and returns its lines.
fn capture(format: LogFormat, f: impl FnOnce()) -> Vec<String> {
    let out = Captured::default();
    let writer = out.clone();
    let builder = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::TRACE);
    match format {
        LogFormat::Text => tracing::subscriber::with_default(builder.finish(), f),
        LogFormat::Json => {
            tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), f)
        }
    }
    out.lines()
}

#[test]
fn tracing_text_output_is_the_rendered_line() {
    let record = fixed_record();
    let lines = capture(LogFormat::Text, || record.emit());
    assert_eq!(
        lines,
        [format!(
            " INFO access: {}",
            access_log::render_text(&record)
        )]
    );
}

#[test]
fn tracing_json_output_carries_the_same_fields() {
    let record = fixed_record();
    let lines = capture(LogFormat::Json, || record.emit());
    assert_eq!(lines.len(), 1);
    let got: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&lines[0]).unwrap();
    let mut want = access_log::render_json(&record);
    assert_eq!(want["src.addr"], "10.0.0.1:41234");
    assert_eq!(want["bytes_sent"], 120);
    assert_eq!(want["duration"], "12ms");
    want.insert("level".into(), "INFO".into());
    want.insert("target".into(), "access".into());
    assert_eq!(got, want);
}

#[test]
fn a_guard_logs_once_and_a_dropped_one_says_so() {
    let t = telemetry();
    let lines = capture(LogFormat::Json, || {
        let mut conn = t.open(outbound_mtls());
        conn.add_sent(5);
        conn.add_recv(9);
        conn.finish(None);
        drop(t.open(inbound_unknown()));
    });
    assert_eq!(lines.len(), 2, "{lines:?}");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["level"], "INFO");
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
    assert_eq!(dropped["level"], "ERROR");
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
    let lines = capture(LogFormat::Text, || {
        t.log_refused(&inbound_unknown(), "no such workload")
    });
    assert_eq!(
        lines,
        [
            r#" WARN access: connection failed src.addr=192.168.1.5:50000 dst.addr=10.0.0.2:8080 direction="inbound" error="no such workload""#
        ]
    );
    assert!(samples(&t.metrics().render(), "istio_tcp_connections_opened_total").is_empty());
}
