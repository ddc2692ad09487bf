//! Node proxies' access logs (`connection complete` lines, text or JSON) as L4 counters.
//!
//! A ztunnel-shaped access log line describes one finished connection: `src.*` and `dst.*`
//! (workload, namespace, identity), `direction` (`outbound` from the source's proxy, `inbound`
//! from the destination's), `dst.hbone_addr` (present only when the connection went through an
//! HBONE tunnel, that is over mutual TLS) and the byte counts. Each line becomes one connection
//! of a [`TcpMetrics`] entry, so the report judges logs exactly as it judges metrics.
//!
//! Lines are read in the shapes ztunnel and Ambit's node proxy both write (`ambit_logging`):
//!
//! - text: TAB-separated `<time>⇥<level>⇥access⇥connection complete⇥<key>=<value> …`, values
//!   bare or quoted with Rust's `Debug` escapes; anything before the time (a `kubectl logs
//!   --prefix` tag) is ignored;
//! - JSON: one object with `"scope":"access"` and `"message":"connection complete"` and the same
//!   keys, numbers as numbers.
//!
//! Every other line is skipped, including ztunnel's debug `connection opened` and the
//! proxy-internal `connection completed` lines, and `connection complete` written under any
//! target but `access`.

use std::collections::HashMap;

use serde_json::Value;

use super::prometheus::{TcpMetrics, TrafficKey};

/// The access log's target and message, as ztunnel writes them.
const TARGET: &str = "access";
const MESSAGE: &str = "connection complete";
/// `connection complete` is `info`, or `error` when the connection ended in error.
const LEVELS: [&str; 2] = ["info", "error"];

/// Reads every `connection complete` line of `text` (text or JSON format, mixed freely).
pub fn parse_access_log(text: &str) -> TcpMetrics {
    let mut metrics = TcpMetrics::default();
    for line in text.lines() {
        let fields = text_fields(line).or_else(|| {
            line.find("{\"")
                .and_then(|start| json_fields(&line[start..]))
        });
        if let Some(fields) = fields {
            add(&mut metrics, &fields);
        }
    }
    metrics
}

fn add(metrics: &mut TcpMetrics, fields: &HashMap<String, String>) {
    let get = |key: &str| {
        fields
            .get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned())
    };
    let inbound = fields.get("direction").is_some_and(|d| d == "inbound");
    let hbone = fields.contains_key("dst.hbone_addr");
    let key = TrafficKey {
        reporter: if inbound { "destination" } else { "source" }.to_owned(),
        source_workload: get("src.workload"),
        source_namespace: get("src.namespace"),
        source_principal: get("src.identity"),
        destination_workload: get("dst.workload"),
        destination_namespace: get("dst.namespace"),
        destination_principal: get("dst.identity"),
        connection_security_policy: if hbone { "mutual_tls" } else { "unknown" }.to_owned(),
    };
    let bytes = |key: &str| {
        fields
            .get(key)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The counts are the served workload's view: the client's when outbound, the server's
    // when inbound. Istio's `sent` is server → client, `received` client → server.
    let (to_client, to_server) = if inbound {
        (bytes("bytes_sent"), bytes("bytes_recv"))
    } else {
        (bytes("bytes_recv"), bytes("bytes_sent"))
    };
    let counters = metrics.traffic.entry(key).or_default();
    counters.opened += 1;
    counters.sent += to_client;
    counters.received += to_server;
}

/// The fields of a text `connection complete` line of the `access` target.
fn text_fields(line: &str) -> Option<HashMap<String, String>> {
    let mut columns = line.splitn(5, '\t');
    let (_time, level, target, message) = (
        columns.next()?,
        columns.next()?,
        columns.next()?,
        columns.next()?,
    );
    if !LEVELS.contains(&level) || target != TARGET || message != MESSAGE {
        return None;
    }
    let mut rest = columns.next().unwrap_or_default();
    let mut fields = HashMap::new();
    loop {
        rest = rest.trim_start_matches(' ');
        let Some((key, after)) = rest.split_once('=') else {
            return Some(fields);
        };
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Some(fields);
        }
        let (value, after) = match after.strip_prefix('"') {
            Some(quoted) => unquote(quoted)?,
            None => {
                let end = after.find(' ').unwrap_or(after.len());
                (after[..end].to_owned(), &after[end..])
            }
        };
        fields.insert(key.to_owned(), value);
        rest = after;
    }
}

/// A `Debug`-quoted string body up to its closing quote, and what follows. `None` if the quote
/// never closes or an escape is not one `Debug` writes.
fn unquote(quoted: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((value, &quoted[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                'r' => value.push('\r'),
                '0' => value.push('\0'),
                'u' => {
                    // `\u{1b}`
                    if chars.next()?.1 != '{' {
                        return None;
                    }
                    let mut hex = String::new();
                    loop {
                        match chars.next()?.1 {
                            '}' => break,
                            digit => hex.push(digit),
                        }
                    }
                    value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                }
                other @ ('"' | '\\' | '\'') => value.push(other),
                _ => return None,
            },
            c => value.push(c),
        }
    }
    None
}

/// The fields of a JSON `connection complete` object of the `access` scope.
fn json_fields(line: &str) -> Option<HashMap<String, String>> {
    let value: Value = serde_json::from_str(line).ok()?;
    let object = value.as_object()?;
    if object.get("message").and_then(Value::as_str) != Some(MESSAGE)
        || object.get("scope").and_then(Value::as_str) != Some(TARGET)
    {
        return None;
    }
    let fields = object
        .iter()
        .filter_map(|(k, v)| {
            let text = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return None,
            };
            Some((k.clone(), text))
        })
        .collect();
    Some(fields)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Lines as a stock ztunnel writes them (its text and its JSON), between lines that are
    /// not access log entries.
    const LOG: &str = concat!(
        "2026-11-26T12:00:00.123456Z\tinfo\taccess\tconnection complete\tsrc.addr=10.0.0.1:41234 ",
        "src.workload=\"sleep\" src.namespace=\"default\" ",
        "src.identity=\"spiffe://cluster.local/ns/default/sa/sleep\" dst.addr=10.0.0.2:15008 ",
        "dst.hbone_addr=10.0.0.2:8080 dst.service=\"httpbin.default.svc.cluster.local\" ",
        "dst.workload=\"httpbin\" dst.namespace=\"default\" ",
        "dst.identity=\"spiffe://cluster.local/ns/default/sa/httpbin\" direction=\"outbound\" ",
        "bytes_sent=120 bytes_recv=560 duration=\"12ms\"\n",
        "2026-11-26T12:00:01.000000Z\tinfo\txds::client:xds{id=5}\treceived response\t",
        "type_url=\"type.googleapis.com/istio.workload.Address\" size=0 removes=1\n",
        // ztunnel's debug lines about the same connection are not entries.
        "2026-11-26T12:00:01.000000Z\tdebug\taccess\tconnection opened\tsrc.addr=10.0.0.1:1 ",
        "direction=\"outbound\"\n",
        "2026-11-26T12:00:01.000000Z\tdebug\tproxy::outbound\tconnection completed\t",
        "component=\"outbound\" dur=12ms\n",
        "{\"level\":\"info\",\"time\":\"2026-11-26T12:00:02.000000Z\",\"scope\":\"access\",",
        "\"message\":\"connection complete\",\"src.addr\":\"10.0.0.3:5\",",
        "\"src.workload\":\"client\",\"src.namespace\":\"default\",\"dst.addr\":\"10.0.0.4:80\",",
        "\"dst.workload\":\"server\",\"dst.namespace\":\"default\",\"direction\":\"outbound\",",
        "\"bytes_sent\":7,\"bytes_recv\":9,\"duration\":\"1ms\"}\n",
        "{\"level\":\"info\",\"time\":\"x\",\"scope\":\"xds::client\",\"message\":\"received response\"}\n",
        "not json {\n",
    );

    #[test]
    fn reads_ztunnels_text_and_json_lines_and_skips_the_rest() {
        let m = parse_access_log(LOG);
        assert_eq!(m.traffic.len(), 2);
        let (key, counters) = m
            .traffic
            .iter()
            .find(|(k, _)| k.source_workload == "sleep")
            .unwrap();
        assert_eq!(key.connection_security_policy, "mutual_tls");
        assert_eq!(key.reporter, "source");
        assert_eq!(
            key.destination_principal,
            "spiffe://cluster.local/ns/default/sa/httpbin"
        );
        assert_eq!(
            (counters.opened, counters.received, counters.sent),
            (1, 120, 560)
        );
        let (key, counters) = m
            .traffic
            .iter()
            .find(|(k, _)| k.source_workload == "client")
            .unwrap();
        assert_eq!(key.connection_security_policy, "unknown");
        assert_eq!(key.source_principal, "unknown");
        assert_eq!((counters.received, counters.sent), (7, 9));
    }

    /// The node proxy's golden access log lines (its real formatter's output, text and JSON):
    /// what `ambit verify` reads from an Ambit node proxy.
    #[test]
    fn reads_the_node_proxys_golden_lines() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/tests/golden");
        for file in ["access_log.log", "access_log.jsonl"] {
            let log = std::fs::read_to_string(dir.join(file)).unwrap();
            let m = parse_access_log(&log);
            // Two `connection complete` lines (one mutual TLS, one plaintext that failed); the
            // `connection failed` line is not a connection.
            assert_eq!(m.traffic.len(), 2, "{file}");
            let (key, counters) = m
                .traffic
                .iter()
                .find(|(k, _)| k.source_workload == "sleep")
                .unwrap();
            assert_eq!(key.connection_security_policy, "mutual_tls", "{file}");
            assert_eq!((counters.received, counters.sent), (120, 560), "{file}");
            let (key, _) = m
                .traffic
                .iter()
                .find(|(k, _)| k.reporter == "destination")
                .unwrap();
            assert_eq!(key.source_workload, "unknown", "{file}");
            assert_eq!(key.destination_workload, "httpbin", "{file}");
        }
    }

    #[test]
    fn an_error_line_and_a_kubectl_prefix_are_read() {
        let log = concat!(
            "[pod/ztunnel-x7k2p/istio-proxy] 2026-11-26T12:00:00.000000Z\terror\taccess\t",
            "connection complete\tsrc.addr=10.0.0.1:1 dst.addr=10.0.0.2:15008 ",
            "dst.hbone_addr=10.0.0.2:80 direction=\"inbound\" bytes_sent=1 bytes_recv=2 ",
            "duration=\"0ms\" error=\"connection closed due to policy change\"\n",
            "[pod/ztunnel-x7k2p/istio-proxy] {\"level\":\"info\",\"scope\":\"access\",",
            "\"message\":\"connection complete\",\"direction\":\"inbound\",\"bytes_sent\":4}\n",
        );
        let m = parse_access_log(log);
        let opened: u64 = m.traffic.values().map(|c| c.opened).sum();
        assert_eq!(opened, 2);
        assert!(m.traffic.keys().all(|k| k.reporter == "destination"));
    }

    #[test]
    fn unquotes_debug_escapes_and_stops_at_a_broken_quote() {
        let f = text_fields(concat!(
            "t\tinfo\taccess\tconnection complete\t",
            r#"a="x \"y\" \\ z\n\u{1b}" b=2"#
        ))
        .unwrap();
        assert_eq!(f["a"], "x \"y\" \\ z\n\u{1b}");
        assert_eq!(f["b"], "2");
        assert!(text_fields("t\tinfo\taccess\tconnection complete\ta=\"never closed").is_none());
        assert!(text_fields("t\tinfo\taccess\tconnection complete\ta=\"\\q\"").is_none());
    }

    #[test]
    fn the_target_and_message_must_be_the_access_logs() {
        for line in [
            "t\tinfo\tambit_node\tconnection complete\ta=1",
            "t\tinfo\taccess:span\tconnection complete\ta=1",
            "t\tinfo\taccess\tconnection complete!\ta=1",
            "t\tdebug\taccess\tconnection complete\ta=1",
            "t info access connection complete a=1",
        ] {
            assert!(text_fields(line).is_none(), "{line}");
        }
        assert!(text_fields("t\tinfo\taccess\tconnection complete\t").is_some());
    }
}
