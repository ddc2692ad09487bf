//! The benchmark's output: one [`Figure`] per measured quantity, with direct TCP beside Ambit
//! and the ratio between them, printed as a Markdown table (ready for the README) and written
//! as JSON.

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
    pub(crate) target: Option<Target>,
    /// Anything else worth a word (e.g. both node proxies' values).
    pub(crate) note: String,
}

impl Figure {
    pub(crate) fn ratio(&self) -> Option<f64> {
        self.direct.filter(|d| *d > 0.0).map(|d| self.mesh / d)
    }

    /// Whether the target is met; `None` without a target.
    pub(crate) fn met(&self) -> Option<bool> {
        Some(match self.target? {
            Target::RatioAtLeast(t) => self.ratio()? >= t,
            Target::RatioAtMost(t) => self.ratio()? <= t,
            Target::AtMost(t) => self.mesh <= t,
        })
    }
}

impl Target {
    fn text(self) -> String {
        match self {
            Self::RatioAtLeast(t) => format!("≥ {t:.2}×"),
            Self::RatioAtMost(t) => format!("≤ {t:.1}×"),
            Self::AtMost(t) => format!("≤ {t:.0}"),
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
        "| figure | unit | direct TCP | Ambit | ratio | target | |"
    );
    let _ = writeln!(out, "|---|---|--:|--:|--:|--:|---|");
    for f in figures {
        let direct = f.direct.map_or_else(|| "–".to_owned(), number);
        let ratio = f
            .ratio()
            .map_or_else(|| "–".to_owned(), |r| format!("{r:.2}×"));
        let target = f.target.map_or_else(String::new, Target::text);
        let verdict = match f.met() {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        let note = if f.note.is_empty() {
            String::new()
        } else {
            format!(" ({})", f.note)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {direct} | {}{note} | {ratio} | {target} | {verdict} |",
            f.name,
            f.unit,
            number(f.mesh)
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
                "target": f.target.map(Target::text),
                "met": f.met(),
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
