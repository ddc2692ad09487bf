//! Packet capture with tcpdump, inside a pod's network namespace.
//!
//! `tcpdump -i <interface> -w <file> -U --immediate-mode -s 0 -B 32768 -Z root -n tcp` is
//! started inside the namespace ([`Netns::spawn`]), so it sees that namespace's interfaces: on a
//! pod's `eth0` only what crosses the wire, not the redirect hops on its loopback; on the
//! bridge's namespace (or `any` there) every pod-to-pod packet. [`start`] returns once tcpdump
//! says it is listening; [`RunningCapture::stop`] sends SIGTERM, which makes tcpdump flush and
//! close the file, and waits for it.
//!
//! Invariants:
//! - Every packet is captured whole (`-s 0`): reassembly needs every payload byte.
//! - No tcpdump outlives its [`RunningCapture`]: dropping one kills the process.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ambit_netns::{Netns, NetnsError};
use rustix::process::{Pid, Signal, kill_process};

/// The kernel capture buffer, in KiB. In immediate mode every packet takes a slot sized for
/// the whole snap length (256 KiB with `-s 0`), so libpcap's 2 MiB default holds only a few
/// packets and drops bursts; 32 MiB holds about 128.
const BUFFER_KIB: &str = "32768";
/// How long tcpdump may take to open the interface.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long tcpdump may take to flush and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to capture, where.
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    /// The network namespace to capture in, and how to name it in messages; `None` captures
    /// in the caller's namespace.
    pub netns: Option<(Netns, String)>,
    /// The interface inside that namespace: a pod's `eth0`, `lo`, or `any`.
    pub interface: String,
    /// The pcap file to write.
    pub output: PathBuf,
    /// The capture filter (pcap-filter syntax).
    pub filter: String,
}

impl CaptureSpec {
    /// All TCP on `interface` of the caller's namespace, written to `output`.
    pub fn tcp(interface: impl Into<String>, output: PathBuf) -> Self {
        Self {
            netns: None,
            interface: interface.into(),
            output,
            filter: "tcp".to_owned(),
        }
    }

    /// Captures inside `netns` instead, called `name` in messages.
    pub fn in_netns(mut self, netns: Netns, name: impl Into<String>) -> Self {
        self.netns = Some((netns, name.into()));
        self
    }

    /// Captures inside the namespace file at `path` (`/proc/<pid>/ns/net`,
    /// `/var/run/netns/<name>`).
    pub fn in_netns_at(self, path: impl AsRef<Path>) -> Result<Self, CaptureError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let netns = Netns::open(path).map_err(|source| CaptureError::Netns {
            path: name.clone(),
            source,
        })?;
        Ok(self.in_netns(netns, name))
    }

    /// "interface eth0 in /proc/42/ns/net", for messages.
    pub fn describe(&self) -> String {
        match &self.netns {
            Some((_, name)) => format!("interface {} in {name}", self.interface),
            None => format!("interface {}", self.interface),
        }
    }
}

/// Why a capture could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    #[error("tcpdump is not installed; install it (apt-get install tcpdump)")]
    TcpdumpMissing,
    #[error("cannot capture in the network namespace {path}")]
    Netns {
        path: String,
        #[source]
        source: NetnsError,
    },
    #[error("cannot start tcpdump on {what}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("tcpdump on {what} did not start listening within {timeout:?}: {stderr}")]
    NotReady {
        what: String,
        timeout: Duration,
        stderr: String,
    },
    #[error("tcpdump on {what} failed ({status}): {stderr}")]
    Failed {
        what: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("cannot stop tcpdump on {what}")]
    Stop {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// A tcpdump that is listening.
#[derive(Debug)]
pub struct RunningCapture {
    spec: CaptureSpec,
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

/// What a finished capture wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSummary {
    pub output: PathBuf,
    pub what: String,
    /// tcpdump's own counts, when it printed them.
    pub captured: Option<u64>,
    pub dropped_by_kernel: Option<u64>,
}

/// Starts tcpdump and waits until it listens.
pub fn start(spec: CaptureSpec) -> Result<RunningCapture, CaptureError> {
    let what = spec.describe();
    let mut command = Command::new("tcpdump");
    command
        .args(["-i", &spec.interface, "-w"])
        .arg(&spec.output)
        // Packet-buffered output, each packet handed over as it arrives, whole, with a buffer
        // big enough for that; stay root to write the file; no name lookups.
        .args(["-U", "--immediate-mode", "-s", "0", "-B", BUFFER_KIB])
        .args(["-Z", "root", "-n", "--"])
        .arg(&spec.filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let spawned = match &spec.netns {
        Some((netns, _)) => netns.spawn(command),
        None => command.spawn(),
    };
    let mut child = spawned.map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => CaptureError::TcpdumpMissing,
        _ => CaptureError::Spawn {
            what: what.clone(),
            source,
        },
    })?;
    let stderr = Arc::new(Mutex::new(String::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = child.stderr.take().map(|pipe| {
        let stderr = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = ready_tx.send(());
                }
                let mut text = stderr.lock().unwrap_or_else(PoisonError::into_inner);
                text.push_str(&line);
                text.push('\n');
            }
        })
    });
    let mut running = RunningCapture {
        spec,
        child: Some(child),
        stderr,
        reader,
    };
    match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(()) => Ok(running),
        // The reader ended (tcpdump exited) or the time ran out.
        Err(_) => {
            let status = running.kill_and_wait();
            let stderr = running.stderr_text();
            Err(match status {
                Some(status) if !stderr.is_empty() || !status.success() => CaptureError::Failed {
                    what,
                    status,
                    stderr,
                },
                _ => CaptureError::NotReady {
                    what,
                    timeout: READY_TIMEOUT,
                    stderr,
                },
            })
        }
    }
}

/// Captures for `duration`, then stops.
pub fn capture_for(spec: CaptureSpec, duration: Duration) -> Result<CaptureSummary, CaptureError> {
    let running = start(spec)?;
    std::thread::sleep(duration);
    running.stop()
}

impl RunningCapture {
    /// The file being written.
    pub fn output(&self) -> &Path {
        &self.spec.output
    }

    /// Stops tcpdump with SIGTERM (it flushes and closes the file) and waits for it.
    pub fn stop(mut self) -> Result<CaptureSummary, CaptureError> {
        let what = self.spec.describe();
        let Some(mut child) = self.child.take() else {
            return Err(CaptureError::Stop {
                what,
                source: std::io::Error::other("already stopped"),
            });
        };
        let stop_error = |source| CaptureError::Stop {
            what: what.clone(),
            source,
        };
        if child.try_wait().map_err(stop_error)?.is_none() {
            kill_process(Pid::from_child(&child), Signal::TERM)
                .map_err(|e| stop_error(e.into()))?;
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(stop_error)? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                break child.wait().map_err(stop_error)?;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let stderr = self.stderr_text();
        if !status.success() {
            return Err(CaptureError::Failed {
                what,
                status,
                stderr,
            });
        }
        Ok(CaptureSummary {
            output: self.spec.output.clone(),
            captured: count(&stderr, "packets captured"),
            dropped_by_kernel: count(&stderr, "packets dropped by kernel"),
            what,
        })
    }

    fn stderr_text(&self) -> String {
        let text = self.stderr.lock().unwrap_or_else(PoisonError::into_inner);
        text.trim().to_owned()
    }

    /// Kills tcpdump if it still runs; its exit status if it could be collected.
    fn kill_and_wait(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let _ = child.kill();
        let status = child.wait().ok();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        status
    }
}

impl Drop for RunningCapture {
    fn drop(&mut self) {
        self.kill_and_wait();
    }
}

/// The number before `label` on one of tcpdump's closing lines ("12 packets captured").
fn count(stderr: &str, label: &str) -> Option<u64> {
    stderr.lines().find_map(|line| {
        let (number, rest) = line.trim().split_once(' ')?;
        (rest == label).then(|| number.parse().ok()).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tcpdump_closing_counts() {
        let stderr = "tcpdump: listening on lo, link-type EN10MB (Ethernet), snapshot length \
                      262144 bytes\n12 packets captured\n24 packets received by filter\n\
                      0 packets dropped by kernel\n";
        assert_eq!(count(stderr, "packets captured"), Some(12));
        assert_eq!(count(stderr, "packets dropped by kernel"), Some(0));
        assert_eq!(count("", "packets captured"), None);
    }

    #[test]
    fn names_the_namespace_and_interface() {
        let spec = CaptureSpec::tcp("eth0", "x.pcap".into());
        assert_eq!(spec.describe(), "interface eth0");
        let spec = spec
            .in_netns_at("/proc/self/ns/net")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.describe(), "interface eth0 in /proc/self/ns/net");
        assert_eq!(spec.filter, "tcp");
    }
}
