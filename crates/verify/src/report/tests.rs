#![allow(clippy::unwrap_used)]

use super::*;
use crate::admin::{ConfigDump, TcpMetrics, parse_access_log};
use crate::flows::assemble;
use crate::pcap::Segment;
use crate::testing::{Conn, client_hello, record};

/// prometheus-0 (10.1.0.5) and node-exporter (10.1.0.7) enrolled; client (10.2.0.5) and
/// server (10.2.0.7) not.
fn inventory() -> Inventory {
    let dump = ConfigDump::parse(
        r#"{"workloads": [
          {"uid": "p", "name": "prometheus-0", "namespace": "prometheus", "workloadName": "prometheus",
           "workloadIps": ["10.1.0.5"], "protocol": "HBONE",
           "identity": "spiffe://cluster.local/ns/prometheus/sa/prometheus"},
          {"uid": "e", "name": "node-exporter", "namespace": "prometheus",
           "workloadIps": ["10.1.0.7"], "protocol": "HBONE",
           "identity": "spiffe://cluster.local/ns/prometheus/sa/node-exporter"},
          {"uid": "c", "name": "client", "namespace": "default", "workloadIps": ["10.2.0.5"],
           "protocol": "TCP", "identity": "spiffe://cluster.local/ns/default/sa/default"},
          {"uid": "s", "name": "server", "namespace": "default", "workloadIps": ["10.2.0.7"],
           "protocol": "TCP", "identity": "spiffe://cluster.local/ns/default/sa/default"}
        ]}"#,
    )
    .unwrap();
    Inventory::new([&dump])
}

fn hbone(client: &str, server: &str) -> Vec<Segment> {
    Conn::new(client, server)
        .handshake()
        .data(0, &client_hello())
        .data(1, &record(22, &[2, 0, 0, 0]))
        .data(0, &record(23, &[0x99; 200]))
        .close()
        .segments
}

fn http(client: &str, server: &str) -> Vec<Segment> {
    Conn::new(client, server)
        .handshake()
        .data(0, b"GET /metrics HTTP/1.1\r\n\r\n")
        .data(1, b"HTTP/1.1 200 OK\r\n\r\nistio_tcp_sent_bytes_total 7\n")
        .close()
        .segments
}

fn report(segments: Vec<Segment>, find: &[String]) -> Report {
    let inventory = inventory();
    let flows = assemble(&segments);
    Report::build(Evidence {
        inventory: Some(&inventory),
        flows: Some(&flows),
        find,
        ..Evidence::default()
    })
}

#[test]
fn hbone_between_enrolled_pods_is_mtls() {
    let mut segments = hbone("10.1.0.5:40000", "10.1.0.7:15008");
    segments.extend(hbone("10.1.0.5:40002", "10.1.0.7:15008"));
    let r = report(segments, &[]);
    assert_eq!(r.rows.len(), 1, "{r:#?}");
    let row = &r.rows[0];
    assert_eq!(row.status, Status::Mtls);
    assert!(row.mtls);
    assert_eq!(row.connections, 2);
    assert_eq!(
        row.source.workload.as_deref(),
        Some("prometheus/prometheus-0")
    );
    assert_eq!(
        row.destination.identity.as_deref(),
        Some("spiffe://cluster.local/ns/prometheus/sa/node-exporter")
    );
    assert_eq!(row.destination.address.as_deref(), Some("10.1.0.7:15008"));
    assert!(r.passed(), "{}", r.verdict.summary);
    assert_eq!(
        r.verdict.summary,
        "PASS: no connection of an enrolled workload crossed the wire in plaintext \
         [captured: 2 over mTLS]"
    );
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn plaintext_between_enrolled_pods_fails_and_names_what_was_seen() {
    let find = ["istio_tcp_sent_bytes_total".to_owned()];
    let r = report(http("10.1.0.5:40000", "10.1.0.7:9100"), &find);
    let row = &r.rows[0];
    assert_eq!(row.status, Status::Plaintext);
    assert!(!row.mtls);
    assert_eq!(row.detail, "plaintext both ways");
    assert_eq!(row.cleartext_matches, find.to_vec());
    assert!(!r.passed());
    assert_eq!(r.failures().count(), 1);
    assert!(
        r.verdict.summary.starts_with("FAIL: 1 connection(s)"),
        "{}",
        r.verdict.summary
    );
}

#[test]
fn plaintext_from_an_enrolled_pod_to_one_outside_the_mesh_is_not_a_failure() {
    // As in Istio: the unenrolled end cannot speak HBONE, so the mesh passes plaintext through.
    let r = report(http("10.1.0.5:40000", "10.2.0.7:8080"), &[]);
    assert_eq!(r.rows[0].status, Status::NotEnrolled);
    assert!(r.rows[0].detail.contains("the destination is not enrolled"));
    assert!(r.passed());
}

#[test]
fn flows_to_a_node_address_leave_the_mesh_and_do_not_fail() {
    let r = report(http("10.1.0.5:40000", "192.168.1.10:10250"), &[]);
    let row = &r.rows[0];
    assert_eq!(row.status, Status::LeavesMesh);
    assert!(!row.mtls);
    assert_eq!(
        row.detail,
        "192.168.1.10:10250 is not a workload (plaintext both ways)"
    );
    assert!(r.passed());
    assert!(r.verdict.summary.contains("[captured: 1 leaving the mesh]"));
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("no connection was seen over mTLS"))
    );
}

#[test]
fn plaintext_between_pods_that_are_not_enrolled_is_listed_not_failed() {
    let r = report(http("10.2.0.5:40000", "10.2.0.7:8080"), &[]);
    assert_eq!(r.rows[0].status, Status::NotEnrolled);
    assert!(r.passed());
}

#[test]
fn tls_that_is_not_hbone_is_not_mtls() {
    let segments = Conn::new("10.1.0.5:40000", "10.1.0.7:443")
        .handshake()
        .data(0, &client_hello())
        .segments;
    let r = report(segments, &[]);
    assert_eq!(r.rows[0].status, Status::Tls);
    assert!(!r.rows[0].mtls);
    assert!(r.passed());
}

#[test]
fn without_workloads_everything_leaves_the_mesh_with_a_warning() {
    let flows = assemble(&hbone("10.1.0.5:40000", "10.1.0.7:15008"));
    let r = Report::build(Evidence {
        flows: Some(&flows),
        ..Evidence::default()
    });
    assert_eq!(r.rows[0].status, Status::LeavesMesh);
    assert!(r.warnings[0].contains("--admin"));
}

// === metrics ===

fn metric(reporter: &str, src: &str, dst: &str, policy: &str, opened: u64) -> String {
    let (sns, swl) = src.split_once('/').unwrap();
    let (dns, dwl) = dst.split_once('/').unwrap();
    let labels = format!(
        r#"reporter="{reporter}",source_workload="{swl}",source_workload_namespace="{sns}",source_principal="spiffe://cluster.local/ns/{sns}/sa/{swl}",destination_workload="{dwl}",destination_workload_namespace="{dns}",destination_principal="spiffe://cluster.local/ns/{dns}/sa/{dwl}",connection_security_policy="{policy}""#
    );
    format!(
        "istio_tcp_connections_opened_total{{{labels}}} {opened}\n\
         istio_tcp_sent_bytes_total{{{labels}}} 100\n\
         istio_tcp_received_bytes_total{{{labels}}} 10\n"
    )
}

fn metrics_report(text: &str) -> Report {
    let inventory = inventory();
    let metrics = TcpMetrics::from_text(text).unwrap();
    Report::build(Evidence {
        inventory: Some(&inventory),
        metrics: Some(&metrics),
        ..Evidence::default()
    })
}

#[test]
fn metrics_prefer_the_destination_reporter_and_trust_mutual_tls() {
    let text = metric(
        "source",
        "prometheus/prometheus",
        "prometheus/node-exporter",
        "mutual_tls",
        5,
    ) + &metric(
        "destination",
        "prometheus/prometheus",
        "prometheus/node-exporter",
        "mutual_tls",
        4,
    );
    let r = metrics_report(&text);
    assert_eq!(r.rows.len(), 1, "{r:#?}");
    let row = &r.rows[0];
    assert_eq!(
        (row.status, row.mtls, row.connections, row.bytes),
        (Status::Mtls, true, 4, 110)
    );
    assert!(row.detail.contains("reporter=destination"));
    assert!(r.passed());
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
}

#[test]
fn metrics_fail_on_unencrypted_connections_between_enrolled_workloads_only() {
    let failing = metric(
        "source",
        "prometheus/prometheus",
        "prometheus/node-exporter",
        "unknown",
        1,
    );
    let r = metrics_report(&failing);
    assert_eq!(r.rows[0].status, Status::Plaintext);
    assert!(!r.passed());

    let mixed = metric(
        "source",
        "prometheus/prometheus",
        "default/server",
        "unknown",
        1,
    );
    assert_eq!(metrics_report(&mixed).rows[0].status, Status::NotEnrolled);
    assert!(metrics_report(&mixed).passed());

    let outside = metric("source", "prometheus/prometheus", "x/unknown", "unknown", 1);
    assert_eq!(metrics_report(&outside).rows[0].status, Status::LeavesMesh);
}

#[test]
fn access_logs_are_judged_like_metrics() {
    let line = |client: &str, hbone: bool| {
        let tunnel = if hbone {
            " dst.hbone_addr=10.1.0.7:9100"
        } else {
            ""
        };
        format!(
            "2026-11-26T12:00:00.000000Z\tinfo\taccess\tconnection complete\t\
             src.addr=10.1.0.5:4000 src.workload=\"{client}\" \
             src.namespace=\"prometheus\" dst.addr=10.1.0.7:15008{tunnel} \
             dst.workload=\"node-exporter\" dst.namespace=\"prometheus\" \
             direction=\"outbound\" bytes_sent=10 bytes_recv=90\n"
        )
    };
    let inventory = inventory();
    let judge = |log: &str| {
        let logs = parse_access_log(log);
        Report::build(Evidence {
            inventory: Some(&inventory),
            access_logs: Some(&logs),
            ..Evidence::default()
        })
    };
    let good = judge(&line("prometheus", true));
    assert_eq!(good.rows[0].origin, Origin::AccessLog);
    assert_eq!(
        (good.rows[0].status, good.rows[0].bytes),
        (Status::Mtls, 100)
    );
    assert_eq!(
        good.rows[0].detail,
        "through an HBONE tunnel (logged outbound)"
    );
    assert!(good.passed());
    assert!(good.render_text().starts_with("NODE PROXY ACCESS LOGS\n"));
    let bad = judge(&(line("prometheus", true) + &line("prometheus", false)));
    assert_eq!(bad.failures().count(), 1);
    assert!(!bad.passed());
}

// === output ===

#[test]
fn renders_a_table_and_json() {
    let mut segments = hbone("10.1.0.5:40000", "10.1.0.7:15008");
    segments.extend(http("10.1.0.5:40001", "192.168.1.10:10250"));
    let r = report(segments, &[]);
    let text = r.render_text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "CAPTURED FLOWS");
    assert!(lines[1].starts_with("SOURCE → DESTINATION"), "{text}");
    assert!(lines[1].ends_with("DETAIL"), "{text}");
    assert!(
        lines[2].starts_with("prometheus/prometheus-0 → prometheus/node-exporter:15008"),
        "{text}"
    );
    assert!(lines[2].contains(" yes "), "{text}");
    assert!(
        lines[3].starts_with("prometheus/prometheus-0 → 192.168.1.10:10250"),
        "{text}"
    );
    assert!(lines[3].contains("leaves the mesh"), "{text}");
    assert!(lines.last().unwrap().starts_with("VERDICT: PASS"), "{text}");

    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["rows"][0]["status"], "mtls");
    assert_eq!(json["rows"][0]["origin"], "capture");
    assert_eq!(json["rows"][1]["status"], "leaves_mesh");
    assert_eq!(json["verdict"]["passed"], true);
    assert_eq!(json["verdict"]["connections"]["capture"]["mtls"], 1);
}
