//! From measurements to the report's rows: which figures exist, their names, units and
//! targets (the issue's, as ratios to direct TCP or as absolute memory), medians of per-round
//! values and percentiles of pooled latency samples.

use crate::probe;
use crate::report::{Figure, Target};
use crate::suite::{HTTP_CONNECTIONS, RATE_CLIENTS, Side, Suite};

impl Suite {
    /// Every figure the measurements support, in report order.
    pub(crate) fn figures(&self) -> Vec<Figure> {
        let mut out = Vec::new();
        let at_least = |t| Some(Target::RatioAtLeast(t));
        out.extend(self.rate(
            "stream1_gbps",
            "throughput, 1 stream (iperf3)",
            "Gbit/s",
            at_least(0.42),
        ));
        out.extend(self.rate(
            "stream8_gbps",
            "throughput, 8 streams (iperf3 -P 8)",
            "Gbit/s",
            None,
        ));
        for (test, label, target) in [
            ("rr1", "1 B request/response on one connection", Some(2.0)),
            ("rr1k", "1 KiB request/response on one connection", None),
            ("connect", "connect + 1 B echo + close", Some(3.0)),
        ] {
            for (p, name) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
                let target = if name == "p50" {
                    target.map(Target::RatioAtMost)
                } else {
                    None
                };
                out.extend(self.latency(test, p, &format!("{label}, {name}"), name, target));
            }
        }
        let rate_name = format!("new connections per second ({RATE_CLIENTS} clients)");
        out.extend(self.rate("rate_cps", &rate_name, "conn/s", None));
        let wrk = format!("HTTP, {HTTP_CONNECTIONS} keep-alive connections (wrk)");
        let ab = format!("HTTP, a new connection per request (ab -c {HTTP_CONNECTIONS})");
        out.extend(self.rate("wrk_rps", &wrk, "req/s", at_least(0.40)));
        out.extend(self.rate("ab_rps", &ab, "req/s", at_least(0.25)));
        for (key, name, unit) in [
            (
                "cpu_all_per_gb",
                "CPU per GB moved, all processes (1 stream)",
                "CPU s",
            ),
            (
                "cpu_proxies_per_gb",
                "CPU per GB moved, node proxies",
                "CPU s",
            ),
            (
                "cpu_all_per_10k_wrk",
                "CPU per 10,000 keep-alive requests, all processes",
                "CPU s",
            ),
            (
                "cpu_proxies_per_10k_wrk",
                "CPU per 10,000 keep-alive requests, node proxies",
                "CPU s",
            ),
            (
                "cpu_all_per_10k_ab",
                "CPU per 10,000 new-connection requests, all processes",
                "CPU s",
            ),
            (
                "cpu_proxies_per_10k_ab",
                "CPU per 10,000 new-connection requests, node proxies",
                "CPU s",
            ),
        ] {
            out.extend(self.rate(key, name, unit, None));
        }
        out.extend(self.rate(
            "rss_idle",
            "node-proxy RSS, idle (larger of two)",
            "MB",
            Some(Target::AtMost(10.0)),
        ));
        for &count in &self.settings.idle {
            let target = (count == 10_000).then_some(Target::AtMost(40.0));
            let name = format!("node-proxy RSS, {} idle connections", thousands(count));
            out.extend(self.rate(&format!("rss_{count}"), &name, "MB", target));
        }
        out.extend(self.rate("rss_after", "node-proxy RSS, after the run", "MB", None));
        out
    }

    /// A figure from per-round values: their medians on each side.
    fn rate(
        &self,
        key: &str,
        name: &str,
        unit: &'static str,
        target: Option<Target>,
    ) -> Option<Figure> {
        let side = |s| {
            self.values
                .get(&(key.to_owned(), s))
                .and_then(|v| probe::median(v))
        };
        Some(Figure {
            key: key.to_owned(),
            name: name.to_owned(),
            unit,
            direct: side(Side::Direct),
            mesh: side(Side::Mesh)?,
            target,
            note: self.notes.get(key).cloned().unwrap_or_default(),
        })
    }

    /// A figure from latency samples: quantile `p` of all rounds' samples on each side, and
    /// what the mesh adds.
    fn latency(
        &self,
        test: &str,
        p: f64,
        name: &str,
        suffix: &str,
        target: Option<Target>,
    ) -> Option<Figure> {
        let side = |s| {
            let mut all = self.samples.get(&(test.to_owned(), s))?.clone();
            all.sort();
            probe::percentile_us(&all, p)
        };
        let (direct, mesh) = (side(Side::Direct), side(Side::Mesh)?);
        Some(Figure {
            key: format!("{test}_{suffix}_us"),
            name: name.to_owned(),
            unit: "µs",
            direct,
            mesh,
            target,
            note: direct.map_or_else(String::new, |d| format!("+{:.0} µs", mesh - d)),
        })
    }
}

/// `10000` as `10,000`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
