//! Packet capture inside a network namespace, with a packet socket of our own (no tcpdump).
//!
//! An `AF_PACKET` socket for every protocol (`ETH_P_ALL`) is created inside the namespace
//! ([`Netns::run`]), so it sees that namespace's interfaces: on a pod's `eth0` only what crosses
//! the wire, not the redirect hops on its loopback; on the bridge's namespace with `any` every
//! pod-to-pod packet, twice (leaving one veth and entering the other: [`crate::flows`] keeps
//! each byte once). A kernel filter (the `filter` submodule) keeps TCP over IP on the chosen
//! interface only. A thread reads frames, with a short timeout so it notices
//! [`RunningCapture::stop`], and writes them to a classic pcap file ([`pcap::Writer`]).
//!
//! The socket is a cooked one (`SOCK_DGRAM`): the kernel hands over every frame from its
//! network header on, whatever the device's link layer (Ethernet on veths and bridges, a fake
//! Ethernet header on `lo`, none on tunnels). So the file's link type is raw IP
//! (`LINKTYPE_RAW`), right for `any` and single interfaces alike; which interface a frame was
//! seen on is not recorded (the analysis never needs it).
//!
//! Creating the socket needs `CAP_NET_RAW` in the user namespace that owns the network
//! namespace: root, or root of a user namespace (`unshare --user --map-root-user`), where
//! tcpdump could not run at all (it calls `setgroups`, which such a namespace denies).
//!
//! Invariants:
//! - Every packet is captured whole up to [`SNAP_LEN`] bytes; a longer one (a segmentation
//!   offload super-packet) is cut there and its record keeps the length it had.
//! - The file only ever grows by whole records, flushed when the socket is idle and at least
//!   every [`FLUSH_EVERY`], so it can be read while the capture runs.
//! - Frames queued when [`RunningCapture::stop`] is called are still written.
//! - No capture thread outlives its [`RunningCapture`]: dropping one stops the thread and
//!   closes the file.
//! - Timestamps are the time a frame is read (kernel timestamps need an unsafe ioctl), never
//!   earlier than the one before in the same file.
//!
//! Not known: frames the kernel dropped because the receive buffer was full (its counter,
//! `PACKET_STATISTICS`, has no safe API). The buffer is sized for bursts (32 MiB, or what
//! `net.core.rmem_max` allows without `CAP_NET_ADMIN`) and the summary says what was granted.

mod filter;

use std::fs::File;
use std::io::{self, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use ambit_netns::{Netns, NetnsError};
use rustix::io::Errno;
use rustix::net::RecvFlags;
use socket2::{Domain, Protocol, SockFilter, Socket, Type};

use crate::pcap::{self, LinkType};

/// The longest frame written whole (tcpdump's default snap length).
pub const SNAP_LEN: u32 = 262_144;
/// The receive buffer asked for: at least a few hundred full-size frames, thousands of
/// ordinary ones, so a burst waits while the thread writes.
const RECEIVE_BUFFER: usize = 32 << 20;
/// How long one read waits before the thread checks whether it should stop.
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest a written packet stays in the file buffer under steady traffic.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// The file buffer.
const FILE_BUFFER: usize = 1 << 20;
/// `ETH_P_ALL`: every protocol, before the filter narrows it down.
const ETH_P_ALL: u16 = 0x0003;

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
}

impl CaptureSpec {
    /// All TCP on `interface` of the caller's namespace, written to `output`.
    pub fn tcp(interface: impl Into<String>, output: PathBuf) -> Self {
        Self {
            netns: None,
            interface: interface.into(),
            output,
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
    #[error("cannot capture in the network namespace {path}")]
    Netns {
        path: String,
        #[source]
        source: NetnsError,
    },
    #[error(
        "not allowed to capture on {what}: a packet socket needs CAP_NET_RAW in the user \
         namespace owning that network namespace (run as root, or inside that user namespace)"
    )]
    NotPermitted {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open a packet socket for {what}")]
    Socket {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot capture on {what}: no such interface")]
    NoInterface {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the packet socket for {what}")]
    Setup {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write the capture file {path}")]
    Output {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read packets on {what}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("the capture thread for {what} panicked")]
    Panicked { what: String },
}

/// A capture that is running: its socket is open and filtered, its thread writes the file.
#[derive(Debug)]
pub struct RunningCapture {
    spec: CaptureSpec,
    receive_buffer: usize,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<Written, CaptureError>>>,
}

/// What a finished capture wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSummary {
    pub output: PathBuf,
    pub what: String,
    /// Packets written to the file.
    pub packets: u64,
    /// Of those, packets longer than [`SNAP_LEN`], written cut to it.
    pub truncated: u64,
    /// The socket's receive buffer in bytes, as the kernel granted and counts it (twice what
    /// was set, for its bookkeeping).
    pub receive_buffer: usize,
}

/// Opens the packet socket and starts writing; from the return on, every matching frame is
/// queued for the file.
pub fn start(spec: CaptureSpec) -> Result<RunningCapture, CaptureError> {
    let what = spec.describe();
    let socket = open_socket(&spec)?;
    let ifindex = match spec.interface.as_str() {
        "any" => None,
        // Resolved by the socket's namespace, not this thread's.
        name => Some(
            rustix::net::netdevice::name_to_index(&socket, name).map_err(|e| {
                CaptureError::NoInterface {
                    what: what.clone(),
                    source: e.into(),
                }
            })?,
        ),
    };
    let setup = |source| CaptureError::Setup {
        what: what.clone(),
        source,
    };
    let receive_buffer = size_receive_buffer(&socket).map_err(setup)?;
    let program: Vec<SockFilter> = filter::program(ifindex)
        .into_iter()
        .map(filter::Insn::to_sock_filter)
        .collect();
    socket.attach_filter(&program).map_err(setup)?;
    // Frames queued between socket() and the filter are unfiltered: not ours to keep.
    drain(&socket).map_err(setup)?;
    socket.set_read_timeout(Some(READ_TIMEOUT)).map_err(setup)?;

    let output = spec.output.clone();
    let output_error = |source| CaptureError::Output {
        path: output.display().to_string(),
        source,
    };
    let file = File::create(&output).map_err(output_error)?;
    let mut writer = pcap::Writer::new(
        BufWriter::with_capacity(FILE_BUFFER, file),
        LinkType::Raw,
        SNAP_LEN,
    )
    .map_err(output_error)?;
    // A reader sees a valid, empty capture from the start.
    writer.flush().map_err(output_error)?;

    let stop = Arc::new(AtomicBool::new(false));
    let recorder = Recorder {
        socket,
        writer,
        what: what.clone(),
        output,
    };
    let thread = std::thread::Builder::new()
        .name(format!("capture-{}", spec.interface))
        .spawn({
            let stop = stop.clone();
            move || recorder.run(&stop)
        })
        .map_err(setup)?;
    Ok(RunningCapture {
        spec,
        receive_buffer,
        stop,
        thread: Some(thread),
    })
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

    /// The socket's receive buffer in bytes, as the kernel counts it.
    pub fn receive_buffer(&self) -> usize {
        self.receive_buffer
    }

    /// Stops reading, writes what is still queued, closes the file.
    pub fn stop(mut self) -> Result<CaptureSummary, CaptureError> {
        let what = self.spec.describe();
        let written = match self.finish() {
            Some(Ok(written)) => written?,
            Some(Err(_)) | None => return Err(CaptureError::Panicked { what }),
        };
        Ok(CaptureSummary {
            output: self.spec.output.clone(),
            what,
            packets: written.packets,
            truncated: written.truncated,
            receive_buffer: self.receive_buffer,
        })
    }

    /// Tells the thread to stop and waits for it; `None` if it was already collected.
    fn finish(&mut self) -> Option<std::thread::Result<Result<Written, CaptureError>>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map(JoinHandle::join)
    }
}

impl Drop for RunningCapture {
    fn drop(&mut self) {
        self.finish();
    }
}

// === the capture thread ===

/// What the thread wrote.
#[derive(Debug)]
struct Written {
    packets: u64,
    truncated: u64,
}

/// The capture thread's state.
struct Recorder {
    socket: Socket,
    writer: pcap::Writer<BufWriter<File>>,
    what: String,
    output: PathBuf,
}

impl Recorder {
    fn run(mut self, stop: &AtomicBool) -> Result<Written, CaptureError> {
        let mut frame = vec![0u8; SNAP_LEN as usize];
        let mut last = Duration::ZERO;
        let mut truncated = 0;
        let mut flushed = Instant::now();
        let mut pending = false;
        let mut stopping = false;
        loop {
            // Once told to stop, only what is already queued is read.
            let flags = if stopping {
                RecvFlags::TRUNC | RecvFlags::DONTWAIT
            } else {
                RecvFlags::TRUNC
            };
            match rustix::net::recv(&self.socket, &mut frame[..], flags) {
                Ok((captured, wire_len)) => {
                    // Never backwards within the file, even when the clock is stepped.
                    let now = SystemTime::now()
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .max(last);
                    last = now;
                    if wire_len > captured {
                        truncated += 1;
                    }
                    self.writer
                        .write_packet(now, &frame[..captured], wire_len)
                        .map_err(|e| self.output_error(e))?;
                    pending = true;
                    if flushed.elapsed() >= FLUSH_EVERY {
                        self.flush(&mut pending, &mut flushed)?;
                    }
                }
                // The read timed out (or, stopping, the queue is empty): a quiet moment.
                Err(Errno::AGAIN) => {
                    if stopping {
                        break;
                    }
                    self.flush(&mut pending, &mut flushed)?;
                }
                Err(Errno::INTR) => {}
                Err(e) => {
                    return Err(CaptureError::Read {
                        what: self.what,
                        source: e.into(),
                    });
                }
            }
            if !stopping && stop.load(Ordering::Relaxed) {
                stopping = true;
            }
        }
        // The file is closed when the writer is dropped, right after.
        self.writer.flush().map_err(|e| self.output_error(e))?;
        Ok(Written {
            packets: self.writer.packets(),
            truncated,
        })
    }

    fn flush(&mut self, pending: &mut bool, flushed: &mut Instant) -> Result<(), CaptureError> {
        if *pending {
            self.writer.flush().map_err(|e| self.output_error(e))?;
            *pending = false;
        }
        *flushed = Instant::now();
        Ok(())
    }

    fn output_error(&self, source: io::Error) -> CaptureError {
        CaptureError::Output {
            path: self.output.display().to_string(),
            source,
        }
    }
}

// === the socket ===

/// A cooked packet socket for every protocol, made inside the spec's namespace.
fn open_socket(spec: &CaptureSpec) -> Result<Socket, CaptureError> {
    let new = || {
        let protocol = Protocol::from(i32::from(ETH_P_ALL.to_be()));
        Socket::new(Domain::PACKET, Type::DGRAM, Some(protocol))
    };
    let opened = match &spec.netns {
        Some((netns, name)) => netns.run(new).map_err(|source| CaptureError::Netns {
            path: name.clone(),
            source,
        })?,
        None => new(),
    };
    let what = spec.describe();
    opened.map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied => CaptureError::NotPermitted { what, source },
        _ => CaptureError::Socket { what, source },
    })
}

/// Asks for [`RECEIVE_BUFFER`]: past `net.core.rmem_max` when allowed (`CAP_NET_ADMIN`),
/// else up to that limit. Returns what the kernel granted.
fn size_receive_buffer(socket: &Socket) -> io::Result<usize> {
    if rustix::net::sockopt::set_socket_recv_buffer_size_force(socket, RECEIVE_BUFFER).is_err() {
        socket.set_recv_buffer_size(RECEIVE_BUFFER)?;
    }
    socket.recv_buffer_size()
}

/// Discards every queued frame.
fn drain(socket: &Socket) -> io::Result<()> {
    let mut scrap = [0u8; 1];
    loop {
        match rustix::net::recv(socket, &mut scrap[..], RecvFlags::DONTWAIT) {
            Ok(_) | Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_namespace_and_interface() {
        let spec = CaptureSpec::tcp("eth0", "x.pcap".into());
        assert_eq!(spec.describe(), "interface eth0");
        let spec = spec
            .in_netns_at("/proc/self/ns/net")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.describe(), "interface eth0 in /proc/self/ns/net");
    }
}
