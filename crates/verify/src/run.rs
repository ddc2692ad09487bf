//! `ambit verify`'s whole run, without its flags: gather the evidence that was named (config
//! dumps and metrics read from the node proxies or from files, access logs, captures taken now
//! or read from pcap files) and judge it into a [`Report`].
//!
//! Captures are taken before the metrics are read, so the counters include the captured
//! window. Nothing is retried: a source that cannot be read is an error naming it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::admin::{self, ConfigDump, TcpMetrics};
use crate::capture::{self, CaptureSpec};
use crate::flows;
use crate::pcap::{self, Segment};
use crate::report::{Evidence, Inventory, Report};

/// The evidence to gather.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Node proxies' admin addresses, to read `/config_dump`.
    pub admin: Vec<SocketAddr>,
    /// Saved `/config_dump` files.
    pub config_dump: Vec<PathBuf>,
    /// Node proxies' stats addresses, to read their `istio_tcp_*` metrics.
    pub stats: Vec<SocketAddr>,
    /// Access log files (`connection complete` lines, text or JSON).
    pub access_log: Vec<PathBuf>,
    /// Capture for this long, in each of [`Sources::capture_netns`].
    pub capture: Option<Duration>,
    /// The network namespaces to capture in (empty: this process's).
    pub capture_netns: Vec<PathBuf>,
    /// The interface to capture on (`None`: `eth0` inside a named namespace, else `any`).
    pub interface: Option<String>,
    /// Keep the capture files here (`None`: a temporary directory, removed after).
    pub capture_dir: Option<PathBuf>,
    /// Existing capture files (classic pcap).
    pub pcap: Vec<PathBuf>,
    /// Texts to report wherever they appear in cleartext in captured payloads.
    pub find: Vec<String>,
}

/// Gathers every source in `sources` and builds the report (its warnings included).
///
/// # Errors
/// When a named source cannot be read or a capture cannot run.
pub fn gather(sources: &Sources) -> anyhow::Result<Report> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;

    let mut dumps = Vec::new();
    for addr in &sources.admin {
        let dump = runtime
            .block_on(admin::fetch_config_dump(*addr))
            .with_context(|| format!("cannot read the config dump of the node proxy at {addr}"))?;
        dumps.push(dump);
    }
    for path in &sources.config_dump {
        dumps.push(read_config_dump(path)?);
    }
    let mut warnings: Vec<String> = dumps
        .iter()
        .flat_map(|d| &d.skipped)
        .map(|s| format!("config dump: skipped {s}"))
        .collect();
    let inventory = Inventory::new(&dumps);

    // Capture before reading metrics, so the counters include the captured window.
    let mut files = sources.pcap.clone();
    let _capture_dir = match sources.capture {
        Some(duration) => {
            let (dir, captured) = run_captures(sources, duration)?;
            for summary in &captured {
                if summary.truncated > 0 {
                    warnings.push(format!(
                        "capture on {}: {} packet(s) longer than {} bytes were cut to that length",
                        summary.what,
                        summary.truncated,
                        capture::SNAP_LEN
                    ));
                }
                files.push(summary.output.clone());
            }
            Some(dir)
        }
        None => None,
    };

    let mut metrics = None;
    for addr in &sources.stats {
        let m = runtime
            .block_on(admin::fetch_metrics(*addr))
            .with_context(|| format!("cannot read the metrics of the node proxy at {addr}"))?;
        metrics.get_or_insert_with(TcpMetrics::default).merge(m);
    }

    let mut access_logs = None;
    for path in &sources.access_log {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the access log {}", path.display()))?;
        access_logs
            .get_or_insert_with(TcpMetrics::default)
            .merge(admin::parse_access_log(&text));
    }

    let mut segments: Vec<Segment> = Vec::new();
    for path in &files {
        let trace = pcap::read_file(path)
            .with_context(|| format!("cannot analyse the capture {}", path.display()))?;
        if let Some(first) = trace.malformed.first() {
            warnings.push(format!(
                "{}: {} packet(s) could not be decoded, first {first}: {}",
                path.display(),
                trace.malformed.len(),
                first.error
            ));
        }
        segments.extend(trace.segments);
    }
    let flows = (!files.is_empty()).then(|| flows::assemble(&segments));

    let mut report = Report::build(Evidence {
        inventory: Some(&inventory),
        flows: flows.as_deref(),
        metrics: metrics.as_ref(),
        access_logs: access_logs.as_ref(),
        find: &sources.find,
    });
    report.warnings.extend(warnings);
    Ok(report)
}

/// Runs one capture per namespace for `duration`; the directory holding the files (kept alive
/// by the caller if temporary) and what each wrote.
fn run_captures(
    sources: &Sources,
    duration: Duration,
) -> anyhow::Result<(CaptureDir, Vec<capture::CaptureSummary>)> {
    let dir = match &sources.capture_dir {
        Some(path) => {
            std::fs::create_dir_all(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            CaptureDir::Kept(path.clone())
        }
        None => CaptureDir::Temporary(
            tempfile::Builder::new()
                .prefix("ambit-verify-")
                .tempdir()
                .context("cannot create a temporary directory for the captures")?,
        ),
    };
    let netns: Vec<Option<&PathBuf>> = if sources.capture_netns.is_empty() {
        vec![None]
    } else {
        sources.capture_netns.iter().map(Some).collect()
    };
    let interface = sources.interface.clone().unwrap_or_else(|| {
        if sources.capture_netns.is_empty() {
            "any"
        } else {
            "eth0"
        }
        .to_owned()
    });
    let mut running = Vec::new();
    for (i, ns) in netns.into_iter().enumerate() {
        let output = dir.path().join(format!("capture-{i}-{interface}.pcap"));
        let mut spec = CaptureSpec::tcp(&interface, output);
        if let Some(path) = ns {
            spec = spec.in_netns_at(path)?;
        }
        let what = spec.describe();
        let capture = capture::start(spec)?;
        eprintln!(
            "capturing TCP on {what} for {duration:?} (kernel receive buffer {} KiB)",
            capture.receive_buffer() / 1024
        );
        running.push(capture);
    }
    std::thread::sleep(duration);
    let summaries = running
        .into_iter()
        .map(capture::RunningCapture::stop)
        .collect::<Result<Vec<_>, _>>()?;
    if let CaptureDir::Kept(path) = &dir {
        eprintln!("capture files kept in {}", path.display());
    }
    Ok((dir, summaries))
}

/// Where capture files go: a directory the user named, or a temporary one.
#[derive(Debug)]
enum CaptureDir {
    Kept(PathBuf),
    Temporary(tempfile::TempDir),
}

impl CaptureDir {
    fn path(&self) -> &Path {
        match self {
            Self::Kept(path) => path,
            Self::Temporary(dir) => dir.path(),
        }
    }
}

fn read_config_dump(path: &Path) -> anyhow::Result<ConfigDump> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the config dump {}", path.display()))?;
    ConfigDump::parse(&text).with_context(|| format!("{} is not a config dump", path.display()))
}
