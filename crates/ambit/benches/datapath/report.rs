//! The benchmark's output: one [`Figure`] per measured quantity, with direct TCP, Ambit and
//! (when the run had one) a stock ztunnel side by side, each proxy's ratio to direct and
//! Ambit's to ztunnel, printed as a Markdown table (ready for the README) and written as JSON.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::probe::Machine;

/// What a figure must reach.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Target {
    /// Ambit ÷ direct at least this (rates).
    RatioAtLeast(f64),
    /// Ambit ÷ direct at most this (latencies).
    RatioAtMost(f64),
    /// Ambit's value at most this (memory, no direct counterpart).
    AtMost(f64),
    /// Ambit ÷ ztunnel at least this (rates; both measured in the same run).
    ZtunnelAtLeast(f64),
    /// Ambit ÷ ztunnel at most this (latencies, CPU per unit of work).
    ZtunnelAtMost(f64),
}

/// One row of the report.
#[derive(Debug, Clone)]
pub(crate) struct Figure {
    /// Stable JSON key.
    pub(crate) key: String,
    /// What a reader sees.
    pub(crate) name: String,
    pub(crate) unit: &'static str,
    /// Direct TCP, when the quantity exists without a mesh.
    pub(crate) direct: Option<f64>,
    pub(crate) mesh: f64,
    /// The stock ztunnel's value, when the run had one.
    pub(crate) ztunnel: Option<f64>,
    pub(crate) targets: Vec<Target>,
    /// Anything else worth a word (e.g. both node proxies' values).
    pub(crate) note: String,
}

impl Figure {
    /// Ambit ÷ direct.
    pub(crate) fn ratio(&self) -> Option<f64> {
        self.direct.filter(|d| *d > 0.0).map(|d| self.mesh / d)
    }

    /// ztunnel ÷ direct.
    pub(crate) fn ztunnel_ratio(&self) -> Option<f64> {
        let direct = self.direct.filter(|d| *d > 0.0)?;
        self.ztunnel.map(|z| z / direct)
    }

    /// Ambit ÷ ztunnel.
    pub(crate) fn vs_ztunnel(&self) -> Option<f64> {
        self.ztunnel.filter(|z| *z > 0.0).map(|z| self.mesh / z)
    }

    /// Whether `target` is met; `None` when this run cannot tell (no direct or ztunnel value).
    pub(crate) fn met(&self, target: Target) -> Option<bool> {
        Some(match target {
            Target::RatioAtLeast(t) => self.ratio()? >= t,
            Target::RatioAtMost(t) => self.ratio()? <= t,
            Target::AtMost(t) => self.mesh <= t,
            Target::ZtunnelAtLeast(t) => self.vs_ztunnel()? >= t,
            Target::ZtunnelAtMost(t) => self.vs_ztunnel()? <= t,
        })
    }

    /// "met", "**missed**" or "not measured" for each target, in order.
    fn verdict(&self) -> String {
        self.targets
            .iter()
            .map(|t| match self.met(*t) {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "not measured",
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Target {
    fn text(self) -> String {
        match self {
            Self::RatioAtLeast(t) => format!("≥ {t:.2}×"),
            Self::RatioAtMost(t) => format!("≤ {t:.1}×"),
            Self::AtMost(t) => format!("≤ {t:.0}"),
            Self::ZtunnelAtLeast(t) => format!("≥ {t:.2}× ztunnel"),
            Self::ZtunnelAtMost(t) => format!("≤ {t:.2}× ztunnel"),
        }
    }
}

/// The report as a Markdown table, with the machine and run settings above it.
pub(crate) fn table(figures: &[Figure], machine: &Machine, settings: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Machine: {}", machine.line());
    let _ = writeln!(out, "Run: {settings}\n");
    let _ = writeln!(
        out,
        "| figure | unit | direct TCP | Ambit | ÷ direct | ztunnel | ÷ direct | Ambit ÷ ztunnel | target | |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|--:|--:|--:|---|");
    let times = |r: Option<f64>| r.map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"));
    for f in figures {
        let direct = f.direct.map_or_else(|| "–".to_owned(), number);
        let ztunnel = f.ztunnel.map_or_else(|| "–".to_owned(), number);
        let targets = f
            .targets
            .iter()
            .map(|t| t.text())
            .collect::<Vec<_>>()
            .join(", ");
        let note = if f.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", f.note)
        };
        let _ = writeln!(
            out,
            "| {}{note} | {} | {direct} | {} | {} | {ztunnel} | {} | {} | {targets} | {} |",
            f.name,
            f.unit,
            number(f.mesh),
            times(f.ratio()),
            times(f.ztunnel_ratio()),
            times(f.vs_ztunnel()),
            f.verdict(),
        );
    }
    out
}

/// Writes the report to `path` as JSON (creating its folder).
pub(crate) fn write_json(
    path: &Path,
    figures: &[Figure],
    machine: &Machine,
    settings: Value,
    errors: &[String],
) -> std::io::Result<()> {
    let rows: Vec<Value> = figures
        .iter()
        .map(|f| {
            json!({
                "key": f.key,
                "name": f.name,
                "unit": f.unit,
                "direct": f.direct,
                "ambit": f.mesh,
                "ratio": f.ratio(),
                "ztunnel": f.ztunnel,
                "ztunnel_ratio": f.ztunnel_ratio(),
                "ambit_vs_ztunnel": f.vs_ztunnel(),
                "targets": f.targets.iter().map(|t| t.text()).collect::<Vec<_>>(),
                "met": f.targets.iter().map(|t| f.met(*t)).collect::<Vec<_>>(),
                "note": f.note,
            })
        })
        .collect();
    let report = json!({
        "machine": {
            "cpus": machine.cpus,
            "model": machine.model,
            "kernel": machine.kernel,
            "memory_gb": machine.memory_gb,
        },
        "settings": settings,
        "figures": rows,
        "errors": errors,
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(&report).map_err(std::io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// Three significant figures, without exponent.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}
