//! Node proxies' access logs (`connection complete` lines, text or JSON) as L4 counters.
//!
//! A ztunnel-shaped access log line describes one finished connection: `src.*` and `dst.*`
//! (workload, namespace, identity), `direction` (`outbound` from the source's proxy, `inbound`
//! from the destination's), `dst.hbone_addr` (present only when the connection went through an
//! HBONE tunnel, that is over mutual TLS) and the byte counts. Each line becomes one connection
//! of a [`TcpMetrics`] entry, so the report judges logs exactly as it judges metrics. Lines that
//! are not `connection complete` events are skipped.

use std::collections::HashMap;

use serde_json::Value;

use super::prometheus::{TcpMetrics, TrafficKey};

const MESSAGE: &str = "connection complete";

/// Reads every `connection complete` line of `text` (text or JSON format, mixed freely).
pub fn parse_access_log(text: &str) -> TcpMetrics {
    let mut metrics = TcpMetrics::default();
    for line in text.lines() {
        let fields = if line.trim_start().starts_with('{') {
            json_fields(line)
        } else {
            text_fields(line)
        };
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

/// `key=value` pairs after the message; values bare or Debug-quoted.
fn text_fields(line: &str) -> Option<HashMap<String, String>> {
    let (_, mut rest) = line.split_once(MESSAGE)?;
    let mut fields = HashMap::new();
    loop {
        rest = rest.trim_start();
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

/// A Debug-quoted string body up to its closing quote, and what follows.
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
                other => value.push(other),
            },
            c => value.push(c),
        }
    }
    None
}

/// A flattened JSON event (`"message": "connection complete"` at the top level, or under
/// `fields` as some formatters nest it).
fn json_fields(line: &str) -> Option<HashMap<String, String>> {
    let value: Value = serde_json::from_str(line).ok()?;
    let object = match value.get("fields") {
        Some(fields) if fields.get("message").is_some() => fields.as_object()?,
        _ => value.as_object()?,
    };
    if object.get("message").and_then(Value::as_str) != Some(MESSAGE) {
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

    #[test]
    fn reads_text_and_json_lines_and_skips_the_rest() {
        let log = concat!(
            "2026-11-26T12:00:00Z  INFO access: connection complete src.addr=10.0.0.1:41234 ",
            "src.workload=\"sleep\" src.namespace=\"default\" ",
            "src.identity=\"spiffe://cluster.local/ns/default/sa/sleep\" dst.addr=10.0.0.2:15008 ",
            "dst.hbone_addr=10.0.0.2:8080 dst.workload=\"httpbin\" dst.namespace=\"default\" ",
            "dst.identity=\"spiffe://cluster.local/ns/default/sa/httpbin\" direction=\"outbound\" ",
            "bytes_sent=120 bytes_recv=560 duration=\"12ms\"\n",
            "2026-11-26T12:00:01Z  INFO ambit_node: something else entirely\n",
            "{\"timestamp\":\"x\",\"level\":\"INFO\",\"target\":\"access\",",
            "\"message\":\"connection complete\",\"src.addr\":\"10.0.0.3:5\",",
            "\"src.workload\":\"client\",\"src.namespace\":\"default\",\"dst.addr\":\"10.0.0.4:80\",",
            "\"dst.workload\":\"server\",\"dst.namespace\":\"default\",\"direction\":\"outbound\",",
            "\"bytes_sent\":7,\"bytes_recv\":9}\n",
            "not json {\n",
        );
        let m = parse_access_log(log);
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

    #[test]
    fn unquotes_escapes_and_stops_at_a_broken_quote() {
        let f = text_fields(r#"connection complete a="x \"y\" z" b=2"#).unwrap();
        assert_eq!(f["a"], "x \"y\" z");
        assert_eq!(f["b"], "2");
        assert!(text_fields("connection complete a=\"never closed").is_none());
    }
}
