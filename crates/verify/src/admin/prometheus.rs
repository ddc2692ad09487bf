//! Istio's L4 counters from Prometheus text exposition format.
//!
//! [`parse_line`] reads one sample, `name{label="value",...} value [timestamp]`, with the
//! format's escapes in label values (`\\`, `\"`, `\n`); [`TcpMetrics`] keeps the three families
//! `verify` needs, summed per label set that matters for the verdict. Only lines of those
//! families are parsed, so an exotic line elsewhere in a proxy's output cannot break the check,
//! but a malformed line of theirs is an error naming its line number.

use std::collections::BTreeMap;

use serde::Serialize;

pub const CONNECTIONS_OPENED: &str = "istio_tcp_connections_opened_total";
pub const SENT_BYTES: &str = "istio_tcp_sent_bytes_total";
pub const RECEIVED_BYTES: &str = "istio_tcp_received_bytes_total";

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A line that is not a valid sample.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct PrometheusError {
    pub line: usize,
    pub reason: String,
}

/// The labels that tell one connection kind from another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TrafficKey {
    /// `source` or `destination`: which node proxy counted.
    pub reporter: String,
    pub source_workload: String,
    pub source_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_namespace: String,
    pub destination_principal: String,
    /// `mutual_tls` or `unknown`.
    pub connection_security_policy: String,
}

/// The counters of one [`TrafficKey`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TrafficCounters {
    pub opened: u64,
    /// Istio's `sent` (server → client).
    pub sent: u64,
    /// Istio's `received` (client → server).
    pub received: u64,
}

/// The L4 counters of one or more node proxies.
#[derive(Debug, Clone, Default)]
pub struct TcpMetrics {
    pub traffic: BTreeMap<TrafficKey, TrafficCounters>,
}

impl TcpMetrics {
    /// Reads the three L4 families out of a `/stats/prometheus` body.
    pub fn from_text(text: &str) -> Result<Self, PrometheusError> {
        let mut metrics = Self::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            let wanted = [CONNECTIONS_OPENED, SENT_BYTES, RECEIVED_BYTES]
                .iter()
                .any(|name| {
                    line.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with(['{', ' ']))
                });
            if !wanted {
                continue;
            }
            let sample = parse_line(line).map_err(|reason| PrometheusError {
                line: index + 1,
                reason,
            })?;
            metrics.add(&sample);
        }
        Ok(metrics)
    }

    /// Adds the counters of `other` (another node proxy) to these.
    pub fn merge(&mut self, other: Self) {
        for (key, c) in other.traffic {
            let mine = self.traffic.entry(key).or_default();
            mine.opened += c.opened;
            mine.sent += c.sent;
            mine.received += c.received;
        }
    }

    fn add(&mut self, sample: &Sample) {
        let label = |name: &str| {
            sample
                .labels
                .get(name)
                .cloned()
                .unwrap_or_else(|| "unknown".to_owned())
        };
        let key = TrafficKey {
            reporter: label("reporter"),
            source_workload: label("source_workload"),
            source_namespace: label("source_workload_namespace"),
            source_principal: label("source_principal"),
            destination_workload: label("destination_workload"),
            destination_namespace: label("destination_workload_namespace"),
            destination_principal: label("destination_principal"),
            connection_security_policy: label("connection_security_policy"),
        };
        // Counters are integers; the format carries them as floats.
        let value = if sample.value.is_finite() && sample.value > 0.0 {
            sample.value.round() as u64
        } else {
            0
        };
        let counters = self.traffic.entry(key).or_default();
        match sample.name.as_str() {
            CONNECTIONS_OPENED => counters.opened += value,
            SENT_BYTES => counters.sent += value,
            RECEIVED_BYTES => counters.received += value,
            _ => {}
        }
    }
}

/// Parses one sample line (not a comment or blank line).
pub fn parse_line(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("bad metric name at {line:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        rest = parse_labels(after_brace, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value_text = fields.next().ok_or("no value")?;
    let value = match value_text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("bad value {v:?}"))?,
    };
    // An optional timestamp (or an OpenMetrics exemplar) may follow; it is not needed.
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Reads `k="v",...}` into `labels`, returning what follows the closing brace.
fn parse_labels<'a>(
    mut rest: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Ok(after);
        }
        let eq = rest.find('=').ok_or("a label has no '='")?;
        let key = rest[..eq].trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {key:?}"));
        }
        rest = rest[eq + 1..]
            .trim_start()
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of label {key} is not quoted"))?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    Some((_, c)) => {
                        value.push('\\');
                        value.push(c);
                    }
                    None => return Err(format!("the value of label {key} is not closed")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("the value of label {key} is not closed")),
            }
        };
        labels.insert(key.to_owned(), value);
        rest = rest[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parses_labels_with_escapes_and_optional_parts() {
        let s =
            parse_line(r#"m{a="x\"y",b="back\\slash",c="new\nline",} 12 1700000000000"#).unwrap();
        assert_eq!(s.name, "m");
        assert_eq!(s.labels["a"], "x\"y");
        assert_eq!(s.labels["b"], "back\\slash");
        assert_eq!(s.labels["c"], "new\nline");
        assert_eq!(s.value, 12.0);
        let bare = parse_line("up 1").unwrap();
        assert!(bare.labels.is_empty());
        assert!(parse_line("x +Inf").unwrap().value.is_infinite());
        assert_eq!(parse_line(r#"m{a="1"} 3.5e2"#).unwrap().value, 350.0);
    }

    #[test]
    fn refuses_malformed_lines() {
        for bad in [
            r#"m{a="x} 1"#,
            r#"m{a=x} 1"#,
            r#"m{="x"} 1"#,
            "m{a=\"x\"}",
            "m{a=\"x\"} twelve",
            "9m 1",
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sums_the_l4_families_per_connection_kind() {
        let labels = |reporter: &str, policy: &str| {
            format!(
                r#"{{reporter="{reporter}",source_workload="prometheus",source_workload_namespace="prometheus",source_principal="spiffe://cluster.local/ns/prometheus/sa/prometheus",destination_workload="node-exporter",destination_workload_namespace="prometheus",destination_principal="spiffe://cluster.local/ns/prometheus/sa/node-exporter",request_protocol="tcp",connection_security_policy="{policy}"}}"#
            )
        };
        let text = format!(
            "# HELP istio_tcp_connections_opened_total The total number\n\
             # TYPE istio_tcp_connections_opened_total counter\n\
             istio_tcp_connections_opened_total{} 3\n\
             istio_tcp_connections_opened_total{} 3\n\
             istio_tcp_sent_bytes_total{} 1000\n\
             istio_tcp_received_bytes_total{} 200\n\
             istio_tcp_connections_closed_total{} 3\n\
             istio_build{{component=\"ztunnel\",tag=\"odd \\q\"}} 1\n",
            labels("source", "mutual_tls"),
            labels("destination", "mutual_tls"),
            labels("destination", "mutual_tls"),
            labels("destination", "mutual_tls"),
            labels("destination", "mutual_tls"),
        );
        let mut m = TcpMetrics::from_text(&text).unwrap();
        assert_eq!(m.traffic.len(), 2);
        let dest = m
            .traffic
            .iter()
            .find(|(k, _)| k.reporter == "destination")
            .unwrap();
        assert_eq!(dest.0.connection_security_policy, "mutual_tls");
        assert_eq!(
            dest.0.source_principal,
            "spiffe://cluster.local/ns/prometheus/sa/prometheus"
        );
        assert_eq!(
            *dest.1,
            TrafficCounters {
                opened: 3,
                sent: 1000,
                received: 200
            }
        );
        m.merge(TcpMetrics::from_text(&text).unwrap());
        assert_eq!(m.traffic.values().map(|c| c.opened).sum::<u64>(), 12);

        let broken = "istio_tcp_sent_bytes_total{reporter=\"source\" 5\n";
        let e = TcpMetrics::from_text(broken).unwrap_err();
        assert_eq!(e.line, 1);
    }
}
