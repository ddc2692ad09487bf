//! `ambit verify`: proof that enrolled workloads' connections are carried over mutual TLS; the
//! flags, handed to [`ambit_verify::run::gather`], and the report printed.
//!
//! Reads the node proxies' config dumps (which workloads exist and which are enrolled), L4
//! metrics and access logs, optionally captures packets inside pods' network namespaces (with
//! a packet socket of its own, `ambit_verify::capture`) or reads existing captures, and prints
//! one row per kind of connection with its verdict (see `ambit_verify::report`).
//!
//! Exit status: 0 when no enrolled workload's connection crossed the wire in plaintext; 1 when
//! one did (the error names it, after the table) or when the evidence could not be gathered.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ambit_proto::ports;
use ambit_verify::run::Sources;
use anyhow::bail;
use clap::{Args, ValueEnum};

/// Where a node proxy's admin server listens when no source of evidence is named.
const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports::ADMIN);
/// Where its stats server listens.
const DEFAULT_STATS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), ports::STATS);

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// A node proxy's admin address, to read `/config_dump`: which workloads exist, which are
    /// enrolled, their identities. Repeat for every node. With no --admin, --config-dump,
    /// --stats or --access-log, 127.0.0.1:15000 and 127.0.0.1:15020 are read.
    #[arg(long = "admin", value_name = "ADDR")]
    admin: Vec<SocketAddr>,

    /// A saved `/config_dump` (JSON file) to read instead of, or besides, --admin.
    #[arg(long = "config-dump", value_name = "FILE")]
    config_dump: Vec<PathBuf>,

    /// A node proxy's stats address, to read its `istio_tcp_*` metrics. Repeat for every node.
    #[arg(long = "stats", value_name = "ADDR")]
    stats: Vec<SocketAddr>,

    /// A node proxy's access log (`connection complete` lines, text or JSON, Ambit's or a stock
    /// ztunnel's), e.g. saved with `kubectl logs -n istio-system ds/ztunnel`. Repeatable.
    #[arg(long = "access-log", value_name = "FILE")]
    access_log: Vec<PathBuf>,

    /// Capture packets for this many seconds and check that payloads between pods are TLS
    /// records, not plaintext. Needs CAP_NET_RAW in the user namespace owning each captured
    /// network namespace: root, or root of that user namespace.
    #[arg(long, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    capture: Option<u64>,

    /// The network namespace to capture in: a pod's `/proc/<pid>/ns/net` or
    /// `/var/run/netns/<name>`. Repeat to capture in several pods at once. Default: this
    /// process's namespace.
    #[arg(long = "capture-netns", value_name = "PATH", requires = "capture")]
    capture_netns: Vec<PathBuf>,

    /// The interface to capture on: default `eth0` inside --capture-netns (a pod's link to the
    /// node: only what crosses the wire), `any` otherwise.
    #[arg(long, value_name = "IFACE", requires = "capture")]
    interface: Option<String>,

    /// Keep the capture files in this directory (default: a temporary one, removed after).
    #[arg(long, value_name = "DIR", requires = "capture")]
    capture_dir: Option<PathBuf>,

    /// Analyse an existing capture file (classic pcap, as `tcpdump -w` writes). Repeatable.
    #[arg(long, value_name = "FILE")]
    pcap: Vec<PathBuf>,

    /// Report where this text appears in cleartext in captured payloads (e.g. a metric name
    /// that must never cross the wire readable). Repeatable.
    #[arg(long, value_name = "TEXT")]
    find: Vec<String>,

    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

pub(crate) fn run(mut args: VerifyArgs) -> anyhow::Result<()> {
    let no_source_named = args.admin.is_empty()
        && args.config_dump.is_empty()
        && args.stats.is_empty()
        && args.access_log.is_empty();
    if no_source_named {
        args.admin.push(DEFAULT_ADMIN);
        args.stats.push(DEFAULT_STATS);
    }
    let report = ambit_verify::run::gather(&Sources {
        admin: args.admin,
        config_dump: args.config_dump,
        stats: args.stats,
        access_log: args.access_log,
        capture: args.capture.map(Duration::from_secs),
        capture_netns: args.capture_netns,
        interface: args.interface,
        capture_dir: args.capture_dir,
        pcap: args.pcap,
        find: args.find,
    })?;
    match args.output {
        Output::Table => print!("{}", report.render_text()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if !report.passed() {
        let count: u64 = report.failures().map(|r| r.connections).sum();
        bail!("{count} connection(s) of enrolled workloads crossed the wire in plaintext");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: VerifyArgs,
    }

    fn parse(argv: &[&str]) -> Result<VerifyArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("verify").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn takes_repeated_sources_and_capture_settings() {
        let argv = "--admin 10.0.0.1:15000 --admin 10.0.0.2:15000 --stats 10.0.0.1:15020 \
                    --capture 5 --capture-netns /proc/1/ns/net --capture-netns /proc/2/ns/net \
                    --interface eth0 --find istio_tcp_sent_bytes_total -o json";
        let args = parse(&argv.split_whitespace().collect::<Vec<_>>()).unwrap();
        assert_eq!(args.admin.len(), 2);
        assert_eq!(args.stats.len(), 1);
        assert_eq!(args.capture, Some(5));
        assert_eq!(args.capture_netns.len(), 2);
        assert_eq!(args.interface.as_deref(), Some("eth0"));
        assert_eq!(args.output, Output::Json);
    }

    #[test]
    fn capture_settings_need_a_capture() {
        assert!(parse(&["--capture-netns", "/proc/1/ns/net"]).is_err());
        assert!(parse(&["--interface", "lo"]).is_err());
        assert!(parse(&["--capture", "0"]).is_err());
        assert!(parse(&["--pcap", "x.pcap"]).is_ok());
    }
}
