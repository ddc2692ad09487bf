//! The applications of the server pod: an echo server (blocking threads, for the latency and
//! connection-rate figures), a small HTTP/1.1 server (tokio, for wrk and ab), a holder that
//! accepts connections and keeps them idle (for the memory figures) and iperf3. Every
//! listening socket is created inside the pod's network namespace, so the pod's capture rules
//! (when it is enrolled) apply exactly as to a process in the pod.
//!
//! The holder and iperf3 are child processes started in the pod: the holder is this program
//! again (with [`HOLD_ENV`] set), so that the server ends of 10,000 idle connections count
//! against its open-file limit, not against the one of this process, which holds the client
//! ends.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ambit_netns::Netns;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Threads answering echo connections; each serves one connection at a time.
const ECHO_THREADS: usize = 16;
/// The HTTP server's body: small and fixed, so the figure measures the path, not the server.
const BODY: &[u8] = b"hello, mesh\n";
/// Longest request head the HTTP server buffers.
const MAX_HEAD: usize = 16 * 1024;

/// The ports of the applications, the same in both server pods.
pub(crate) const ECHO_PORT: u16 = 7000;
pub(crate) const HOLD_PORT: u16 = 7001;
pub(crate) const HTTP_PORT: u16 = 8080;
pub(crate) const IPERF_PORT: u16 = 5201;

/// The applications of one server pod; dropping it stops what can be stopped (the echo
/// threads block in `accept` and end with the process).
pub(crate) struct Servers {
    http: JoinHandle<()>,
    holder: Child,
    held: Arc<AtomicUsize>,
    iperf: Child,
}

/// Set to `ip:port`, it makes this program the idle-connection holder (see the module docs).
pub(crate) const HOLD_ENV: &str = "AMBIT_BENCH_HOLD";

impl Servers {
    /// Starts every application on `ip` inside `netns`. Call within a tokio runtime.
    pub(crate) fn start(netns: &Netns, ip: std::net::Ipv4Addr) -> io::Result<Self> {
        let echo = listener(netns, SocketAddr::from((ip, ECHO_PORT)))?;
        for _ in 0..ECHO_THREADS {
            let listener = echo.try_clone()?;
            std::thread::spawn(move || serve_echo(&listener));
        }
        let http = tokio::net::TcpListener::from_std(nonblocking(listener(
            netns,
            SocketAddr::from((ip, HTTP_PORT)),
        )?)?)?;
        let (holder, held) = start_holder(netns, SocketAddr::from((ip, HOLD_PORT)))?;
        let mut iperf = Command::new("iperf3");
        iperf
            .args(["-s", "-B", &ip.to_string(), "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let iperf = netns.spawn(iperf).map_err(|e| {
            io::Error::new(e.kind(), format!("iperf3 (apt-get install iperf3): {e}"))
        })?;
        Ok(Self {
            http: tokio::spawn(serve_http(http)),
            holder,
            held,
            iperf,
        })
    }

    /// Connections the holder has accepted (and holds).
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The long-running processes: iperf3 and the holder.
    pub(crate) fn pids(&self) -> Vec<u32> {
        vec![self.iperf.id(), self.holder.id()]
    }

    /// Closes every held connection: the holder exits.
    pub(crate) fn release_held(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.http.abort();
        self.release_held();
        let _ = self.iperf.kill();
        let _ = self.iperf.wait();
    }
}

/// A blocking listener on `addr`, created inside `netns`.
fn listener(netns: &Netns, addr: SocketAddr) -> io::Result<TcpListener> {
    netns.run_io(move || {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(4096)?;
        Ok(s.into())
    })
}

fn nonblocking(listener: TcpListener) -> io::Result<TcpListener> {
    listener.set_nonblocking(true)?;
    Ok(listener)
}

// === echo ===

fn serve_echo(listener: &TcpListener) {
    while let Ok((stream, _)) = listener.accept() {
        let _ = echo(stream);
    }
}

/// Writes back whatever arrives until the peer closes.
fn echo(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

// === HTTP ===

async fn serve_http(listener: tokio::net::TcpListener) {
    let responses = Arc::new([response(false), response(true)]);
    while let Ok((stream, _)) = listener.accept().await {
        let responses = responses.clone();
        tokio::spawn(async move {
            let _ = http_connection(stream, &responses).await;
        });
    }
}

/// The fixed response, announcing the close or not.
fn response(close: bool) -> Vec<u8> {
    let connection = if close { "Connection: close\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{connection}\r\n",
        BODY.len()
    )
    .into_bytes();
    out.extend_from_slice(BODY);
    out
}

/// Answers every request on one connection; closes after a request that does not keep the
/// connection alive (HTTP/1.0 without `Connection: keep-alive`, or `Connection: close`).
async fn http_connection(
    mut stream: tokio::net::TcpStream,
    responses: &[Vec<u8>; 2],
) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        while let Some(end) = find(&buf, b"\r\n\r\n") {
            let keep_alive = keeps_alive(&buf[..end]);
            buf.drain(..end + 4);
            if keep_alive {
                stream.write_all(&responses[0]).await?;
            } else {
                stream.write_all(&responses[1]).await?;
                return stream.shutdown().await;
            }
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::other("request head too long"));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}

fn keeps_alive(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let http10 = text.lines().next().is_some_and(|l| l.ends_with("http/1.0"));
    let connection = text
        .lines()
        .find_map(|l| l.strip_prefix("connection:"))
        .map(str::trim);
    match connection {
        Some("close") => false,
        Some("keep-alive") => true,
        _ => !http10,
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

// === idle connections ===

/// Starts the holder in `netns` on `addr`; the counter follows what it reports.
fn start_holder(netns: &Netns, addr: SocketAddr) -> io::Result<(Child, Arc<AtomicUsize>)> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(HOLD_ENV, addr.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = netns.spawn(cmd)?;
    let held = Arc::new(AtomicUsize::new(0));
    let out = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("the holder's output"))?;
    let counter = held.clone();
    std::thread::spawn(move || {
        for line in io::BufRead::lines(io::BufReader::new(out)) {
            let Ok(Some(n)) = line.map(|l| l.trim().parse().ok()) else {
                break;
            };
            counter.store(n, Ordering::Relaxed);
        }
    });
    Ok((child, held))
}

/// The holder's whole life: listen on `addr` (in the namespace it was started in), accept
/// and keep every connection, print how many it holds after each.
pub(crate) fn hold(addr: &str) -> io::Result<()> {
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| io::Error::other(format!("{HOLD_ENV}={addr:?} is not ip:port")))?;
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    let listener: TcpListener = socket.into();
    let mut held = Vec::new();
    let mut out = io::stdout().lock();
    loop {
        let (stream, _) = listener.accept()?;
        held.push(stream);
        writeln!(out, "{}", held.len())?;
        out.flush()?;
    }
}
