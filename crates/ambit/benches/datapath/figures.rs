//! From measurements to the report's rows: which figures exist, their names, units and
//! targets (ratios to direct TCP, ratios to a stock ztunnel, or absolute memory), medians of
//! per-round values and percentiles of pooled latency samples.

use crate::probe;
use crate::report::{Figure, Target};
use crate::suite::{HTTP_CONNECTIONS, RATE_CLIENTS, Side, Suite};

impl Suite {
    /// Every figure the measurements support, in report order. Targets: the data-path issue's
    /// ratios to direct TCP, and the throughput issue's ratios to a stock ztunnel measured in
    /// the same run.
    pub(crate) fn figures(&self) -> Vec<Figure> {
        use Target::{AtMost, RatioAtLeast, RatioAtMost, ZtunnelAtLeast, ZtunnelAtMost};
        let mut out = Vec::new();
        out.extend(self.rate(
            "stream1_gbps",
            "throughput, 1 stream (iperf3)",
            "Gbit/s",
            vec![RatioAtLeast(0.42), ZtunnelAtLeast(1.25)],
        ));
        out.extend(self.rate(
            "stream8_gbps",
            "throughput, 8 streams (iperf3 -P 8)",
            "Gbit/s",
            vec![ZtunnelAtLeast(1.25)],
        ));
        for (test, label, target) in [
            ("rr1", "1 B request/response on one connection", Some(2.0)),
            ("rr1k", "1 KiB request/response on one connection", None),
            ("connect", "connect + 1 B echo + close", Some(3.0)),
        ] {
            for (p, name) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
                let mut targets = Vec::new();
                if let Some(t) = target.filter(|_| name == "p50") {
                    targets.push(RatioAtMost(t));
                }
                if target.is_some() && name != "p90" {
                    targets.push(ZtunnelAtMost(1.0));
                }
                out.extend(self.latency(test, p, &format!("{label}, {name}"), name, targets));
            }
        }
        let rate_name = format!("new connections per second ({RATE_CLIENTS} clients)");
        out.extend(self.rate("rate_cps", &rate_name, "conn/s", vec![]));
        let wrk = format!("HTTP, {HTTP_CONNECTIONS} keep-alive connections (wrk)");
        let ab = format!("HTTP, a new connection per request (ab -c {HTTP_CONNECTIONS})");
        out.extend(self.rate(
            "wrk_rps",
            &wrk,
            "req/s",
            vec![RatioAtLeast(0.40), ZtunnelAtLeast(1.0)],
        ));
        out.extend(self.rate(
            "ab_rps",
            &ab,
            "req/s",
            vec![RatioAtLeast(0.25), ZtunnelAtLeast(1.0)],
        ));
        for (key, name, targets) in [
            (
                "cpu_all_per_gb_stream1",
                "CPU per GB moved, all processes (1 stream)",
                vec![],
            ),
            (
                "cpu_proxies_per_gb_stream1",
                "CPU per GB moved, node proxies (1 stream)",
                vec![ZtunnelAtMost(0.8)],
            ),
            (
                "cpu_all_per_gb_stream8",
                "CPU per GB moved, all processes (8 streams)",
                vec![],
            ),
            (
                "cpu_proxies_per_gb_stream8",
                "CPU per GB moved, node proxies (8 streams)",
                vec![ZtunnelAtMost(0.8)],
            ),
            (
                "cpu_all_per_10k_wrk",
                "CPU per 10,000 keep-alive requests, all processes",
                vec![],
            ),
            (
                "cpu_proxies_per_10k_wrk",
                "CPU per 10,000 keep-alive requests, node proxies",
                vec![],
            ),
            (
                "cpu_all_per_10k_ab",
                "CPU per 10,000 new-connection requests, all processes",
                vec![],
            ),
            (
                "cpu_proxies_per_10k_ab",
                "CPU per 10,000 new-connection requests, node proxies",
                vec![],
            ),
        ] {
            out.extend(self.rate(key, name, "CPU s", targets));
        }
        out.extend(self.rate(
            "rss_idle",
            "node-proxy RSS, idle (larger of two)",
            "MB",
            vec![AtMost(10.0)],
        ));
        for &count in &self.settings.idle {
            let targets = if count == 10_000 {
                vec![AtMost(40.0)]
            } else {
                vec![]
            };
            let name = format!("node-proxy RSS, {} idle connections", thousands(count));
            out.extend(self.rate(&format!("rss_{count}"), &name, "MB", targets));
        }
        out.extend(self.rate("rss_after", "node-proxy RSS, after the run", "MB", vec![]));
        out
    }

    /// A figure from per-round values: their medians on each side.
    fn rate(
        &self,
        key: &str,
        name: &str,
        unit: &'static str,
        targets: Vec<Target>,
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
            ztunnel: side(Side::Ztunnel),
            targets,
            note: self.notes.get(key).cloned().unwrap_or_default(),
        })
    }

    /// A figure from latency samples: quantile `p` of all rounds' samples on each side, and
    /// what Ambit adds.
    fn latency(
        &self,
        test: &str,
        p: f64,
        name: &str,
        suffix: &str,
        targets: Vec<Target>,
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
            ztunnel: side(Side::Ztunnel),
            targets,
            note: direct.map_or_else(String::new, |d| format!("Ambit +{:.0} µs", mesh - d)),
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
