//! `ambit config`: show what the control plane serves, as tables or JSON.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use ambit_proto::ports;
use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    #[command(subcommand)]
    what: What,

    /// The control plane's monitoring address.
    #[arg(long, global = true, default_value_t = SocketAddr::from((Ipv4Addr::LOCALHOST, ports::MONITORING)))]
    control_plane: SocketAddr,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum What {
    /// Workloads served over WDS: addresses, protocol (HBONE or NONE), identity, node.
    Workloads,
    /// Every pod, whether it is enrolled and why.
    Pods,
    /// Services: hostnames, VIPs, ports and how many workloads back them.
    Services,
    /// AuthorizationPolicies and PeerAuthentications as read, the istio.security.Authorization
    /// resources served for them, and what could not be enforced as written.
    Policies,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

pub(crate) fn run(args: ConfigArgs) -> anyhow::Result<()> {
    let path = match args.what {
        What::Workloads => "/debug/workloads",
        What::Pods => "/debug/pods",
        What::Services => "/debug/services",
        What::Policies => "/debug/policies",
    };
    let body = http_get(args.control_plane, path)?;
    let value: Value =
        serde_json::from_str(&body).with_context(|| format!("{path} did not return JSON"))?;
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let (rows, columns): (&str, &[(&str, &str)]) = match args.what {
        What::Workloads => (
            "workloads",
            &[
                ("NAMESPACE", "namespace"),
                ("NAME", "name"),
                ("ADDRESSES", "addresses"),
                ("NODE", "node"),
                ("PROTOCOL", "protocol"),
                ("IDENTITY", "identity"),
            ],
        ),
        What::Pods => (
            "pods",
            &[
                ("NAMESPACE", "namespace"),
                ("NAME", "name"),
                ("ENROLLED", "enrolled"),
                ("REASON", "reason"),
            ],
        ),
        What::Services => (
            "services",
            &[
                ("NAMESPACE", "namespace"),
                ("NAME", "name"),
                ("VIPS", "vips"),
                ("ENDPOINTS", "endpoints"),
                ("HOSTNAME", "hostname"),
            ],
        ),
        What::Policies => (
            "policies",
            &[
                ("NAMESPACE", "namespace"),
                ("NAME", "name"),
                ("KIND", "kind"),
                ("ACTION/MODE", "action"),
                ("SELECTOR", "selector"),
            ],
        ),
    };
    let items = value
        .get(rows)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    print!("{}", table(&items, columns));
    if let Some(skipped) = value
        .get("skipped")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
    {
        println!("\nnot served:");
        print!(
            "{}",
            table(
                skipped,
                &[
                    ("NAMESPACE", "namespace"),
                    ("NAME", "name"),
                    ("REASON", "reason")
                ]
            )
        );
    }
    if args.what == What::Policies {
        print_policy_sections(&value);
    }
    Ok(())
}

/// The translated resources and the issues, below the policies table.
fn print_policy_sections(value: &Value) {
    let section = |key: &str| {
        value
            .get(key)
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .cloned()
    };
    if let Some(authorizations) = section("authorizations") {
        println!("\nserved as istio.security.Authorization:");
        print!(
            "{}",
            table(
                &authorizations,
                &[
                    ("NAME", "name"),
                    ("SCOPE", "scope"),
                    ("ACTION", "action"),
                    ("RULES", "rules"),
                    ("SERVED", "served"),
                ]
            )
        );
    }
    if let Some(issues) = section("issues") {
        println!("\nnot enforced as written:");
        print!(
            "{}",
            table(
                &issues,
                &[
                    ("KIND", "kind"),
                    ("NAMESPACE", "namespace"),
                    ("NAME", "name"),
                    ("ISSUE", "message"),
                ]
            )
        );
    }
}

fn table(items: &[Value], columns: &[(&str, &str)]) -> String {
    let cell = |item: &Value, key: &str| -> String {
        let v = item.get(key).or_else(|| {
            if key == "action" {
                item.get("mode")
            } else {
                None
            }
        });
        match v {
            None | Some(Value::Null) => "-".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
                .collect::<Vec<_>>()
                .join(","),
            Some(other) => other.to_string(),
        }
    };
    let mut grid: Vec<Vec<String>> = vec![columns.iter().map(|(h, _)| (*h).to_owned()).collect()];
    grid.extend(
        items
            .iter()
            .map(|item| columns.iter().map(|(_, k)| cell(item, k)).collect()),
    );
    let widths: Vec<usize> = (0..columns.len())
        .map(|c| grid.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in grid {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A plain HTTP/1.0 GET to a loopback monitoring port; enough for this read-only API.
fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| {
            format!("cannot reach the control plane at {addr} (is `ambit control` running?)")
        })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("reading {path} from {addr}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        bail!("{path} answered {status}: {}", body.trim());
    }
    Ok(body.to_owned())
}
