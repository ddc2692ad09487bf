//! Golden lines: events of every value kind, in and out of spans, printed by the real layers
//! (`ambit_logging::subscriber`, the code path the binaries install) with a fixed clock, and
//! compared byte for byte with `tests/golden/events.log` (text) and `events.jsonl` (JSON).
//!
//! The golden files were checked against ztunnel's formatter (`src/telemetry.rs`) and lines a
//! stock ztunnel printed: TAB-separated columns, lowercase levels, `target:span{k=v}`, a TAB after
//! the message even when no field follows, strings quoted, `%`/`?` values and numbers bare, absent
//! fields left out; JSON keys `level`, `time`, `scope`, the fields, then one object per span.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use ambit_logging::{Capture, Clock, Format};
use tracing::field::Empty;
use tracing::{Level, debug, error, event, info, info_span, span, trace, warn};

/// 2026-03-01T12:34:56.789012Z.
fn clock() -> Clock {
    Clock::Fixed(UNIX_EPOCH + Duration::new(1_772_368_496, 789_012_345))
}

/// The events of the golden files, in order.
fn events() {
    // ztunnel's access log line: `%` addresses bare, strings quoted, numbers bare, no spans
    // (`parent: None`), a `None` field left out.
    let src: std::net::SocketAddr = "10.0.0.5:43210".parse().unwrap();
    let absent: Option<&str> = None;
    event!(
        target: "access",
        parent: None,
        Level::INFO,
        src.addr = %src,
        src.workload = "prometheus-0",
        src.namespace = "prometheus",
        src.identity = "spiffe://cluster.local/ns/prometheus/sa/prometheus",
        dst.addr = %"10.0.0.9:15008",
        dst.hbone_addr = %"10.0.0.9:9100",
        dst.service = absent,
        direction = "outbound",
        bytes_sent = 120_u64,
        bytes_recv = 5600_u64,
        duration = String::from("3ms"),
        "connection complete"
    );
    // The xDS client's line, inside its connection span.
    let xds = info_span!(target: "xds::client", "xds", id = 5_u64);
    xds.in_scope(|| {
        info!(
            target: "xds::client",
            type_url = "type.googleapis.com/istio.workload.Address",
            size = 0_usize,
            removes = 1_usize,
            "received response"
        );
        // A message alone still ends with a TAB.
        info!(target: "xds::client", "Stream established");
    });
    // Nested spans, outermost first; a span without fields is just `:name`.
    span!(target: "ambit_node::proxy", Level::INFO, "proxy").in_scope(|| {
        info_span!(target: "ambit_node::proxy", "conn", peer = "a b", n = 2_i64)
            .in_scope(|| warn!(target: "ambit_node::proxy::inbound", "refused"));
    });
    // A span field recorded after the span was made.
    let later = info_span!(target: "t", "later", id = Empty, name = "x");
    later.record("id", 7_u64);
    later.in_scope(|| debug!(target: "t", "recorded late"));
    // Every kind of value: `?` Debug, bool, signed, float, a string needing escapes, a
    // `Display` value and a message with a newline and a TAB (kept on one line).
    error!(
        target: "t",
        list = ?vec![1, 2],
        ok = true,
        delta = -3_i64,
        ratio = 1.5_f64,
        quoted = "a \"b\"\nc\\d",
        shown = %"two\nlines",
        "bad\tthing\nhappened"
    );
    // No message: the fields follow the target's TAB directly.
    trace!(target: "t", only = 1_u64);
}

fn printed(format: Format) -> String {
    let out = Capture::new();
    tracing::subscriber::with_default(
        ambit_logging::subscriber(format, clock(), out.clone()),
        events,
    );
    out.text()
}

fn golden(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn assert_lines(got: &str, want: &str) {
    let (got, want): (Vec<_>, Vec<_>) = (got.lines().collect(), want.lines().collect());
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "line {} differs", n + 1);
    }
    assert_eq!(got.len(), want.len(), "line count: got {got:#?}");
}

#[test]
fn text_lines_match_the_golden_file() {
    let text = printed(Format::Text);
    assert!(text.ends_with('\n'));
    assert_lines(&text, &golden("events.log"));
}

#[test]
fn json_lines_match_the_golden_file() {
    let text = printed(Format::Json);
    assert_lines(&text, &golden("events.jsonl"));
}

#[test]
fn json_lines_are_json_with_ztunnels_keys_first() {
    for line in printed(Format::Json).lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["time"], "2026-03-01T12:34:56.789012Z");
        // serde_json's map sorts keys, so the order is read from the text.
        let level = format!(r#"{{"level":{},"#, value["level"]);
        let time = format!(r#""time":{},"#, value["time"]);
        let scope = format!(r#""scope":{}"#, value["scope"]);
        assert!(line.starts_with(&format!("{level}{time}{scope}")), "{line}");
    }
}

#[test]
fn text_lines_have_five_tab_columns_when_there_is_a_message() {
    let text = printed(Format::Text);
    let lines: Vec<&str> = text.lines().collect();
    // Every line of the golden events but the last (which has no message).
    for line in &lines[..lines.len() - 1] {
        assert_eq!(line.split('\t').count(), 5, "{line:?}");
    }
    assert_eq!(lines.len(), 7);
}
