//! The report as text: a table per evidence origin, the warnings, the verdict line.

use std::fmt::Write as _;

use super::{Endpoint, Origin, Report, Row};

const HEADERS: [&str; 7] = [
    "SOURCE → DESTINATION",
    "SOURCE IDENTITY",
    "DESTINATION IDENTITY",
    "MTLS",
    "STATUS",
    "CONNS",
    "BYTES",
];

pub(super) fn text(report: &Report) -> String {
    let mut out = String::new();
    for (origin, title) in [
        (Origin::Capture, "CAPTURED FLOWS"),
        (Origin::Metrics, "NODE PROXY METRICS"),
        (Origin::AccessLog, "NODE PROXY ACCESS LOGS"),
    ] {
        let rows: Vec<&Row> = report.rows.iter().filter(|r| r.origin == origin).collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "{title}");
        out.push_str(&table(&rows));
        out.push('\n');
    }
    for row in &report.rows {
        for needle in &row.cleartext_matches {
            let _ = writeln!(
                out,
                "found {needle:?} in cleartext: {} -> {}",
                name(&row.source),
                destination(row)
            );
        }
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    let _ = writeln!(out, "VERDICT: {}", report.verdict.summary);
    out
}

/// An endpoint by workload name, else address.
pub(super) fn name(end: &Endpoint) -> String {
    match (&end.workload, &end.address) {
        (Some(w), _) => w.clone(),
        (None, Some(a)) => a.clone(),
        (None, None) => "unknown".to_owned(),
    }
}

/// The destination with its port when a capture saw it.
fn destination(row: &Row) -> String {
    let port = row
        .destination
        .address
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
        .map(|(_, port)| port);
    match (&row.destination.workload, port) {
        (Some(w), Some(port)) => format!("{w}:{port}"),
        _ => name(&row.destination),
    }
}

fn table(rows: &[&Row]) -> String {
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                format!("{} → {}", name(&r.source), destination(r)),
                r.source.identity.clone().unwrap_or_else(|| "-".into()),
                r.destination.identity.clone().unwrap_or_else(|| "-".into()),
                if r.mtls { "yes" } else { "no" }.to_owned(),
                r.status.as_str().to_owned(),
                r.connections.to_string(),
                r.bytes.to_string(),
                r.detail.clone(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = HEADERS.iter().map(|h| h.chars().count()).collect();
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[&str]| {
        for (i, cell) in cells.iter().enumerate() {
            match widths.get(i) {
                Some(w) => {
                    let pad = w.saturating_sub(cell.chars().count());
                    let _ = write!(out, "{cell}{:pad$}  ", "");
                }
                None => out.push_str(cell),
            }
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    };
    let mut header: Vec<&str> = HEADERS.to_vec();
    header.push("DETAIL");
    line(&mut out, &header);
    for row in &cells {
        let refs: Vec<&str> = row.iter().map(String::as_str).collect();
        line(&mut out, &refs);
    }
    out
}
