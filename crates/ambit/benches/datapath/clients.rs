//! The clients of the client pod: latency probes and a connection-rate generator on plain
//! blocking sockets, and the external load generators (iperf3, wrk, ab) run as child processes
//! inside the pod's namespace, with their reports parsed.
//!
//! A socket belongs to the namespace it was created in, so the probes create theirs on a
//! namespace worker thread ([`Netns::run`]); probes that open a connection per request run
//! their whole loop on a worker of their own (a fresh [`Netns::open`]), so no sample pays for
//! a hop between threads.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_netns::Netns;
use socket2::{Domain, Socket, Type};

/// Round trips before the timed ones (connection set-up, caches, the proxies' pools).
const WARMUP: usize = 300;

/// A client pod: its namespace, and the path that opens more handles on it.
#[derive(Clone)]
pub(crate) struct ClientPod {
    pub(crate) netns: Netns,
    pub(crate) path: PathBuf,
}

/// One connection to the echo server for `size`-byte request/response round trips.
pub(crate) struct Conversation {
    stream: TcpStream,
    out: Vec<u8>,
    back: Vec<u8>,
}

impl Conversation {
    /// Connects from `pod` to `addr` and exchanges a few hundred messages (connection set-up,
    /// caches, the proxies' pools) before any is timed.
    pub(crate) fn open(pod: &ClientPod, addr: SocketAddr, size: usize) -> io::Result<Self> {
        let mut conversation = Self {
            stream: connect(&pod.netns, addr)?,
            out: vec![0x5a_u8; size],
            back: vec![0_u8; size],
        };
        conversation.sample(WARMUP)?;
        Ok(conversation)
    }

    /// `samples` timed round trips.
    pub(crate) fn sample(&mut self, samples: usize) -> io::Result<Vec<Duration>> {
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let start = Instant::now();
            round_trip(&mut self.stream, &self.out, &mut self.back)?;
            times.push(start.elapsed());
        }
        Ok(times)
    }
}

/// `samples` times in a row: a new connection to `addr`, one byte echoed, close. Each sample
/// times the whole exchange, from `socket()` to `close()`.
pub(crate) fn connect_echo_close(
    pod: &ClientPod,
    addr: SocketAddr,
    samples: usize,
) -> io::Result<Vec<Duration>> {
    let netns = Netns::open(&pod.path).map_err(io::Error::other)?;
    netns.run_io(move || {
        for _ in 0..WARMUP / 10 {
            one_connection(addr)?;
        }
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let start = Instant::now();
            one_connection(addr)?;
            times.push(start.elapsed());
        }
        Ok(times)
    })
}

/// Connections per second that `clients` concurrent loops of [`connect_echo_close`] complete
/// in `duration`; fails if any exchange failed.
pub(crate) fn connection_rate(
    pod: &ClientPod,
    addr: SocketAddr,
    clients: usize,
    duration: Duration,
) -> io::Result<f64> {
    let deadline = Instant::now() + duration;
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let path = pod.path.clone();
            std::thread::spawn(move || -> io::Result<u64> {
                let netns = Netns::open(&path).map_err(io::Error::other)?;
                netns.run_io(move || {
                    let mut done = 0_u64;
                    while Instant::now() < deadline {
                        one_connection(addr)?;
                        done += 1;
                    }
                    Ok(done)
                })
            })
        })
        .collect();
    let start = Instant::now();
    let mut total = 0;
    for worker in workers {
        total += worker
            .join()
            .map_err(|_| io::Error::other("a connection-rate client panicked"))??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// `count` connections to `addr` that send nothing, opened in batches from the pod.
pub(crate) fn open_idle(
    pod: &ClientPod,
    addr: SocketAddr,
    count: usize,
) -> io::Result<Vec<TcpStream>> {
    pod.netns.run_io(move || {
        (0..count)
            .map(|_| {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                s.connect(&addr.into())?;
                Ok(s.into())
            })
            .collect()
    })
}

/// Throughput of iperf3 with `streams` parallel streams for `duration`: bits per second and
/// bytes received.
pub(crate) fn iperf3(
    pod: &ClientPod,
    server: SocketAddr,
    streams: usize,
    duration: Duration,
) -> io::Result<(f64, f64)> {
    let mut cmd = Command::new("iperf3");
    cmd.args([
        "-c",
        &server.ip().to_string(),
        "-p",
        &server.port().to_string(),
    ])
    .args([
        "-t",
        &duration.as_secs().to_string(),
        "-P",
        &streams.to_string(),
    ])
    .args(["-J", "--connect-timeout", "5000"]);
    let out = run(pod, cmd, "iperf3 (apt-get install iperf3)")?;
    let json: serde_json::Value = serde_json::from_str(&out)
        .map_err(|e| io::Error::other(format!("iperf3 printed no JSON report ({e}): {out}")))?;
    let received = &json["end"]["sum_received"];
    match (
        received["bits_per_second"].as_f64(),
        received["bytes"].as_f64(),
    ) {
        (Some(bps), Some(bytes)) => Ok((bps, bytes)),
        _ => Err(io::Error::other(format!(
            "iperf3 report without end.sum_received: {}",
            json["error"]
        ))),
    }
}

/// wrk on keep-alive connections: requests per second and requests completed.
pub(crate) fn wrk(
    pod: &ClientPod,
    url: &str,
    connections: usize,
    duration: Duration,
) -> io::Result<(f64, f64)> {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", &format!("-c{connections}")])
        .arg(format!("-d{}s", duration.as_secs()))
        .arg(url);
    let out = run(pod, cmd, "wrk (apt-get install wrk)")?;
    if let Some(errors) = out.lines().find(|l| l.contains("Socket errors")) {
        eprintln!("  warning: wrk reported {}", errors.trim());
    }
    let rps = number_after(&out, "Requests/sec:");
    let done = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok());
    match (rps, done) {
        (Some(rps), Some(done)) => Ok((rps, done)),
        _ => Err(io::Error::other(format!("cannot read wrk's report: {out}"))),
    }
}

/// ab with a new connection per request: requests per second and requests completed.
pub(crate) fn ab(
    pod: &ClientPod,
    url: &str,
    concurrency: usize,
    duration: Duration,
) -> io::Result<(f64, f64)> {
    let mut cmd = Command::new("ab");
    cmd.args(["-q", "-r", "-c", &concurrency.to_string()])
        .args(["-t", &duration.as_secs().to_string(), "-n", "100000000"])
        .arg(url);
    let out = run(pod, cmd, "ab (apt-get install apache2-utils)")?;
    let failed = number_after(&out, "Failed requests:").unwrap_or(0.0);
    if failed > 0.0 {
        eprintln!("  warning: ab reported {failed} failed requests");
    }
    match (
        number_after(&out, "Requests per second:"),
        number_after(&out, "Complete requests:"),
    ) {
        (Some(rps), Some(done)) => Ok((rps, done)),
        _ => Err(io::Error::other(format!("cannot read ab's report: {out}"))),
    }
}

// === helpers ===

/// A connection to `addr` from a socket created in `netns`, with Nagle off.
fn connect(netns: &Netns, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = netns.run_io(move || Socket::new(Domain::IPV4, Type::STREAM, None))?;
    socket.connect(&addr.into())?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}

fn round_trip(stream: &mut TcpStream, out: &[u8], back: &mut [u8]) -> io::Result<()> {
    stream.write_all(out)?;
    stream.read_exact(back)
}

/// Connect, one byte there and back, close; on a thread inside the client pod.
fn one_connection(addr: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.connect(&addr.into())?;
    socket.set_tcp_nodelay(true)?;
    let mut stream: TcpStream = socket.into();
    let mut back = [0_u8; 1];
    round_trip(&mut stream, b"x", &mut back)
}

/// Runs `cmd` inside the pod and returns its standard output, failing with its error output.
fn run(pod: &ClientPod, cmd: Command, what: &str) -> io::Result<String> {
    let out = pod
        .netns
        .output(cmd)
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{what} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(stdout)
}

/// The number after `label` on the line that holds it.
fn number_after(text: &str, label: &str) -> Option<f64> {
    let rest = &text[text.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}
